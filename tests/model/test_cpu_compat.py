"""The CPU compatibility layer: idempotent, documented, version-guarded, strict about its targets, and
its cuda->cpu mapping.

Applying the patches changes torch and megatron process-wide, so that runs in a spawned rank;
the version guard raises before patching anything, so it is tested here with monkeypatch.
"""
from __future__ import annotations

import pytest
import torch

from r1hpc.model import cpu_compat, mcore_compat
from r1hpc.model.cpu_compat import CpuCompatError, CpuRNGStatesTracker, CudaToCpuMode
from tests.multiproc import run_workers

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="the patches apply only without CUDA")


def _apply_twice() -> dict:
    from megatron.core.models.common.language_module.language_module import LanguageModule
    from megatron.core.pipeline_parallel import schedules

    first = [(p.target, p.why) for p in cpu_compat.apply()]
    patched = (torch.cuda.current_device, schedules.forward_backward_no_pipelining,
               LanguageModule.setup_embeddings_and_output_layer, torch.distributed.all_to_all_single)
    second = [(p.target, p.why) for p in cpu_compat.apply()]
    again = (torch.cuda.current_device, schedules.forward_backward_no_pipelining,
             LanguageModule.setup_embeddings_and_output_layer, torch.distributed.all_to_all_single)
    # 1e-30 * 1e-10 is denormal (< 1.2e-38); a 1M-element op runs on every OpenMP thread
    product = torch.full((1 << 20,), 1e-30) * 1e-10
    return {"first": first, "second": second, "same_objects": all(a is b for a, b in zip(patched, again)),
            "current_device": torch.cuda.current_device(), "denormals_left": int(product.ne(0).sum()),
            "threads": torch.get_num_threads()}


@pytest.fixture(scope="module")
def applied() -> dict:
    (out,) = run_workers(_apply_twice, 1)
    return out


@no_cuda
@pytest.mark.multiproc
def test_apply_twice_is_idempotent(applied):
    assert applied["first"] and applied["second"] == applied["first"]
    assert applied["same_objects"]
    assert applied["current_device"] == "cpu"


@no_cuda
@pytest.mark.multiproc
def test_every_patch_says_what_and_why(applied):
    targets = [t for t, _ in applied["first"]]
    assert len(set(targets)) == len(targets)
    for target, why in applied["first"]:
        assert "." in target and len(why) > 20, (target, why)


@no_cuda
@pytest.mark.multiproc
def test_denormals_are_flushed_on_every_thread(applied):
    """Denormal arithmetic is ~100x slower on x86; the patches flush it to zero, in the OpenMP
    workers too (they inherit the mode from the thread that applied the patches)."""
    if not torch.set_flush_denormal(False):  # off is the default; the call says whether the CPU has the mode
        pytest.skip("this CPU has no flush-to-zero mode")
    assert "torch.set_flush_denormal(True)" in [t for t, _ in applied["first"]]
    assert applied["denormals_left"] == 0, applied


@no_cuda
def test_unsupported_megatron_version_is_refused(monkeypatch):
    import megatron.core

    monkeypatch.setattr(megatron.core, "__version__", "0.18.2")
    monkeypatch.setattr(cpu_compat, "_applied", False)
    monkeypatch.setattr(cpu_compat, "PATCHES", [])
    with pytest.raises(CpuCompatError) as e:
        cpu_compat.apply()
    msg = str(e.value)
    assert "megatron-core 0.18.2 is installed" in msg
    assert all(s.tested in msg for s in mcore_compat.SUPPORTED.values())
    assert cpu_compat.PATCHES == []  # refused before patching anything


def test_a_missing_patch_target_fails_loudly(monkeypatch):
    import types

    monkeypatch.setattr(cpu_compat, "PATCHES", [])
    mod = types.ModuleType("megatron.core.fake_module")
    with pytest.raises(CpuCompatError, match=r"megatron\.core\.fake_module\.moved_helper does not exist in megatron-core"):
        cpu_compat._patch(mod, "moved_helper", None, "a helper that allocates on cuda")
    assert not hasattr(mod, "moved_helper") and cpu_compat.PATCHES == []
    cpu_compat._patch(mod, "undefined_name", None, "a name megatron leaves undefined without TE", create=True)
    assert mod.undefined_name is None and [p.target for p in cpu_compat.PATCHES] == ["megatron.core.fake_module.undefined_name"]


def test_cuda_to_cpu_mode_maps_devices():
    t = torch.arange(3.0)
    with CudaToCpuMode():
        made = [torch.zeros(2, device="cuda"), torch.empty(2, device=torch.device("cuda", 1)),
                torch.ones(2, device=0), torch.full((2,), 1.0, device="cuda:0")]
        moved = [t.cuda(), t.to("cuda"), t.to(torch.device("cuda")), t.to("cuda", torch.float64),
                 t.to(device="cuda")]
        kept = [torch.zeros(2, device="cpu"), t.to(torch.float64), t.to(dtype=torch.int64)]
    assert all(x.device.type == "cpu" for x in made + moved + kept)
    assert moved[3].dtype == torch.float64 and kept[1].dtype == torch.float64 and kept[2].dtype == torch.int64
    assert torch.equal(moved[0], t)


def test_cuda_to_cpu_mode_names_cuda_types():
    """megatron's mixed-precision optimizer accepts only parameters whose .type() is a CUDA name."""
    bf16, fp32 = torch.zeros(2, dtype=torch.bfloat16), torch.nn.Parameter(torch.zeros(2))
    with CudaToCpuMode():
        inside = (bf16.type(), fp32.type(), bf16.type(torch.float32).dtype)
    assert inside == ("torch.cuda.BFloat16Tensor", "torch.cuda.FloatTensor", torch.float32)  # a cast stays a cast
    assert (bf16.type(), fp32.type()) == ("torch.BFloat16Tensor", "torch.FloatTensor")


def test_cuda_to_cpu_mode_is_scoped():
    with CudaToCpuMode():
        pass
    if not torch.cuda.is_available():
        with pytest.raises((RuntimeError, AssertionError)):
            torch.zeros(1, device="cuda")


def test_cpu_rng_tracker_forks_named_streams():
    tracker = CpuRNGStatesTracker()
    tracker.add("tp", 5)
    torch.manual_seed(0)
    outside = torch.rand(2)
    torch.manual_seed(0)
    with tracker.fork("tp"):
        a = torch.rand(2)
    assert torch.equal(torch.rand(2), outside)  # the default stream did not move
    assert torch.equal(a, torch.rand(2, generator=torch.Generator().manual_seed(5)))
    with tracker.fork("tp"):
        b = torch.rand(2)
    assert not torch.equal(a, b)  # the named stream advanced
    with pytest.raises(CpuCompatError, match="already used"):
        tracker.add("other", 5)
    with pytest.raises(CpuCompatError, match="was not added"):
        with tracker.fork("missing"):
            pass
