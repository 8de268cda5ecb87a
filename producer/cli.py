"""The ``dify-runner`` command line: one function per command (exit codes: see outcome)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import redis
from celery import Celery
from kombu.exceptions import OperationalError
from pydantic import ValidationError
from rich.console import Console

from ..config.errors import PlanError
from ..config.loader import LoadedPlan, format_validation_error, load_plan, select
from ..config.manifest import RunManifest
from ..config.plan import MOCK_TARGET
from ..config.settings import ENV_PREFIX, Settings, mask_url
from ..worker.store import RunInfo, RunStore, connect
from .cli_parser import build_parser
from .compare import Thresholds, compare, print_comparison, resolve_report
from .dry_run import print_dry_run
from .embedded import EmbeddedError, embedded_backend, mock_targets
from .expansion import expand
from .interrupts import PublishGuard, terminate_as_interrupt
from .mock_command import cmd_mock_dify
from .outcome import (
    EXIT_BAD_INPUT,
    EXIT_INFRA,
    EXIT_INTERRUPTED,
    EXIT_NOT_ALL_PASSED,
    EXIT_OK,
    UsageError,
    finish_run,
    finish_watched,
    incomplete_text,
    publish_or_cancel,
    state_text,
)
from .preflight import preflight
from .progress import cases_done, counts_text
from .reports import FORMATS
from .resume import RunBusy, resume_run
from .submission import attempt_policy_of, create_run, end_unpublished
from .waiting import PublishingIncomplete, RunLost, RunNotFound, RunStalled
from .watch import watch_run
from .worker_command import cmd_worker

MANIFEST_FILE = "manifest.jsonl"


def plan_warnings(loaded: LoadedPlan, settings: Settings, environ: dict[str, str]) -> list[str]:
    """Things that are valid but probably not what the user wants."""
    plan = loaded.plan
    warnings = []
    for workflow in plan.workflows:
        if workflow.api_key_env and not environ.get(workflow.api_key_env):
            warnings.append(
                f"workflow {workflow.id!r}: {workflow.api_key_env} is not set here; workers need it in their "
                "environment (and preflight cannot ask this workflow's Dify without it)"
            )
    longest = attempt_policy_of(plan.execution, settings).time_limits()[1]
    if longest >= settings.visibility_timeout:
        warnings.append(
            f"execution.stop_conditions.timeout_per_task: a case may run {longest:g} s, longer than the broker "
            f"visibility timeout ({settings.visibility_timeout} s, DIFY_RUNNER_VISIBILITY_TIMEOUT): Redis would "
            "hand a running case to a second worker"
        )
    return warnings


def _preflight(args: argparse.Namespace, console: Console, manifest: RunManifest,
               keys_required: bool) -> RunManifest:
    """Ask each workflow's Dify before anything is published (producer/preflight.py); the
    manifest with the app modes Dify reported."""
    if getattr(args, "no_preflight", False):
        return manifest
    modes: dict[str, str] = {}
    for warning in preflight(args.plan, manifest.workflows, manifest.cases, os.environ, keys_required=keys_required,
                             judges=manifest.judges, modes=modes):
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    workflows = [w.model_copy(update={"app_mode": modes[w.id]}) if w.id in modes else w for w in manifest.workflows]
    return manifest.model_copy(update={"workflows": workflows}) if modes else manifest


def _load(args: argparse.Namespace, console: Console, settings: Settings) -> LoadedPlan:
    loaded = select(load_plan(args.plan, args.data_root), args.only, args.tag)
    for warning in plan_warnings(loaded, settings, dict(os.environ)):
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    return loaded


@contextmanager
def _backend(args: argparse.Namespace, settings: Settings, concurrency: int) -> Iterator[tuple[Celery, RunStore, str]]:
    url = args.broker or settings.broker_url
    if url is None:
        with embedded_backend(concurrency, settings) as (app, store):
            yield app, store, "the embedded default (private redis-server, in-process worker)"
        return
    app = _fleet_app(url, settings)
    yield app, _fleet_store(url, settings), f"the fleet at {mask_url(url)}"


def _fleet_app(url: str, settings: Settings) -> Celery:
    from ..worker.app import create_app

    return create_app(url, settings)


def _fleet_store(url: str, settings: Settings) -> RunStore:
    # Fail fast on a wrong URL; past this point the store's client rides out outages.
    redis.Redis.from_url(settings.state_url(url), socket_connect_timeout=5).ping()
    return RunStore(connect(settings.state_url(url)), settings.result_ttl_seconds)


def _require_broker(args: argparse.Namespace, settings: Settings) -> str:
    url = args.broker or settings.broker_url
    if url is None:
        raise UsageError(
            f"`{args.command}` needs a Redis shared with the workers: pass --broker URL or set DIFY_RUNNER_BROKER_URL "
            "(the embedded default only lives as long as `dify-runner run`)"
        )
    return url


def _workers_alive(app: Celery) -> Callable[[], int | None]:
    """How many workers answer a ping (fleet mode's progress line); None when asking fails."""
    def count() -> int | None:
        try:
            return len(app.control.ping(timeout=0.5) or [])
        except Exception:  # noqa: BLE001 - a progress figure must never stop the wait
            return None
    return count


def _stall_after(args: argparse.Namespace, settings: Settings) -> float | None:
    """How long a run may go without any case ending before waiting gives up (exit 3).

    By default twice the visibility timeout: by then every message of a dead worker has
    come back, so a run still not moving has lost one (see README, Reliability). 0: never.
    """
    seconds = args.stall_timeout if args.stall_timeout is not None else 2 * settings.visibility_timeout
    return seconds or None


def cmd_validate(args: argparse.Namespace, console: Console, settings: Settings) -> int:
    loaded = _load(args, console, settings)
    plan = loaded.plan
    if args.remote:
        _preflight(args, console, expand(loaded), keys_required=True)
    console.print(
        f"plan {plan.name!r} is valid: {len(plan.workflows)} workflow(s), {len(plan.datasets)} dataset(s), "
        f"{loaded.case_count} case(s) after expansion",
        highlight=False,
    )
    return EXIT_OK


def cmd_run(args: argparse.Namespace, console: Console, settings: Settings) -> int:
    loaded = _load(args, console, settings)
    manifest = expand(loaded, consume=True)
    if args.dry_run:
        return print_dry_run(console, manifest)
    uses_mock = any(w.is_mock for w in manifest.workflows) or any(j.base_url == MOCK_TARGET for j in manifest.judges)
    if (args.broker or settings.broker_url) and uses_mock:
        raise UsageError("base_url: mock runs only on the embedded default; for a fleet, start "
                         "`dify-runner mock-dify --host 0.0.0.0` and use its URL")
    out_root = Path(args.out or settings.runs_dir)
    with _backend(args, settings, manifest.execution_policy.concurrency) as (app, store, where), \
            mock_targets(manifest) as manifest:
        fleet = where.startswith("the fleet")
        if fleet:
            _warn_persistence(console, store)
        manifest = _preflight(args, console, manifest, keys_required=not fleet)
        create_run(store, manifest, manifest_file=out_root / manifest.run_id / MANIFEST_FILE)
        # The run id comes first: whatever happens to publishing, the run can be found.
        console.print(f"run [bold]{manifest.run_id}[/]: {len(manifest.cases)} cases in "
                      f"{manifest.batch_count} batches on {where}", highlight=False)
        interrupted = publish_or_cancel(console, app, store, manifest)
        # The embedded default's run dies with this process: it can be cancelled, not left.
        watched = watch_run(console, store, manifest.run_id, out_root / manifest.run_id, not args.no_progress,
                            can_detach=fleet, stall_after=_stall_after(args, settings),
                            workers_alive=_workers_alive(app) if fleet else None)
        return finish_watched(console, store, watched, out_root, interrupted)


def cmd_submit(args: argparse.Namespace, console: Console, settings: Settings) -> int:
    url = _require_broker(args, settings)
    loaded = _load(args, console, settings)
    manifest = expand(loaded, consume=True)
    if args.dry_run:
        return print_dry_run(console, manifest)
    store = _fleet_store(url, settings)
    _warn_persistence(console, store)
    manifest = _preflight(args, console, manifest, keys_required=False)
    manifest_file = Path(args.out or settings.runs_dir) / manifest.run_id / MANIFEST_FILE
    create_run(store, manifest, manifest_file=manifest_file)
    print(manifest.run_id, flush=True)
    if publish_or_cancel(console, _fleet_app(url, settings), store, manifest):
        console.print(f"`dify-runner wait {manifest.run_id}` writes its reports", highlight=False)
        return EXIT_INTERRUPTED
    return EXIT_OK


def _warn_persistence(console: Console, store: RunStore) -> None:
    warning = store.persistence()
    if warning is not None:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)


def cmd_resume(args: argparse.Namespace, console: Console, settings: Settings) -> int:
    url = _require_broker(args, settings)
    out_root = Path(args.out or settings.runs_dir)
    store = _fleet_store(url, settings)
    manifest_file = Path(args.manifest) if args.manifest else out_root / args.run_id / MANIFEST_FILE
    app = _fleet_app(url, settings)
    started = time.monotonic()
    with PublishGuard(console) as guard:
        plan = resume_run(app, store, args.run_id, manifest_file, args.retry_failed, keep_going=guard.keep_going)
    interrupted = bool(plan.unsent)
    if interrupted:
        end_unpublished(store, args.run_id, plan.unsent, plan.batch_count, guard.reason)
    live = f"; {plan.live_batches} batch(es) still running are left to finish" if plan.live_batches else ""
    console.print(f"run {args.run_id}: {plan.resubmitted} case(s) submitted again; {plan.kept} kept{live}",
                  highlight=False)
    watched = watch_run(console, store, args.run_id, out_root / args.run_id, not args.no_progress,
                        stall_after=_stall_after(args, settings), workers_alive=_workers_alive(app))
    console.print(f"resume: {plan.resubmitted} case(s) run in {time.monotonic() - started:.2f} s", highlight=False)
    return finish_watched(console, store, watched, out_root, interrupted)


def _get_info(store: RunStore, run_id: str, out_root: Path | None = None) -> RunInfo:
    info = store.get_run(run_id)
    if info is None:
        # Submitted from here (its manifest is on disk) yet unknown to Redis: Redis lost it.
        if out_root is not None and (out_root / run_id / MANIFEST_FILE).is_file():
            raise RunLost(run_id)
        raise RunNotFound(run_id)
    return info


def cmd_status(args: argparse.Namespace, console: Console, settings: Settings) -> int:
    store = _fleet_store(_require_broker(args, settings), settings)
    run_ids = [args.run_id] if args.run_id else store.list_runs()
    for run_id in run_ids:
        info = _get_info(store, run_id)
        progress = store.progress(run_id)
        console.print(f"{run_id}  {info.plan_name}  {state_text(info)}  {cases_done(progress, info.total)}/"
                      f"{info.total}  {counts_text(progress, markup=False)}"
                      + (f"  ({info.stop_reason})" if info.stop_reason else ""), highlight=False, markup=False)
        if info.publishing_incomplete and not info.finished:
            console.print(f"  {incomplete_text(run_id, info.published_cases, info.total)}", highlight=False,
                          markup=False)
    if not run_ids:
        console.print("no runs in this Redis")
    return EXIT_OK


def cmd_wait(args: argparse.Namespace, console: Console, settings: Settings) -> int:
    url = _require_broker(args, settings)
    store = _fleet_store(url, settings)
    out_root = Path(args.out or settings.runs_dir)
    _get_info(store, args.run_id, out_root)
    watched = watch_run(console, store, args.run_id, out_root / args.run_id, not args.no_progress,
                        stall_after=_stall_after(args, settings),
                        workers_alive=_workers_alive(_fleet_app(url, settings)))
    return finish_watched(console, store, watched, out_root)


def cmd_report(args: argparse.Namespace, console: Console, settings: Settings) -> int:
    store = _fleet_store(_require_broker(args, settings), settings)
    info = _get_info(store, args.run_id, Path(args.out or settings.runs_dir))
    if not info.finished:
        raise UsageError(f"run {args.run_id} is still running ({info.batches_done}/{info.batch_count} batches done); "
                         "use `dify-runner wait`")
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UsageError(f"--format {args.format!r}: unknown format {', '.join(unknown) or '(none)'}; "
                         f"choose from {', '.join(FORMATS)}")
    return finish_run(console, store, info, Path(args.out or settings.runs_dir), formats)


def cmd_compare(args: argparse.Namespace, console: Console, settings: Settings) -> int:
    runs_dir = Path(args.runs_dir or settings.runs_dir)
    try:
        thresholds = Thresholds(max_new_failures=args.max_new_failures, max_pass_rate_drop=args.max_pass_rate_drop,
                                max_latency_increase=args.max_latency_increase,
                                max_cost_increase=args.max_cost_increase, max_score_drop=args.max_score_drop)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        option = "--" + str(error["loc"][0]).replace("_", "-")
        raise UsageError(f"{option} {error['input']!r}: {error['msg']}") from None
    comparison = compare(resolve_report(args.run_a, runs_dir), resolve_report(args.run_b, runs_dir), thresholds)
    print_comparison(console, comparison)
    return EXIT_NOT_ALL_PASSED if comparison.regressions else EXIT_OK


def cmd_cancel(args: argparse.Namespace, console: Console, settings: Settings) -> int:
    store = _fleet_store(_require_broker(args, settings), settings)
    info = _get_info(store, args.run_id)
    if info.finished:
        console.print(f"run {args.run_id} has already finished", highlight=False)
        return EXIT_OK
    reason = "cancelled with `dify-runner cancel`" + (f": {args.reason}" if args.reason else "")
    if not store.cancel(args.run_id, reason):
        console.print(f"run {args.run_id} was already cancelled", highlight=False)
        return EXIT_OK
    console.print(f"run {args.run_id} cancelled: cases not started end CANCELLED, streaming calls are stopped; "
                  f"`dify-runner wait {args.run_id}` shows the end", highlight=False)
    return EXIT_OK


COMMANDS = {
    "run": cmd_run, "submit": cmd_submit, "status": cmd_status, "wait": cmd_wait,
    "report": cmd_report, "cancel": cmd_cancel, "resume": cmd_resume, "validate": cmd_validate, "worker": cmd_worker,
    "mock-dify": cmd_mock_dify, "compare": cmd_compare,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "worker":
        parser.parse_args(argv)  # says which arguments are unknown, and exits 2
    args.celery_args = extra  # `worker`: what it does not know goes to celery
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # CI logs: no terminal width to honour, keep tables whole

    def error(text: str) -> None:
        # Plain text, never wrapped: paths and values must survive copy and paste.
        print(f"error: {text}", file=sys.stderr)

    terminate_as_interrupt()
    try:
        settings = Settings.from_env()
        return COMMANDS[args.command](args, console, settings)
    except (PlanError, UsageError) as exc:
        error(str(exc))
        return EXIT_BAD_INPUT
    except ValidationError as exc:
        error("invalid DIFY_RUNNER_* environment setting:\n" + "\n".join(
            f"  - {ENV_PREFIX}{line.upper().split(' ', 1)[0]} {line.split(' ', 1)[1] if ' ' in line else ''}"
            for line in format_validation_error(exc)))
        return EXIT_BAD_INPUT
    except RunNotFound as exc:
        error(f"no run {exc.args[0]!r} in this Redis (wrong id or broker, or expired)")
        return EXIT_BAD_INPUT
    except RunStalled as exc:
        run_id, seconds = exc.args
        error(f"run {run_id!r} made no progress for {seconds:g} s: no worker is alive (live workers give a dead "
              f"one's cases back, and publish lost messages again, by themselves). Start a worker, or "
              f"`dify-runner resume {run_id}` submits its unfinished cases again; `dify-runner status` shows it")
        return EXIT_INFRA
    except PublishingIncomplete as exc:
        error(f"run {exc.run_id!r}: {exc.cause}; " + incomplete_text(exc.run_id, exc.published, exc.total))
        return EXIT_INFRA
    except RunBusy as exc:
        error(str(exc))
        return EXIT_BAD_INPUT
    except RunLost as exc:
        error(f"Redis no longer has run {exc.args[0]!r} (restarted without persistence, or flushed): its results "
              f"there are lost. `dify-runner resume {exc.args[0]}` runs its unfinished cases again.")
        return EXIT_INFRA
    except (redis.RedisError, OperationalError, EmbeddedError, OSError) as exc:
        error(f"{type(exc).__name__}: {exc}")
        return EXIT_INFRA
    except KeyboardInterrupt:
        error("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
