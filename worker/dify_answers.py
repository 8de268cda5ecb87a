"""What a Dify error answer means for the case and the run, read from Dify's source.

    kind        answers                                                 the case          the run
    throttle    400 invalid_param "Too many requests..." (Dify 1.x),    waits the fleet-  -
                429 too_many_requests (older Dify), any other 429       wide cooldown and
                                                                        tries again; no
                                                                        attempt is spent
    quota       429 rate_limit_error ("Workflow execution quota limit   as a throttle     a few in a row stop
                reached for tenant ...")                                                  it: quota exhausted
    rejected    401, 403, 404 (key rejected, app disabled, not a Dify   FAILED, not       a workflow whose
                API)                                                    retried           first few all end so
                                                                                          stops it
    permanent   400 invalid_param and the codes in PERMANENT_CODES      FAILED, not       -
                                                                        retried
    transient   any other 4xx code                                      FAILED, retried   -

Sources (langgenius/dify): the app's concurrency limit is ``AppInvokeQuotaExceededError`` raised
in ``api/core/app/features/rate_limiting/rate_limit.py``; it is a ``ValueError``
(``api/core/errors/error.py``) and ``api/libs/external_api.py`` registers the ``ValueError``
handler first, so it arrives as 400 invalid_param. The quota is ``InvokeRateLimitError`` in
``api/services/app_generate_service.py``. 401/403 come from ``validate_app_token`` in
``api/controllers/service_api/wraps.py``.
"""

from __future__ import annotations

from enum import Enum

# 4xx codes that will not heal on retry: the plan or the app needs fixing.
PERMANENT_CODES = frozenset(
    {
        "invalid_param",
        "not_workflow_app",
        "app_unavailable",
        "provider_not_initialize",
        "provider_quota_exceeded",
        "model_currently_not_support",
        "unauthorized",
        "forbidden",
        "not_found",
        "bad_request",
    }
)
# The start of AppInvokeQuotaExceededError's message (rate_limit.py), the only way to tell the
# app's concurrency limit from a real invalid parameter once both are 400 invalid_param.
THROTTLE_MESSAGE = "too many requests"


class AnswerKind(str, Enum):
    THROTTLE = "throttle"
    QUOTA = "quota"
    REJECTED = "rejected"
    PERMANENT = "permanent"
    TRANSIENT = "transient"

    @property
    def retryable(self) -> bool:
        return self in (AnswerKind.THROTTLE, AnswerKind.QUOTA, AnswerKind.TRANSIENT)

    @property
    def waits(self) -> bool:
        """Dify refused to start the run: wait the cooldown, spend no attempt."""
        return self in (AnswerKind.THROTTLE, AnswerKind.QUOTA)


def classify(http_status: int, code: str, message: str) -> AnswerKind:
    """The kind of a Dify error answer ``{code, message, status}`` with HTTP ``http_status``."""
    if http_status == 429:
        return AnswerKind.QUOTA if code == "rate_limit_error" else AnswerKind.THROTTLE
    if http_status == 400 and code == "invalid_param" and message.strip().lower().startswith(THROTTLE_MESSAGE):
        return AnswerKind.THROTTLE
    if http_status in (401, 403, 404):
        return AnswerKind.REJECTED
    if code in PERMANENT_CODES:
        return AnswerKind.PERMANENT
    return AnswerKind.TRANSIENT
