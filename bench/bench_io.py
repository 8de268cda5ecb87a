"""Benchmarks 2 and 3, I/O against the mock Dify server.

    python -m bench.bench_io latency      # 2: 5,000 cases at 1,000 ms, concurrency 100 vs N x L / C
    python -m bench.bench_io throughput   # 3: 10,000 cases at 50 ms, concurrency 100 vs bare Celery
                                          #    + httpx and the best single-process httpx runner

Workers: 2 processes x 50 threads (concurrency 100 in all), the threads pool, for
dify-runner and for bare Celery alike. dify-runner's workflow uses response_mode blocking,
like the baselines (``--streaming`` to measure SSE instead).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .harness import Measure, Stack, dify_runner_run, mock_dify, print_measures, print_verdicts
from .plans import write_plan

WORKERS, THREADS = 2, 50


def run_dify_runner(stack: Stack, base_url: str, cases: int, concurrency: int, mode: str, work: Path) -> Measure:
    plan = write_plan(work, f"io-{mode}", cases,
                      {"base_url": base_url, "api_key_env": "BENCH_DIFY_KEY", "response_mode": mode},
                      {"concurrency": concurrency, "batch_size": 100})
    env = {"BENCH_DIFY_KEY": "app-bench"}
    stack.start_workers("dify_runner.worker.app", WORKERS, THREADS, env=env)
    try:
        return stack.measure(f"dify-runner ({mode})", cases, dify_runner_run(plan, work / "runs"), env=env)
    finally:
        stack.stop_workers()


def latency(args: argparse.Namespace) -> None:
    cases, latency_ms, concurrency = args.cases or 5000, 1000, 100
    stack, work = Stack(), Path(tempfile.mkdtemp(prefix="bench-io-"))
    with mock_dify(latency_ms) as mock:
        try:
            ours = run_dify_runner(stack, mock.base_url, cases, concurrency, args.mode, work)
            stats = mock.stats()
        finally:
            stack.close()
    ideal = cases * latency_ms / 1000 / concurrency
    print_measures(f"I/O efficiency: {cases} cases at {latency_ms} ms, concurrency {concurrency} "
                   f"(ideal N x L / C = {ideal:.1f} s)", [ours])
    print(f"  mock: max in flight {stats['max_in_flight']}, runs {stats['runs']}")
    print_verdicts([("wall / ideal", ours.wall / ideal, "<= 1.15", ours.wall <= 1.15 * ideal)])


def throughput(args: argparse.Namespace) -> None:
    cases, latency_ms, concurrency = args.cases or 10_000, 50, 100
    stack, work = Stack(), Path(tempfile.mkdtemp(prefix="bench-io-"))
    measures: list[Measure] = []
    with mock_dify(latency_ms) as mock:
        url = mock.base_url + "/workflows/run"
        try:
            stack.start_workers("bench.bare_app", WORKERS, THREADS, env={"BENCH_POOL": str(THREADS)})
            bare = stack.measure("bare Celery + httpx", cases, [sys.executable, "-m", "bench.bare_producer", "--task",
                                                                "post", "--n", str(cases), "--url", url])
            stack.stop_workers()
            measures.append(bare)
            singles = [stack.measure(f"single process, {t} threads", cases,
                                     [sys.executable, "-m", "bench.single_process", "--url", url, "--n", str(cases),
                                      "--threads", str(t)]) for t in (16, 32, 64, 100)]
            measures += singles
            ours = run_dify_runner(stack, mock.base_url, cases, concurrency, args.mode, work)
            measures.append(ours)
        finally:
            stack.close()
    best = min(singles, key=lambda m: m.cpu_ms_per_case)
    print_measures(f"I/O throughput: {cases} cases at {latency_ms} ms, concurrency {concurrency}", measures)
    print_verdicts([
        ("throughput, dify-runner / bare Celery + httpx", ours.rate / bare.rate, ">= 1.5",
         ours.rate >= 1.5 * bare.rate),
        (f"CPU per case, dify-runner / {best.name}", ours.cpu_ms_per_case / best.cpu_ms_per_case, "<= 1.5",
         ours.cpu_ms_per_case <= 1.5 * best.cpu_ms_per_case),
        ("CPU per case, dify-runner / bare Celery + httpx", ours.cpu_ms_per_case / bare.cpu_ms_per_case, "(info)",
         True),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("which", choices=["latency", "throughput"])
    parser.add_argument("--cases", type=int, help="default: 5,000 (latency), 10,000 (throughput)")
    parser.add_argument("--streaming", dest="mode", action="store_const", const="streaming", default="blocking")
    args = parser.parse_args()
    latency(args) if args.which == "latency" else throughput(args)


if __name__ == "__main__":
    main()
