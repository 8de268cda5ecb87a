"""What a case must return to pass: the plan's ``expect:`` block.

A case whose workflow run succeeded but misses an expectation ends FAILED, with a
message naming the expectation and what came back. Expectation failures are not
retried: the answer came back and was judged (use ``repeat`` to measure flakiness).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .checks import NORMALIZATIONS, ApproxCheck, JudgeCheck, Normalization, SimilarityCheck
from .regex import compile_regex, schema_patterns
from .templates import is_template


class Expectations(BaseModel):
    """Checks on one case's result. Every field is optional; all given must hold."""

    model_config = ConfigDict(extra="forbid")

    # How the Dify workflow run must end. "failed" makes a negative test: the case passes when
    # the workflow itself reports failed/stopped (not when Dify refuses the call: a 401 or a
    # 400 is never what a negative test means), and fails when the workflow succeeds.
    status: Literal["succeeded", "failed"] = "succeeded"
    # Text the workflow's error must contain (only with status: failed).
    error_contains: str | list[str] | None = None
    # Which output variable the text checks read (default: the only output, if one).
    output: str | None = Field(None, min_length=1)
    equals: Any = None
    # Passes when the output equals any of these.
    any_of: list[Any] | None = Field(None, min_length=1)
    contains: str | list[str] | None = None
    contains_all: list[str] | None = Field(None, min_length=1)
    contains_any: list[str] | None = Field(None, min_length=1)
    not_contains: str | list[str] | None = None
    # How equals/any_of/contains* compare: any of case, whitespace, punctuation, unicode (NFKC);
    # ``true`` for all four.
    normalize: list[Normalization] | None = None
    regex: str | None = None
    approx: ApproxCheck | None = None
    similarity: SimilarityCheck | None = None
    judge: JudgeCheck | None = None
    # JSON Schema (draft 2020-12) for the whole outputs object.
    json_schema: dict[str, Any] | None = None
    # JSONPath expression over the outputs -> the value it must find.
    jsonpath: dict[str, Any] | None = None
    max_latency: float | None = Field(None, gt=0, strict=True)
    max_tokens: int | None = Field(None, ge=0, strict=True)
    max_cost: float | None = Field(None, ge=0, strict=True)

    @model_validator(mode="after")
    def _error_needs_failed(self) -> Expectations:
        if self.error_contains is not None and self.status != "failed":
            raise ValueError("error_contains needs status: failed (only a failed workflow run has an error)")
        return self

    @field_validator("normalize", mode="before")
    @classmethod
    def _all_or_list(cls, value: Any) -> Any:
        if value is True:
            return list(NORMALIZATIONS)
        if value is False:
            return None
        return [value] if isinstance(value, str) else value

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None and not is_template(value):  # a row template compiles once rendered
            compile_regex(value)  # RE2: linear time, so no check can hang a worker
        return value

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            from jsonschema import Draft202012Validator
            from jsonschema.exceptions import SchemaError

            try:
                Draft202012Validator.check_schema(value)
            except SchemaError as exc:
                raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
            for pattern in schema_patterns(value):
                compile_regex(pattern)
        return value

    @field_validator("jsonpath")
    @classmethod
    def _valid_paths(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            from jsonpath_ng.exceptions import JsonPathParserError
            from jsonpath_ng.ext import parse

            for expression in value:
                if "=~" in expression or "sub(/" in expression:
                    # jsonpath-ng runs these with Python's backtracking re, without a time bound.
                    raise ValueError(f"JSONPath {expression!r}: regular expressions inside JSONPath are not "
                                     "supported; check the value with expect.regex (and expect.output)")
                try:
                    parse(expression)
                except (JsonPathParserError, Exception) as exc:  # the parser raises plain Exceptions too
                    raise ValueError(f"not a valid JSONPath {expression!r}: {exc}") from None
        return value


class Gates(BaseModel):
    """Plan-level conditions that decide the run's exit code."""

    model_config = ConfigDict(extra="forbid")

    # The run passes when at least this share of cases passed (default: all of them).
    pass_rate: float = Field(1.0, ge=0, le=1, strict=True)
