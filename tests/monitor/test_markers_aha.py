"""Marker detection and aha-event detection on constructed responses with known answers."""
import pytest

from r1hpc.monitor.aha import answer_changes
from r1hpc.monitor.markers import DEFAULT_MARKERS, find_markers, marker_pattern

MARKERS = list(DEFAULT_MARKERS)
PATTERN = marker_pattern(MARKERS)


def hits(text, markers=MARKERS):
    return find_markers(text, marker_pattern(markers), markers)


def test_issue_markers_are_in_the_default_list():
    for m in ("wait", "recheck", "re-evaluate", "double-check", "let me verify", "等等", "检查"):
        assert m in MARKERS


@pytest.mark.parametrize("text,expected", [
    ("So 68. Wait, 2+4=6.", [("wait", 7)]),
    ("WAIT. wait", [("wait", 0), ("wait", 6)]),
    ("Let me  verify: 8", [("let me verify", 0)]),  # longest marker wins over a shorter one inside it
    ("I should double-check this", [("double-check", 9)]),
    ("we re-evaluate and recheck", [("re-evaluate", 3), ("recheck", 19)]),
    ("结果是41。等等，我再检查一下", [("等等", 6), ("检查", 11)]),  # CJK: no word boundaries needed
])
def test_markers_found_with_positions(text, expected):
    assert [(h.marker, h.start) for h in hits(text)] == expected
    for h in hits(text):
        assert text[h.start:h.end].lower().split() == h.marker.split() or h.marker == text[h.start:h.end]


@pytest.mark.parametrize("text", ["await the result", "waiting is over", "checked twice", "unverifiable",
                                  "rewait-less", "2+3=5 <answer>5</answer>", ""])
def test_no_marker_inside_other_words_or_plain_answers(text):
    assert hits(text) == []


def test_marker_list_is_configurable():
    assert [h.marker for h in hits("hold on, wait", ["hold on"])] == ["hold on"]
    with pytest.raises(ValueError):
        marker_pattern([])


# -------------------------------------------------------------------------------- aha events
@pytest.mark.parametrize("text,before,after", [
    ("<think>23+45: 3+5=8, 2+4=6, so 67. Wait, 2+4=6 and 3+5=8 gives 68.</think> <answer>68</answer>", "67", "68"),
    ("<think>12+30=41。等等，重新算：12+30=42</think><answer>42</answer>", "41", "42"),
    ("The answer is \\boxed{7}. Let me verify: 3+5=8, so \\boxed{8}", "7", "8"),
    ("<think>x = 3</think><answer>3</answer> Hmm, x is 4. <answer>4</answer>", "3", "4"),
])
def test_changed_answer_after_a_marker(text, before, after):
    changes = answer_changes(text, find_markers(text, PATTERN, MARKERS))
    assert [(c.before, c.after) for c in changes] == [(before, after)]


@pytest.mark.parametrize("text", [
    "<think>23+45 = 68. Wait, let me recheck: 3+5=8, 2+4=6, 68.</think><answer>68</answer>",  # kept its answer
    "<think>23+45 = 67, 2+4=6</think><answer>68</answer>",  # changed, but no marker
    "<think>23+45 = 67</think><answer>68</answer> wait",  # marker only after the final answer
    "<think>Wait, let me think.</think><answer>68</answer>",  # nothing committed before the marker
    "<think>so 67. Wait, it is 68</think>",  # no final answer stated
    "<think>so 1,068. Wait, yes.</think><answer> 1068 </answer>",  # same answer, other formatting
])
def test_no_answer_change(text):
    assert answer_changes(text, find_markers(text, PATTERN, MARKERS)) == []
