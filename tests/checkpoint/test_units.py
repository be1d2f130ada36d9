"""The checkpoint package's pure parts: directory scanning and publishing, the stream cursor, the
resume compatibility check and the preemption flag. (Whole-run behaviour: test_resume.py.)"""
import json
import os
import signal
import subprocess
import sys
from itertools import count
from pathlib import Path

import pytest

from r1hpc.checkpoint.compat import ResumeError, check_resumable, config_differences
from r1hpc.checkpoint.cursor import StreamCursor
from r1hpc.checkpoint.layout import LATEST, newest_complete, prune, publish, read_meta, scan
from r1hpc.checkpoint.preemption import EXIT_CODE_REQUEUE, PreemptionGuard
from r1hpc.checkpoint.resume import choose_checkpoint

LAYOUT = {"world_size": 2, "tensor_model_parallel_size": 2, "pipeline_model_parallel_size": 1,
          "context_parallel_size": 1, "expert_model_parallel_size": 1, "data_parallel_size": 1}
CONFIG = {"model": {"hidden_size": 96, "num_layers": 2}, "grpo": {"steps": 8, "mini_batches": 1},
          "checkpoint": {"save_every": 2}, "run": {"seed": 7, "output_dir": "a"}}


def _complete(root, step):
    tmp = root / f"step_{step:08d}.tmp"
    tmp.mkdir(parents=True)
    (tmp / "payload").write_text(str(step))
    publish(tmp, root / f"step_{step:08d}", {"step": step})


def test_publish_renames_and_points_latest(tmp_path):
    _complete(tmp_path, 4)
    assert not (tmp_path / "step_00000004.tmp").exists()
    assert read_meta(tmp_path / "step_00000004") == {"step": 4}
    assert (tmp_path / LATEST).read_text().strip() == "step_00000004"


def test_newest_complete_skips_tmp_and_dirs_without_meta(tmp_path):
    for step in (2, 4):
        _complete(tmp_path, step)
    (tmp_path / "step_00000006.tmp").mkdir()
    (tmp_path / "step_00000008").mkdir()  # final name but no meta.json: never loaded
    best, skipped = newest_complete(tmp_path)
    assert best.step == 4
    assert sorted(f.path.name for f in skipped) == ["step_00000006.tmp", "step_00000008"]
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        read_meta(tmp_path / "step_00000008")


def test_choose_auto_warns_about_skipped(tmp_path):
    _complete(tmp_path, 2)
    (tmp_path / "step_00000004.tmp").mkdir()
    said = []
    assert choose_checkpoint("auto", tmp_path, said.append) == tmp_path / "step_00000002"
    assert any("WARNING: skipping incomplete checkpoint" in s and "step_00000004.tmp" in s for s in said)
    assert choose_checkpoint("none", tmp_path, said.append) is None
    with pytest.raises(ResumeError, match="step_00000004.tmp: not a complete checkpoint"):
        choose_checkpoint(str(tmp_path / "step_00000004.tmp"), tmp_path, said.append)


def test_prune_keeps_last_k_and_drops_older_tmp(tmp_path):
    for step in (2, 4, 6):
        _complete(tmp_path, step)
    (tmp_path / "step_00000003.tmp").mkdir()
    (tmp_path / "step_00000008.tmp").mkdir()  # newer than every complete one: maybe still being written
    prune(tmp_path, keep_last=2)
    assert [f.path.name for f in scan(tmp_path)] == ["step_00000004", "step_00000006", "step_00000008.tmp"]


def test_stream_cursor_replays_to_the_same_position():
    a = StreamCursor(lambda: iter(count(100)))
    [next(a) for _ in range(5)]
    b = StreamCursor(lambda: iter(count(100)))
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert [next(b) for _ in range(3)] == [next(a) for _ in range(3)] == [105, 106, 107]


def test_config_differences_ignore_what_may_change():
    changed = json.loads(json.dumps(CONFIG))
    changed["grpo"]["steps"] = 20
    changed["checkpoint"]["save_every"] = 5
    changed["run"]["output_dir"] = "b"
    assert config_differences(CONFIG, changed) == []
    changed["model"]["hidden_size"] = 64
    assert config_differences(CONFIG, changed) == ["model.hidden_size: 96 -> 64"]


def test_check_resumable_names_layout_and_config_differences():
    meta = {"layout": LAYOUT, "config": CONFIG}
    check_resumable(meta, CONFIG, LAYOUT, "ck")
    with pytest.raises(ResumeError, match=r"layout differs .*tensor_model_parallel_size: 2 -> 1; data_parallel_size: 1 -> 2"):
        check_resumable(meta, CONFIG, {**LAYOUT, "tensor_model_parallel_size": 1, "data_parallel_size": 2}, "ck")
    other = {**CONFIG, "model": {"hidden_size": 96, "num_layers": 4}}
    with pytest.raises(ResumeError, match=r"changes the run's meaning \(model.num_layers: 2 -> 4\)"):
        check_resumable(meta, other, LAYOUT, "ck")


def test_preemption_guard_only_sets_a_flag():
    guard = PreemptionGuard()
    try:
        assert not guard.should_stop()
        os.kill(os.getpid(), signal.SIGUSR2)  # would terminate the process without the guard
        assert guard.received == signal.SIGUSR2 and guard.should_stop()
    finally:
        guard.uninstall()
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL


def test_the_slurm_templates_take_the_requeue_exit_code_from_r1hpc():
    """One definition: slurm/common.sh asks r1hpc.checkpoint.preemption for the code it requeues on."""
    line = next(x for x in (Path(__file__).resolve().parents[2] / "slurm/common.sh").read_text().splitlines() if x.startswith("EXIT_CODE_REQUEUE="))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-c", f'{line}\necho "$EXIT_CODE_REQUEUE"'], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip() == str(EXIT_CODE_REQUEUE), out.stderr


def test_a_signal_during_start_up_is_kept_for_the_guard():
    """A requeued job may get USR2 while still importing: caught early, it stops the run at its first step."""
    code = ("import os, signal\n"
            "from r1hpc.checkpoint.preemption import PreemptionGuard, catch_signals_early\n"
            "catch_signals_early()\n"
            "os.kill(os.getpid(), signal.SIGUSR2)\n"
            "guard = PreemptionGuard()\n"
            "print(guard.received == signal.SIGUSR2, guard.should_stop())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["True", "True"], out.stderr


def test_checkpoint_section_is_validated():
    from r1hpc.config import ConfigError
    from r1hpc.run_config import load_run_config

    assert load_run_config(None, ["checkpoint.resume=auto"]).checkpoint.resume == "auto"
    with pytest.raises(ConfigError, match="checkpoint.*keep_last"):
        load_run_config(None, ["checkpoint.keep_last=0"])


def test_a_fresh_start_over_complete_checkpoints_needs_overwrite(tmp_path):
    from r1hpc.checkpoint.resume import check_fresh_start

    check_fresh_start(tmp_path / "missing", overwrite=False)
    (tmp_path / "step_00000004.tmp").mkdir()
    check_fresh_start(tmp_path, overwrite=False)  # only an unfinished save: nothing of value
    _complete(tmp_path, 2)
    with pytest.raises(ResumeError, match=r"1 checkpoint\(s\) of an earlier run \(newest step_00000002\).*"
                                          r"checkpoint.overwrite=true"):
        check_fresh_start(tmp_path, overwrite=False)
    check_fresh_start(tmp_path, overwrite=True)
    assert (tmp_path / "step_00000002" / "meta.json").is_file()  # the check itself never deletes


def test_resume_candidates_are_newest_first_with_fallbacks_only_for_auto(tmp_path):
    from r1hpc.checkpoint.resume import resume_candidates

    for step in (2, 4, 6):
        _complete(tmp_path, step)
    (tmp_path / "step_00000008.tmp").mkdir()
    names = [p.name for p in resume_candidates("auto", tmp_path, lambda s: None)]
    assert names == ["step_00000006", "step_00000004", "step_00000002"]
    assert resume_candidates(str(tmp_path / "step_00000004"), tmp_path, lambda s: None) == [tmp_path / "step_00000004"]
    assert resume_candidates("none", tmp_path, lambda s: None) == []


def test_grpo_with_one_sample_per_prompt_fails_before_anything_runs(tmp_path):
    from r1hpc.config import ConfigError
    from r1hpc.run_config import load_run_config
    from r1hpc.train.trainer import Trainer

    cfg = load_run_config(None, ["rollout.group_size=1", f"run.output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="rollout.group_size: GRPO .* needs >= 2, got 1"):
        Trainer(cfg).run()
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_one_line_naming_the_directory():
    import torch

    from r1hpc.checkpoint.layout import CheckpointWriteError, explain_write_errors

    with pytest.raises(CheckpointWriteError, match=r"^checkpoint.directory /dev: writing step 3 failed \(.*free.*\): "
                                                   r"RuntimeError: [^\n]*$"):
        with explain_write_errors(Path("/dev"), "step 3"):
            torch.save({"x": torch.zeros(100_000)}, "/dev/full")  # every write: ENOSPC
