"""Every kind of config mistake names its place and what was wrong; good configs load, merge and round-trip."""
from __future__ import annotations

import dataclasses
import textwrap
from typing import Literal, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from r1hpc.config import ConfigError, dump_yaml, from_dict, parse_override, to_dict
from r1hpc.distributed import ParallelConfig, check_layout
from r1hpc.model.config import ModelConfig
from r1hpc.run_config import RunConfig, load_run_config


def write(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def load_error(tmp_path, text: str, overrides=()) -> str:
    path = write(tmp_path, text) if text is not None else None
    with pytest.raises(ConfigError) as e:
        load_run_config(path, list(overrides))
    return str(e.value)


# --- unknown keys -------------------------------------------------------------------------------

def test_unknown_key_names_file_line_and_suggestion(tmp_path):
    msg = load_error(tmp_path, """
        run:
          name: x
        model:
          num_layer: 2
        """)
    path = tmp_path / "run.yaml"
    assert f"{path}:4: key 'model.num_layer'" in msg
    assert "unknown key in section ModelConfig" in msg
    assert "did you mean 'model.num_layers'?" in msg
    assert "known keys:" in msg and "hidden_size" in msg


def test_unknown_section_suggests_the_right_one(tmp_path):
    msg = load_error(tmp_path, "modle:\n  num_layers: 2\n")
    assert ":1: key 'modle'" in msg and "did you mean 'model'?" in msg and "section RunConfig" in msg


def test_unknown_key_without_close_match_has_no_suggestion(tmp_path):
    msg = load_error(tmp_path, "grpo:\n  optim:\n    zzzzzz: 1\n")
    assert "key 'grpo.optim.zzzzzz'" in msg and "did you mean" not in msg


def test_unknown_key_from_override_names_the_override():
    with pytest.raises(ConfigError, match=r"command-line override 'sft\.optim\.lrr'.*did you mean 'sft\.optim\.lr'\?"):
        load_run_config(None, ["sft.optim.lrr=0.1"])


# --- wrong types --------------------------------------------------------------------------------

def test_str_given_for_int(tmp_path):
    msg = load_error(tmp_path, "model:\n  hidden_size: 64\n  num_layers: four\n")
    assert f"{tmp_path / 'run.yaml'}:3: key 'model.num_layers': expected int, got str 'four'" in msg


def test_bool_is_not_an_int(tmp_path):
    msg = load_error(tmp_path, "model:\n  num_layers: true\n")
    assert "key 'model.num_layers': expected int, got bool True" in msg


def test_int_is_not_a_bool(tmp_path):
    msg = load_error(tmp_path, "model:\n  tie_embeddings: 1\n")
    assert "key 'model.tie_embeddings': expected bool, got int 1" in msg


def test_bool_is_not_a_float():
    with pytest.raises(ConfigError, match=r"'grpo\.optim\.lr': expected float, got bool True"):
        load_run_config(None, ["grpo.optim.lr=true"])


def test_list_item_of_wrong_type_is_named_by_index(tmp_path):
    msg = load_error(tmp_path, "data:\n  mix:\n    tasks: [arithmetic, 3]\n")
    assert "key 'data.mix.tasks[1]': expected str, got int 3" in msg


def test_scalar_given_for_list(tmp_path):
    msg = load_error(tmp_path, "data:\n  mix:\n    tasks: arithmetic\n")
    assert "key 'data.mix.tasks': expected a list, got 'arithmetic'" in msg


def test_literal_violation_lists_the_choices(tmp_path):
    msg = load_error(tmp_path, "model:\n  params_dtype: fp16\n")
    assert "key 'model.params_dtype': expected one of 'fp32', 'bf16', got 'fp16'" in msg


def test_optional_literal_violation_mentions_null():
    with pytest.raises(ConfigError, match=r"expected one of 'hybrid', 'e4m3' or null, got 'e5m2'"):
        load_run_config(None, ["model.fp8=e5m2"])


def test_section_given_a_scalar(tmp_path):
    msg = load_error(tmp_path, "model: 3\n")
    assert f"{tmp_path / 'run.yaml'}:1: key 'model': expected a mapping for section ModelConfig, got 3" in msg


# --- overrides ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, fault", [("foo", "expected key.sub=value"), ("=3", "empty key"),
                                         ("model..num_layers=2", "empty key")])
def test_bad_override_syntax(text, fault):
    with pytest.raises(ConfigError) as e:
        parse_override(text)
    assert str(e.value) == f"override '{text}': {fault}"


def test_bad_override_syntax_through_load_config():
    with pytest.raises(ConfigError, match="override 'model': expected key.sub=value"):
        load_run_config(None, ["model"])


def test_override_into_a_value_from_the_file(tmp_path):
    msg = load_error(tmp_path, "run:\n  seed: 5\n", ["run.seed.x=1"])
    assert msg == "command-line override 'run.seed.x': 'seed' is not a section"


def test_override_into_a_default_value_names_the_override():
    with pytest.raises(ConfigError) as e:
        load_run_config(None, ["run.seed.x=1"])
    assert str(e.value) == "command-line override 'run.seed.x': expected int, got dict {'x': 1}"


# --- files --------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_run_config(tmp_path / "nope.yaml")


def test_top_level_must_be_a_mapping(tmp_path):
    msg = load_error(tmp_path, "- a\n- b\n")
    assert msg == f"{tmp_path / 'run.yaml'}: the top level must be a mapping of sections, got list"


def test_invalid_yaml(tmp_path):
    msg = load_error(tmp_path, "model:\n  num_layers: [1, 2\n")
    assert msg.startswith(f"{tmp_path / 'run.yaml'}: not valid YAML:")


def test_empty_file_gives_defaults(tmp_path):
    defaults = RunConfig()
    defaults.validate()  # resolves what follows other sections (algo.temperature)
    assert load_run_config(write(tmp_path, "")) == defaults


def test_component_validate_names_the_section(tmp_path):
    msg = load_error(tmp_path, "run:\n  name: a/b\n")
    assert "section 'run': key 'name' must be a non-empty name without '/'" in msg


# --- parallel layouts ---------------------------------------------------------------------------

MOE = dict(num_moe_experts=4, moe_router_topk=2)


@pytest.mark.parametrize("model_kw, parallel_kw, world, fault", [
    ({}, dict(tensor_model_parallel_size=2, data_parallel_size=2), 8,
     "TP x PP x CP x DP = 2 x 1 x 1 x 2 = 4, but the world size is 8"),
    ({}, dict(tensor_model_parallel_size=2, pipeline_model_parallel_size=2), 6,
     "world size 6 is not divisible by TP x PP x CP = 2 x 2 x 1 = 4"),
    (dict(num_moe_experts=6, moe_router_topk=2), dict(expert_model_parallel_size=4), 4,
     "model.num_moe_experts (6) must be divisible by parallel.expert_model_parallel_size (4)"),
    ({}, dict(expert_model_parallel_size=2), 2,
     "parallel.expert_model_parallel_size is 2 but the model is dense"),
    (dict(num_attention_heads=4, hidden_size=128), dict(tensor_model_parallel_size=8), 8,
     "parallel.tensor_model_parallel_size (8) must divide model.num_attention_heads (4)"),
    (dict(num_attention_heads=4, num_query_groups=1), dict(tensor_model_parallel_size=2), 2,
     "parallel.tensor_model_parallel_size (2) must divide the KV heads (model.num_query_groups = 1)"),
    (dict(num_layers=3), dict(pipeline_model_parallel_size=2), 2,
     "parallel.pipeline_model_parallel_size (2) must divide model.num_layers (3)"),
    (MOE, dict(tensor_model_parallel_size=2, sequence_parallel=False), 2,
     "MoE with parallel.tensor_model_parallel_size > 1 needs parallel.sequence_parallel"),
    (MOE, dict(expert_model_parallel_size=4, pipeline_model_parallel_size=2), 4,
     "parallel.expert_model_parallel_size (4) must divide DP x CP x TP = 2"),
])
def test_impossible_layouts(model_kw, parallel_kw, world, fault):
    with pytest.raises(ConfigError) as e:
        check_layout(ParallelConfig(**parallel_kw), ModelConfig(**model_kw), world)
    assert fault in str(e.value)


@pytest.mark.parametrize("parallel_kw, world, dp", [
    ({}, 1, 1), (dict(tensor_model_parallel_size=2), 8, 4),
    (dict(tensor_model_parallel_size=2, pipeline_model_parallel_size=2, data_parallel_size=2), 8, 2),
])
def test_possible_layouts_give_the_data_parallel_size(parallel_kw, world, dp):
    assert check_layout(ParallelConfig(**parallel_kw), ModelConfig(), world) == dp


def test_moe_with_tp_and_sequence_parallel_unset_is_allowed():
    parallel = ParallelConfig(tensor_model_parallel_size=2, expert_model_parallel_size=2)
    assert check_layout(parallel, ModelConfig(**MOE), 4) == 2


def test_layout_checked_when_loading_a_run_config():
    with pytest.raises(ConfigError, match="must divide model.num_layers"):
        load_run_config(None, ["model.num_layers=3", "parallel.pipeline_model_parallel_size=2"])


# --- good configs -------------------------------------------------------------------------------

def test_yaml_and_overrides_merge(tmp_path):
    path = write(tmp_path, """
        model:
          num_layers: 2
          hidden_size: 64
        grpo:
          optim:
            lr: 1e-5
        """)
    cfg = load_run_config(path, ["model.num_layers=4", "parallel.tensor_model_parallel_size=2", "run.name=exp1"])
    assert (cfg.model.num_layers, cfg.model.hidden_size) == (4, 64)  # override wins, file value kept
    assert cfg.grpo.optim.lr == 1e-5  # exponent floats without a dot are floats, not strings
    assert cfg.parallel.tensor_model_parallel_size == 2 and cfg.run.name == "exp1"
    assert cfg.data == RunConfig().data


def test_off_is_a_word_not_a_boolean(tmp_path):
    """YAML 1.1 would read `off` as False, and 'off' is a value of routing.replay: only true/false are
    booleans, in files and overrides alike; a bool key given `yes` names the key."""
    path = write(tmp_path, "routing:\n  replay: off\nalgo:\n  fused_output: true\n")
    assert load_run_config(path, []).routing.replay == "off"
    cfg = load_run_config(None, ["routing.replay=off", "algo.fused_output=false"])
    assert cfg.routing.replay == "off" and cfg.algo.fused_output is False
    with pytest.raises(ConfigError, match=r"'algo\.fused_output': expected bool, got str 'yes'"):
        load_run_config(None, ["algo.fused_output=yes"])


def test_ints_widen_to_floats():
    cfg = load_run_config(None, ["grpo.optim.lr=1", "model.norm_eps=0"])
    assert type(cfg.grpo.optim.lr) is float and cfg.grpo.optim.lr == 1.0
    assert type(cfg.model.norm_eps) is float


def test_null_for_optional(tmp_path):
    path = write(tmp_path, "model:\n  num_query_groups: null\nparallel:\n  data_parallel_size: 2\n")
    cfg = load_run_config(path, ["parallel.data_parallel_size=null", "data.mix.weights=[1, 2, 3]"])
    assert cfg.model.num_query_groups is None and cfg.parallel.data_parallel_size is None
    assert cfg.data.mix.weights == [1.0, 2.0, 3.0]


def test_dump_yaml_round_trip(tmp_path):
    cfg = load_run_config(None, ["model.num_moe_experts=4", "model.fp8=null", "pretrain.optim.lr=3e-4",
                             "data.mix.difficulty={arithmetic: 2}", "data.mix.options={countdown: {max_number: 9}}",
                             "data.template.kind=chat", "data.template.system_prompt=Think first."])
    dump_yaml(cfg, tmp_path / "resolved.yaml")
    again = load_run_config(tmp_path / "resolved.yaml")
    assert again == cfg
    assert to_dict(again) == to_dict(cfg)


@dataclasses.dataclass
class Inner:
    kind: Literal["a", "b"] = "a"
    size: Optional[int] = None


@dataclasses.dataclass
class Outer:
    inner: Inner = dataclasses.field(default_factory=Inner)
    pairs: tuple[int, ...] = ()


def test_from_dict_builds_nested_dataclasses_and_tuples():
    cfg = from_dict(Outer, {"inner": {"kind": "b", "size": 3}, "pairs": [1, 2]})
    assert cfg == Outer(Inner("b", 3), (1, 2))


def test_from_dict_names_its_source():
    with pytest.raises(ConfigError, match=r"^checkpoint: key 'inner\.size': expected int or null, got 'x'$"):
        from_dict(Outer, {"inner": {"size": "x"}}, source="checkpoint")


# --- one optimizer section per stage -------------------------------------------------------------

def test_every_stage_has_the_same_optimizer_section():
    cfg = RunConfig()
    assert type(cfg.pretrain.optim) is type(cfg.sft.optim) is type(cfg.grpo.optim)


def test_a_stage_keeps_its_own_defaults_for_the_keys_left_out(tmp_path):
    path = write(tmp_path, "pretrain:\n  optim:\n    lr: 0.003\nsft:\n  optim:\n    warmup_steps: 5\n")
    cfg = load_run_config(path, ["grpo.optim.decay_steps=null"])
    default = RunConfig()
    assert cfg.pretrain.optim == dataclasses.replace(default.pretrain.optim, lr=0.003)
    assert (cfg.pretrain.optim.weight_decay, cfg.pretrain.optim.warmup_steps) == (0.01, 30)
    assert cfg.sft.optim == dataclasses.replace(default.sft.optim, warmup_steps=5)
    assert cfg.grpo.optim == dataclasses.replace(default.grpo.optim, decay_steps=None)
    assert default.pretrain.optim != default.grpo.optim


@pytest.mark.parametrize("text, old, new", [
    ("optim:\n  lr: 0.001\n", "optim", "grpo.optim"),
    ("pretrain:\n  lr: 0.001\n", "pretrain.lr", "pretrain.optim.lr"),
    ("sft:\n  min_lr_ratio: 0.5\n", "sft.min_lr_ratio", "sft.optim.min_lr_ratio"),
    ("sft:\n  warmup_steps: 2\n", "sft.warmup_steps", "sft.optim.warmup_steps"),
    ("grpo:\n  optim:\n    min_lr: 0.00001\n", "grpo.optim.min_lr", "grpo.optim.min_lr_ratio"),
])
def test_an_old_optimizer_key_names_its_new_key(tmp_path, text, old, new):
    msg = load_error(tmp_path, text)
    assert f"key '{old}': '{old}' is now '{new}'" in msg, msg


def test_an_old_optimizer_key_in_an_override_names_its_new_key():
    with pytest.raises(ConfigError, match=r"command-line override 'optim\.lr': 'optim' is now 'grpo\.optim'"):
        load_run_config(None, ["optim.lr=0.1"])


# --- override values ----------------------------------------------------------------------------

@given(st.one_of(st.integers(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False)))
def test_parse_override_round_trips_scalars(value):
    key, parsed = parse_override(f"optim.lr={value!r}")
    assert key == "optim.lr"
    assert parsed == value and type(parsed) is type(value)


@given(st.lists(st.integers(), max_size=5))
def test_parse_override_reads_lists(values):
    assert parse_override(f"a.b={values}") == ("a.b", values)


def test_parse_override_keeps_text_and_splits_at_the_first_equals():
    assert parse_override("run.name=a=b") == ("run.name", "a=b")
    assert parse_override(" run.name = x") == ("run.name", "x")
    assert parse_override("run.name=") == ("run.name", "")


def test_list_item_and_mapping_value_errors_name_their_override():
    with pytest.raises(ConfigError, match=r"^command-line override 'data\.mix\.tasks\[1\]': expected str, got int 3$"):
        load_run_config(None, ["data.mix.tasks=[arithmetic, 3]"])
    with pytest.raises(ConfigError, match=r"^command-line override 'data\.mix\.difficulty\.arithmetic': expected int"):
        load_run_config(None, ["data.mix.difficulty={arithmetic: hard}"])


def test_list_item_error_from_a_file_names_the_line(tmp_path):
    msg = load_error(tmp_path, "data:\n  mix:\n    seed: 3\n    tasks: [arithmetic, 3]\n")
    assert msg.startswith(f"{tmp_path / 'run.yaml'}:4: key 'data.mix.tasks[1]'")


def test_trainer_temperature_follows_the_sampler_unless_corrected():
    assert load_run_config(None, ["rollout.temperature=0.7"]).algo.temperature == 0.7
    msg = str(pytest.raises(ConfigError, load_run_config, None, ["rollout.temperature=0.7", "algo.temperature=1.0"]).value)
    assert "algo.temperature (1.0) differs from rollout.temperature (0.7)" in msg and "algo.tis_cap" in msg
    cfg = load_run_config(None, ["rollout.temperature=0.7", "algo.temperature=1.0", "algo.tis_cap=2.0"])
    assert (cfg.algo.temperature, cfg.rollout.temperature) == (1.0, 0.7)
    masked = ["rollout.temperature=0.7", "algo.temperature=1.0", "algo.mis_low=0.5", "algo.mis_high=2.0"]
    assert load_run_config(None, masked).algo.temperature == 1.0  # masked IS corrects it too


def test_stale_disaggregated_batches_need_an_importance_correction():
    stale = ["disagg.enabled=true", "disagg.max_staleness=1"]
    msg = str(pytest.raises(ConfigError, load_run_config, "configs/ci_r1zero.yaml", stale).value)
    assert "disagg.max_staleness=1 needs algo.tis_cap" in msg
    for correction in (["algo.tis_cap=2.0"], ["algo.mis_low=0.5", "algo.mis_high=2.0"]):
        assert load_run_config("configs/ci_r1zero.yaml", stale + correction).disagg.max_staleness == 1


@pytest.mark.parametrize("name", ["..", ".", "a/../..", "..\\x", "a\0b", ""])
def test_run_name_stays_inside_output_dir(name):
    with pytest.raises(ConfigError, match=r"section 'run': key 'name' must be a non-empty name without '/'.*"
                                          r"<output_dir>/<name>"):
        from_dict(RunConfig, {"run": {"name": name}})
    assert from_dict(RunConfig, {"run": {"name": ".hidden-run_1"}}).run.name == ".hidden-run_1"


def test_run_name_dotdot_override_is_rejected_naming_the_key():
    assert "section 'run': key 'name'" in load_error(None, None, ["run.name=.."])


def test_non_utf8_config_names_the_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("run:\n  name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"{path}: not UTF-8 text \(byte 16"):
        load_run_config(path)


def test_a_zero_collective_timeout_fails_validation():
    with pytest.raises(ConfigError, match="section 'parallel': key 'timeout_minutes' must be >= 1"):
        load_run_config(None, ["parallel.timeout_minutes=0"])
