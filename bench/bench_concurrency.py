"""Benchmark: a thousand slow calls at once (issue 17).

    python -m bench.bench_concurrency                       # C = 1,000, L = 5 s, 10,000 cases
    python -m bench.bench_concurrency --concurrency 100 --cases 2000
    python -m bench.bench_concurrency --pool gevent         # the same over gevent workers

N cases at latency L with a global ``concurrency: C`` over W ``celery worker`` processes of
C / W threads (or greenlets) each, against the mock Dify server (blocking mode, no jitter).
Prints wall / ideal (N x L / C), CPU per case (producer + workers + Redis; the mock left
out), the workers' peak threads, Redis's peak client connections, internal errors, and the
latency percentiles dify-runner measured next to the latency the mock served, with the time
cases waited for local resources (local_wait) beside them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
from pathlib import Path

from dify_runner.worker.statistics import percentile

from .harness import Measure, Stack, dify_runner_run, mock_dify, print_measures, print_verdicts
from .plans import write_plan


class PeakSampler:
    """Samples the workers' thread counts and Redis's connected clients twice a second."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.threads = self.clients = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            threads = 0
            for worker in self.stack.workers:
                try:
                    status = Path(f"/proc/{worker.pid}/status").read_text()
                except OSError:
                    continue
                threads += int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))
            self.threads = max(self.threads, threads)
            self.clients = max(self.clients, int(self.stack.client.info("clients")["connected_clients"]))

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=float, default=5000)
    parser.add_argument("--concurrency", type=int, default=1000, help="the plan's concurrency, over all workers")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pool", choices=["threads", "gevent"], default="threads")
    args = parser.parse_args()
    per_worker = -(-args.concurrency // args.workers)
    stack, work = Stack(), Path(tempfile.mkdtemp(prefix="bench-concurrency-"))
    name = f"dify-runner {args.workers}x{per_worker} {args.pool}"
    with mock_dify(args.latency_ms) as mock:
        try:
            plan = write_plan(work, "concurrency", args.cases,
                              {"base_url": mock.base_url, "api_key_env": "BENCH_DIFY_KEY",
                               "response_mode": "blocking"},
                              {"concurrency": args.concurrency, "batch_size": 100,
                               "stop_conditions": {"timeout_per_task": max(60, 6 * args.latency_ms / 1000)}})
            env = {"BENCH_DIFY_KEY": "app-bench"}
            stack.start_workers("dify_runner.worker.app", args.workers, per_worker, pool=args.pool, env=env)
            with PeakSampler(stack) as peaks:
                ours: Measure = stack.measure(name, args.cases, dify_runner_run(plan, work / "runs"), env=env)
            served = mock.stats()
        finally:
            stack.close()
    [report_file] = (work / "runs").glob("*/report.json")
    results = json.loads(report_file.read_text())["results"]
    latencies = sorted(r["execution_time"] for r in results if r["status"] == "success")
    waits = sorted(float(r["metadata"].get("local_wait") or 0.0) for r in results)

    def p(values: list[float], q: float) -> float:
        return percentile(values, q) or 0.0

    internal = sum("internal error" in (r["error_message"] or "") for r in results)
    statuses: dict[str, int] = {}
    for r in results:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    ideal = args.cases * args.latency_ms / 1000 / args.concurrency
    served_s = args.latency_ms / 1000
    print_measures(f"Concurrency: {args.cases} cases at {args.latency_ms:g} ms, concurrency {args.concurrency} "
                   f"over {args.workers} {args.pool} workers (ideal N x L / C = {ideal:.1f} s)", [ours])
    print(f"  results {len(results)} {statuses}; internal errors {internal}; exit {ours.extra['exit']}")
    print(f"  mock: served {served_s:.3f} s per run, max in flight {served['max_in_flight']}, runs {served['runs']}")
    print(f"  measured latency p50/p95/p99: {p(latencies, 50):.3f} / {p(latencies, 95):.3f} / "
          f"{p(latencies, 99):.3f} s; local_wait p50/p95/p99: {p(waits, 50):.3f} / {p(waits, 95):.3f} / "
          f"{p(waits, 99):.3f} s")
    print(f"  peaks: worker threads {peaks.threads}, Redis clients {peaks.clients}")
    p95 = p(latencies, 95)
    print_verdicts([
        ("wall / ideal", ours.wall / ideal, "<= 1.15", ours.wall <= 1.15 * ideal),
        ("internal errors", float(internal), "0", internal == 0),
        ("measured p95 / served latency", p95 / served_s, "<= 1.10", p95 <= 1.1 * served_s),
        ("CPU ms per case (info)", ours.cpu_ms_per_case, "(info)", True),
    ])


if __name__ == "__main__":
    main()
