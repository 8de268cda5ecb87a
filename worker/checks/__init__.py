"""Checking a returned result against its case's ``expect:``: one CheckResult per check.

Families, one module each: ``match`` (text, numbers, JSON, limits), ``similarity`` (a local
embedding model), ``judge`` (an LLM grades the answer). Every check runs, so a failed
case still records every score; the case passes when every check passed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...config.expectations import Expectations
from ..models import CheckResult, TestResult
from . import match
from .similarity import CheckUnavailable, similarity_check

__all__ = ["CheckUnavailable", "Judge", "check", "evaluate", "failure_message", "failure_reason"]

# Grades one answer: (the plan's judge check, the case's inputs, the answer) -> CheckResult.
Judge = Callable[[Any, dict[str, Any], str], CheckResult]


def evaluate(expect: Expectations, result: TestResult, latency: float, judge: Judge | None = None,
             ) -> list[CheckResult]:
    """Every check of ``expect`` on ``result``. ``judge`` grades ``expect.judge`` (the worker
    passes one bound to the plan's judge target); CheckUnavailable when a check cannot run."""
    checks = match.status_checks(expect, result)
    outputs = result.outputs
    reads_output = (expect.equals is not None or expect.any_of or expect.contains is not None or expect.contains_all
                    or expect.contains_any or expect.not_contains is not None or expect.regex is not None
                    or expect.approx or expect.similarity or expect.judge)
    if reads_output:
        name, value, problem = match.output_text(expect, outputs)
        if name is None:
            checks.append(match.verdict("output", [problem or "no output"]))
        else:
            checks += match.text_checks(expect, name, value)
            text = match.as_text(value)
            if expect.similarity is not None:
                checks.append(similarity_check(expect.similarity, text))
            if expect.judge is not None:
                if judge is None:
                    raise CheckUnavailable("expect.judge needs the plan's judge, which this worker was not given")
                checks.append(judge(expect.judge, result.inputs, text))
    checks += match.json_checks(expect, outputs)
    checks += match.limit_checks(expect, result, latency)
    return checks


def failure_reason(check: CheckResult) -> str:
    """Why a check failed, with the conversation turn it read (``turn 2: ...``) when it read one."""
    return (f"turn {check.turn}: " if check.turn else "") + (check.reason or f"{check.name} failed")


def failure_message(checks: list[CheckResult]) -> str | None:
    """``expectation failed: <reasons>`` when a check failed, else None."""
    reasons = [failure_reason(c) for c in checks if not c.passed]
    return "expectation failed: " + "; ".join(reasons) if reasons else None


def check(expect: Expectations, result: TestResult, latency: float, judge: Judge | None = None) -> list[str]:
    """The expectations ``result`` misses, each as a sentence; empty when it passes."""
    return [failure_reason(c) for c in evaluate(expect, result, latency, judge) if not c.passed]
