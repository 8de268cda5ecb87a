"""What every benchmark shares: a private redis-server, worker processes, the mock Dify
server, CPU accounting, and the table of figures and ratios printed last.

CPU is counted per process from /proc (user + system, children included) between the
moment a variant starts and the moment its last case has ended: the producer (a
subprocess, measured with wait4), every worker, and Redis (INFO cpu). The mock Dify
server's CPU is left out: it is the same work for every variant.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from dify_runner.producer.embedded import EmbeddedRedis, stop_processes

from dify_runner.mockdify.process import MockDifyProcess

REPO = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import celery
    import httpx

    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    redis_version = next((v.split("=")[1] for v in version if v.startswith("v=")), "?")
    return (f"{os.cpu_count()} x {model}, {platform.system()} {platform.release()}, Python "
            f"{platform.python_version()}, Celery {celery.__version__}, httpx {httpx.__version__}, "
            f"Redis {redis_version}, {time.strftime('%Y-%m-%d')}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process and its waited-for children."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / TICKS


@dataclass
class Measure:
    """One variant's figures."""

    name: str
    cases: int
    wall: float
    producer_cpu: float
    worker_cpu: float
    redis_cpu: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu(self) -> float:
        return self.producer_cpu + self.worker_cpu + self.redis_cpu

    @property
    def rate(self) -> float:
        return self.cases / self.wall

    @property
    def cpu_ms_per_case(self) -> float:
        return 1000 * self.cpu / self.cases


class Stack:
    """A private redis-server, and workers started and stopped per variant."""

    def __init__(self) -> None:
        self.redis = EmbeddedRedis().start()
        self.url = self.redis.url
        self.client = redis.Redis.from_url(self.url)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.log_dir = Path(os.environ.get("BENCH_LOG_DIR", "/tmp/dify-runner-bench"))
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIFY_RUNNER_")}
        env.update({"DIFY_RUNNER_BROKER_URL": self.url, "BENCH_BROKER_URL": self.url, "PYTHONPATH": str(REPO)})
        env.update(extra or {})
        return env

    def start_workers(self, app_module: str, count: int, concurrency: int, pool: str = "threads",
                      env: dict[str, str] | None = None) -> None:
        self.client.flushall()
        names = []
        for index in range(count):
            name = f"bench{index}-{os.getpid()}@localhost"
            names.append(name)
            log = open(self.log_dir / f"{app_module.replace('.', '_')}-{index}.log", "wb")
            self.workers.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", app_module, "worker", "--pool", pool, "--concurrency",
                 str(concurrency), "--hostname", name, "--without-mingle", "--without-gossip", "--loglevel",
                 "WARNING"], stdout=log, stderr=subprocess.STDOUT, env=self.env(env), cwd=REPO))
        app = Celery(broker=self.url)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            alive = {name for reply in app.control.ping(timeout=0.5) for name in reply}
            if set(names) <= alive:
                return
        raise RuntimeError(f"workers did not start; logs in {self.log_dir}")

    def worker_cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.workers)

    def redis_cpu(self) -> float:
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def stop_workers(self) -> None:
        stop_processes(self.workers, timeout=30)
        self.workers = []

    def measure(self, name: str, cases: int, argv: Sequence[str], env: dict[str, str] | None = None) -> Measure:
        """Run a producer command to completion and account the CPU of every process."""
        worker_before, redis_before = self.worker_cpu(), self.redis_cpu()
        measure = run_command(name, cases, argv, self.env(env), REPO, self.log_dir)
        measure.worker_cpu = self.worker_cpu() - worker_before
        measure.redis_cpu = self.redis_cpu() - redis_before
        return measure

    def close(self) -> None:
        self.stop_workers()
        self.redis.stop()


def run_command(name: str, cases: int, argv: Sequence[str], env: dict[str, str], cwd: Path,
                log_dir: Path) -> Measure:
    """Run a command to completion: its wall time, and the CPU and peak RSS of its whole
    process tree (wait4 counts the children it waited for)."""
    start = time.monotonic()
    with open(log_dir / f"{name.replace(' ', '_')}.out", "wb") as log:
        proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
    measure = Measure(name, cases, time.monotonic() - start, usage.ru_utime + usage.ru_stime, 0.0, 0.0)
    measure.extra["exit"] = os.waitstatus_to_exitcode(status)
    measure.extra["maxrss"] = usage.ru_maxrss * 1024  # Linux reports KB
    return measure


def dify_runner_run(plan: Path, out: Path) -> list[str]:
    """The producer command every benchmark measures."""
    return [sys.executable, "-m", "dify_runner", "run", str(plan), "--no-progress", "--out", str(out)]


def mock_dify(latency_ms: float) -> MockDifyProcess:
    return MockDifyProcess("--latency-ms", str(latency_ms), "--jitter-ms", "0", "--api-key", "app-bench",
                           log_path=Path(os.environ.get("BENCH_LOG_DIR", "/tmp/dify-runner-bench")) / "mock.log")


def print_measures(title: str, measures: list[Measure]) -> None:
    print(f"\n{title}")
    print(f"  {'variant':<34} {'cases':>7} {'wall s':>8} {'cases/s':>9} {'CPU ms/case':>12}  "
          "(producer/workers/redis s)")
    for m in measures:
        print(f"  {m.name:<34} {m.cases:>7} {m.wall:>8.2f} {m.rate:>9.1f} {m.cpu_ms_per_case:>12.2f}  "
              f"({m.producer_cpu:.1f}/{m.worker_cpu:.1f}/{m.redis_cpu:.1f})")


def print_verdicts(checks: list[tuple[str, float, str, bool]]) -> None:
    """The lines printed last: each figure, as a ratio, against its target."""
    print("\nresult (ratios against the baseline measured in this run):")
    for label, value, target, met in checks:
        print(f"  {label:<52} {value:>8.3f}   target {target:<10} {'met' if met else 'NOT met'}")
    print(f"machine: {machine()}")
