"""Publish N cases to the bare Celery app as one group and wait for every result.

    python -m bench.bare_producer --task noop --n 10000
"""

from __future__ import annotations

import argparse
import time

from celery import group

from .bare_app import noop, post


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=["noop", "post"], default="noop")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--url", default="")
    parser.add_argument("--key", default="app-bench")
    args = parser.parse_args()
    cases = [{"id": f"c{i}", "inputs": {"query": f"question {i}"}} for i in range(args.n)]
    signatures = [noop.s(case) if args.task == "noop" else post.s(case, args.url, args.key) for case in cases]
    start = time.monotonic()
    results = group(signatures).apply_async().get(timeout=3600, propagate=False)
    elapsed = time.monotonic() - start
    ok = sum(1 for r in results if isinstance(r, dict) and r.get("status") == "succeeded")
    print(f"bare {args.task}: {ok}/{args.n} succeeded in {elapsed:.2f} s")


if __name__ == "__main__":
    main()
