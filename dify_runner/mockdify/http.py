"""Reading a request's JSON body, shared by the mock's Dify and OpenAI-compatible routes."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request


async def json_body(request: Request) -> Any:
    """The parsed body, or None when it is not JSON."""
    try:
        return json.loads(await request.body())
    except ValueError:
        return None
