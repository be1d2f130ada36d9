"""Disaggregated RL: one training job and a rollout job array exchanging weights and sample batches
through the cluster's shared filesystem (docs/disaggregated.md)."""
