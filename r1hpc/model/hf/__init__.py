"""Hugging Face safetensors checkpoints in and out of our megatron GPT (Llama, Qwen2, Mixtral,
Qwen2-MoE), streamed tensor by tensor at any TP/PP/EP layout. See docs/hf_weights.md.

families: HF config.json <-> ModelConfig and HF tensor names; layout: megatron parameters, their
TP splits and fused layouts; safetensors_io: sliced reads and streamed writes; importer / exporter:
the conversions; convert: the ``r1hpc convert`` commands.
"""
