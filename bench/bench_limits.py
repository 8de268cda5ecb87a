"""Benchmark 4, global limits over 3 worker processes, witnessed by the mock's stats.

    python -m bench.bench_limits [--rate 50] [--seconds 30] [--cap 20]

Rate: rate_control.requests_per_second over ``seconds`` (cases = rate x seconds, mock
latency 20 ms, concurrency 100); requests started per wall-clock second, from the mock.
Concurrency: cap 20 with 3 x 16 worker threads against a 500 ms mock; max in flight.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .harness import Stack, dify_runner_run, mock_dify, print_verdicts
from .plans import write_plan

WORKERS, THREADS = 3, 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--cap", type=int, default=20)
    args = parser.parse_args()
    stack, work = Stack(), Path(tempfile.mkdtemp(prefix="bench-limits-"))
    env = {"BENCH_DIFY_KEY": "app-bench"}
    try:
        with mock_dify(20) as mock:
            cases = int(args.rate * args.seconds)
            plan = write_plan(work, "rate", cases,
                              {"base_url": mock.base_url, "api_key_env": "BENCH_DIFY_KEY", "response_mode": "blocking"},
                              {"concurrency": 100, "batch_size": 100,
                               "rate_control": {"requests_per_second": args.rate}})
            stack.start_workers("dify_runner.worker.app", WORKERS, THREADS, env=env)
            rate_run = stack.measure("rate", cases, dify_runner_run(plan, work / "runs"), env=env)
            stack.stop_workers()
            per_second = list(mock.stats()["requests_per_second"].values())
        with mock_dify(500) as mock:
            cases = args.cap * 20
            plan = write_plan(work, "cap", cases,
                              {"base_url": mock.base_url, "api_key_env": "BENCH_DIFY_KEY", "response_mode": "blocking"},
                              {"concurrency": args.cap, "batch_size": 100})
            stack.start_workers("dify_runner.worker.app", WORKERS, THREADS, env=env)
            cap_run = stack.measure("cap", cases, dify_runner_run(plan, work / "runs"), env=env)
            stack.stop_workers()
            max_in_flight = mock.stats()["max_in_flight"]
    finally:
        stack.close()
    # The first and last seconds are partial: the windows between them are the steady rate.
    steady = per_second[1:-1] or per_second
    mean = sum(steady) / len(steady)
    print(f"\nglobal limits over {WORKERS} workers x {THREADS} threads")
    print(f"  rate limit {args.rate:g}/s, {rate_run.cases} cases in {rate_run.wall:.1f} s: requests per 1-s window "
          f"{per_second}")
    print(f"  steady windows: max {max(steady)}, mean {mean:.1f}")
    print(f"  concurrency cap {args.cap}: max in flight {max_in_flight} ({cap_run.cases} cases at 500 ms, "
          f"{cap_run.wall:.1f} s; ideal {cap_run.cases * 0.5 / args.cap:.1f} s)")
    print_verdicts([
        ("mean rate / limit", mean / args.rate, "0.95-1.0", 0.95 <= mean / args.rate <= 1.0 + 1e-9),
        ("max 1-s window / limit", max(steady) / args.rate, "<= 1.0+1/rate",
         max(steady) <= args.rate + 1),
        ("max in flight / cap", max_in_flight / args.cap, "<= 1.0", max_in_flight <= args.cap),
    ])


if __name__ == "__main__":
    main()
