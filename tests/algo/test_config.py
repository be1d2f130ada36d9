import pytest

from r1hpc.algo import AlgoConfig
from r1hpc.config import ConfigError, from_dict


def test_defaults_valid_and_dapo_overrides():
    AlgoConfig().validate()
    cfg = from_dict(AlgoConfig, {"eps_high": 0.28, "loss_agg_mode": "token-mean", "beta": 0,
                                 "dynamic_sampling": True, "overlong_buffer_len": 256,
                                 "max_response_len": 4096})
    assert cfg.eps_high == 0.28 and cfg.beta == 0.0 and cfg.loss_agg_mode == "token-mean"
    for impl in ("auto", "triton", "torch"):  # the fused output layer has a Triton forward too
        assert from_dict(AlgoConfig, {"fused_output": True, "impl": impl}).impl == impl


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"eps_low": 1.0}, "eps_low"),
        ({"eps_high": -0.1}, "eps_high"),
        ({"dual_clip_c": 1.0}, "dual_clip_c"),
        ({"beta": -1.0}, "beta"),
        ({"temperature": 0.0}, "temperature"),
        ({"tis_cap": 0.0}, "tis_cap"),
        ({"is_level": "geometric", "tis_cap": 2.0}, "is_level"),
        ({"is_level": "sequence"}, "nothing to apply to"),
        ({"mis_low": 1.5, "mis_high": 2.0}, "mis_low"),
        ({"mis_high": 0.5}, "mis_high"),
        ({"mis_low": 0.5}, "unbounded"),
        ({"entropy_coef": -0.01}, "entropy_coef"),
        ({"overlong_buffer_len": 2048, "max_response_len": 1024}, "overlong_buffer_len"),
        ({"loss_agg_mode": "sum"}, "loss_agg_mode"),
        ({"kl_kind": "k4"}, "kl_kind"),
        ({"fused_output": "yes"}, "fused_output"),
    ],
)
def test_validate_rejects(bad, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(AlgoConfig, bad)


def test_loss_params_move_kl_to_reward():
    assert AlgoConfig(beta=0.1, temperature=1.0).loss_params().beta == 0.1
    assert AlgoConfig(beta=0.1, kl_in_reward=True, temperature=1.0).loss_params().beta == 0.0


def test_unset_temperature_follows_the_sampler():
    with pytest.raises(ValueError, match="unresolved"):
        AlgoConfig().loss_params()
    assert AlgoConfig().with_sampling_temperature(0.7).loss_params().temperature == 0.7
    assert AlgoConfig().with_sampling_temperature(0.0).temperature == 1.0  # a greedy sampler
    assert AlgoConfig(temperature=1.3).with_sampling_temperature(0.7).temperature == 1.3
