"""Hostile and broken plans: always exit 2 with a message naming where, never a traceback,
never a hang. Property-based (hypothesis), through the CLI's own entry point."""

from __future__ import annotations

import io
import json
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import yaml
from dify_runner.producer.cli import main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..conftest import cli, stub_plan, write_plan

pytestmark = pytest.mark.faults

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=50))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10),
                                                                                            inner, max_size=4),
                      max_leaves=20)
FIELDS = ["name", "workflows", "datasets", "execution", "repeat", "description", "unknown"]


def validate(path: Path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["validate", str(path)])
    return code, err.getvalue()


def check(text: str, name: str = "plan.yaml") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(text.encode("utf-8", "replace"))
        code, err = validate(path)
        assert code in (0, 2)
        if code == 2:
            assert str(path) in err and "Traceback" not in err


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.text(max_size=300))
def test_any_text_is_a_plan_or_a_clear_error(text: str) -> None:
    check(text)


@SETTINGS
@given(st.fixed_dictionaries({}, optional={field: values for field in FIELDS}))
def test_any_plan_shaped_mapping_is_a_plan_or_a_clear_error(plan: dict[str, Any]) -> None:
    check(yaml.safe_dump(plan, allow_unicode=True))


@SETTINGS
@given(st.sampled_from(["execution", "workflows", "datasets"]), values)
def test_wrong_values_in_a_valid_plan(field: str, value: Any) -> None:
    plan = stub_plan([{"id": "a", "inputs": {"q": "x"}}])
    plan[field] = value
    check(yaml.safe_dump(plan, allow_unicode=True))


@SETTINGS
@given(st.text(max_size=200), st.sampled_from(["rows.csv", "rows.jsonl"]))
def test_broken_data_files(content: str, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / name).write_bytes(content.encode("utf-8", "replace"))
        path = write_plan(Path(tmp), {**stub_plan([]), "datasets": [{"name": "d", "file": name}]})
        code, err = validate(path)
        assert code in (0, 2) and "Traceback" not in err


def test_python_tags_are_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "plan.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    done = cli("validate", str(path))
    assert done.returncode == 2 and "YAML syntax error" in done.stderr
    assert not marker.exists()


def test_huge_and_unicode_values(tmp_path: Path) -> None:
    plan = stub_plan([{"id": "a", "inputs": {"q": "日本語 ✓ \u0000 " * 1000, "n": None, "deep": [[[[[]]]]]}}])
    plan["description"] = "x" * 20_000  # over the 10,000-character limit
    done = cli("validate", str(write_plan(tmp_path, plan)))
    assert done.returncode == 2 and "description" in done.stderr and "Traceback" not in done.stderr
    assert json.dumps(plan)  # the plan itself was representable
