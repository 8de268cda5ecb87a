"""Benchmark 5, scale: one run of 100,000 stub cases on 2 workers.

    python -m bench.bench_scale [--cases 100000] [--batch-size 100]

Reports peak RSS of the producer (wait4) and of each worker (VmHWM), Redis used_memory
(sampled every second) and used_memory_peak, the longest queue, the largest message seen
at the head of the queue, and the largest value left in Redis once the run is done.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
from pathlib import Path

from .harness import Stack, dify_runner_run, print_measures, print_verdicts
from .plans import write_plan

QUEUE = "dify-runner"
MB = 1024 * 1024


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    stack, work = Stack(), Path(tempfile.mkdtemp(prefix="bench-scale-"))
    samples: list[tuple[int, int, int]] = []  # used_memory, queue length, head message size
    done = threading.Event()

    def sample() -> None:
        while not done.wait(1.0):
            head = stack.client.lindex(QUEUE, -1) or b""
            samples.append((int(stack.client.info("memory")["used_memory"]), stack.client.llen(QUEUE), len(head)))

    try:
        plan = write_plan(work, "scale", args.cases, {"base_url": "stub"},
                          {"concurrency": 16, "batch_size": args.batch_size})
        stack.start_workers("dify_runner.worker.app", 2, 8)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        run = stack.measure("dify-runner (stub)", args.cases, dify_runner_run(plan, work / "runs"))
        done.set()
        sampler.join()
        worker_rss = [peak_rss(p.pid) for p in stack.workers]
        memory = stack.client.info("memory")
        largest_key, largest_value = "", 0
        for key in stack.client.scan_iter(count=1000):
            size = stack.client.memory_usage(key) or 0
            if size > largest_value:
                largest_key, largest_value = key.decode(), size
        producer_rss = run.extra.get("maxrss", 0)
    finally:
        stack.close()
    print_measures(f"scale: {args.cases} stub cases, batch {args.batch_size}, 2 workers x 8 threads", [run])
    used = [s[0] for s in samples] or [0]
    print(f"  exit {run.extra['exit']}; producer peak RSS {producer_rss / MB:.0f} MB; workers "
          + ", ".join(f"{r / MB:.0f} MB" for r in worker_rss))
    print(f"  Redis used_memory: max sampled {max(used) / MB:.0f} MB, peak {memory['used_memory_peak'] / MB:.0f} MB, "
          f"at the end {memory['used_memory'] / MB:.0f} MB; longest queue {max((s[1] for s in samples), default=0)}")
    print(f"  largest message seen {max((s[2] for s in samples), default=0) / 1024:.1f} KB; largest value left "
          f"{largest_value / 1024:.1f} KB ({largest_key})")
    rss = max([producer_rss, *worker_rss])
    print_verdicts([
        ("largest process RSS / 300 MB", rss / (300 * MB), "<= 1.0", rss <= 300 * MB),
        ("largest message / 1 MB", max((s[2] for s in samples), default=0) / MB, "<= 1.0",
         max((s[2] for s in samples), default=0) <= MB),
        ("largest Redis value / 1 MB", largest_value / MB, "<= 1.0", largest_value <= MB),
    ])


if __name__ == "__main__":
    main()
