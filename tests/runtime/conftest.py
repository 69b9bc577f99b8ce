"""Real processes on 127.0.0.1 free ports, always stopped by PID (fixture finalizers)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from runtime.testing import fixed_policy, make_layout, write_linear_policy  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


def free_port() -> int:
    """A port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


class Procs:
    """Processes started by one test or fixture; :meth:`stop_all` ends them by PID."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], health_url: str | None, name: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONUNBUFFERED": "1"}
        p = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        p.log_file = log
        p.log_path = self.tmp / f"{name}.log"
        self.procs.append(p)
        if health_url:
            try:
                wait_http(health_url, proc=p)
            except Exception:
                log.flush()
                print(p.log_path.read_text()[-3000:])
                raise
        return p

    def emulator(self, role: str = "unified", *extra: str, port: int | None = None):
        port = port or free_port()
        p = self.start([PY, "-m", "runtime.emulator", "--role", role, "--port", str(port),
                        "--served-model-name", "m", *extra],
                       f"http://127.0.0.1:{port}/health", f"emu{port}")
        p.url = f"http://127.0.0.1:{port}"
        p.port = port
        return p

    def fake(self, mode: str):
        """A misbehaving backend (:mod:`tests.runtime.fake_backend`)."""
        port = free_port()
        p = self.start([PY, "-m", "tests.runtime.fake_backend", "--port", str(port),
                        "--mode", mode], f"http://127.0.0.1:{port}/health", f"fake{port}")
        p.url = f"http://127.0.0.1:{port}"
        p.port = port
        return p

    def router(self, backends: list[str], *extra: str):
        port = free_port()
        p = self.start([PY, "-m", "runtime.router", "--port", str(port), "--backends",
                        *backends, *extra], f"http://127.0.0.1:{port}/health", f"router{port}")
        p.url = f"http://127.0.0.1:{port}"
        p.port = port
        wait_all_scraped(p.url, len(backends))
        return p

    @staticmethod
    def kill(p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
            p.log_file.close()
        self.procs.clear()


@pytest.fixture
def procs(tmp_path):
    """Start processes in a test; all stopped (by PID) when it ends."""
    ps = Procs(tmp_path)
    yield ps
    ps.stop_all()


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory):
    """Processes shared by a module's tests; stopped when the module ends."""
    ps = Procs(tmp_path_factory.mktemp("procs"))
    yield ps
    ps.stop_all()


def post(url: str, body: dict, headers: dict | None = None, timeout_s: float = 30.0):
    """POST JSON; returns ``(status, parsed JSON body)`` (errors included)."""
    import json
    import urllib.error

    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        data = e.read()
        return e.code, json.loads(data) if data else None


def wait_all_scraped(router_url: str, num_backends: int, timeout_s: float = 5.0) -> None:
    """Wait (at most ``timeout_s``) until the router has scraped every backend as healthy.

    The router's /health is 200 once *some* backend is up; a request sent before its first
    scrape of the others sees them unhealthy and the policy's mask routes around them (a
    tandem decision became colocated on a loaded machine). Returns silently at the deadline:
    fault tests put dead backends behind the router on purpose.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(router_url + "/metrics", timeout=2.0) as r:
                text = r.read().decode()
        except OSError:
            text = ""
        up = sum(1 for line in text.splitlines()
                 if line.startswith("baton_router_backend_healthy{") and line.endswith(" 1.0"))
        if up >= num_backends:
            return
        time.sleep(0.02)


def stream(url: str, body: dict, headers: dict | None = None, timeout_s: float = 30.0):
    """POST with ``stream: true``; returns ``(status, [event payloads], [arrival seconds])``.

    Payloads are parsed JSON objects, or the string ``[DONE]``.
    """
    import json
    import urllib.error

    req = urllib.request.Request(url, data=json.dumps({**body, "stream": True}).encode(),
                                 method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    t0 = time.monotonic()
    events, times = [], []
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                events.append(data if data == "[DONE]" else json.loads(data))
                times.append(time.monotonic() - t0)
            return r.status, events, times
    except urllib.error.HTTPError as e:
        data = e.read()
        return e.code, [json.loads(data)] if data else [], []


def text_of(events: list) -> str:
    """Concatenated generated text of stream events (either flavour)."""
    out = []
    for e in events:
        if not isinstance(e, dict):
            continue
        for c in e.get("choices") or []:
            out.append(c.get("text") or (c.get("delta") or {}).get("content") or "")
    return "".join(out)
