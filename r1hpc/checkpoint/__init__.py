"""Exact-resume checkpoints of the GRPO run: model and optimizer through megatron's distributed
checkpointing, per-rank RNG states, the trainer's counters and prompt-stream position, evals so
far and the resolved config; written atomically, resumed with ``checkpoint.resume``."""
