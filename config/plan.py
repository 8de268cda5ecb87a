"""The test plan: what a user writes in YAML.

Every model forbids unknown keys, so a typo such as ``max_attempt`` is an error
instead of a silently ignored setting.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .checks import OpenAIJudge
from .expectations import Expectations, Gates
from .settings import check_target_url

IDENTIFIER = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
ENV_VAR_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,255}$"
STUB_TARGET = "stub"
# The embedded default starts the project's mock Dify server for workflows with this URL.
MOCK_TARGET = "mock"

Behavior = Literal["success", "failure", "timeout", "error"]
# Dify's app modes (``AppMode`` in api/models/model.py) and the names the UI gives them.
AppMode = Literal["workflow", "advanced-chat", "chat", "agent-chat", "completion"]
APP_MODE_ALIASES = {"chatflow": "advanced-chat", "chatbot": "chat", "agent": "agent-chat"}
CHAT_MODES = frozenset({"advanced-chat", "chat", "agent-chat"})
AppApi = Literal["workflow", "chat", "completion"]


def api_of(app_mode: str | None) -> AppApi:
    """The API family an app mode answers on (None: a workflow, the default)."""
    if app_mode in CHAT_MODES:
        return "chat"
    return "completion" if app_mode == "completion" else "workflow"
_FLAKY = re.compile(r"^flaky:(\d{1,3})$")


class StrictModel(BaseModel):
    """Base of every plan model: unknown keys are rejected, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RetryPolicy(StrictModel):
    """How often a case is tried and how long to wait between attempts."""

    max_attempts: int = Field(3, ge=1, le=100, strict=True)
    backoff_seconds: float = Field(2.0, ge=0, le=3600, strict=True)
    backoff_multiplier: float = Field(1.5, ge=1.0, le=100, strict=True)

    # Answers refusing to start a run for load (the app's concurrency limit, a quota) that one
    # case waits through before it ends ERROR; they are not attempts.
    max_throttled: int = Field(100, ge=1, le=100_000, strict=True)

    def countdown(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return self.backoff_seconds * self.backoff_multiplier ** (attempt - 1)

    def throttle_wait(self, throttled: int, retry_after: float | None = None, longest: float = 30.0) -> float:
        """The wait after a case's ``throttled``-th refusal for load (for a quota, the whole
        run's cooldown): the backoff, kept between 0.1 s (never a hot loop) and ``longest``,
        at least Retry-After."""
        wait = min(longest, max(0.1, self.countdown(throttled)))
        return max(wait, retry_after or 0.0)


class StopConditions(StrictModel):
    """When a case, or the whole run, gives up."""

    timeout_per_task: float = Field(300.0, gt=0, le=86400, strict=True)
    max_failures: int | None = Field(None, ge=1, strict=True)

    # The seeds address stop conditions like a dict (stop_conditions["timeout_per_task"]).
    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields:
            raise KeyError(key)
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in type(self).model_fields:
            raise KeyError(key)
        setattr(self, key, value)


class RateControl(StrictModel):
    """Request rate limits, enforced across the whole fleet (see the README).

    ``burst``: how many requests may start back to back before the rate applies (default 1:
    evenly spaced). ``scope``: one limit for this run, or one per Dify base URL shared by
    every run that targets it.
    """

    # The slowest rate the limiter holds is one request an hour (its keys expire with it).
    requests_per_second: float | None = Field(None, ge=1 / 3600, le=100_000, strict=True)
    requests_per_minute: float | None = Field(None, ge=1 / 60, le=6_000_000, strict=True)
    burst: int | None = Field(None, ge=1, le=100_000, strict=True)
    scope: Literal["run", "base_url"] = "run"


class ExecutionPolicy(StrictModel):
    """How a run is executed: concurrency, batching, retries and stop conditions."""

    concurrency: int = Field(5, ge=1, le=10_000, strict=True)
    batch_size: int = Field(10, ge=1, le=10_000, strict=True)
    retry_policy: RetryPolicy = Field(default_factory=RetryPolicy)
    stop_conditions: StopConditions = Field(default_factory=StopConditions)
    rate_control: RateControl | None = None


class StubConfig(StrictModel):
    """Behaviour of the built-in stub target, which answers without any HTTP server.

    ``task_behaviors`` maps a case id (or a full task id) to ``success``, ``failure``,
    ``timeout``, ``error`` or ``flaky:N`` (fails N attempts, then succeeds).
    """

    simulated_delay: float = Field(0.0, ge=0, le=3600, strict=True)
    failure_rate: float = Field(0.0, ge=0, le=1, strict=True)
    task_behaviors: dict[str, str] = Field(default_factory=dict)

    @field_validator("task_behaviors")
    @classmethod
    def _known_behaviors(cls, value: dict[str, str]) -> dict[str, str]:
        for key, behavior in value.items():
            if behavior not in ("success", "failure", "timeout", "error") and not _FLAKY.match(behavior):
                raise ValueError(
                    f"behavior {behavior!r} for {key!r} is not one of success, failure, "
                    "timeout, error, flaky:N"
                )
        return value


class WorkflowConfig(StrictModel):
    """One Dify workflow app (or the stub target) that cases run against."""

    id: str = Field(pattern=IDENTIFIER)
    base_url: str = Field(min_length=1, max_length=2048)
    api_key_env: str | None = Field(None, pattern=ENV_VAR_NAME)
    response_mode: Literal["streaming", "blocking"] = "streaming"
    user: str = Field("dify-runner", min_length=1, max_length=256)
    stub: StubConfig | None = None
    # "judge": the workflow grades other workflows' answers (expect.judge.by) and runs no
    # dataset itself; its inputs are rubric, answer, expected, query; its outputs score, reason.
    role: Literal["app", "judge"] = "app"
    # Which Dify API the app answers on: workflow (/workflows/run), a chat mode
    # (/chat-messages) or completion (/completion-messages). None: preflight asks Dify's
    # /info, and a worker that meets not_workflow_app asks it too.
    app_mode: AppMode | None = None

    @property
    def is_stub(self) -> bool:
        return self.base_url == STUB_TARGET

    @property
    def is_mock(self) -> bool:
        return self.base_url == MOCK_TARGET

    @property
    def api(self) -> AppApi:
        """The API family of the app: how a case is sent and its answer read."""
        return api_of(self.app_mode)

    @field_validator("app_mode", mode="before")
    @classmethod
    def _alias(cls, value: Any) -> Any:
        return APP_MODE_ALIASES.get(value, value) if isinstance(value, str) else value

    @field_validator("base_url")
    @classmethod
    def _url_or_stub(cls, value: str) -> str:
        return check_target_url(value, (STUB_TARGET, MOCK_TARGET), "api_key_env")

    @model_validator(mode="after")
    def _key_for_real_targets(self) -> WorkflowConfig:
        if not self.is_stub and not self.is_mock and self.api_key_env is None:
            raise ValueError(
                f"workflow {self.id!r} targets {self.base_url} and needs api_key_env "
                "(the NAME of the environment variable that holds its API key)"
            )
        if self.stub is not None and not self.is_stub:
            raise ValueError(f"workflow {self.id!r}: 'stub' settings need base_url: stub")
        if self.app_mode == "agent-chat" and self.response_mode == "blocking":
            raise ValueError(f"workflow {self.id!r}: an agent app answers only in streaming mode (Dify refuses "
                             "blocking calls to it); use response_mode: streaming")
        if self.role == "judge" and self.api != "workflow":
            raise ValueError(f"workflow {self.id!r}: a judge must be a workflow app (app_mode: workflow)")
        return self


class TurnConfig(StrictModel):
    """One message of a conversation: the user's query, inputs over the case's, its checks."""

    query: str = Field(min_length=1, max_length=100_000)
    inputs: dict[str, Any] = Field(default_factory=dict)
    # Files sent with the message (Dify's ``files``: an image for a vision model, ...).
    files: list[Any] = Field(default_factory=list, max_length=100)
    expect: Expectations | None = None


class CaseConfig(StrictModel):
    """One test case written inline in the plan."""

    id: str | None = Field(None, pattern=IDENTIFIER)
    inputs: dict[str, Any] = Field(default_factory=dict)
    # A chat or completion app's message (else the ``query`` input is sent as the message).
    query: str | None = Field(None, min_length=1, max_length=100_000)
    files: list[Any] = Field(default_factory=list, max_length=100)
    # A conversation: the turns go to one chat app in order, each with the conversation_id
    # Dify returned; ``expect`` then checks the last answer and the conversation's totals.
    turns: list[TurnConfig] | None = Field(None, min_length=1, max_length=100)
    scenario: str | None = Field(None, max_length=256)
    expect: Expectations | None = None
    tags: list[str] = Field(default_factory=list)
    # Values only the expectations' row templates read, never sent to Dify (a data file's
    # ``expect_columns`` land here).
    expect_values: dict[str, Any] = Field(default_factory=dict)


class DatasetConfig(StrictModel):
    """A named set of cases: inline ``cases`` and/or rows of a CSV or JSONL ``file``."""

    name: str = Field(pattern=IDENTIFIER)
    workflows: list[str] | None = Field(None, min_length=1)
    scenario: str | None = Field(None, max_length=256)
    cases: list[CaseConfig] = Field(default_factory=list)
    file: Path | None = None
    id_column: str | None = Field(None, min_length=1, max_length=256)
    # Columns of the data file that only expectations read (``{{ expected }}``): taken out
    # of the inputs sent to Dify; a row where one is missing or empty is a plan error.
    expect_columns: list[str] = Field(default_factory=list)
    # Expectations for every case of the dataset that has none of its own; row templates
    # (``{{ column }}``) read each case's inputs and expect_columns.
    expect: Expectations | None = None
    tags: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _has_cases(self) -> DatasetConfig:
        if not self.cases and self.file is None:
            raise ValueError(f"dataset {self.name!r} needs 'cases' or a 'file'")
        return self


class TestPlan(StrictModel):
    """The whole plan file."""

    __test__ = False  # not a pytest test class

    name: str = Field(pattern=IDENTIFIER)
    description: str | None = Field(None, max_length=10_000)
    workflows: list[WorkflowConfig] = Field(min_length=1)
    datasets: list[DatasetConfig] = Field(min_length=1)
    repeat: int = Field(1, ge=1, le=10_000, strict=True)
    execution: ExecutionPolicy = Field(default_factory=ExecutionPolicy)
    gates: Gates = Field(default_factory=Gates)
    # LLM judges on OpenAI-compatible endpoints (a Dify judge is a workflow with role: judge).
    judges: list[OpenAIJudge] = Field(default_factory=list)

    @property
    def app_workflows(self) -> list[WorkflowConfig]:
        """The workflows datasets run against by default (every one that is not a judge)."""
        return [w for w in self.workflows if w.role == "app"]

    def judge_ids(self) -> list[str]:
        return [w.id for w in self.workflows if w.role == "judge"] + [j.id for j in self.judges]

    @model_validator(mode="after")
    def _references(self) -> TestPlan:
        # Counters and sets, not list.count: a plan of 100,000 workflows validates in linear time.
        ids = Counter(w.id for w in self.workflows)
        for dup in sorted(i for i, n in ids.items() if n > 1):
            raise ValueError(f"workflows: id {dup!r} is used more than once")
        names = Counter(d.name for d in self.datasets)
        for dup in sorted(n for n, count in names.items() if count > 1):
            raise ValueError(f"datasets: name {dup!r} is used more than once")
        judges = self.judge_ids()
        for dup in sorted(i for i, n in Counter(judges).items() if n > 1):
            raise ValueError(f"judges: id {dup!r} is used more than once (by a workflow or a judge)")
        if not self.app_workflows:
            raise ValueError("workflows: every workflow has role: judge; at least one must be an app to test")
        for index, dataset in enumerate(self.datasets):
            for ref in dataset.workflows or []:
                if ref not in ids:
                    raise ValueError(
                        f"datasets[{index}].workflows: dataset {dataset.name!r} refers to unknown "
                        f"workflow {ref!r} (known: {', '.join(list(ids)[:20])}{', ...' if len(ids) > 20 else ''})"
                    )
                if ref in judges:
                    raise ValueError(f"datasets[{index}].workflows: {ref!r} is a judge (role: judge), "
                                     "it grades answers and runs no dataset")
            expects = [(f"datasets[{index}].expect", dataset.expect)]
            expects += [(f"datasets[{index}].cases[{i}].expect", c.expect) for i, c in enumerate(dataset.cases)]
            for where, expect in expects:
                problem = judge_problem(expect, judges)
                if problem:
                    raise ValueError(f"{where}.judge.by: {problem}")
        return self

    def workflow(self, workflow_id: str) -> WorkflowConfig:
        return next(w for w in self.workflows if w.id == workflow_id)


def judge_problem(expect: Expectations | None, judges: list[str]) -> str | None:
    """Why ``expect.judge.by`` names no judge of the plan, or None."""
    if expect is None or expect.judge is None or expect.judge.by in judges:
        return None
    known = ", ".join(judges) or "none: add a workflow with role: judge, or a judges: entry"
    return f"{expect.judge.by!r} is not a judge of this plan (judges: {known})"
