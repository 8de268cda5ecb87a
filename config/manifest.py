"""The run manifest: a plan expanded into one Task per (workflow x case x repeat)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .checks import OpenAIJudge
from .expectations import Expectations, Gates
from .plan import ExecutionPolicy, TurnConfig, WorkflowConfig


class Task(BaseModel):
    """One case to run against one workflow.

    ``task_id`` is deterministic (``workflow/dataset/case`` plus ``#n`` for repeats), so
    the same plan always yields the same ids and runs can be compared case by case.
    ``attempt_count`` is filled in by the worker for each attempt (1-based).
    """

    model_config = ConfigDict(extra="forbid")

    task_id: str
    workflow_id: str
    dataset: str
    case_id: str
    scenario: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    repeat_index: int = 0
    attempt_count: int = 0
    expect: Expectations | None = None
    # Chat and completion apps: the message, files sent with it, or a whole conversation.
    query: str | None = None
    files: list[Any] = Field(default_factory=list)
    turns: list[TurnConfig] | None = None


class RunManifest(BaseModel):
    """Everything a run needs, with no secrets: API keys stay in the workers' env."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    plan_name: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    workflows: list[WorkflowConfig]
    cases: list[Task]
    execution_policy: ExecutionPolicy = Field(default_factory=ExecutionPolicy)
    gates: Gates = Field(default_factory=Gates)
    judges: list[OpenAIJudge] = Field(default_factory=list)
    # Local file inputs (sha256 -> path): staged in the run's Redis state for the workers.
    files: dict[str, str] = Field(default_factory=dict)

    def judge(self, judge_id: str) -> WorkflowConfig | OpenAIJudge:
        """The judge named ``judge_id``: a workflow with role: judge, or an OpenAI-compatible one."""
        for workflow in self.workflows:
            if workflow.id == judge_id and workflow.role == "judge":
                return workflow
        for judge in self.judges:
            if judge.id == judge_id:
                return judge
        raise KeyError(judge_id)

    def workflow(self, workflow_id: str) -> WorkflowConfig:
        for workflow in self.workflows:
            if workflow.id == workflow_id:
                return workflow
        raise KeyError(workflow_id)

    def batches(self) -> Iterator[list[Task]]:
        """The cases in chunks of ``execution_policy.batch_size`` (one chord each)."""
        size = self.execution_policy.batch_size
        for start in range(0, len(self.cases), size):
            yield self.cases[start : start + size]

    @property
    def batch_count(self) -> int:
        size = self.execution_policy.batch_size
        return (len(self.cases) + size - 1) // size
