"""docker-compose.yml on a real container engine: build, scale, run, and kill containers.

The engine comes from ``../shared/containers/up`` (podman with a Docker-compatible API and
the `docker compose` v2 CLI; ``.ci/run`` runs it where it exists). Without DOCKER_HOST and
DOCKER_COMPOSE pointing at one, every test here is skipped, saying why.

One stack for the module: Redis (AOF volume), two workers, Flower and the mock Dify server,
with secrets in a temporary env file and reports in a temporary directory. The producer runs
as `docker compose run --rm --no-deps producer run ...`, as the README says. Containers are
killed, stopped and restarted through the engine's API. Asserted: counts (one result per
case, Dify calls per case); times are printed for the closing note, never asserted.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from dify_runner.producer.embedded import free_port
from dify_runner.worker.store import RunStore

from ..conftest import REPO

# The module's first test builds the image and starts the stack.
pytestmark = [pytest.mark.containers, pytest.mark.timeout(1200)]
CASES = 400


def engine_missing() -> str | None:
    host, compose = os.environ.get("DOCKER_HOST", ""), os.environ.get("DOCKER_COMPOSE", "")
    if not host.startswith("unix://") or not compose or not shutil.which(compose):
        return ("no container engine: run ../shared/containers/up and export what it prints "
                "(DOCKER_HOST, DOCKER_COMPOSE)")
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=host[len("unix://"):]), timeout=5) as engine:
            engine.get("http://engine/_ping")
    except httpx.HTTPError as exc:
        return f"the container engine at {host} does not answer: {exc}"
    return None


class Stack:
    """The compose project, its ports and secrets, and the engine's API."""

    def __init__(self, tmp: Path) -> None:
        self.project = f"drtest{os.getpid()}"
        self.secrets = {"REDIS_PASSWORD": secrets.token_hex(12), "FLOWER_BASIC_AUTH": "admin:" + secrets.token_hex(8),
                        "MOCK_DIFY_API_KEY": "app-" + secrets.token_hex(8),
                        "MOCK_DIFY_CHAT_KEY": "app-" + secrets.token_hex(8)}
        self.ports = {"REDIS_PORT": free_port(), "FLOWER_PORT": free_port(), "MOCK_DIFY_PORT": free_port()}
        self.runs, self.plans = tmp / "runs", tmp / "plans"
        self.runs.mkdir()
        self.runs.chmod(0o777)  # the producer container writes as the image's user
        shutil.copytree(REPO / "config/plans", self.plans)
        cases = [{"id": f"c{i:04}", "inputs": {"query": f"q{i:04}", "_mock": {"latency_ms": 300}}}
                 for i in range(CASES)]
        plan = yaml.safe_load((self.plans / "compose-demo.yaml").read_text())
        plan.update(name="containers", datasets=[{"name": "load", "workflows": ["translator"], "cases": cases}])
        (self.plans / "load.yaml").write_text(yaml.safe_dump(plan))
        self.env_file = tmp / "env"
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in {
            **self.secrets, **{k: str(v) for k, v in self.ports.items()}, "MOCK_DIFY_LATENCY_MS": "50",
            "RUNS_DIR": str(self.runs), "PLANS_DIR": str(self.plans), "ENV_FILE": str(tmp / "env"),
            "WORKER_CONCURRENCY": "8", "WORKER_STOP_GRACE": "60s"}.items()))
        uds = os.environ["DOCKER_HOST"][len("unix://"):]
        self.engine = httpx.Client(base_url="http://engine", transport=httpx.HTTPTransport(uds=uds), timeout=120)
        self.store = RunStore(redis.Redis(port=self.ports["REDIS_PORT"], password=self.secrets["REDIS_PASSWORD"]))

    def compose(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([os.environ["DOCKER_COMPOSE"], "-p", self.project, "--env-file", str(self.env_file),
                               "-f", str(REPO / "docker-compose.yml"), "--profile", "demo", *args],
                              capture_output=True, text=True, cwd=REPO, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)}: {done.stdout}\n{done.stderr}")
        return done

    def up(self) -> None:
        self.compose("up", "-d", "--no-recreate", "--scale", "worker=2")
        wait_for(lambda: [self.health(c) for c in self.containers("worker") + self.containers("redis")]
                 == ["healthy"] * 3, "healthy redis and two workers", 180)  # none running is not healthy

    def producer(self, plan: str = "/plans/load.yaml") -> subprocess.Popen[str]:
        return subprocess.Popen([os.environ["DOCKER_COMPOSE"], "-p", self.project, "--env-file", str(self.env_file),
                                 "-f", str(REPO / "docker-compose.yml"), "run", "--rm", "--no-deps", "producer",
                                 "run", plan, "--no-progress"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)

    def containers(self, service: str) -> list[str]:
        filters = json.dumps({"label": [f"com.docker.compose.project={self.project}",
                                        f"com.docker.compose.service={service}"]})
        listed = self.engine.get("/containers/json", params={"filters": filters}).json()
        return sorted(c["Names"][0].lstrip("/") for c in listed)

    def health(self, name: str) -> str:
        state = self.engine.get(f"/containers/{name}/json").json()["State"]
        return (state.get("Health") or {}).get("Status", "none")

    def mock(self, path: str, method: str = "GET") -> Any:
        return httpx.request(method, f"http://127.0.0.1:{self.ports['MOCK_DIFY_PORT']}{path}", timeout=10).json()

    def ended(self) -> int:
        run_ids = self.store.list_runs(1)
        if not run_ids:
            return 0
        progress = self.store.progress(run_ids[0])
        return sum(v for k, v in progress.items() if k not in ("retries", "retries_waiting", "failures"))

    def report(self) -> dict[str, Any]:
        newest = max(self.runs.iterdir(), key=lambda p: p.stat().st_mtime)
        return json.loads((newest / "report.json").read_text())


def wait_for(check: Any, what: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if check():
                return
        except (httpx.HTTPError, redis.RedisError, KeyError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    missing = engine_missing()
    if missing:
        pytest.skip(missing)
    running = Stack(tmp_path_factory.mktemp("compose"))
    try:
        running.compose("build")
        running.up()
        yield running
    finally:
        running.compose("down", "-v", "--timeout", "5", check=False)


def run_with(stack: Stack, action: Any) -> tuple[dict[str, Any], float]:
    """Run the load plan through the producer container; ``action()`` once 100 cases ended.
    Returns the report and the seconds from the action to the producer's exit."""
    stack.mock("/_mock/reset", "POST")
    producer = stack.producer()
    wait_for(lambda: stack.ended() >= 100, "100 cases ended", 300)
    action()
    acted = time.monotonic()
    out, err = producer.communicate(timeout=600)
    took = time.monotonic() - acted
    assert producer.returncode == 0, out + err
    report = stack.report()
    ids = [r["execution_id"] for r in report["results"]]
    assert len(ids) == len(set(ids)) == CASES == report["run"]["statistics"]["succeeded_tasks"]
    return report, took


def test_the_demo_runs_in_containers_healthy_and_seen_by_flower(stack: Stack) -> None:
    assert [stack.health(c) for c in stack.containers("worker")] == ["healthy", "healthy"]
    user, password = stack.secrets["FLOWER_BASIC_AUTH"].split(":")
    flower = f"http://127.0.0.1:{stack.ports['FLOWER_PORT']}"
    assert httpx.get(f"{flower}/api/workers", timeout=10).status_code == 401
    wait_for(lambda: len(httpx.get(f"{flower}/api/workers?refresh=1", auth=(user, password), timeout=10).json()) == 2,
             "Flower listing both workers", 60)
    stack.mock("/_mock/reset", "POST")
    producer = stack.producer("/plans/compose-demo.yaml")
    out, err = producer.communicate(timeout=300)
    assert producer.returncode == 0, out + err
    statistics = stack.report()["run"]["statistics"]
    assert statistics["succeeded_tasks"] == statistics["total_tasks"] == 13  # one is a chat conversation
    assert stack.mock("/_mock/stats")["paths"]["/v1/files/upload"] == 1


def test_a_worker_container_sigkilled_mid_run(stack: Stack) -> None:
    victim = stack.containers("worker")[0]
    report, took = run_with(stack, lambda: stack.engine.post(f"/containers/{victim}/kill", params={"signal": "KILL"}))
    calls = stack.mock("/_mock/stats")["queries"]
    print(f"\nSIGKILL of {victim}: report whole {took:.1f} s later; {sum(calls.values()) - CASES} cases "
          f"called Dify twice (the ones it held)")
    assert len(calls) == CASES and max(calls.values()) <= 2
    stack.up()


def test_a_worker_container_stopped_mid_run(stack: Stack) -> None:
    """docker stop: SIGTERM, Celery's warm shutdown. Cases in flight finish; the rest go to the other."""
    victim = stack.containers("worker")[0]
    report, took = run_with(stack, lambda: stack.engine.post(f"/containers/{victim}/stop", params={"t": 60}))
    calls = stack.mock("/_mock/stats")["queries"]
    print(f"\nstop of {victim}: report whole {took:.1f} s later")
    assert len(calls) == CASES and set(calls.values()) == {1}  # no case called Dify twice
    stack.up()


def test_the_redis_container_restarted_mid_run(stack: Stack) -> None:
    """Redis keeps its data in an AOF volume: workers and the producer ride out the restart."""
    [victim] = stack.containers("redis")
    report, took = run_with(stack, lambda: stack.engine.post(f"/containers/{victim}/restart", params={"t": 5}))
    print(f"\nrestart of {victim}: report whole {took:.1f} s later")
    assert len(stack.mock("/_mock/stats")["queries"]) == CASES


def test_the_image_runs_the_demo_on_a_gevent_worker(stack: Stack) -> None:
    """WORKER_POOL=gevent needs gevent in the image (the Dockerfile builds the gevent extra).
    The two thread workers are stopped, so the gevent worker runs every case of the demo."""
    threads = stack.containers("worker")
    for name in threads:
        stack.engine.post(f"/containers/{name}/stop", params={"t": 30})
    gevent_worker = f"{stack.project}-gevent"
    stack.compose("run", "-d", "--name", gevent_worker, "worker", "celery", "-A", "dify_runner.worker.app", "worker",
                  "--pool", "gevent", "--concurrency", "50", "--hostname", "worker@%h", "--without-mingle",
                  "--without-gossip", "--loglevel", "INFO")
    try:
        wait_for(lambda: stack.health(gevent_worker) == "healthy", "the gevent worker healthy", 180)
        producer = stack.producer("/plans/compose-demo.yaml")
        out, err = producer.communicate(timeout=300)
        assert producer.returncode == 0, out + err
        statistics = stack.report()["run"]["statistics"]
        assert statistics["succeeded_tasks"] == statistics["total_tasks"] == 13  # one is a chat conversation
        logs = stack.engine.get(f"/containers/{gevent_worker}/logs", params={"stdout": 1, "stderr": 1}).content
        assert b"concurrency: 50 (gevent)" in logs
    finally:
        stack.engine.delete(f"/containers/{gevent_worker}", params={"force": 1})
        for name in threads:
            stack.engine.post(f"/containers/{name}/start")
