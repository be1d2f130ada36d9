"""Attack suite: each attack is contained, reported with the right status, leaves nothing running
and touches nothing outside the run's own temp dir."""
import os
import random
import socket

import pytest

from r1hpc.rewards.sandbox import SandboxConfig, run_python

from .conftest import needs_bwrap

pytestmark = needs_bwrap


def _marker() -> str:
    """A unique sleep duration: it shows up in the cmdline of anything the attack leaves running."""
    return f"987.{random.randrange(10**6, 10**7)}"


def _alive(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(pid))
            except OSError:
                pass
    return found


def test_plain_run_stdin_and_exit_code():
    r = run_python("import sys\nprint(input()[::-1])\nsys.exit(3)", stdin="abc\n")
    assert (r.status, r.exit_code, r.stdout) == ("error", 3, "cba\n")
    assert run_python("print(1)").status == "ok"
    assert run_python("input()").status == "error"  # stdin is only the given text: EOF, not the terminal


def test_signals_are_reported_as_negative_exit_codes():
    r = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGABRT)")
    assert (r.status, r.exit_code) == ("error", -6)


def test_cpu_limit_is_a_timeout():
    r = run_python("import resource, time\nresource.setrlimit(resource.RLIMIT_CPU, (1, 2))\nwhile True: pass", timeout_s=10)
    assert (r.status, r.exit_code) == ("timeout", -24)  # SIGXCPU, before the 10 s wall clock


def test_infinite_loop_times_out():
    r = run_python("while True: pass", timeout_s=1.0)
    assert r.status == "timeout" and r.wall_s < 3


def test_closing_its_pipes_does_not_end_the_run_early():
    r = run_python("import os, time\nos.close(1)\nos.close(2)\ntime.sleep(0.5)\nwhile True: pass", timeout_s=1.5)
    assert r.status == "timeout" and r.wall_s >= 1.4


def test_sigterm_ignored_still_killed():
    marker = _marker()
    code = f"import signal, subprocess\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nsubprocess.run(['sleep', '{marker}'])"
    r = run_python(code, timeout_s=1.0)
    assert r.status == "timeout" and _alive(marker) == []


def test_fork_bomb_is_bounded_and_reaped():
    marker = _marker()
    code = (
        "import os\nn = 0\nfor _ in range(300):\n"
        "    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
        f"    if pid == 0:\n        os.execv('/bin/sleep', ['sleep', '{marker}'])\n"
        "    n += 1\nprint(n, flush=True)\n"
    )
    r = run_python(code, timeout_s=5.0, config=SandboxConfig(max_processes=32))
    assert r.status == "ok" and int(r.stdout) < 32
    assert _alive(marker) == []


def test_memory_bomb():
    assert run_python("x = bytearray(8 * 1024**3)", memory_mb=256).status == "memory"
    r = run_python("x = []\nfor _ in range(1500): x.append(' ' * 10**6)", memory_mb=256, timeout_s=10)
    assert r.status == "memory"


def test_gigabyte_of_output_is_cut():
    r = run_python("import sys\nwhile True: sys.stdout.write('x' * 10**6)", timeout_s=10,
                   config=SandboxConfig(max_output_bytes=100_000))
    assert r.status == "output_limit" and len(r.stdout) == 100_000


def test_files_outside_the_work_dir_survive(tmp_path):
    canary = tmp_path / "canary.txt"
    canary.write_text("alive")
    code = (
        "import os, shutil\n"
        f"for act in (lambda: os.remove({str(canary)!r}), lambda: open({str(canary)!r}, 'w').write('x'),\n"
        f"            lambda: shutil.rmtree({str(tmp_path)!r}), lambda: open('/etc/r1hpc-pwned', 'w'),\n"
        f"            lambda: open({os.getcwd() + '/pwned.txt'!r}, 'w')):\n"
        "    try:\n        act()\n        print('DID', flush=True)\n    except OSError as e:\n        print('blocked', type(e).__name__)\n"
        "open('inside.txt', 'w').write('fine')\nprint(open('inside.txt').read())\n"
    )
    r = run_python(code)
    assert "DID" not in r.stdout and r.stdout.endswith("fine\n"), r
    assert canary.read_text() == "alive"
    assert not os.path.exists("/etc/r1hpc-pwned") and not os.path.exists("pwned.txt")


def test_parent_environment_secret_is_not_visible(monkeypatch):
    secret = f"s3cret-{random.randrange(10**9)}"
    monkeypatch.setenv("R1HPC_TEST_SECRET", secret)
    code = (
        "import os, glob\nprint(os.environ.get('R1HPC_TEST_SECRET'))\n"
        "for p in glob.glob('/proc/*/environ'):\n"
        "    try:\n        print(open(p, 'rb').read())\n    except OSError:\n        pass\n"
    )
    r = run_python(code)
    assert r.status == "ok" and secret not in r.stdout and secret not in r.stderr


def test_no_network_even_to_a_loopback_listener():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.5)
        port = server.getsockname()[1]
        r = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('CONNECTED')")
        assert r.status == "error" and "CONNECTED" not in r.stdout
        with pytest.raises(socket.timeout):
            server.accept()


def test_double_forked_daemon_does_not_outlive_the_run():
    marker = _marker()
    code = (
        "import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        f"        os.execv('/bin/sleep', ['sleep', '{marker}'])\n    os._exit(0)\nprint('parent done')\n"
    )
    r = run_python(code, timeout_s=5)
    assert r.status == "ok" and r.stdout == "parent done\n"
    assert _alive(marker) == []


@pytest.fixture
def scratch(monkeypatch):
    """The temp dir ``run_python`` uses, reachable by the throwaway uid (pytest's tmp_path is 0700 root)."""
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="r1hpc-sbx-test-")
    os.chmod(d, 0o755)
    monkeypatch.setattr("tempfile.tempdir", d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("isolation", ["bwrap", "none"])
def test_work_dir_is_removed(scratch, isolation):
    r = run_python("open('big.txt', 'w').write('x' * 1000)\nprint(open('big.txt').read(3))",
                   config=SandboxConfig(isolation=isolation))
    assert r.status == "ok" and r.stdout == "xxx\n"
    assert os.listdir(scratch) == []


def test_only_the_system_python_and_its_stdlib_are_visible():
    import sys

    import r1hpc

    checkout = os.path.dirname(os.path.dirname(os.path.abspath(r1hpc.__file__)))
    hidden = [checkout, sys.prefix, os.path.expanduser("~"), "/work", "/usr/local", "/run", "/var", "/etc",
              "/usr/lib/python3/dist-packages"]
    code = f"import os, json\nprint([p for p in {hidden!r} if os.path.exists(p) and os.listdir(p)])\nimport json, sqlite3"
    r = run_python(code)
    assert (r.status, r.stdout) == ("ok", "[]\n"), r


def test_unix_sockets_at_file_paths_are_unreachable():
    import tempfile

    with tempfile.TemporaryDirectory(dir="/var/tmp") as d, socket.socket(socket.AF_UNIX) as server:
        path = os.path.join(d, "s.sock")
        server.bind(path)
        server.listen(1)
        server.settimeout(0.5)
        r = run_python(f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({path!r})\nprint('CONNECTED')")
        assert r.status == "error" and "CONNECTED" not in r.stdout
        with pytest.raises(socket.timeout):
            server.accept()


_DEEP = "import os\nfor _ in range(1500):\n    os.mkdir('d')\n    os.chdir('d')\nprint('deep')\n"


@pytest.mark.parametrize("isolation", ["bwrap", "none"])
def test_deep_nesting_is_cleaned_up_without_raising(scratch, isolation):
    r = run_python(_DEEP, config=SandboxConfig(isolation=isolation))
    assert (r.status, r.stdout) == ("ok", "deep\n")
    assert os.listdir(scratch) == []


def test_work_dir_is_a_size_capped_tmpfs():
    r = run_python("open('big', 'wb').write(b'x' * (80 * 1024 * 1024))", config=SandboxConfig(tmpfs_mb=16, max_file_mb=512))
    assert r.status == "error" and "No space left on device" in r.stderr, r
