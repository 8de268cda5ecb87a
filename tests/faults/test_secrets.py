"""API keys never leave the workers' environment: not in Redis, logs or reports.
(Flower is scanned too, in tests/test_compose.py.)"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
import redis

from dify_runner.mockdify.process import MockDifyProcess

from ..conftest import Fleet, cli, stub_plan, write_plan

pytestmark = [pytest.mark.faults, pytest.mark.fleet]


def redis_dump(client: redis.Redis) -> str:
    """Every key and every value, whatever its type."""
    parts = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        value = {"string": client.get, "hash": client.hgetall, "list": lambda k: client.lrange(k, 0, -1),
                 "set": client.smembers, "zset": lambda k: client.zrange(k, 0, -1, withscores=True)}[kind](key)
        parts.append(f"{key!r} {value!r}")
    return "\n".join(parts)


def test_a_recognisable_key_is_nowhere(tmp_path: Path, fleet: Fleet, redis_url: str) -> None:
    key, wrong = "app-SECRET-" + secrets.token_hex(12), "app-WRONG-" + secrets.token_hex(12)
    with MockDifyProcess("--api-key", key, "--latency-ms", "20") as mock:
        fleet.start(2, concurrency=4, env={"SECRET_DIFY_KEY": key, "WRONG_DIFY_KEY": wrong})
        templated = "${HOME} {{ env.HOME }} $(cat /etc/passwd) ${SECRET_DIFY_KEY}"
        plan = stub_plan([{"id": f"c{i}", "inputs": {"q": templated}} for i in range(10)]
                         + [{"id": "fails", "inputs": {"_mock": {"status": "failed"}}}],
                         execution={"retry_policy": {"max_attempts": 2, "backoff_seconds": 0.1}})
        plan["workflows"] = [
            {"id": "good", "base_url": mock.base_url, "api_key_env": "SECRET_DIFY_KEY"},
            {"id": "bad", "base_url": mock.base_url, "api_key_env": "WRONG_DIFY_KEY", "response_mode": "blocking"},
        ]
        # Two wrong-key cases: fewer than it takes to stop the run (answer_guard.FAIL_FAST_AFTER).
        plan["datasets"][0]["workflows"] = ["good"]
        plan["datasets"].append({"name": "auth", "workflows": ["bad"], "cases": [{"id": "k1"}, {"id": "k2"}]})
        done = cli("run", str(write_plan(tmp_path, plan)), "--broker", redis_url, "--out", str(tmp_path / "runs"),
                   "--no-progress", env={"SECRET_DIFY_KEY": key}, cwd=tmp_path)
        assert done.returncode == 1, done.stdout + done.stderr  # the wrong key and the failed run
        [run_dir] = list((tmp_path / "runs").iterdir())
        report = json.loads((run_dir / "report.json").read_text())
        mock_stats = json.dumps(mock.stats())

    # Case inputs are data: nothing in them was expanded, evaluated or read from the env.
    good = [r for r in report["results"] if r["workflow_id"] == "good" and r["status"] == "success"]
    assert len(good) == 10 and all(r["outputs"]["answer"] == f"mock answer: {templated}" for r in good)
    bad = [r for r in report["results"] if r["workflow_id"] == "bad"]
    assert all("401 unauthorized" in r["error_message"] for r in bad)

    places = {
        "redis": redis_dump(redis.Redis.from_url(redis_url)),
        "producer output": done.stdout + done.stderr,
        "worker logs": fleet.logs(),
        "mock stats": mock_stats,
    }
    places.update({str(p): p.read_text() for p in run_dir.iterdir()})
    assert len(places["redis"]) > 1000 and "good/ds/c0" in places["redis"]  # the scan did see the run
    for secret in (key, wrong):
        assert [where for where, text in places.items() if secret in text] == []
