"""``dify-runner mock-dify``: serve the project's mock of Dify (every app mode) until interrupted."""

from __future__ import annotations

import argparse
import json
import os
from typing import get_args

from rich.console import Console

from ..config.plan import AppMode
from ..config.settings import Settings
from .outcome import EXIT_OK, UsageError


def cmd_mock_dify(args: argparse.Namespace, console: Console, settings: Settings) -> int:
    from ..mockdify.server import MockOptions, serve

    options = MockOptions(
        latency_ms=args.latency_ms, jitter_ms=args.jitter_ms, fail_rate=args.fail_rate,
        concurrency_limit=args.concurrency_limit, limit_style=args.limit_style, quota=args.quota,
        max_execution_time=args.max_execution_time, app_mode=args.app_mode,
        input_form=json.loads(args.input_form) if args.input_form else None,
        api_keys=args.api_key or os.environ.get("MOCK_DIFY_API_KEYS", "app-mock").split(","),
        ping_interval=args.ping_interval, price_format=args.price_format, retry_after=args.retry_after,
        apps=dict(_app_option(a) for a in args.app) if args.app else DEFAULT_MOCK_APPS,
    )
    console.print(f"mock Dify on http://{args.host}:{args.port}/v1 (stats: /_mock/stats)", highlight=False)
    serve(options, args.host, args.port)
    return EXIT_OK


DEFAULT_MOCK_APPS = {"app-chat": "chat", "app-chatflow": "advanced-chat", "app-agent": "agent-chat",
                     "app-completion": "completion"}


def _app_option(value: str) -> tuple[str, str]:
    key, sep, mode = value.partition("=")
    modes = get_args(AppMode)
    if not sep or not key or mode not in modes:
        raise UsageError(f"--app {value!r}: expected KEY=MODE with MODE one of {', '.join(modes)}")
    return key, mode
