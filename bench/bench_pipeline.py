"""Benchmark 1, pipeline overhead: N stub cases (no HTTP) through dify-runner in fleet
mode vs a bare Celery group of no-op tasks, same Redis, same worker settings.

    python -m bench.bench_pipeline [--cases 10000] [--workers 2] [--concurrency 8] [--batch-size 100]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .harness import Stack, dify_runner_run, print_measures, print_verdicts
from .plans import write_plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    stack = Stack()
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        stack.start_workers("bench.bare_app", args.workers, args.concurrency)
        bare = stack.measure("bare Celery group (no-op)", args.cases,
                             [sys.executable, "-m", "bench.bare_producer", "--task", "noop", "--n", str(args.cases)])
        stack.stop_workers()

        plan = write_plan(work, "pipeline", args.cases, {"base_url": "stub"},
                          {"concurrency": args.workers * args.concurrency, "batch_size": args.batch_size})
        stack.start_workers("dify_runner.worker.app", args.workers, args.concurrency)
        ours = stack.measure(f"dify-runner (stub, batch {args.batch_size})", args.cases,
                             dify_runner_run(plan, work / "runs"))
        stack.stop_workers()
    finally:
        stack.close()
    print_measures(f"pipeline overhead: {args.cases} cases, {args.workers} workers x {args.concurrency} threads",
                   [bare, ours])
    for m in (bare, ours):
        if m.extra["exit"] != 0:
            print(f"  warning: {m.name} exited {m.extra['exit']}")
    print_verdicts([
        ("throughput, dify-runner / bare Celery", ours.rate / bare.rate, ">= 1.0", ours.rate >= bare.rate),
        ("CPU per case, dify-runner / bare Celery", ours.cpu_ms_per_case / bare.cpu_ms_per_case, "<= 1.0",
         ours.cpu_ms_per_case <= bare.cpu_ms_per_case),
    ])


if __name__ == "__main__":
    main()
