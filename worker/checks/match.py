"""The checks that compare an answer with what was expected: text, numbers, JSON, limits.

Each returns one CheckResult (score 1.0 or 0.0) per ``expect:`` key it judges."""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from typing import Any

from ...config.expectations import Expectations
from ...config.regex import search
from ..models import CheckResult, TestResult

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


def verdict(name: str, problems: list[str]) -> CheckResult:
    return CheckResult(name=name, passed=not problems, score=0.0 if problems else 1.0,
                       reason="; ".join(problems) or None)


def normalized(text: str, how: list[str] | None) -> str:
    """``text`` in the form ``expect.normalize`` compares: NFKC, case-folded, without
    punctuation, with runs of whitespace made one space (each only when asked)."""
    if not how:
        return text
    if "unicode" in how:
        text = unicodedata.normalize("NFKC", text)
    if "case" in how:
        text = text.casefold()
    if "punctuation" in how:
        text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    if "whitespace" in how:
        text = " ".join(text.split())
    return text


def _same(value: Any, expected: Any, how: list[str] | None) -> bool:
    if how and isinstance(value, str) and isinstance(expected, (str, int, float)):
        return normalized(value, how) == normalized(str(expected), how)
    return bool(value == expected)


def output_text(expect: Expectations, outputs: dict[str, Any]) -> tuple[str | None, Any, str | None]:
    """(output name, value, None), or (None, None, why) when the output the checks read is absent."""
    name = expect.output or (next(iter(outputs)) if len(outputs) == 1 else None)
    if name is None or name not in outputs:
        where = f"output {expect.output!r}" if expect.output else "a single output (set expect.output)"
        return None, None, f"expected {where}, got outputs {sorted(outputs)}"
    return name, outputs[name], None


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def status_checks(expect: Expectations, result: TestResult) -> list[CheckResult]:
    workflow_status = str(result.metadata.get("workflow_status") or "succeeded")
    ran_failed = workflow_status in ("failed", "stopped")
    checks = []
    if expect.status == "failed":
        checks.append(verdict("status", [] if ran_failed else
                              [f"the workflow run should fail, it ended {workflow_status}"]))
    if expect.error_contains is not None:
        error = str(result.metadata.get("workflow_error") or "")
        checks.append(verdict("error_contains", [
            f"the workflow error should contain {needle!r}, got {_shown(error)}"
            for needle in _as_list(expect.error_contains) if ran_failed and needle not in error]))
    return checks


def text_checks(expect: Expectations, name: str, value: Any) -> list[CheckResult]:
    """equals, any_of, contains, contains_all, contains_any, not_contains, regex, approx."""
    how = expect.normalize
    text = as_text(value)
    seen = normalized(text, how)
    checks = []
    if expect.equals is not None:
        checks.append(verdict("equals", [] if _same(value, expect.equals, how) else
                              [f"output {name!r} should equal {_shown(expect.equals)}, got {_shown(value)}"]))
    if expect.any_of is not None:
        hit = any(_same(value, option, how) for option in expect.any_of)
        checks.append(verdict("any_of", [] if hit else
                              [f"output {name!r} should equal one of {_shown(expect.any_of)}, got {_shown(value)}"]))
    if expect.contains is not None:
        checks.append(verdict("contains", [f"output {name!r} should contain {needle!r}, got {_shown(text)}"
                                           for needle in _as_list(expect.contains)
                                           if normalized(needle, how) not in seen]))
    if expect.contains_all is not None:
        missing = [n for n in expect.contains_all if normalized(n, how) not in seen]
        checks.append(verdict("contains_all", [f"output {name!r} should contain all of {expect.contains_all!r}, "
                                               f"misses {missing!r}: {_shown(text)}"] if missing else []))
    if expect.contains_any is not None:
        hit = any(normalized(n, how) in seen for n in expect.contains_any)
        checks.append(verdict("contains_any", [] if hit else [f"output {name!r} should contain one of "
                                                              f"{expect.contains_any!r}, got {_shown(text)}"]))
    if expect.not_contains is not None:
        checks.append(verdict("not_contains", [f"output {name!r} should not contain {needle!r}, got {_shown(text)}"
                                               for needle in _as_list(expect.not_contains)
                                               if normalized(needle, how) in seen]))
    if expect.regex is not None:
        checks.append(verdict("regex", [] if search(expect.regex, text) else
                              [f"output {name!r} should match /{expect.regex}/, got {_shown(text)}"]))
    if expect.approx is not None:
        checks.append(_approx(expect, name, value))
    return checks


_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _approx(expect: Expectations, name: str, value: Any) -> CheckResult:
    approx = expect.approx
    assert approx is not None
    target = float(approx.value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        found: float | None = float(value)
    else:
        match = _NUMBER.search(as_text(value))
        found = float(match.group().replace(",", "")) if match else None
    if found is None:
        return verdict("approx", [f"output {name!r} should be a number near {target:g}, got {_shown(value)}"])
    allowed = approx.tolerance * abs(target) if approx.relative else approx.tolerance
    if abs(found - target) <= allowed:
        return verdict("approx", [])
    return verdict("approx", [f"output {name!r} should be {target:g} +/- {allowed:g}, got {found:g}"])


def json_checks(expect: Expectations, outputs: dict[str, Any]) -> list[CheckResult]:
    checks = []
    if expect.json_schema is not None:
        errors = sorted(_schema_validator()(expect.json_schema).iter_errors(outputs), key=lambda e: list(e.path))
        checks.append(verdict("json_schema", [
            f"outputs do not match the JSON schema at {'/'.join(map(str, e.path)) or '(outputs)'}: {e.message}"
            for e in errors[:3]]))
    if expect.jsonpath is not None:
        problems = []
        for expression, expected in expect.jsonpath.items():
            found = [match.value for match in _jsonpath(expression).find(outputs)]
            if not found:
                problems.append(f"JSONPath {expression} found nothing in the outputs")
            elif found[0] != expected:
                problems.append(f"JSONPath {expression} should be {_shown(expected)}, got {_shown(found[0])}")
        checks.append(verdict("jsonpath", problems))
    return checks


def limit_checks(expect: Expectations, result: TestResult, latency: float) -> list[CheckResult]:
    checks = []
    if expect.max_latency is not None:
        checks.append(verdict("max_latency", [] if latency <= expect.max_latency else
                              [f"latency {latency:.3f} s is over max_latency {expect.max_latency:g} s"]))
    if expect.max_tokens is not None:
        checks.append(verdict("max_tokens", [] if result.tokens_used <= expect.max_tokens else
                              [f"{result.tokens_used} tokens is over max_tokens {expect.max_tokens}"]))
    if expect.max_cost is not None:
        if result.cost is None:
            problems = ["max_cost cannot be checked: the cost is unknown (blocking responses carry no price)"]
        else:
            problems = [f"cost {result.cost:g} is over max_cost {expect.max_cost:g}"] \
                if result.cost > expect.max_cost else []
        checks.append(verdict("max_cost", problems))
    return checks
