"""Can this run resume from that checkpoint? Exact resume needs the same parallel layout (every
rank reloads its own RNG and optimizer shards) and the same meaning of the run: the same model,
data, algorithm and seed. Settings that only say how long or where to run may change."""
from __future__ import annotations

from typing import Any

# Keys (dotted) or sections (prefix + ".") that may differ between the checkpoint and the resumed run.
MAY_CHANGE = ("checkpoint.", "grpo.steps", "grpo.time_limit_minutes", "run.output_dir", "pretrain.reuse",
              "pretrain.base_dir", "parallel.timeout_minutes", "rewards.workers")


class ResumeError(RuntimeError):
    """A checkpoint cannot be resumed by this run; the message names what differs."""


def current_layout() -> dict[str, int]:
    from megatron.core import parallel_state as ps

    import torch

    return {"world_size": torch.distributed.get_world_size(),
            "tensor_model_parallel_size": ps.get_tensor_model_parallel_world_size(),
            "pipeline_model_parallel_size": ps.get_pipeline_model_parallel_world_size(),
            "context_parallel_size": ps.get_context_parallel_world_size(),
            "expert_model_parallel_size": ps.get_expert_model_parallel_world_size(),
            "data_parallel_size": ps.get_data_parallel_world_size()}


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: dict, current: dict) -> list[str]:
    """``key: saved -> current`` for every meaningful key that differs."""
    a, b = flatten(saved), flatten(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if any(key == m or (m.endswith(".") and key.startswith(m)) for m in MAY_CHANGE):
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            diffs.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
    return diffs


def check_resumable(meta: dict, config: dict, layout: dict[str, int], where: str) -> None:
    """Raise ResumeError naming every difference of layout or meaningful config."""
    layout_diffs = [f"{k}: {meta['layout'].get(k)} -> {v}" for k, v in layout.items() if meta["layout"].get(k) != v]
    if layout_diffs:
        raise ResumeError(
            f"{where}: the parallel layout differs from the checkpoint's ({'; '.join(layout_diffs)}). Exact resume "
            f"reloads every rank's optimizer and RNG state, so it needs the layout the checkpoint was written with; "
            f"relaunch with that layout (the model weights in {where}/state also load at another layout through "
            f"r1hpc.model.weights, as a new run)")
    diffs = config_differences(meta["config"], config)
    if diffs:
        raise ResumeError(
            f"{where}: the config changes the run's meaning ({'; '.join(diffs)}). Resume with the checkpoint's "
            f"values, or start a new run (checkpoint.resume=none, or another run.name). May differ: "
            f"{', '.join(MAY_CHANGE)}")


def version_change(meta: dict, here: dict[str, str]) -> str | None:
    """A note when the checkpoint was written under other megatron-core or torch versions than
    ``here``: it may load (r1hpc.model.weights says clearly when it does not), but bitwise-equal
    continuation is only promised within one version of each."""
    written = meta.get("versions")
    if not written:
        return None
    changed = [f"{k} {written.get(k)} -> {here[k]}" for k in ("megatron_core", "torch") if written.get(k) != here[k]]
    if not changed:
        return None
    return (f"[resume] NOTE: the checkpoint was written with other versions ({'; '.join(changed)}); a continuation "
            f"is bitwise equal to an uninterrupted run only within one version")
