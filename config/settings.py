"""Settings read from the environment (never from the plan, which may be shared)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field

ENV_PREFIX = "DIFY_RUNNER_"


class Settings(BaseModel):
    """Process settings. Every field can be set with ``DIFY_RUNNER_<FIELD>``.

    With no ``broker_url`` the CLI runs on the embedded default: a private
    redis-server and an in-process worker that it starts and stops itself.
    """

    broker_url: str | None = None
    result_backend: str | None = None
    runs_dir: Path = Path("runs")
    # How long run state and results stay in Redis after a run is submitted.
    result_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    # Seconds before Redis hands an unacknowledged message to another worker: it must
    # exceed the longest attempt (retry waits are cut into short hops, kombu#337).
    visibility_timeout: int = Field(3600, ge=10)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values = {}
        for name in cls.model_fields:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw not in (None, ""):
                values[name] = raw
        return cls.model_validate(values)

    def state_url(self, broker_url: str) -> str:
        """The Redis of the result backend and the run store, for workers on ``broker_url``."""
        return self.result_backend or broker_url
