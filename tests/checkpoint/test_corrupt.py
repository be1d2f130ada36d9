"""A checkpoint with a file cut short (a copy or a save that did not finish) fails to load with one
line naming that file, not a bare EOFError / unpickling / zip error from deep inside torch."""
from pathlib import Path

import pytest

from tests.checkpoint.workers import load_with_each_file_cut
from tests.multiproc import run_workers

SMALL = dict(vocab_size=64, num_layers=1, hidden_size=16, ffn_hidden_size=32, num_attention_heads=2, max_seq_length=8)


@pytest.mark.multiproc
def test_a_cut_file_is_named_in_one_line(tmp_path):
    ckpt = tmp_path / "w"
    (errors,) = run_workers(load_with_each_file_cut, 1, SMALL, str(ckpt))
    assert errors.pop("intact") == "loaded"
    names = {variant.split("@")[0] for variant in errors}
    assert {".metadata", "common.pt", "metadata.json"} <= names
    assert any(n.endswith(".distcp") for n in names), names
    for variant, error in errors.items():
        path = ckpt / variant.split("@")[0]
        if path.name == "versions.json":  # read only to explain a failed load
            assert error == "loaded", error
            continue
        assert error.startswith(f"CheckpointCorruptError: {path}: "), (variant, error)
        assert "is truncated or corrupt" in error and "\n" not in error, (variant, error)
        if path.suffix == ".distcp":
            assert f"truncated ({len(Path(path).read_bytes()) // 2} bytes" in error, error
