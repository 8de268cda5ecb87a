"""Benchmark 6, against promptfoo: the same cases against the same mock with the same
concurrency, through promptfoo's HTTP provider and through ``dify-runner run``.

    python -m bench.bench_promptfoo [--cases 1000] [--concurrency 20] [--latency-ms 100]

promptfoo (pinned below) is installed with npm into ~/.cache/dify-runner-bench on first
use. dify-runner runs on its embedded default (one command, one machine, like promptfoo):
CPU is the whole process tree of each (wait4), the mock's excluded.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from .harness import dify_runner_run, mock_dify, print_measures, print_verdicts, run_command

PROMPTFOO = "promptfoo@0.121.20"
CACHE = Path.home() / ".cache" / "dify-runner-bench"


def promptfoo_bin() -> Path | None:
    binary = CACHE / "node_modules" / ".bin" / "promptfoo"
    if not binary.exists():
        if shutil.which("npm") is None:
            return None
        CACHE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["npm", "install", "--prefix", str(CACHE), "--no-audit", "--no-fund", PROMPTFOO],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"npm could not install {PROMPTFOO}:\n{done.stderr[-2000:]}")
            return None
    return binary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--latency-ms", type=float, default=100)
    args = parser.parse_args()
    binary = promptfoo_bin()
    if binary is None:
        print("promptfoo is not available (no npm, or the npm registry refused): benchmark skipped")
        return
    work = Path(tempfile.mkdtemp(prefix="bench-promptfoo-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFY_RUNNER_")}
    env.update({"BENCH_DIFY_KEY": "app-bench", "PROMPTFOO_DISABLE_TELEMETRY": "1", "PROMPTFOO_DISABLE_UPDATE": "1",
                "PROMPTFOO_CACHE_ENABLED": "false", "PROMPTFOO_CONFIG_DIR": str(work / "promptfoo-home")})
    with (work / "cases.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "query"])
        writer.writerows([f"c{i}", f"question {i}"] for i in range(args.cases))
    with mock_dify(args.latency_ms) as mock:
        (work / "promptfooconfig.yaml").write_text(yaml.safe_dump({
            "description": "dify-runner benchmark",
            "prompts": ["{{query}}"],
            "providers": [{"id": "http", "config": {
                "url": mock.base_url + "/workflows/run", "method": "POST",
                "headers": {"Authorization": "Bearer app-bench", "Content-Type": "application/json"},
                "body": {"inputs": {"query": "{{query}}"}, "user": "bench", "response_mode": "blocking"},
                "transformResponse": "json.data.outputs.answer"}}],
            "tests": "file://cases.csv",
        }, sort_keys=False))
        theirs = run_command("promptfoo eval", args.cases,
                             [str(binary), "eval", "-c", "promptfooconfig.yaml", "--max-concurrency",
                              str(args.concurrency), "--no-cache", "--no-table", "--no-progress-bar", "-o",
                              str(work / "promptfoo.json")], env, work, work)
        mock_runs_promptfoo = mock.stats()["runs"]
        mock.reset()
        (work / "plan.yaml").write_text(yaml.safe_dump({
            "name": "bench",
            "workflows": [{"id": "wf", "base_url": mock.base_url, "api_key_env": "BENCH_DIFY_KEY",
                           "response_mode": "blocking"}],
            "datasets": [{"name": "ds", "file": "cases.csv", "id_column": "id"}],
            "execution": {"concurrency": args.concurrency, "batch_size": 100},
        }, sort_keys=False))
        ours = run_command("dify-runner run (embedded)", args.cases,
                           dify_runner_run(work / "plan.yaml", work / "runs"), env, work, work)
        mock_runs_ours = mock.stats()["runs"]
    print_measures(f"against promptfoo: {args.cases} cases at {args.latency_ms:g} ms, concurrency {args.concurrency} "
                   "(CPU: the whole process tree)", [theirs, ours])
    print(f"  mock runs seen: promptfoo {mock_runs_promptfoo}, dify-runner {mock_runs_ours}; exits "
          f"{theirs.extra['exit']} / {ours.extra['exit']}; ideal wall N x L / C = "
          f"{args.cases * args.latency_ms / 1000 / args.concurrency:.1f} s")
    try:
        stats = json.loads((work / "promptfoo.json").read_text())["results"]["stats"]
        print(f"  promptfoo: {stats['successes']} successes, {stats['failures']} failures, {stats['errors']} errors "
              f"in {stats['durationMs'] / 1000:.2f} s of evaluation")
    except (OSError, KeyError, ValueError):
        pass
    print_verdicts([
        ("wall, dify-runner / promptfoo", ours.wall / theirs.wall, "(info)", True),
        ("CPU, dify-runner / promptfoo", ours.cpu / theirs.cpu, "(info)", True),
    ])


if __name__ == "__main__":
    main()
