"""A run's lifecycle as the run store knows it: ``RunInfo``, and who publishes it.

created (publishing) -> published -> finished; or publishing -> interrupted (part of the plan
was never sent: ``resume`` sends it), or publishing -> closed (cancelled while publishing:
the cases never sent ended CANCELLED). A publisher marks the run with ``host:pid`` at every
chord; a mark that expired, or whose process is gone from this host, means nobody publishes.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from .statistics import RunStatistics

# The publisher renews its mark at every chord; a mark older than this means it is gone.
PUBLISHER_TTL_SECONDS = 15
PUBLISHING, PUBLISHED, INTERRUPTED, CLOSED = "publishing", "published", "interrupted", "closed"


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_alive(identity: str) -> bool:
    """False only when ``identity`` is a process of this host that no longer exists."""
    host, _, pid = identity.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's process: only its mark's expiry tells
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True



class RunInfo(BaseModel):
    """What the store knows of a run."""

    model_config = ConfigDict(extra="ignore")

    run_id: str
    plan_name: str
    total: int
    batch_count: int
    created_at: datetime
    # Cases per batch of the plan (the last may hold fewer); 0 for runs stored before it was.
    batch_size: int = 0
    state: str = "running"
    finished_at: datetime | None = None
    stop_reason: str | None = None
    statistics: RunStatistics | None = None
    batches_done: int = 0
    # The plan's gate: the share of cases that must pass for the run to pass.
    pass_rate: float = 1.0
    # Publishing (see PUBLISHING...): runs written before this field existed were published.
    publish_state: str = PUBLISHED
    published_batches: int = 0
    published_cases: int = 0
    publisher: str | None = None
    # Set by resume: when it reopened the run, and how many cases had a final result then.
    resumed_at: datetime | None = None
    resumed_done: int = 0

    @property
    def finished(self) -> bool:
        return self.state == "finished"

    @property
    def publishing_incomplete(self) -> bool:
        """Part of the plan was never sent, and nobody is sending it: ``resume`` must."""
        if self.publish_state == INTERRUPTED:
            return True
        return self.publish_state == PUBLISHING and (self.publisher is None or not _process_alive(self.publisher))

    def batch_cases(self, batch: int) -> int | None:
        """How many cases batch ``batch`` of the plan holds; None for a batch made by resume
        (its members are in the store) or when the run does not say."""
        plan_batches = -(-self.total // self.batch_size) if self.batch_size else 0
        if batch >= plan_batches:
            return None
        return min(self.batch_size, self.total - batch * self.batch_size)

    @property
    def missing_results(self) -> int:
        """Cases of the plan without a result in the finished run's statistics."""
        if self.statistics is None:
            return 0
        return max(0, self.total - self.statistics.total_tasks)
