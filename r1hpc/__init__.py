"""r1hpc: DeepSeek-R1 style reasoning RL (GRPO) on Megatron-core, Slurm-native."""

__version__ = "0.1.0"
