"""The monitor on a constructed rollout batch: every metric against a value worked out by hand,
and the aha event / example files it writes."""
import json
import math

import pytest

from r1hpc.monitor.monitor import Monitor, MonitorConfig
from tests.monitor.batches import HIGH, LOW, RESPONSES, batch, tokenizer


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


def _marker_tokens(tok, monitor):
    samples, scores, _ = batch(tok)
    return {i: r.token_pos[0] for i, r in enumerate(monitor.read(s, sc) for s, sc in zip(samples, scores))
            if r.token_pos}


def test_marker_token_is_the_token_holding_the_marker(tok, tmp_path):
    monitor = Monitor(MonitorConfig(), tok, None, tmp_path, writer=True)
    samples, scores, _ = batch(tok)
    for s, sc in zip(samples, scores):
        r = monitor.read(s, sc)
        pieces = [tok.decode([i]) for i in s.response_ids]
        for h, p in zip(r.hits, r.token_pos):
            assert len("".join(pieces[:p])) <= h.start < len("".join(pieces[:p + 1]))


def test_step_metrics_match_hand_counts(tok, tmp_path):
    cfg = MonitorConfig(entropy_window=4, attention_every=0, examples_every=1)
    monitor = Monitor(cfg, tok, None, tmp_path, writer=True)
    marks = _marker_tokens(tok, monitor)
    assert sorted(marks) == [0, 1, 3]  # rows with "Wait", "Wait", "Let me verify"
    samples, scores, problems = batch(tok, marks)
    out = monitor.observe(1, samples, scores, problems, {"response_length/mean": 30.0})

    ents = [float(x) for s in samples for x in s.entropies]
    assert out["monitor/entropy_mean"] == pytest.approx(sum(ents) / len(ents))
    assert out["monitor/forking_frac"] == pytest.approx(sum(e > cfg.forking_entropy for e in ents) / len(ents))
    assert out["monitor/marker_rate"] == 0.75
    assert out["monitor/markers_per_response"] == 0.75
    assert out["monitor/marker_count/wait"] == 2 and out["monitor/marker_count/let me verify"] == 1
    assert out["monitor/accuracy_with_marker"] == pytest.approx(2 / 3)
    assert out["monitor/accuracy_without_marker"] == 1.0
    assert out["monitor/answer_changes"] == 2  # rows 0 (67 -> 68) and 1 (68 -> 69)
    assert out["monitor/aha_events"] == 1  # only row 0 ends correct
    assert out["monitor/entropy_before_marker"] == pytest.approx(LOW)
    assert out["monitor/entropy_after_marker"] == pytest.approx(HIGH)
    assert out["monitor/entropy_marker_delta"] == pytest.approx(HIGH - LOW)
    assert out["monitor/length_growth"] == 1.0
    assert out["monitor/entropy_q1"] == pytest.approx(LOW)  # markers sit past the first quarter
    assert out["timing/monitor_s"] > 0
    assert not any(v for k, v in out.items() if k.startswith("alarm/"))

    (event,) = [json.loads(x) for x in (tmp_path / "monitor" / "aha_events.jsonl").read_text().splitlines()]
    assert event["response"] == RESPONSES[0][0] and event["step"] == 1 and event["correct"]
    assert event["answer_changes"] == [{"marker": "wait", "char": RESPONSES[0][0].index("Wait"), "before": "67",
                                        "after": "68"}]
    assert event["markers"][0]["token"] == marks[0]
    assert event["entropies"][marks[0]] == pytest.approx(HIGH) and event["entropies"][0] == pytest.approx(LOW)
    assert event["prompt"].startswith("User: 23+45") and event["reference_answer"] == "68"
    examples = [json.loads(x) for x in (tmp_path / "monitor" / "examples.jsonl").read_text().splitlines()]
    assert len(examples) == 4 and all(e["markers"] for e in examples[:3]) and not examples[3]["markers"]


def test_no_markers_no_events(tok, tmp_path):
    monitor = Monitor(MonitorConfig(markers=["recheck"], attention_every=0), tok, None, tmp_path, writer=False)
    samples, scores, problems = batch(tok)
    out = monitor.observe(1, samples, scores, problems, {})
    assert out["monitor/marker_rate"] == 0 and out["monitor/aha_events"] == 0
    assert math.isnan(out["monitor/accuracy_with_marker"]) and math.isnan(out["monitor/entropy_marker_delta"])
    assert not (tmp_path / "monitor").exists()  # not the writer rank: nothing saved


@pytest.mark.multiproc
def test_metrics_are_summed_over_data_parallel_ranks(tok, tmp_path):
    from tests.monitor.workers import monitor_dp
    from tests.multiproc import run_workers

    cfg = MonitorConfig(entropy_window=4, attention_every=0)
    marks = _marker_tokens(tok, Monitor(cfg, tok, None, None, writer=False))
    whole = Monitor(cfg, tok, None, None, writer=False).observe(1, *batch(tok, marks), {})
    tok.save(tmp_path / "tok")
    for out in run_workers(monitor_dp, 2, str(tmp_path / "tok"), marks):
        for k, v in whole.items():
            if k != "timing/monitor_s":
                assert out[k] == pytest.approx(v, nan_ok=True), k


def test_token_of_a_cjk_marker_split_over_byte_tokens(tok):
    """This BPE never saw Chinese: each character is three byte tokens whose pieces do not decode
    alone, so positions come from decoding prefixes; the marker's token is the first holding its bytes."""
    from r1hpc.monitor.markers import DEFAULT_MARKERS, TokenTexts, find_markers, marker_pattern, token_index

    ids = tok.encode(" 41。等等，42")
    text = tok.decode(ids)
    texts = TokenTexts(tok)
    assert "".join(texts.pieces(ids)) != text
    (hit,) = find_markers(text, marker_pattern(DEFAULT_MARKERS), DEFAULT_MARKERS)
    p = token_index(texts.token_ends(ids, text), hit.start)
    assert tok.decode(ids[:p]) == text[:hit.start] and tok.decode(ids[p:]).startswith("等等")
    assert "\ufffd" in tok.decode([ids[p]])  # the marker's first token is a lone byte of "等"
