"""The task message: what the producer sends for each case. JSON only, no secrets.

Kept lean (it is serialised once per case and again on every retry): the workflow
target is carried, the API key is not; workers read it from their environment by the
variable name ``api_key_env``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..config.checks import OpenAIJudge
from ..config.manifest import Task
from ..config.plan import RateControl, RetryPolicy, WorkflowConfig

# A wait for the run's cooldown or a rate-limit instant longer than this is not slept on a
# worker thread: the case goes back to the queue until then (other runs get the thread).
# Short: a run limited to R per second keeps about R x LONG_WAIT / 2 threads asleep.
LONG_WAIT = 0.25
SOFT_LIMIT_GRACE = 5.0
HARD_LIMIT_GRACE = 10.0


class AttemptPolicy(BaseModel):
    """The slice of the execution policy one case needs."""

    model_config = ConfigDict(extra="forbid")

    retry_policy: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout_per_task: float = 300.0
    max_failures: int | None = None
    concurrency: int = 5
    rate_control: RateControl | None = None
    # The longest a delivery waits for its slot, cooldown and rate instant before it goes back
    # to the queue (the producer's DIFY_RUNNER_ADMISSION_WAIT): Celery's time limits include it.
    admission_wait: float = Field(30.0, gt=0)

    def time_limits(self) -> tuple[float, float]:
        """Celery's (soft, hard) time limits for one delivery of a case.

        They only back up the attempt's own deadline (prefork enforces them; threads cannot),
        and Celery counts them from the task's start, which includes admission: so they are
        the attempt's timeout plus the longest admission (two waits of at most LONG_WAIT past
        the slot) plus a grace for stopping the abandoned Dify run.
        """
        soft = self.timeout_per_task + self.admission_wait + 2 * LONG_WAIT + SOFT_LIMIT_GRACE
        return soft, soft + HARD_LIMIT_GRACE


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
    # The judge that grades this case (expect.judge.by): a Dify workflow or an OpenAI-compatible
    # endpoint, with its key's variable name, never the key.
    judge: WorkflowConfig | OpenAIJudge | None = None

    def with_batch(self, batch: int) -> CaseMessage:
        return self if batch == self.batch else self.model_copy(update={"batch": batch})

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_defaults=True)
