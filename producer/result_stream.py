"""``results.jsonl``, written while the run goes: each chord batch's TestResults are
appended as soon as its callback has stored them.

The producer holds one batch at a time, so memory does not grow with the run. The same
pass folds each batch's summary into running figures (tokens, cost, latency
percentiles so far) for the live progress line.
"""

from __future__ import annotations

from pathlib import Path

from ..worker.statistics import BatchSummary, RunStatistics
from ..worker.store import RunInfo, RunStore

RESULTS_FILE = "results.jsonl"


class ResultStream:
    """Follows a run's finished batches into ``<out_dir>/results.jsonl``.

    The file is started afresh: a stream opened by ``wait``, ``report`` or ``resume`` in a
    new process writes the batches already done first, then the rest as they finish.
    """

    def __init__(self, store: RunStore, run_id: str, out_dir: Path) -> None:
        self.store = store
        self.run_id = run_id
        self.path = out_dir / RESULTS_FILE
        self.written: set[int] = set()
        self.so_far = BatchSummary()
        self._batches_seen = -1
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path.write_text("", encoding="utf-8")

    def catch_up(self, info: RunInfo) -> int:
        """Append every batch finished since the last call; returns how many were appended."""
        if info.batches_done == self._batches_seen and not info.finished:
            return 0  # nothing new: no Redis round trip
        self._batches_seen = info.batches_done
        new = sorted(self.store.done_batches(self.run_id) - self.written)
        if not new:
            return 0
        with self.path.open("a", encoding="utf-8") as out:
            for batch in new:
                for result in self.store.batch_test_results(self.run_id, batch):
                    out.write(result.model_dump_json() + "\n")
                summary = self.store.batch_summary(self.run_id, batch)
                if summary is not None:
                    self.so_far.merge(summary)
                self.written.add(batch)
        return len(new)

    def statistics(self) -> RunStatistics:
        """Figures of the batches finished so far."""
        return RunStatistics.from_summaries([self.so_far])
