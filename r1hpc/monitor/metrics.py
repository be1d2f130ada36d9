"""Per-step metrics to JSONL (the durable record) and TensorBoard, written by global rank 0 only."""
from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsLogger:
    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True,
                 purge_step: int | None = None) -> None:
        """``purge_step``: on resume, the first step logged again; TensorBoard hides what an earlier
        process logged from that step on."""
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=purge_step)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                   for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def truncate_metrics(path: Path, nbytes: int) -> None:
    """Cut ``metrics.jsonl`` back to its first ``nbytes`` (its length at a checkpoint), so a resumed
    run neither repeats nor skips a step. Losing records the checkpoint counted is an error."""
    path = Path(path)
    size = path.stat().st_size if path.exists() else 0
    if size < nbytes:
        raise RuntimeError(f"{path} has {size} bytes but the checkpoint recorded {nbytes}: metrics were lost")
    with path.open("r+b" if path.exists() else "wb") as f:
        f.truncate(nbytes)


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
