"""Rule-based and model-based rewards; all checks on model output run outside the training process.

Entry point for the trainer: ``r1hpc.rewards.registry.RewardScorer``. Single rewards live in their
own modules (math, code, format, countdown, language, model_based); see docs/rewards.md. Nothing
is imported here, so the verifier workers that import ``r1hpc.rewards.math`` stay light (no torch).
"""
