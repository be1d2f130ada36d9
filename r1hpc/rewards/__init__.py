"""Rule-based and model-based rewards; all checks on model output run outside the training process."""
