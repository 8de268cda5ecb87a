"""Regular expressions from plans, run in linear time.

A plan is a shared file and its patterns run on every worker: Python's backtracking ``re``
takes exponential time on patterns such as ``(a+)+$`` (measured here: a 40-character answer
held a worker at 100% CPU for good, out of reach of ``timeout_per_task`` on the threads
pool, and SIGINT could not stop the embedded run). RE2 (google-re2, Google's engine) runs
every pattern in time linear in the text and refuses the few constructs that cannot be
(backreferences, lookaround): ``validate`` names them.
"""

from __future__ import annotations

import functools
from typing import Any

import re2

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # the error is raised (and reported with the plan's field), not logged


@functools.lru_cache(maxsize=1024)
def compile_regex(pattern: str) -> Any:
    """The compiled pattern (cached per process); ValueError says why RE2 refuses it."""
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"regular expression {pattern!r} is not supported: {reason} (patterns run on RE2, "
                         "in linear time: no backreferences or lookaround)") from None


def search(pattern: str, text: str) -> bool:
    return compile_regex(pattern).search(text) is not None


def schema_patterns(schema: Any) -> list[str]:
    """Every ``pattern`` and ``patternProperties`` key in a JSON Schema."""
    found: list[str] = []
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                found.append(node["pattern"])
            if isinstance(node.get("patternProperties"), dict):
                found.extend(node["patternProperties"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found
