"""Load a page in Debian's headless chromium and report what a user's browser would show, driven
over the DevTools protocol on a pipe (``--remote-debugging-pipe``: NUL-delimited JSON on fds 3/4,
no websocket library needed)."""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

IMAGES_JS = ("JSON.stringify(Array.from(document.images).map(i => ({id: i.id, complete: i.complete, "
             "width: i.naturalWidth, height: i.naturalHeight, src: i.src.slice(0, 22)})))")


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class _Pipe:
    def __init__(self, write_fd: int, read_fd: int, timeout_s: float) -> None:
        self.w, self.r, self.deadline = write_fd, read_fd, time.monotonic() + timeout_s
        self.buf, self.events, self.next_id = b"", [], 0

    def _read_message(self) -> dict:
        while b"\0" not in self.buf:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._read_message()
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str) -> dict:
        for m in self.events:
            if m.get("method") == method:
                return m
        while True:
            m = self._read_message()
            self.events.append(m)
            if m.get("method") == method:
                return m


def load_page(path: Path, timeout_s: float = 60.0) -> dict:
    """Open ``path``; return its images (id, complete, natural size), console errors, uncaught
    exceptions, and every request that was not for a ``data:`` or ``file:`` URL."""
    exe = chromium_path()
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def fds_3_and_4():
        a, b = os.dup(to_browser_r), os.dup(from_browser_w)
        os.dup2(a, 3)
        os.dup2(b, 4)

    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen([exe, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                                 f"--user-data-dir={profile}", "--no-first-run", "--disable-extensions",
                                 "--disable-dev-shm-usage", "about:blank"],
                                preexec_fn=fds_3_and_4, pass_fds=(3, 4), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        pipe = _Pipe(to_browser_w, from_browser_r, timeout_s)
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Runtime", "Log", "Page", "Network"):
                pipe.call(f"{domain}.enable", session=session)
            pipe.call("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=session)
            pipe.wait_event("Page.loadEventFired")
            images = json.loads(pipe.call("Runtime.evaluate", {"expression": IMAGES_JS, "returnByValue": True},
                                          session=session)["result"]["value"])
            title = pipe.call("Runtime.evaluate", {"expression": "document.title", "returnByValue": True},
                              session=session)["result"]["value"]
            try:
                pipe.call("Browser.close")
            except (RuntimeError, TimeoutError):
                pass
        finally:
            os.close(to_browser_w)
            os.close(from_browser_r)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    ev = pipe.events
    return {
        "title": title,
        "images": images,
        "console_errors": [m["params"] for m in ev if m.get("method") == "Runtime.consoleAPICalled"
                           and m["params"].get("type") in ("error", "assert")]
        + [m["params"]["entry"] for m in ev if m.get("method") == "Log.entryAdded"
           and m["params"]["entry"].get("level") == "error"],
        "exceptions": [m["params"] for m in ev if m.get("method") == "Runtime.exceptionThrown"],
        "requests": [m["params"]["request"]["url"] for m in ev if m.get("method") == "Network.requestWillBeSent"
                     and not m["params"]["request"]["url"].startswith(("data:", "file:"))],
    }
