"""The mock Dify server as a separate process on a free port (for the demo and tests)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import httpx

from ..producer.embedded import free_port, start_helper, stop_processes


class MockDifyProcess:
    """``python -m dify_runner mock-dify`` on a free loopback port."""

    def __init__(self, *options: str, log_path: Path | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._log: IO[bytes] | None = open(log_path, "wb") if log_path is not None else None
        self.proc = start_helper(
            [sys.executable, "-m", "dify_runner", "mock-dify", "--port", str(self.port), *options],
            stdout=self._log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                break
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/_mock/stats", timeout=0.5)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("the mock Dify server did not start")

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"http://127.0.0.1:{self.port}/_mock/stats", timeout=5).json()

    def reset(self) -> None:
        httpx.post(f"http://127.0.0.1:{self.port}/_mock/reset", timeout=5)

    def stop(self) -> None:
        stop_processes([self.proc], timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> MockDifyProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
