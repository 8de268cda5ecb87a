"""What the mock saw: the witness that tests and benchmarks check the fleet against."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from typing import Any


class MockStats:
    """Counters kept by the (single-threaded, asyncio) mock server."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.started = time.time()
        self.requests = 0
        self.runs = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.per_second: Counter[int] = Counter()
        self.statuses: Counter[int] = Counter()
        self.paths: Counter[str] = Counter()
        self.keys: Counter[str] = Counter()
        self.stops = 0  # stop requests
        self.stopped_runs = 0  # runs a stop request ended
        self.refused: Counter[str] = Counter()  # runs refused by a limit, by error code
        # Runs accepted per value of the input `query`: how often each case called Dify.
        self.queries: Counter[str] = Counter()

    def begin(self, path: str, api_key: str | None) -> None:
        self.requests += 1
        self.paths[path] += 1
        self.per_second[int(time.time())] += 1
        if api_key:
            # Keys are counted by a short hash: the stats never show a key itself.
            self.keys[hashlib.sha256(api_key.encode()).hexdigest()[:12]] += 1

    def enter_run(self) -> None:
        self.runs += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave_run(self) -> None:
        self.in_flight -= 1

    def as_dict(self) -> dict[str, Any]:
        seconds = sorted(self.per_second)
        return {
            "requests": self.requests,
            "runs": self.runs,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "stops": self.stops,
            "stopped_runs": self.stopped_runs,
            "refused": dict(self.refused),
            "queries": dict(self.queries),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "paths": dict(self.paths),
            "keys": dict(self.keys),
            # Requests started in each wall-clock second (unix time -> count).
            "requests_per_second": {str(s): self.per_second[s] for s in seconds},
            "uptime": round(time.time() - self.started, 3),
        }
