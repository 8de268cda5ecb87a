"""Settings read from the environment (never from the plan, which may be shared)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator

ENV_PREFIX = "DIFY_RUNNER_"
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+socket")
# Which environment variables a plan's api_key_env may name (a worker sends that variable's
# value to the plan's base_url, and a plan is a shared file): comma-separated glob patterns
# in this variable replace the default; DIFY_RUNNER_* (the runner's own settings) never.
KEY_VARIABLES_ENV = ENV_PREFIX + "KEY_VARIABLES"
DEFAULT_KEY_VARIABLES = ("*DIFY*KEY*",)


def check_target_url(value: str, specials: tuple[str, ...], what: str) -> str:
    """``value`` without its trailing slash if it is one of ``specials`` or an http(s) URL without
    credentials; ValueError otherwise (the shown value never repeats a secret)."""
    if value in specials:
        return value
    if not re.match(r"^https?://[^\s/]+", value):
        names = ["an http(s) URL", *(repr(special) for special in specials)]
        shown = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]
        raise ValueError(f"must be {shown}, got {value!r}")
    if "@" in urlsplit(value).netloc:
        # It would be written into manifests and reports, and httpx would send it as Basic
        # auth in place of the key.
        raise ValueError(f"must not hold credentials (user:password@), got {mask_url(value)!r}: the API key "
                         f"comes from {what}")
    return value.rstrip("/")


def mask_url(url: str) -> str:
    """The URL with its credentials (``user:password@``) hidden, for messages and logs."""
    return re.sub(r"(://)[^/@]*@", r"\1***@", url)


def key_variable_refusal(name: str, environ: Mapping[str, str]) -> str | None:
    """Why a worker must not send variable ``name`` as an API key ("is ..."), or None when it may.

    The rule: the name matches one of the patterns in DIFY_RUNNER_KEY_VARIABLES (default
    ``*DIFY*KEY*``: DIFY_API_KEY, SUPPORT_DIFY_KEY, ...) and does not start with DIFY_RUNNER_.
    """
    raw = environ.get(KEY_VARIABLES_ENV, "")
    patterns = tuple(p.strip() for p in raw.split(",") if p.strip()) or DEFAULT_KEY_VARIABLES
    rule = (f"API keys are read only from variables matching {', '.join(patterns)} "
            f"({KEY_VARIABLES_ENV} on the workers), never from {ENV_PREFIX}*")
    if name.startswith(ENV_PREFIX):
        return f"is one of dify-runner's own settings, not an API key: {rule}"
    if not any(fnmatchcase(name, pattern) for pattern in patterns):
        return f"is not a variable meant to hold a Dify API key: {rule}"
    return None


def check_redis_url(url: str) -> str:
    """``url`` if it is a Redis URL Celery and redis-py can use; ValueError (without the
    URL's password) otherwise."""
    shown = mask_url(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(f"{shown!r} is not a valid URL") from None
    if parts.scheme not in REDIS_SCHEMES or not (parts.netloc or parts.path):
        raise ValueError(f"{shown!r} is not a Redis URL: use redis://[:password@]host:port/db (or rediss://, "
                         "unix:///path/to/socket)")
    return url


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
    # The longest a case waits on a worker for its concurrency slot before it goes back to the
    # queue; set on the producer, it travels in the task messages (Celery's time limits count it).
    admission_wait: float = Field(30.0, gt=0, le=600)

    @field_validator("broker_url", "result_backend")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        return None if value is None else check_redis_url(value)

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
