"""Cases against servers that accept the connection and then never finish answering.

Real sockets on loopback: one server never answers, one sends its headers and then
trickles a byte now and then forever. Both must end TIMEOUT within timeout_per_task
plus a small grace, on the threads pool, which ignores Celery's time limits.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from dify_runner.producer.embedded import InProcessWorker
from dify_runner.worker.models import TaskStatus
from dify_runner.worker.store import RunStore

from .conftest import manifest_for, run_manifest, stub_plan

TIMEOUT = 1.0
GRACE = 1.0


class StallingServer:
    """A TCP server that reads the request and then stalls (``trickle``: drips bytes)."""

    def __init__(self, trickle: bool) -> None:
        self.trickle = trickle
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            if self.trickle:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
                while not self.stopped.is_set():
                    time.sleep(0.2)
                    conn.sendall(b" ")
            else:
                self.stopped.wait()
        except OSError:
            pass

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture(params=["silent", "trickle"])
def stalling_server(request: pytest.FixtureRequest) -> Iterator[StallingServer]:
    server = StallingServer(trickle=request.param == "trickle")
    yield server
    server.close()


@pytest.mark.parametrize("mode", ["blocking", "streaming"])
def test_a_stalled_answer_ends_timeout_in_time(
    tmp_path: Path, app: Celery, store: RunStore, worker: InProcessWorker,
    stalling_server: StallingServer, mode: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STALL_DIFY_KEY", "app-test")
    plan = stub_plan([{"id": "stalled", "inputs": {"q": "x"}}],
                     execution={"retry_policy": {"max_attempts": 1},
                                "stop_conditions": {"timeout_per_task": TIMEOUT}})
    plan["workflows"] = [{"id": "wf", "base_url": f"http://127.0.0.1:{stalling_server.port}/v1",
                          "api_key_env": "STALL_DIFY_KEY", "response_mode": mode}]
    manifest = manifest_for(tmp_path, plan)
    info = run_manifest(app, store, manifest, timeout=30)
    result = next(store.iter_task_results(manifest.run_id, info.batch_count))
    assert result.task_status is TaskStatus.TIMEOUT, result.error_message
    assert TIMEOUT <= result.execution_time < TIMEOUT + GRACE
    assert "timeout_per_task" in (result.error_message or "")
    # The worker is still healthy: the next run goes through.
    after = manifest_for(tmp_path, stub_plan([{"id": "next"}]))
    assert run_manifest(app, store, after).statistics.succeeded_tasks == 1  # type: ignore[union-attr]
