"""The ``dify-runner`` argument parser: every command, option and help text."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import __version__
from ..config.settings import check_redis_url
from .compare import Thresholds
from .reports import FORMATS

LIMITS = Thresholds()  # compare's default thresholds


def seconds(text: str) -> float:
    """A number of seconds, 0 or more (argparse says which option when it is not)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0 or more")
    return value


def names(text: str) -> list[str]:
    """``a,b`` -> ["a", "b"]."""
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected one or more names separated by commas")
    return values


def broker_url(text: str) -> str:
    """A Redis URL, checked before anything connects (a bare host:port is refused here, not
    deep inside kombu with a traceback)."""
    try:
        return check_redis_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_waiting_options(p: argparse.ArgumentParser) -> None:
    """The options of every command that waits for a run (run, resume, wait)."""
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p.add_argument("--stall-timeout", type=seconds, metavar="SECONDS",
                   help="exit 3 when no case ends for this long (default: twice the visibility timeout; 0: never)")


def add_preflight_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-preflight", action="store_true",
                   help="publish without first asking each workflow's Dify (GET /info and /parameters) whether its "
                   "key, URL, app mode and input form fit the plan")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dify-runner",
        description="Run test plans against Dify workflows on Celery workers.",
        epilog="Exit codes: 0 all cases passed, 1 some did not, 2 bad input, 3 Redis/infrastructure, 130 interrupted. "
        "With no --broker and no DIFY_RUNNER_BROKER_URL, `run` uses the embedded default.",
    )
    parser.add_argument("--version", action="version", version=f"dify-runner {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what workers and the producer do")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=description or help_text)
        p.add_argument("--broker", metavar="URL", type=broker_url,
                       help="Redis URL shared with the workers (default: $DIFY_RUNNER_BROKER_URL)")
        return p

    def add_plan(p: argparse.ArgumentParser) -> None:
        p.add_argument("plan", help="the plan file (YAML)")
        p.add_argument("--data-root", action="append", type=Path, default=[], metavar="DIR",
                       help="data files may also be read under DIR (default: only under the plan's directory); "
                            "may be given more than once")
        p.add_argument("--only", type=names, metavar="DATASET[,DATASET]",
                       help="run only these datasets of the plan")
        p.add_argument("--tag", action="append", default=[], metavar="TAG",
                       help="run only cases tagged TAG (or in a dataset tagged TAG); may be given more than once")

    def add_dry_run(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dry-run", action="store_true",
                       help="print the cases and their resolved expectations; publish nothing")

    p = add("run", "validate a plan, run it, show progress, print a summary and write reports")
    add_plan(p)
    p.add_argument("--out", metavar="DIR", help="reports go to DIR/<run_id>/ (default: runs/)")
    add_dry_run(p)
    add_preflight_option(p)
    add_waiting_options(p)
    p = add("submit", "validate a plan and submit it to the fleet; prints the run id and returns")
    add_plan(p)
    add_dry_run(p)
    p.add_argument("--out", metavar="DIR", help="the run's manifest (for resume) goes to DIR/<run_id>/")
    add_preflight_option(p)
    p = add("resume", "run again the cases of a run that have no final result, then wait and report")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--retry-failed", action="store_true", help="also run FAILED, ERROR and TIMEOUT cases again")
    p.add_argument("--manifest", metavar="FILE", help="the run's manifest.jsonl (default: DIR/<run_id>/)")
    p.add_argument("--out", metavar="DIR", help="runs directory (default: runs/)")
    add_waiting_options(p)
    p = add("status", "show a run's state and counts (all recent runs without RUN_ID)")
    p.add_argument("run_id", nargs="?", metavar="RUN_ID")
    p = add("wait", "wait for a submitted run, then print its summary and write its reports")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--out", metavar="DIR", help="reports go to DIR/<run_id>/ (default: runs/)")
    add_waiting_options(p)
    p = add("cancel", "cancel a run from any terminal: unfinished cases end CANCELLED")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--reason", help="recorded as the run's stop reason")
    p = add("report", "write the reports of a finished run and print its summary")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--out", metavar="DIR", help="reports go to DIR/<run_id>/ (default: runs/)")
    p.add_argument("--format", default=",".join(FORMATS), metavar="LIST",
                   help=f"comma-separated, of {', '.join(FORMATS)} (default: all)")
    p = sub.add_parser("compare", help="compare two runs case by case; exit 1 on a regression beyond thresholds",
                       description="Compare run B with run A (each a run id under --runs-dir, a run directory or a "
                       "report.json): cases newly failing or fixed, pass rate, latency and cost. Exit 1 when B "
                       "regresses beyond the thresholds, so CI can gate on it.")
    p.add_argument("run_a", metavar="A", help="the baseline run")
    p.add_argument("run_b", metavar="B", help="the run to judge")
    p.add_argument("--runs-dir", metavar="DIR", help="where run ids are looked up (default: runs/)")
    # The defaults are the Thresholds model's own: one place says what "no regression" means.
    p.add_argument("--max-new-failures", type=int, default=LIMITS.max_new_failures, metavar="N",
                   help=f"newly failing cases allowed ({LIMITS.max_new_failures})")
    p.add_argument("--max-pass-rate-drop", type=float, default=LIMITS.max_pass_rate_drop, metavar="SHARE",
                   help=f"pass-rate drop allowed, as a share: 0.02 = two points ({LIMITS.max_pass_rate_drop:g})")
    p.add_argument("--max-latency-increase", type=float, default=LIMITS.max_latency_increase, metavar="RATIO",
                   help=f"p95 latency rise allowed, relative ({LIMITS.max_latency_increase:g} = "
                   f"{LIMITS.max_latency_increase:.0%}%; rises under {LIMITS.min_latency_increase:g} s never count)")
    p.add_argument("--max-cost-increase", type=float, default=LIMITS.max_cost_increase, metavar="RATIO",
                   help=f"rise of the mean cost per case allowed, relative ({LIMITS.max_cost_increase:g})")
    p.add_argument("--max-score-drop", type=float, default=None, metavar="POINTS",
                   help="drop of any check's mean score allowed, in points of 0..1: 0.05 (default: scores "
                        "are shown, not gated)")
    p = sub.add_parser("validate", help="check a plan and its data files without running it")
    add_plan(p)
    p.add_argument("--remote", action="store_true",
                   help="also ask each workflow's Dify (GET /info and /parameters, with the key from this "
                   "environment) whether the key, URL, app mode and every case's inputs fit")
    p = add("worker", "start a fleet worker (celery worker on the threads pool); other options go to celery",
            "Start a fleet worker: `celery worker` with dify-runner's app. Options this command does not "
            "know go to celery as given (e.g. --loglevel DEBUG, -n w1@%%h, --max-memory-per-child 200000); "
            "by default it sends task events (Flower), logs at INFO and names itself worker-<pid>@<host>.")
    p.add_argument("--pool", default="threads", choices=["threads", "prefork", "gevent", "solo"])
    p.add_argument("--concurrency", type=int, default=20)
    p = sub.add_parser("mock-dify", help="serve a mock of Dify's workflow API (for tests, benchmarks, demos)",
                       description="Serve a mock of Dify's workflow API. Cases steer it with the reserved input "
                       "key _mock, e.g. {\"_mock\": {\"status\": \"failed\"}} (see the README).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5001)
    p.add_argument("--latency-ms", type=float, default=100)
    p.add_argument("--jitter-ms", type=float, default=20)
    p.add_argument("--fail-rate", type=float, default=0.0, help="share of runs that end with status failed")
    p.add_argument("--concurrency-limit", type=int, metavar="N",
                   help="runs in flight before the app's limit refuses more (see --limit-style)")
    p.add_argument("--limit-style", choices=["dify1", "429"], default="dify1",
                   help="how that limit answers: dify1 = HTTP 400 invalid_param 'Too many requests...' (Dify 1.x, "
                   "default); 429 = 429 too_many_requests (older Dify)")
    p.add_argument("--quota", type=int, metavar="N", help="runs accepted before every run gets 429 rate_limit_error "
                   "(Dify Cloud's spent workflow quota)")
    p.add_argument("--max-execution-time", type=float, metavar="S",
                   help="stop runs older than S seconds as Dify's APP_MAX_EXECUTION_TIME does (status stopped)")
    p.add_argument("--app-mode", default="workflow", help="the mode of the --api-key keys' app")
    p.add_argument("--app", action="append", metavar="KEY=MODE",
                   help="another app: its key and mode (workflow, chat, advanced-chat, agent-chat, completion); "
                   "repeatable; default: app-chat=chat, app-chatflow=advanced-chat, app-agent=agent-chat, "
                   "app-completion=completion")
    p.add_argument("--input-form", metavar="JSON", help="the user_input_form /parameters reports (a JSON list)")
    p.add_argument("--api-key", action="append", help="accepted API key (repeatable; default $MOCK_DIFY_API_KEYS "
                   "or app-mock)")
    p.add_argument("--ping-interval", type=float, default=10.0, help="seconds between SSE pings")
    p.add_argument("--price-format", choices=["number", "string"], default="number")
    p.add_argument("--retry-after", type=float, help="send Retry-After with 429s (Dify itself does not)")
    return parser
