"""``results.jsonl``, written while the run goes: each chord batch's TestResults are
appended as soon as its callback has stored them.

The producer holds one batch at a time, so memory does not grow with the run. The same
pass folds each batch's summary into running figures (tokens, cost, latency
percentiles so far) for the live progress line.

Two processes may follow one run into the same directory (``wait`` beside the ``run`` that
is still attached): an exclusive lock (flock) on the run's directory makes one of them the
writer. The other only counts, and takes over (writing the file afresh) if the writer
goes away first, so no line is ever written twice.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..worker.statistics import BatchSummary, RunStatistics
from ..worker.store import RunInfo, RunStore

RESULTS_FILE = "results.jsonl"


class ResultStream:
    """Follows a run's finished batches into ``<out_dir>/results.jsonl``.

    The file is started afresh by its writer: a stream opened by ``wait``, ``report`` or
    ``resume`` in a new process writes the batches already done first, then the rest as
    they finish.
    """

    def __init__(self, store: RunStore, run_id: str, out_dir: Path) -> None:
        self.store = store
        self.run_id = run_id
        self.path = out_dir / RESULTS_FILE
        self.written: set[int] = set()
        self.counted: set[int] = set()
        self.so_far = BatchSummary()
        self._batches_seen = -1
        out_dir.mkdir(parents=True, exist_ok=True)
        # The directory itself is locked: no lock file is left beside the reports.
        self._lock: int | None = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
        self.owner = False
        self._try_to_own()

    def _try_to_own(self) -> bool:
        if self.owner or self._lock is None:
            return self.owner
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.owner = True
        self.written.clear()
        self.path.write_text("", encoding="utf-8")
        return True

    def catch_up(self, info: RunInfo) -> int:
        """Append every batch finished since the last call; returns how many were appended."""
        took_over = not self.owner and self._try_to_own()
        if info.batches_done == self._batches_seen and not info.finished and not took_over:
            return 0  # nothing new: no Redis round trip
        self._batches_seen = info.batches_done
        done = self.store.done_batches(self.run_id)
        for batch in sorted(done - self.counted):
            summary = self.store.batch_summary(self.run_id, batch)
            if summary is not None:
                self.so_far.merge(summary)
            self.counted.add(batch)
        if not self.owner:
            return 0
        new = sorted(done - self.written)
        if not new:
            return 0
        with self.path.open("a", encoding="utf-8") as out:
            for batch in new:
                for result in self.store.batch_test_results(self.run_id, batch):
                    out.write(result.model_dump_json() + "\n")
                self.written.add(batch)
        return len(new)

    def statistics(self) -> RunStatistics:
        """Figures of the batches finished so far."""
        return RunStatistics.from_summaries([self.so_far])

    def close(self) -> None:
        """Give up the writer's lock (the file stays)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
            self.owner = False
