"""Read and write HF safetensors checkpoints one tensor (or one slice) at a time.

Reading uses ``safe_open`` + ``get_slice``, which memory-maps the file and copies only the slice
asked for, so a rank never loads tensors (or parts) it does not own. Writing streams too: the
export knows every tensor's name, shape and dtype in advance, so each file's header is written
first and tensors are appended as they arrive; nothing but the tensor in hand is held in memory.
"""
from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path
from typing import Iterable, Optional

import torch

from r1hpc.config import ConfigError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"

_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64"}


class SafetensorsReader:
    """Name -> file map of a single-file or sharded (index.json) checkpoint, with open handles."""

    def __init__(self, hf_dir: str | Path) -> None:
        from safetensors import safe_open

        self.dir = Path(hf_dir)
        index = self.dir / INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ConfigError(f"{index}: not a safetensors index (needs a 'weight_map'): {e}") from None
        elif (self.dir / SINGLE).is_file():
            weight_map = None
        else:
            raise ConfigError(f"{self.dir}: no {SINGLE} or {INDEX} (only safetensors checkpoints are read)")
        self._stack = contextlib.ExitStack()
        files = sorted(set(weight_map.values())) if weight_map else [SINGLE]
        self._handles = {f: self._stack.enter_context(safe_open(str(self.dir / f), framework="pt")) for f in files}
        if weight_map is None:
            weight_map = {k: SINGLE for k in self._handles[SINGLE].keys()}
        self.weight_map: dict[str, str] = weight_map

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def shape(self, name: str) -> list[int]:
        return list(self._slice(name).get_shape())

    def _slice(self, name: str):
        if name not in self.weight_map:
            raise KeyError(f"{self.dir}: tensor {name!r} is missing from the checkpoint")
        return self._handles[self.weight_map[name]].get_slice(name)

    def read(self, name: str, rows: Optional[slice] = None, cols: Optional[slice] = None) -> torch.Tensor:
        """The tensor, or only rows/cols of it (a 1-D tensor takes ``rows``)."""
        sl = self._slice(name)
        if rows is None and cols is None:
            return sl[:]
        if cols is None:
            return sl[rows]
        return sl[rows if rows is not None else slice(None), cols]

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> "SafetensorsReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StreamingWriter:
    """Write a planned list of tensors into one or more safetensors files, appending as they come.

    ``plan``: (name, shape, dtype) in the order :meth:`write` will be called. Files are cut at
    ``max_shard_bytes``; with several files an index.json maps names to files, as transformers expects.
    """

    def __init__(self, out_dir: str | Path, plan: Iterable[tuple[str, tuple, torch.dtype]],
                 max_shard_bytes: int = 5 * 2**30) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        plan = list(plan)
        shards: list[list] = [[]]
        size = 0
        for name, shape, dtype in plan:
            n = _nbytes(shape, dtype)
            if shards[-1] and size + n > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append((name, tuple(shape), dtype))
            size += n
        self.total_bytes = sum(_nbytes(s, d) for _, s, d in plan)
        self.files = ([SINGLE] if len(shards) == 1
                      else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
        self._queue = [(f, entries) for f, entries in zip(self.files, shards)]
        self._expected: list[tuple] = []
        self._fh = None
        self.weight_map = {name: f for f, entries in self._queue for name, _, _ in entries}

    def _open_next(self) -> None:
        fname, entries = self._queue.pop(0)
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape, dtype in entries:
            n = _nbytes(shape, dtype)
            header[name] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the tensor data starts 8-byte aligned, as safetensors writes it
        self._tmp = self.dir / (fname + ".partial")
        self._final = self.dir / fname
        self._fh = open(self._tmp, "wb")
        self._fh.write(struct.pack("<Q", len(raw)) + raw)
        self._expected = list(entries)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if not self._expected:
            self._open_next()
        want, shape, dtype = self._expected.pop(0)
        if (name, tuple(tensor.shape), tensor.dtype) != (want, shape, dtype):
            raise RuntimeError(f"export wrote {name} {tuple(tensor.shape)} {tensor.dtype}; the plan expected "
                               f"{want} {shape} {dtype}")
        data = tensor.detach().cpu().contiguous()
        self._fh.write(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        if not self._expected:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            os.replace(self._tmp, self._final)  # a file appears only complete

    def finish(self) -> None:
        if self._expected or self._queue:
            raise RuntimeError("export ended before every planned tensor was written")
        if len(self.files) > 1:
            (self.dir / INDEX).write_text(json.dumps(
                {"metadata": {"total_size": self.total_bytes}, "weight_map": self.weight_map}, indent=2) + "\n")


def _nbytes(shape, dtype: torch.dtype) -> int:
    n = 1
    for d in shape:
        n *= d
    return n * torch.empty((), dtype=dtype).element_size()
