"""The task message: what the producer sends for each case. JSON only, no secrets.

Kept lean (it is serialised once per case and again on every retry): the workflow
target is carried, the API key is not; workers read it from their environment by the
variable name ``api_key_env``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..config.manifest import Task
from ..config.plan import RateControl, RetryPolicy, WorkflowConfig


class AttemptPolicy(BaseModel):
    """The slice of the execution policy one case needs."""

    model_config = ConfigDict(extra="forbid")

    retry_policy: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout_per_task: float = 300.0
    max_failures: int | None = None
    concurrency: int = 5
    rate_control: RateControl | None = None


class CaseMessage(BaseModel):
    """The argument of the ``run_case`` task."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    batch: int
    task: Task
    workflow: WorkflowConfig
    policy: AttemptPolicy
    # "plan": the workflow's target (Dify or stub); "hook": a function registered in
    # this process by the Python API (ExecutorService / ConcurrentExecutor).
    executor: str = "plan"
    created_at: str | None = None

    def with_batch(self, batch: int) -> CaseMessage:
        return self if batch == self.batch else self.model_copy(update={"batch": batch})

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_defaults=True)
