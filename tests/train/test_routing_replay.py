"""Routing replay (R3): the rollout's experts are recorded per fed position and MoE layer, and the
trainer's forward with replay on routes every token exactly as the rollout did; with replay off the
router-agreement metric counts what differs. Real megatron MoE, real gloo processes."""
import pytest
import torch

from r1hpc.config import ConfigError
from r1hpc.model.routing_replay import RoutingReplayConfig
from r1hpc.train.routing import AGREEMENT
from tests.multiproc import run_workers
from tests.train.routing_workers import dense_refusal, replay_probe
from tests.train.workers import MOE, grpo_run

pytestmark = pytest.mark.multiproc


def _check(result: dict) -> None:
    on, off = result["rollout"], result["off"]
    assert on["compared"] > 500 and on["differ"] == 0  # every (token, layer) routed as recorded
    assert AGREEMENT not in on["metrics"]
    # replay off: the metric is exactly the share of response (token, layer) pairs routed alike
    assert off["metrics"][AGREEMENT] == pytest.approx(1 - off["differ_resp"] / off["compared_resp"])
    assert on["mean_absdiff"] <= off["mean_absdiff"]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_replay_routes_as_recorded_tp1(tmp_path, dtype):
    (res,) = run_workers(replay_probe, 1, {}, str(tmp_path / "w"), "save", dtype)
    _check(res)
    print(dtype, {m: {k: v for k, v in res[m].items()} for m in ("off", "rollout")})


def test_replay_routes_as_recorded_tp2_sp(tmp_path):
    """TP=2 with sequence parallelism: each TP rank's routers see their shard and get its slice."""
    ckpt = str(tmp_path / "w")
    (ref,) = run_workers(replay_probe, 1, {}, ckpt, "save", "fp32")
    out = run_workers(replay_probe, 2, {"tensor_model_parallel_size": 2, "sequence_parallel": True}, ckpt, "load",
                      "fp32")
    for a, b in zip(out[0]["routing"], ref["routing"]):  # both TP ranks sampled and recorded as one process
        assert torch.equal(a, b)
    merged = {}  # each TP rank compared its own shard: together, every position once
    for mode in ("off", "rollout"):
        merged[mode] = {k: sum(r[mode][k] for r in out) for k in ("differ", "compared", "differ_resp", "compared_resp")}
        merged[mode].update(metrics=out[0][mode]["metrics"], mean_absdiff=max(r[mode]["mean_absdiff"] for r in out))
        assert merged[mode]["compared"] == ref[mode]["compared"]
        assert all(r[mode]["metrics"] == merged[mode]["metrics"] for r in out)
    _check(merged)


def test_replay_routes_as_recorded_ep2(tmp_path):
    """EP=2: each MoE layer's experts split over two ranks (tokens dispatched by all-to-all); every
    rank records and replays its own rows, and routes them exactly as recorded."""
    ckpt = str(tmp_path / "w")
    (ref,) = run_workers(replay_probe, 1, {}, ckpt, "save", "fp32")
    out = run_workers(replay_probe, 2, {"expert_model_parallel_size": 2}, ckpt, "load", "fp32")
    for rank in out:
        for a, b in zip(rank["routing"], ref["routing"]):  # the rollout routed as the one-process rollout did
            assert torch.equal(a, b)
        _check(rank)


def test_replay_on_dense_model_is_refused():
    (msg,) = run_workers(dense_refusal, 1)
    assert "dense" in msg and "routing.replay" in msg


def test_config_checks():
    with pytest.raises(ConfigError, match="'off' or 'rollout'"):
        RoutingReplayConfig(replay="sometimes").validate()
    with pytest.raises(ConfigError, match="replay_reference"):
        RoutingReplayConfig(replay_reference=True).validate()
    assert RoutingReplayConfig().records and not RoutingReplayConfig(agreement=False).records


def test_grpo_trainer_replays_and_reports(tmp_path):
    """Two GRPO steps on the tiny MoE with replay off (agreement measured) and on: both report the
    mismatch figures; the first step's rollouts are the same in both, and replay does not widen the
    gap between rollout and trainer log-probs."""
    ckpt = str(tmp_path / "init")
    algo = dict(beta=0.04, loss_agg_mode="seq-mean-token-mean")
    (off,) = run_workers(grpo_run, 1, MOE, {}, ckpt, "save", algo, 2, {"replay": "off"})
    (on,) = run_workers(grpo_run, 1, MOE, {}, ckpt, "load", algo, 2, {"replay": "rollout", "replay_reference": True})
    for m in off["metrics"] + on["metrics"]:
        assert m["actor/updates"] > 0 and 0 <= m["sampling/sampling_logp_difference/mean"] < float("inf")
    assert all(0 < m[AGREEMENT] <= 1 for m in off["metrics"]) and all(AGREEMENT not in m for m in on["metrics"])
    first_off, first_on = off["metrics"][0], on["metrics"][0]
    assert first_off["response_length/mean"] == first_on["response_length/mean"]
    assert first_on["sampling/sampling_logp_difference/mean"] <= first_off["sampling/sampling_logp_difference/mean"]
    print({k: (first_off[k], first_on.get(k)) for k in first_off if k.startswith(("sampling/", "rollout_corr/"))})
