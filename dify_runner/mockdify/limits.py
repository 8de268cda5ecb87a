"""The app-level limits the mock enforces, answered the way Dify answers them.

- **Concurrency** (an app's ``max_active_requests``): ``api/core/app/features/rate_limiting/
  rate_limit.py`` raises ``AppInvokeQuotaExceededError("Too many requests. Please try again
  later. The current maximum concurrent requests allowed for <app> is <n>.")``. That error is a
  ``ValueError`` (``api/core/errors/error.py``) and ``api/libs/external_api.py`` registers the
  ``ValueError`` handler before the specific one; flask-restx takes the first match, so Dify 1.x
  answers **HTTP 400 invalid_param** with that message. Older Dify answered 429
  ``too_many_requests`` (``limit_style="429"``).
- **Quota** (Dify Cloud's workflow executions per tenant): ``api/services/
  app_generate_service.py`` raises ``InvokeRateLimitError("Workflow execution quota limit reached
  for tenant <id>")``, answered **429 rate_limit_error**. It does not heal in seconds.
"""

from __future__ import annotations

from typing import Any, Literal

MOCK_APP_ID = "a1b2c3d4-0000-4000-8000-00000000mock"
MOCK_TENANT_ID = "5d2f6a4e-0000-4000-8000-00000000mock"
LimitStyle = Literal["dify1", "429"]


def concurrency_refusal(limit: int, style: LimitStyle) -> tuple[int, dict[str, Any]]:
    """The answer to a run over the app's concurrency limit: (HTTP status, body)."""
    message = ("Too many requests. Please try again later. The current maximum concurrent requests allowed "
               f"for {MOCK_APP_ID} is {limit}.")
    if style == "429":
        return 429, {"code": "too_many_requests", "message": message, "status": 429}
    return 400, {"code": "invalid_param", "message": message, "status": 400}


def quota_refusal() -> tuple[int, dict[str, Any]]:
    """The answer once the tenant's workflow quota is spent."""
    message = f"Workflow execution quota limit reached for tenant {MOCK_TENANT_ID}"
    return 429, {"code": "rate_limit_error", "message": message, "status": 429}
