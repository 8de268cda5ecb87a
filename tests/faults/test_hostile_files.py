"""Hand-made hostile inputs: each gets a clear answer (exit 2 naming the file, the field and
the value), fast, in bounded memory; never a hang, a traceback or a silent guess."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from ..conftest import cli, stub_plan, write_plan

pytestmark = pytest.mark.faults


def refused(done: object, *needles: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in done.stderr  # type: ignore[attr-defined]
    for needle in needles:
        assert needle in done.stderr, done.stderr  # type: ignore[attr-defined]


def with_data_file(tmp_path: Path, name: str) -> Path:
    plan = stub_plan([])
    plan["datasets"] = [{"name": "ds", "file": name}]
    return write_plan(tmp_path, plan)


def test_a_fifo_is_refused_not_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "rows.csv")
    refused(cli("validate", str(with_data_file(tmp_path, "rows.csv")), timeout=60), "rows.csv",
            "a FIFO (named pipe)", "only regular files")
    os.mkfifo(tmp_path / "plan-fifo.yaml")
    refused(cli("validate", str(tmp_path / "plan-fifo.yaml"), timeout=60), "a FIFO")


def test_a_link_to_a_device_is_refused(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").symlink_to("/dev/zero")
    refused(cli("validate", str(with_data_file(tmp_path, "rows.jsonl")), "--data-root", "/dev", timeout=60),
            "a character device")
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")  # the plan itself: no containment, still refused
    refused(cli("validate", str(tmp_path / "zero.yaml"), timeout=60), "a character device")


def test_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").mkdir()
    refused(cli("validate", str(with_data_file(tmp_path, "rows.csv"))), "a directory")


def test_data_files_stay_inside_the_plans_directory(tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "rows.csv").write_text("q\nhello\n")
    plans = tmp_path / "plans"
    plans.mkdir()
    plan = with_data_file(plans, "../secret/rows.csv")
    refused(cli("validate", str(plan)), "datasets[0].file = '../secret/rows.csv'", "outside the plan's directory")
    (plans / "link.csv").symlink_to(outside / "rows.csv")  # a link inside that points out
    refused(cli("validate", str(with_data_file(plans, "link.csv"))), "outside the plan's directory")
    allowed = cli("validate", str(plan), "--data-root", str(outside))
    assert allowed.returncode == 0, allowed.stderr


def test_duplicate_yaml_keys_are_an_error(tmp_path: Path) -> None:
    text = yaml.safe_dump(stub_plan([{"id": "a"}]), sort_keys=False) + "name: again\n"
    (tmp_path / "plan.yaml").write_text(text)
    refused(cli("validate", str(tmp_path / "plan.yaml")), "duplicate key 'name'", "line")
    merged = "base: &b {concurrency: 2}\n" + yaml.safe_dump(stub_plan([{"id": "a"}]), sort_keys=False)
    merged = merged.replace("execution: {}", "execution:\n  <<: *b\n  concurrency: 3")
    (tmp_path / "merge.yaml").write_text(merged)
    done = cli("validate", str(tmp_path / "merge.yaml"))
    assert "duplicate key" not in done.stderr  # a YAML merge overridden by a key is not a duplicate


@pytest.mark.parametrize("field, value", [
    ("concurrency", True), ("concurrency", "5"), ("batch_size", 2.0), ("retry_policy", {"max_attempts": "3"}),
    ("retry_policy", {"backoff_seconds": False}), ("stop_conditions", {"timeout_per_task": "30"}),
    ("rate_control", {"requests_per_second": 1.0e-308}), ("rate_control", {"requests_per_minute": 0.001}),
])
def test_numbers_are_strict_and_within_what_the_limiter_holds(tmp_path: Path, field: str, value: object) -> None:
    done = cli("validate", str(write_plan(tmp_path, stub_plan([{"id": "a"}], execution={field: value}))))
    refused(done, f"execution.{field}")


def test_credentials_inside_a_url_are_refused_and_not_repeated(tmp_path: Path) -> None:
    plan = stub_plan([{"id": "a"}])
    plan["workflows"] = [{"id": "wf", "base_url": "https://user:s3cret@dify.example/v1", "api_key_env": "K"}]
    done = cli("validate", str(write_plan(tmp_path, plan)))
    refused(done, "workflows[0].base_url", "must not hold credentials")
    assert "s3cret" not in done.stderr + done.stdout


@pytest.mark.parametrize("url", ["127.0.0.1:6379", "http://127.0.0.1:6379/0", "redis://:pw@host:notaport/0"])
def test_a_bad_broker_url_exits_2_naming_where_it_came_from(tmp_path: Path, url: str) -> None:
    plan = str(write_plan(tmp_path, stub_plan([{"id": "a"}])))
    refused(cli("run", plan, "--broker", url), "--broker", "Redis URL" if "notaport" not in url else "valid URL")
    refused(cli("status", env={"DIFY_RUNNER_BROKER_URL": url}), "DIFY_RUNNER_BROKER_URL")
    refused(cli("worker", env={"DIFY_RUNNER_BROKER_URL": url}), "DIFY_RUNNER_BROKER_URL")
    for done in (cli("run", plan, "--broker", url), cli("status", env={"DIFY_RUNNER_BROKER_URL": url})):
        assert "notaport" not in url or ":pw@" not in done.stderr  # the password is never shown


def test_a_hundred_thousand_workflows_validate(tmp_path: Path) -> None:
    """Validation is linear in the plan's size (it was quadratic in the workflows)."""
    plan = stub_plan([{"id": "a"}])
    plan["workflows"] = [{"id": f"wf{i}", "base_url": "stub"} for i in range(100_000)]
    plan["datasets"][0]["workflows"] = ["wf99999"]
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    done = cli("validate", str(path), timeout=120)
    assert done.returncode == 0 and "100000 workflow(s)" in done.stdout, done.stderr
