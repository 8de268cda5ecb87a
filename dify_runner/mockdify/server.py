"""The mock Dify server: starlette routes under /v1, served by uvicorn (asyncio).

``dify-runner mock-dify --port 5001`` starts it. It checks API keys (401 on a wrong
one), validates requests like Dify (400 ``invalid_param``), answers blocking and
streaming runs with realistic event sequences, node prices and token counts, and can be
told to fail, throttle, hang or garble, globally by option or per case by ``_mock``.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .files import Uploads
from .http import json_body
from .judge import is_judge_run, judge_outputs, judge_routes
from .limits import LimitStyle, concurrency_refusal, quota_refusal
from .messages import MessageApps
from .parameters import DEFAULT_FORM, parameters_body
from .scenario import RESERVED_KEY, Behaviour, MockRun, error_body
from .stats import MockStats

MAX_RUNS_KEPT = 50_000


class MockOptions(BaseModel):
    """Server-wide behaviour (the `mock-dify` command's options)."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(100, ge=0)
    jitter_ms: float = Field(20, ge=0)
    fail_rate: float = Field(0.0, ge=0, le=1)
    concurrency_limit: int | None = Field(None, ge=1, description="runs in flight before the app's limit answers")
    limit_style: LimitStyle = Field("dify1", description="dify1: 400 invalid_param; 429: older Dify's answer")
    quota: int | None = Field(None, ge=0, description="runs accepted before 429 rate_limit_error (a spent quota)")
    max_execution_time: float | None = Field(
        None, gt=0, description="seconds before the mock stops a run itself, like APP_MAX_EXECUTION_TIME")
    app_mode: str = "workflow"
    # Keys whose app has another mode than app_mode (key -> workflow, chat, advanced-chat,
    # agent-chat or completion): one mock serves every kind of app, as one Dify does.
    apps: dict[str, str] = Field(default_factory=dict)
    input_form: list[dict[str, Any]] | None = Field(None, description="the user_input_form /parameters answers")
    api_keys: list[str] = Field(default_factory=lambda: ["app-mock"])
    ping_interval: float = Field(10.0, gt=0)
    price_format: Literal["string", "number"] = "number"
    retry_after: float | None = Field(None, ge=0, description="send Retry-After on 429s (Dify does not)")


def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class MockDify:
    """The server's state: options, runs, stats and the per-second rate window."""

    def __init__(self, options: MockOptions) -> None:
        self.options = options
        self.stats = MockStats()
        self.runs: OrderedDict[str, MockRun] = OrderedDict()
        self.by_task: dict[str, MockRun] = {}
        self.random = random.Random(0)
        self.accepted = 0  # runs accepted, for the quota
        self.failed: Counter[str] = Counter()  # fail_times answers given, by query
        self.forgotten: Counter[str] = Counter()  # forget_times conversations dropped, by query
        self.uploads = Uploads()
        self.messages = MessageApps(self)
        # Runs that may still go on in "Dify", whether or not their client listens.
        self.active: set[MockRun] = set()

    # -- helpers -----------------------------------------------------------------------

    def authorize(self, request: Request) -> tuple[str | None, Response | None]:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        self.stats.begin(request.url.path, key or None)
        if scheme.lower() != "bearer" or not key:
            message = "Authorization header must be provided and start with 'Bearer'"
            return None, self.reply(_json(error_body(401, "unauthorized", message), 401,
                                          {"WWW-Authenticate": 'Bearer realm="api"'}))
        if key not in self.options.api_keys and key not in self.options.apps:
            return None, self.reply(_json(error_body(401, "unauthorized", "Access token is invalid"), 401,
                                          {"WWW-Authenticate": 'Bearer realm="api"'}))
        return key, None

    def mode_of(self, key: str | None) -> str:
        return self.options.apps.get(key or "", self.options.app_mode)

    def reply(self, response: Response) -> Response:
        self.stats.statuses[response.status_code] += 1
        return response

    def throttled(self) -> Response | None:
        """Dify's refusals before a run starts: the tenant's quota, then the app's concurrency."""
        options = self.options
        headers = {"Retry-After": f"{options.retry_after:g}"} if options.retry_after is not None else None
        refusal = None
        if options.quota is not None and self.accepted >= options.quota:
            refusal = quota_refusal()
        elif options.concurrency_limit is not None and self.stats.in_flight >= options.concurrency_limit:
            refusal = concurrency_refusal(options.concurrency_limit, options.limit_style)
        if refusal is None:
            return None
        self.stats.refused[refusal[1]["code"]] += 1
        status, body = refusal
        return self.reply(_json(body, status, headers if status == 429 else None))

    def running(self) -> int:
        """Runs still going on: the stats' witness that nothing was left running in "Dify"."""
        now = time.monotonic()
        self.active = {run for run in self.active if run.running(now)}
        return len(self.active)

    def latency(self, behaviour: Behaviour) -> float:
        if behaviour.latency_ms is not None:
            return behaviour.latency_ms / 1000
        jitter = self.random.uniform(-self.options.jitter_ms, self.options.jitter_ms)
        return max(0.0, self.options.latency_ms + jitter) / 1000

    def remember(self, run: MockRun) -> None:
        self.runs[run.run_id] = run
        self.by_task[run.task_id] = run
        while len(self.runs) > MAX_RUNS_KEPT:
            _, old = self.runs.popitem(last=False)
            self.by_task.pop(old.task_id, None)

    # -- routes ------------------------------------------------------------------------

    async def run_workflow(self, request: Request) -> Response:
        key, denied = self.authorize(request)
        if denied is not None:
            return denied
        if self.mode_of(key) != "workflow":  # api/controllers/service_api/app/workflow.py
            return self.reply(_json(error_body(400, "not_workflow_app"), 400))
        body = await json_body(request)
        if not isinstance(body, dict):
            return self.reply(_json(error_body(400, "invalid_param",
                                               "Invalid JSON payload received or JSON payload is empty."), 400))
        inputs, user, mode = body.get("inputs"), body.get("user"), body.get("response_mode") or "blocking"
        if not isinstance(inputs, dict):
            return self.reply(_json({**error_body(400, "invalid_param", "inputs is required in input form"),
                                     "params": "inputs"}, 400))
        if not isinstance(user, str) or not user:
            return self.reply(_json(error_body(400, "invalid_param", "Arg user must be provided."), 400))
        if mode not in ("blocking", "streaming"):
            return self.reply(_json(error_body(400, "invalid_param", f"Invalid response_mode {mode!r}"), 400))
        inputs = dict(inputs)
        try:
            behaviour = Behaviour.model_validate(inputs.pop(RESERVED_KEY, None) or {})
        except ValidationError as exc:
            return self.reply(_json(error_body(400, "invalid_param", f"bad {RESERVED_KEY}: {exc}"), 400))
        throttled = self.throttled()
        if throttled is not None:
            return throttled
        query = inputs.get("query")
        if behaviour.fail_times and isinstance(query, str) and self.failed[query] < behaviour.fail_times:
            self.failed[query] += 1
            return self.reply(_json(error_body(500, "internal_server_error", "mock: fail_times"), 500))
        if behaviour.error is not None:
            headers = {"Retry-After": f"{behaviour.retry_after:g}"} if behaviour.retry_after is not None else None
            return self.reply(_json(behaviour.error.body(), behaviour.error.http_status, headers))
        if is_judge_run(inputs) and behaviour.outputs is None:
            behaviour = behaviour.model_copy(update={"outputs": judge_outputs(inputs)})
        status = behaviour.status or ("failed" if self.random.random() < self.options.fail_rate else "succeeded")
        run = MockRun(inputs, user, behaviour, status, self.options.price_format)
        self.accepted += 1
        if isinstance(inputs.get("query"), str):
            self.stats.queries[inputs["query"]] += 1
        if not behaviour.hang and not behaviour.trickle:
            run.ends_at = run.started + self.latency(behaviour)
        if self.options.max_execution_time is not None:
            run.stops_at = run.started + self.options.max_execution_time
            run.ends_at = run.stops_at if run.ends_at is None else min(run.ends_at, run.stops_at)
        self.remember(run)
        self.active.add(run)
        if behaviour.hang or behaviour.trickle:
            return self.reply(StreamingResponse(self._stall(request, run), media_type="application/json"))
        if mode == "blocking":
            return await self._blocking(request, run)
        return self.reply(StreamingResponse(self._stream(run), media_type="text/event-stream"))

    async def _blocking(self, request: Request, run: MockRun) -> Response:
        self.stats.enter_run()
        started = time.monotonic()
        try:
            await asyncio.sleep(max(0.0, (run.ends_at or started) - started))
        finally:
            self.stats.leave_run()
        self._end(run, started)
        if run.behaviour.garbage:
            return self.reply(Response("<html><body>502 Bad Gateway</body></html>", 200, media_type="text/html"))
        return self.reply(_json(run.blocking_body()))

    async def _stall(self, request: Request, run: MockRun) -> AsyncIterator[bytes]:
        self.stats.enter_run()
        try:
            if run.behaviour.trickle:
                yield b"{"
            while not await request.is_disconnected():
                await asyncio.sleep(0.2)
                if run.behaviour.trickle:
                    yield b" "
        finally:
            self.stats.leave_run()


    def _end(self, run: MockRun, started: float) -> None:
        if run.time_limited() and run.status != "paused":
            run.status = "stopped"
        run.finish(started)
        self.active.discard(run)

    async def _pause(self, run: MockRun, seconds: float) -> AsyncIterator[bytes]:
        """Sleep ``seconds`` (less once the run is asked to stop or reaches the time limit),
        sending Dify's bare ping every ping_interval meanwhile."""
        end = time.monotonic() + seconds
        if run.stops_at is not None:
            end = min(end, run.stops_at)
        next_ping = time.monotonic() + self.options.ping_interval
        while not run.stop_requested:
            now = time.monotonic()
            if now >= end:
                return
            if now >= next_ping:
                next_ping += self.options.ping_interval
                yield b"event: ping\n\n"
            await asyncio.sleep(min(0.05, end - now, max(0.0, next_ping - now)))

    async def _stream(self, run: MockRun) -> AsyncIterator[bytes]:
        behaviour = run.behaviour
        self.stats.enter_run()
        started = time.monotonic()
        try:
            yield _sse(run.workflow_started())
            start = run.node(1, "start", "Start")
            yield _sse(run.envelope("node_started", start))
            yield _sse(run.node_finished(start, llm=False))
            if behaviour.garbage:
                yield b"data: {this is not json\n\n"
                return
            per_node = self.latency(behaviour) / max(1, behaviour.llm_nodes)
            for index in range(behaviour.llm_nodes):
                node = run.node(2 + index, "llm", f"LLM {index + 1}")
                yield _sse(run.envelope("node_started", node))
                async for ping in self._pause(run, per_node):
                    yield ping
                if run.stop_requested or run.time_limited():
                    run.status = "stopped"
                    break
                if run.status == "paused":
                    self._end(run, started)
                    yield _sse(run.workflow_paused())  # and no workflow_finished
                    return
                if behaviour.truncate:
                    return  # the stream ends cleanly mid-run: no workflow_finished
                if behaviour.reset:
                    raise ConnectionResetError("mock: connection reset mid-stream")
                if behaviour.stream_error is not None:
                    yield _sse(run.stream_error(behaviour.stream_error))
                    return
                failed = run.status == "failed" and index == behaviour.llm_nodes - 1
                if not failed and index == behaviour.llm_nodes - 1:
                    for word in run.answer.split(" "):
                        yield _sse(run.text_chunk(word + " ", node))
                yield _sse(run.node_finished(node, llm=True, failed=failed))
            if run.status not in ("failed", "stopped"):
                end = run.node(2 + behaviour.llm_nodes, "end", "End")
                yield _sse(run.envelope("node_started", end))
                yield _sse(run.node_finished(end, llm=False))
            self._end(run, started)
            yield _sse(run.workflow_finished())
        finally:
            self.stats.leave_run()

    async def stop_task(self, request: Request) -> Response:
        _, denied = self.authorize(request)
        if denied is not None:
            return denied
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = {}
        if not isinstance(body, dict) or not body.get("user"):
            return self.reply(_json(error_body(400, "invalid_param", "Arg user must be provided."), 400))
        # Dify (AppQueueManager.set_stop_flag) stops only a task of this user, and answers
        # success whatever it did.
        run = self.by_task.get(request.path_params["task_id"])
        self.stats.stops += 1
        if run is not None and run.user == body["user"] and run.running(time.monotonic()):
            run.stop_requested = True
            self.active.discard(run)
            self.stats.stopped_runs += 1
        return self.reply(_json({"result": "success"}))

    async def run_detail(self, request: Request) -> Response:
        _, denied = self.authorize(request)
        if denied is not None:
            return denied
        run = self.runs.get(request.path_params["run_id"])
        if run is None:
            return self.reply(_json(error_body(404, "not_found"), 404))
        return self.reply(_json(run.detail_body()))

    async def parameters(self, request: Request) -> Response:
        _, denied = self.authorize(request)
        if denied is not None:
            return denied
        form = self.options.input_form if self.options.input_form is not None else DEFAULT_FORM
        return self.reply(_json(parameters_body(form)))

    async def info(self, request: Request) -> Response:
        key, denied = self.authorize(request)
        if denied is not None:
            return denied
        mode = self.mode_of(key)
        return self.reply(_json({"name": f"Mock {mode}", "description": "dify-runner's mock of Dify",
                                 "tags": [], "mode": mode, "author_name": "dify-runner"}))

    async def upload(self, request: Request) -> Response:
        _, denied = self.authorize(request)
        if denied is not None:
            return denied
        status, body = await self.uploads.receive(request)
        return self.reply(_json(body, status))

    async def mock_stats(self, request: Request) -> Response:
        return _json({**self.stats.as_dict(), "running": self.running()})

    async def mock_reset(self, request: Request) -> Response:
        self.stats.reset()
        self.active.clear()
        self.accepted = 0
        self.failed.clear()
        self.forgotten.clear()
        return _json({"result": "success"})


def create_mock_app(options: MockOptions | None = None) -> Starlette:
    mock = MockDify(options or MockOptions())
    app = Starlette(routes=[
        Route("/v1/workflows/run", mock.run_workflow, methods=["POST"]),
        Route("/v1/workflows/tasks/{task_id}/stop", mock.stop_task, methods=["POST"]),
        Route("/v1/workflows/run/{run_id}", mock.run_detail, methods=["GET"]),
        Route("/v1/chat-messages", mock.messages.chat, methods=["POST"]),
        Route("/v1/chat-messages/{task_id}/stop", mock.messages.stop, methods=["POST"]),
        Route("/v1/completion-messages", mock.messages.completion, methods=["POST"]),
        Route("/v1/completion-messages/{task_id}/stop", mock.messages.stop, methods=["POST"]),
        Route("/v1/files/upload", mock.upload, methods=["POST"]),
        Route("/v1/parameters", mock.parameters, methods=["GET"]),
        Route("/v1/info", mock.info, methods=["GET"]),
        *judge_routes(mock.authorize),
        Route("/_mock/stats", mock.mock_stats, methods=["GET"]),
        Route("/_mock/reset", mock.mock_reset, methods=["POST"]),
    ])
    app.state.mock = mock
    return app


def serve(options: MockOptions, host: str = "127.0.0.1", port: int = 5001) -> None:
    """Run the mock until interrupted."""
    import uvicorn

    uvicorn.run(create_mock_app(options), host=host, port=port, log_level="warning", access_log=False,
                backlog=4096, timeout_keep_alive=30)
