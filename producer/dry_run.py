"""``run --dry-run`` / ``submit --dry-run``: the cases a plan would run, with their resolved
expectations (row templates filled in), and nothing published."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

from ..config.manifest import RunManifest

SHOWN = 160


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= SHOWN else text[: SHOWN - 3] + "..."


def print_dry_run(console: Console, manifest: RunManifest) -> int:
    """One block per case: its id, inputs and expectations. Returns the exit code (0)."""
    for task in manifest.cases:
        console.print(task.task_id, markup=False, highlight=False)
        console.print(f"  inputs: {_short(task.parameters)}", markup=False, highlight=False)
        if task.expect is not None:
            expect = task.expect.model_dump(mode="json", exclude_defaults=True)
            console.print(f"  expect: {_short(expect or {'status': 'succeeded'})}", markup=False, highlight=False)
    datasets = sorted({t.dataset for t in manifest.cases})
    console.print(f"dry run: {len(manifest.cases)} case(s) of plan {manifest.plan_name!r} in {len(datasets)} "
                  f"dataset(s) ({', '.join(datasets)}); nothing was published", highlight=False)
    return 0
