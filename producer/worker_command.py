"""`dify-runner worker`: a fleet worker, which is `celery worker` with dify-runner's defaults."""

from __future__ import annotations

import argparse
import os
import sys

from rich.console import Console

from ..config.settings import ENV_PREFIX, Settings
from .outcome import EXIT_OK

# Pools that patch the standard library (sockets, threads): that must happen before anything
# imports it, so these run as `celery` itself (which patches first), not inside this process.
PATCHING_POOLS = frozenset({"gevent", "eventlet"})


def cmd_worker(args: argparse.Namespace, console: Console, settings: Settings) -> int:
    argv = worker_argv(args.pool, args.concurrency, args.celery_args)
    broker = args.broker or settings.broker_url
    if args.pool in PATCHING_POOLS:
        env = {**os.environ, **({f"{ENV_PREFIX}BROKER_URL": broker} if broker else {})}
        os.execvpe(sys.executable, [sys.executable, "-m", "celery", "-A", "dify_runner.worker.app", *argv], env)
    from ..worker.app import create_app

    app = create_app(broker, settings)
    app.worker_main(argv)
    return EXIT_OK


def worker_argv(pool: str, concurrency: int, extra: list[str]) -> list[str]:
    """`celery worker` arguments: the pool, the concurrency, then ``extra`` as given, with
    defaults for what it leaves out: task events on (Flower sees the worker and its tasks),
    log level INFO, and a node name of its own (``worker-<pid>@<host>``: two workers on one
    host must not share ``celery@host``)."""
    argv = ["worker", "--pool", pool, "--concurrency", str(concurrency), *extra]
    given = {a.split("=", 1)[0] for a in extra}
    if not given & {"-n", "--hostname"}:
        argv += ["--hostname", f"worker-{os.getpid()}@%h"]
    if not given & {"-E", "--task-events"}:
        argv.append("--task-events")
    if not given & {"-l", "--loglevel"}:
        argv += ["--loglevel", "INFO"]
    return argv
