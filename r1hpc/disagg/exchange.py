"""The shared-filesystem protocol between one trainer and its rollout workers.

    <root>/trainer.json                  the trainer's heartbeat: life, step, state
    <root>/DONE                          the trainer finished: workers exit
    <root>/weights/v0000012-L3/          published weights (renamed into place when complete)
    <root>/weights/LATEST.json           pointer to the newest published version
    <root>/orders/L3-s0000012-001.json   work to do: step 12's shard 1 (problems, oldest usable version)
    <root>/claims/<order>@<worker>       an order a worker took (renamed from orders/: one taker)
    <root>/batches/<order>.pt            a finished batch (hard-linked into place: never overwritten)
    <root>/batches/tmp/                  batches being written; never read
    <root>/workers/<worker>.json         each worker's heartbeat and throughput
    <root>/ledger.jsonl                  what the trainer consumed, one line per batch

Every step a reader can observe is complete: weights and batches are written under temporary names,
flushed, then renamed (weights) or hard-linked (batches) to their final names. A batch name is
derived from its order, and ``link`` refuses an existing name, so an order re-posted after its
worker's lease expired can produce at most one batch even when the first worker was only slow.
``life`` numbers the trainer's starts: after a trainer restart, everything from an earlier life
(orders, claims, batches in flight) is void and swept, and weights are republished from the
checkpoint the trainer resumed, so no batch from a lost future is ever consumed.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from r1hpc.checkpoint.layout import fsync_file, fsync_tree, write_atomic

_ORDER = re.compile(r"^L(\d+)-s(\d{7})-(\d{3})$")
_VERSION = re.compile(r"^\.?v(\d{7})-L(\d+)(\.tmp)?$")  # published, or a save that died


def order_name(life: int, step: int, shard: int) -> str:
    return f"L{life}-s{step:07d}-{shard:03d}"


def parse_order_name(name: str) -> tuple[int, int, int]:
    """(life, step, shard) of an order or batch name (without extension)."""
    m = _ORDER.match(name)
    if not m:
        raise ValueError(f"not an order name: {name!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def read_json(path: Path) -> Optional[dict]:
    """A small JSON file written with ``write_atomic``; None when absent."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


class Exchange:
    """Paths and atomic operations of one exchange directory; used by both sides."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.weights = self.root / "weights"
        self.orders = self.root / "orders"
        self.claims = self.root / "claims"
        self.batches = self.root / "batches"
        self.staging = self.batches / "tmp"
        self.workers = self.root / "workers"
        self.ledger = self.root / "ledger.jsonl"
        self.done_file = self.root / "DONE"
        self.trainer_file = self.root / "trainer.json"

    def make_dirs(self) -> None:
        for d in (self.weights, self.orders, self.claims, self.staging, self.workers):
            d.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ heartbeats
    def beat(self, path: Path, record: dict) -> None:
        write_atomic(path, json.dumps({**record, "time": time.time(), "host": socket.gethostname(),
                                       "pid": os.getpid()}))

    def trainer(self) -> Optional[dict]:
        return read_json(self.trainer_file)

    def worker_states(self) -> dict[str, dict]:
        out = {}
        for f in sorted(self.workers.glob("*.json")):
            rec = read_json(f)
            if rec is not None:
                out[f.stem] = rec
        return out

    # ------------------------------------------------------------------ weights
    def version_dir(self, version: int, life: int) -> Path:
        return self.weights / f"v{version:07d}-L{life}"

    def staging_version_dir(self, version: int, life: int) -> Path:
        return self.weights / f".v{version:07d}-L{life}.tmp"

    def commit_version(self, version: int, life: int, meta: dict[str, Any], keep: int) -> Path:
        """Make the weights written into ``staging_version_dir`` visible: flush, rename, move the
        pointer, then drop versions beyond the newest ``keep`` of this life and everything (saves that
        died included) of earlier lives."""
        tmp, final = self.staging_version_dir(version, life), self.version_dir(version, life)
        (tmp / "meta.json").write_text(json.dumps({**meta, "version": version, "life": life}))
        fsync_tree(tmp)
        os.rename(tmp, final)
        fsync_file(self.weights)
        write_atomic(self.weights / "LATEST.json", json.dumps({"version": version, "life": life, "dir": final.name}))
        for old in self.weights.iterdir():
            m = _VERSION.match(old.name)
            if m and (int(m.group(2)) != life or int(m.group(1)) <= version - keep):
                shutil.rmtree(old, ignore_errors=True)
        return final

    def latest_version(self) -> Optional[dict]:
        """``{"version", "life", "dir"}`` of the newest published weights, or None."""
        rec = read_json(self.weights / "LATEST.json")
        if rec is not None:
            rec["path"] = str(self.weights / rec["dir"])
        return rec

    # ------------------------------------------------------------------ orders and claims
    def post_order(self, life: int, step: int, shard: int, record: dict) -> Path:
        name = order_name(life, step, shard)
        path = self.orders / f"{name}.json"
        write_atomic(path, json.dumps({**record, "life": life, "step": step, "shard": shard, "name": name}))
        return path

    def open_orders(self) -> list[Path]:
        """Posted, unclaimed orders, oldest step first."""
        return sorted(p for p in self.orders.glob("L*-s*-*.json"))

    def claim(self, order: Path, worker: str) -> Optional[Path]:
        """Take an order for ``worker``; None when another worker took it first (rename is atomic)."""
        target = self.claims / f"{order.stem}@{worker}"
        try:
            os.rename(order, target)
        except FileNotFoundError:
            return None
        return target

    def claimed(self) -> list[tuple[Path, str, str]]:
        """(claim file, order name, worker) of every claimed order."""
        out = []
        for p in sorted(self.claims.iterdir()):
            order, sep, worker = p.name.partition("@")
            if sep:
                out.append((p, order, worker))
        return out

    def repost(self, claim: Path) -> bool:
        """Return a claimed order to orders/ (its worker died or gave it up); False if it vanished."""
        order = claim.name.partition("@")[0]
        try:
            os.rename(claim, self.orders / f"{order}.json")
        except FileNotFoundError:
            return False
        return True

    # ------------------------------------------------------------------ batches
    def batch_path(self, order: str) -> Path:
        return self.batches / f"{order}.pt"

    def staging_path(self, order: str, worker: str) -> Path:
        return self.staging / f"{order}@{worker}.{uuid.uuid4().hex[:8]}.pt"

    def publish_batch(self, staged: Path, order: str) -> bool:
        """Make a fully written and flushed staged batch visible under its order's name. False when
        that name already exists (another worker served the re-posted order): the staged file is
        dropped, so each order yields exactly one batch."""
        fsync_file(staged)
        try:
            os.link(staged, self.batch_path(order))
            published = True
        except FileExistsError:
            published = False
        staged.unlink()
        fsync_file(self.batches)
        return published

    def sweep(self, keep_life: Optional[int]) -> int:
        """Delete orders, claims, batches and staged files not of life ``keep_life`` (all, when None);
        returns how many were removed. A worker still writing a swept staged file fails to publish it."""
        removed = 0
        for d in (self.orders, self.claims, self.batches, self.staging):
            for p in list(d.iterdir()) if d.is_dir() else []:
                if p.is_dir():
                    continue
                try:
                    life = parse_order_name(p.name.partition("@")[0].split(".")[0])[0]
                except ValueError:
                    continue
                if keep_life is None or life != keep_life:
                    p.unlink(missing_ok=True)
                    removed += 1
        return removed

    def append_ledger(self, record: dict) -> None:
        with open(self.ledger, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_ledger(self) -> list[dict]:
        if not self.ledger.is_file():
            return []
        return [json.loads(line) for line in self.ledger.read_text().splitlines() if line.strip()]
