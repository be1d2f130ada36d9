"""PNG of a run's learning curves: reward, accuracy and response length per step, plus the
held-out pass@1 evaluations."""
from __future__ import annotations

from pathlib import Path

from r1hpc.monitor.metrics import read_metrics


def plot_training(metrics_path: Path, out_png: Path, evals: list[dict] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    steps = [r["step"] for r in rows]
    panels = [("reward/mean", "reward"), ("reward/accuracy", "accuracy (train samples)"),
              ("response_length/mean", "response length (tokens)")]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(18, 4))
    for ax, (key, title) in zip(axes, panels):
        ax.plot(steps, [r.get(key) for r in rows], lw=1.2)
        ax.set_title(title)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    ax = axes[-1]
    for key in sorted({k for e in (evals or []) for k in e if k.startswith("pass@1")}):
        ax.plot([e["step"] for e in evals], [e.get(key) for e in evals], marker="o", label=key)
    ax.set_title("held-out pass@1")
    ax.set_xlabel("GRPO step")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if evals:
        ax.legend(fontsize=7)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
