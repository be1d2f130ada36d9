"""GRPO algorithm in pure PyTorch: advantages, KL estimators, the fp32 loss reference every kernel is tested against."""
