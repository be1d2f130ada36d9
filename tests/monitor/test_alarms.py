"""Training-health alarms fire on constructed metric histories, and only then; each is announced
once when it starts and once when it clears."""
from r1hpc.monitor.alarms import AlarmConfig, HealthAlarms


def run(history, **cfg):
    alarms = HealthAlarms(AlarmConfig(**cfg))
    flags, messages = [], []
    for step, m in enumerate(history, 1):
        out, msgs = alarms.update(step, m)
        flags.append(out)
        messages += msgs
    return flags, messages


def test_entropy_collapse_starts_once_and_clears():
    ent = [1.0, 1.0, 1.0, 0.5, 0.1, 0.1, 0.1, 0.9]
    flags, messages = run([{"monitor/entropy_mean": e} for e in ent], baseline_steps=3, entropy_collapse_frac=0.2)
    assert [f["alarm/entropy_collapse"] for f in flags] == [0, 0, 0, 0, 1, 1, 1, 0]
    assert len(messages) == 2
    assert messages[0].startswith("[alarm] step 5: entropy collapse: monitor/entropy_mean 0.1 < 0.2 x baseline 1")
    assert messages[1] == "[alarm] step 8: entropy collapse cleared"


def test_length_collapse_and_runaway():
    lengths = [{"response_length/mean": v, "response_length/clip_ratio": c}
               for v, c in [(40, 0), (40, 0), (40, 0.1), (30, 0.2), (10, 0), (64, 0.8)]]
    flags, messages = run(lengths, baseline_steps=3, length_collapse_frac=0.3, length_runaway_clip=0.5)
    assert [f["alarm/length_collapse"] for f in flags] == [0, 0, 0, 0, 1, 0]
    assert [f["alarm/length_runaway"] for f in flags] == [0, 0, 0, 0, 0, 1]
    assert any("length runaway: 80% of responses hit max_new_tokens" in m for m in messages)


def test_reward_hacking_needs_format_up_and_accuracy_flat():
    hacked = [{"reward/format": f, "reward/accuracy": 0.3} for f in (0.1, 0.1, 0.6, 0.6)]
    flags, messages = run(hacked, window=4, hack_format_rise=0.1, hack_accuracy_rise=0.01)
    assert [f["alarm/reward_hacking"] for f in flags] == [0, 0, 0, 1]
    assert "format reward rose +0.500" in messages[0]
    honest = [{"reward/format": f, "reward/accuracy": a} for f, a in ((0.1, 0.2), (0.1, 0.2), (0.6, 0.5), (0.6, 0.5))]
    flags, messages = run(honest, window=4)
    assert not any(f["alarm/reward_hacking"] for f in flags) and not messages


def test_clip_fraction_out_of_range():
    steps = [{"actor/pg_clipfrac_low": lo, "actor/pg_clipfrac_high": hi, "actor/updates": 1.0}
             for lo, hi in ((0.01, 0.02), (0.3, 0.2), (0.0, 0.0))]
    steps.append({"actor/pg_clipfrac_low": 0.9, "actor/pg_clipfrac_high": 0.0, "actor/updates": 0.0})  # no update
    flags, _ = run(steps, clip_frac_min=0.001, clip_frac_max=0.3)
    assert [f["alarm/clip_fraction"] for f in flags] == [0, 1, 1, 0]


def test_quiet_run_raises_nothing():
    steady = [{"monitor/entropy_mean": 0.8, "response_length/mean": 40.0, "response_length/clip_ratio": 0.0,
               "reward/format": 0.9, "reward/accuracy": 0.5 + 0.01 * i, "actor/pg_clipfrac_low": 0.01,
               "actor/pg_clipfrac_high": 0.01, "actor/updates": 1.0} for i in range(20)]
    flags, messages = run(steady)
    assert messages == [] and not any(v for f in flags for v in f.values())
