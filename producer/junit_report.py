"""``junit.xml`` as GitLab and Jenkins read it: a testsuite per workflow, a testcase per case.

FAILED is a <failure>, TIMEOUT and ERROR are <error>, CANCELLED is <skipped>. Each
<testcase> is built with junitparser and written out at once to a spool file per
workflow; the document is assembled at the end, when each suite's counts are known.
(junitparser's own TestSuite.add_testcase scans the suite on every add: quadratic, 46 s
for 3,000 cases, measured with bench/bench_pipeline.py.) Memory stays flat.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from xml.sax.saxutils import quoteattr

from junitparser import Error, Failure, Properties, Property, Skipped, TestCase

from ..worker.checks import failure_reason
from ..worker.models import TestResult, TestStatus
from .summary import task_status_of


@dataclass
class _Suite:
    spool: IO[bytes]
    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    time: float = 0.0


class JUnitWriter:
    def __init__(self, run_id: str, plan_name: str) -> None:
        self.run_id = run_id
        self.plan_name = plan_name
        self.suites: dict[str, _Suite] = {}

    def add(self, result: TestResult) -> None:
        suite = self.suites.get(result.workflow_id)
        if suite is None:
            suite = self.suites[result.workflow_id] = _Suite(tempfile.TemporaryFile())
        case = junit_case(result)
        suite.spool.write(case.tostring() + b"\n")
        suite.tests += 1
        suite.time += result.execution_time
        kind = type(case.result[0]).__name__ if case.result else None
        suite.failures += kind == "Failure"
        suite.errors += kind == "Error"
        suite.skipped += kind == "Skipped"

    def write(self, path: Path, missing_results: int = 0) -> None:
        """``missing_results``: cases of the plan without a result. They become one error
        testcase of their own, so a CI test tab never shows green over an incomplete run."""
        total = {key: sum(getattr(s, key) for s in self.suites.values())
                 for key in ("tests", "failures", "errors", "skipped")}
        if missing_results:
            total["tests"] += 1
            total["errors"] += 1
        seconds = sum(s.time for s in self.suites.values())
        with path.open("wb") as out:
            out.write(b"<?xml version='1.0' encoding='utf-8'?>\n")
            out.write(_tag("testsuites", name=self.plan_name, time=f"{seconds:.6f}", **total))
            if missing_results:
                message = f"{missing_results} case(s) of the plan have no result: no verdict"
                out.write(_tag("testsuite", name="dify-runner", tests=1, failures=0, errors=1, skipped=0, time="0"))
                out.write(f"<testcase classname=\"dify-runner\" name=\"missing results\" time=\"0\">"
                          f"<error message={quoteattr(message)} type=\"missing_results\"/></testcase>\n"
                          "</testsuite>\n".encode())
            for name, suite in self.suites.items():
                out.write(_tag("testsuite", name=name, tests=suite.tests, failures=suite.failures,
                               errors=suite.errors, skipped=suite.skipped, time=f"{suite.time:.6f}"))
                out.write(f"<properties><property name=\"run_id\" value={quoteattr(self.run_id)}/></properties>\n"
                          .encode())
                suite.spool.seek(0)
                shutil.copyfileobj(suite.spool, out)
                suite.spool.close()
                out.write(b"</testsuite>\n")
            out.write(b"</testsuites>\n")


def _tag(element: str, **attributes: object) -> bytes:
    return ("<" + element + "".join(f" {k}={quoteattr(str(v))}" for k, v in attributes.items()) + ">\n").encode()


def junit_case(result: TestResult) -> TestCase:
    case = TestCase(result.execution_id, classname=f"{result.workflow_id}.{result.dataset}", time=result.execution_time)
    status = task_status_of(result)
    message = result.error_message or status
    if status == "cancelled":
        case.result = [Skipped(message)]
    elif result.status is TestStatus.FAILED:
        failed = [c for c in result.checks if not c.passed]
        if failed:  # the failing checks' reasons, and the first one's name as the type
            message = "; ".join(failure_reason(c) for c in failed)
        case.result = [Failure(message, type_=f"check:{failed[0].name}" if failed else "failed")]
    elif result.status is not TestStatus.SUCCESS:
        case.result = [Error(message, type_=status)]
    properties = Properties()
    for key in ("run_id", "workflow_run_id", "attempt_count"):
        if result.metadata.get(key) is not None:
            properties.add_property(Property(key, str(result.metadata[key])))
    properties.add_property(Property("tokens", str(result.tokens_used)))
    properties.add_property(Property("cost", "unknown" if result.cost is None else f"{result.cost:g}"))
    for check in result.checks:
        score = "" if check.score is None else f" {check.score:.3f}"
        where = f"turn{check.turn}." if check.turn else ""
        properties.add_property(Property(f"check.{where}{check.name}", ("pass" if check.passed else "fail") + score))
    case.append(properties)
    if result.turns:  # a conversation is one testcase; its transcript is the case's output
        case.system_out = "\n".join(f"[{t.index}] user: {t.query}\n[{t.index}] app: {t.answer or ''}"
                                     for t in result.turns)
    return case
