"""One reader for every Dify stream: Server-Sent Events, one JSON object per ``data:`` line.

Dify writes ``data: {json}\n\n`` per event and a bare ``event: ping\n\n`` as keep-alive
(``api/libs/helper.py``, ``compact_generate_response``); only ``data:`` lines carry events.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from ..deadline import Deadline
from .errors import json_object, timeout_error


def events(response: httpx.Response, deadline: Deadline) -> Iterator[dict[str, Any]]:
    """The stream's events in order; TaskTimeoutException once the deadline has passed."""
    for line in response.iter_lines():
        if deadline.expired():
            raise timeout_error(deadline)
        if line.startswith("data:"):
            yield json_object(line[5:].strip(), "stream event")
