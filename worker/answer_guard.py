"""Dify answers that stop the whole run instead of being met once per case.

- **Rejected** (401, 403, 404, or the key variable missing on the worker): a workflow whose
  first FAIL_FAST_AFTER attempts all end so has a wrong key or URL; every other case would
  get the same answer. Once a call of that workflow was accepted, a rejection is that case's.
- **Quota** (429 rate_limit_error, Dify Cloud's spent workflow quota): QUOTA_STOP_AFTER in a
  row across the run mean the quota is exhausted; retrying each case would only spend the
  run's time.

The streaks live in Redis (``lua/answer_streak.lua``) because the fleet's workers see the
answers one by one. Accepted answers are told to Redis only when they change something (the
first per workflow in this process, or after a quota answer), so a healthy run pays one round
trip per workflow per process, not one per case.
"""

from __future__ import annotations

from pathlib import Path

import redis

from .dify_answers import AnswerKind
from .execution import AttemptOutcome
from .models import TaskStatus
from .store import run_key

FAIL_FAST_AFTER = 3
QUOTA_STOP_AFTER = 3
LUA = Path(__file__).with_name("lua")
# Outcomes that show Dify accepted the key and started (or refused for load) a run.
_ACCEPTED_KINDS = (AnswerKind.THROTTLE, AnswerKind.PERMANENT, AnswerKind.TRANSIENT)


class AnswerGuard:
    def __init__(self, client: redis.Redis, key_ttl: int) -> None:
        self.redis = client
        self.ttl = key_ttl
        self._streak = client.register_script((LUA / "answer_streak.lua").read_text())
        self._accepted: set[tuple[str, str]] = set()
        self._quota_seen: set[str] = set()

    def note(self, run_id: str, workflow_id: str, key_env: str | None, outcome: AttemptOutcome) -> str | None:
        """Count an attempt's answer; the reason to stop the run, when it is time to."""
        kind = outcome.kind
        if kind is AnswerKind.REJECTED:
            streak = self._count(run_id, workflow_id, "rejected")
            if streak >= FAIL_FAST_AFTER:
                where = f" (its key comes from {key_env})" if key_env else ""
                # The constant, not the streak: two answers may cross the line at once.
                return (f"stopped: workflow {workflow_id!r} was refused on its first {FAIL_FAST_AFTER} attempts: "
                        f"{outcome.error_message}; check its base_url and API key{where}")
        elif kind is AnswerKind.QUOTA:
            self._quota_seen.add(run_id)
            streak = self._count(run_id, workflow_id, "quota")
            if streak >= QUOTA_STOP_AFTER:
                return (f"stopped: the Dify quota is exhausted ({QUOTA_STOP_AFTER} answers in a row: "
                        f"{outcome.error_message}); "
                        "cases not started are cancelled")
        elif kind in _ACCEPTED_KINDS or outcome.status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED):
            if (run_id, workflow_id) not in self._accepted or run_id in self._quota_seen:
                self._count(run_id, workflow_id, "ok")
                self._accepted.add((run_id, workflow_id))
                self._quota_seen.discard(run_id)
                if len(self._accepted) > 10_000:
                    self._accepted.clear()
        return None

    def _count(self, run_id: str, workflow_id: str, kind: str) -> int:
        return int(self._streak(keys=[run_key(run_id, "answers")], args=[kind, workflow_id, self.ttl]))
