"""Checking a returned result against its case's expectations."""

from __future__ import annotations

import functools
import json
from typing import Any

from ..config.expectations import Expectations
from ..config.regex import search
from .models import TestResult

SHOWN = 120


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return repr(text if len(text) <= SHOWN else text[: SHOWN - 3] + "...")


@functools.lru_cache(maxsize=256)
def _jsonpath(expression: str) -> Any:
    """A parsed JSONPath. Parsing costs ~0.3 ms, a sixth of a case's worker CPU, and a
    dataset's cases share their expressions: parse each once per process."""
    from jsonpath_ng.ext import parse

    return parse(expression)


@functools.lru_cache(maxsize=1)
def _schema_validator() -> Any:
    """Draft 2020-12 with ``pattern`` and ``patternProperties`` on RE2 (jsonschema's own use
    Python's backtracking ``re``: a schema in a plan could hang the worker)."""
    from jsonschema import Draft202012Validator, ValidationError, validators

    def pattern(validator: Any, patrn: str, instance: Any, schema: Any) -> Any:
        if validator.is_type(instance, "string") and not search(patrn, instance):
            yield ValidationError(f"{instance!r} does not match {patrn!r}")

    def pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any, schema: Any) -> Any:
        if validator.is_type(instance, "object"):
            for patrn, subschema in patterns.items():
                for key, value in instance.items():
                    if search(patrn, key):
                        yield from validator.descend(value, subschema, path=key, schema_path=patrn)

    return validators.extend(Draft202012Validator, {"pattern": pattern, "patternProperties": pattern_properties})


def _as_list(value: str | list[str] | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else value


def check(expect: Expectations, result: TestResult, latency: float) -> list[str]:
    """The expectations ``result`` misses, each as a sentence; empty when it passes."""
    problems: list[str] = []
    outputs = result.outputs
    workflow_status = str(result.metadata.get("workflow_status") or "succeeded")
    ran_failed = workflow_status in ("failed", "stopped")
    if expect.status == "failed" and not ran_failed:
        problems.append(f"the workflow run should fail, it ended {workflow_status}")
    error = str(result.metadata.get("workflow_error") or "")
    for needle in _as_list(expect.error_contains):
        if ran_failed and needle not in error:
            problems.append(f"the workflow error should contain {needle!r}, got {_shown(error)}")
    text_checks = (expect.equals is not None or expect.contains or expect.not_contains or expect.regex)
    if text_checks:
        name = expect.output or (next(iter(outputs)) if len(outputs) == 1 else None)
        if name is None or name not in outputs:
            where = f"output {expect.output!r}" if expect.output else "a single output (set expect.output)"
            problems.append(f"expected {where}, got outputs {sorted(outputs)}")
        else:
            value = outputs[name]
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            if expect.equals is not None and value != expect.equals:
                problems.append(f"output {name!r} should equal {_shown(expect.equals)}, got {_shown(value)}")
            for needle in _as_list(expect.contains):
                if needle not in text:
                    problems.append(f"output {name!r} should contain {needle!r}, got {_shown(text)}")
            for needle in _as_list(expect.not_contains):
                if needle in text:
                    problems.append(f"output {name!r} should not contain {needle!r}, got {_shown(text)}")
            if expect.regex is not None and not search(expect.regex, text):
                problems.append(f"output {name!r} should match /{expect.regex}/, got {_shown(text)}")
    if expect.json_schema is not None:
        errors = sorted(_schema_validator()(expect.json_schema).iter_errors(outputs), key=lambda e: list(e.path))
        for error in errors[:3]:
            where = "/".join(map(str, error.path)) or "(outputs)"
            problems.append(f"outputs do not match the JSON schema at {where}: {error.message}")
    for expression, expected in (expect.jsonpath or {}).items():
        found = [match.value for match in _jsonpath(expression).find(outputs)]
        if not found:
            problems.append(f"JSONPath {expression} found nothing in the outputs")
        elif found[0] != expected:
            problems.append(f"JSONPath {expression} should be {_shown(expected)}, got {_shown(found[0])}")
    if expect.max_latency is not None and latency > expect.max_latency:
        problems.append(f"latency {latency:.3f} s is over max_latency {expect.max_latency:g} s")
    if expect.max_tokens is not None and result.tokens_used > expect.max_tokens:
        problems.append(f"{result.tokens_used} tokens is over max_tokens {expect.max_tokens}")
    if expect.max_cost is not None:
        if result.cost is None:
            problems.append("max_cost cannot be checked: the cost is unknown (blocking responses carry no price)")
        elif result.cost > expect.max_cost:
            problems.append(f"cost {result.cost:g} is over max_cost {expect.max_cost:g}")
    return problems
