"""The best a single process can do with httpx: a thread pool over one pooled
httpx.Client, one blocking POST per case. Run as a subprocess so its CPU is measured
like every other producer.

    python -m bench.single_process --url URL --n 10000 --threads 32
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import httpx


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--key", default="app-bench")
    args = parser.parse_args()
    limits = httpx.Limits(max_connections=args.threads, max_keepalive_connections=args.threads)
    with httpx.Client(limits=limits, timeout=30, headers={"Authorization": f"Bearer {args.key}"}) as client:

        def one(i: int) -> bool:
            body = {"inputs": {"query": f"question {i}"}, "user": "bench", "response_mode": "blocking"}
            return client.post(args.url, json=body).json()["data"]["status"] == "succeeded"

        start = time.monotonic()
        with ThreadPoolExecutor(args.threads) as pool:
            ok = sum(pool.map(one, range(args.n)))
    print(f"single process, {args.threads} threads: {ok}/{args.n} succeeded in {time.monotonic() - start:.2f} s")


if __name__ == "__main__":
    main()
