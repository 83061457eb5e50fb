"""``tregpd validate``: simulate every study of the calibration dataset and write the validation report
(validation.csv, qualitative.csv, validation.md, one figure per study). Exit 0 even when checks fail, unless
``--strict``."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("validate", help="validate the model study by study against the calibration dataset",
                       description="Simulate every study regimen of fitting/data/calibration_regimens.toml "
                                   "(typical patient and a virtual population) and compare with every row of "
                                   "fitting/data/calibration.csv: a number is in tolerance when "
                                   "|ln predicted - ln observed| <= 2 SE. Writes validation.csv, "
                                   "qualitative.csv, validation.md, validation_<study>.png and provenance.json.")
    p.add_argument("--out", type=Path, default=Path("out/validate"), help="output folder (default out/validate)")
    p.add_argument("--population", type=int, default=None,
                   help="virtual patients per study (default 200)")
    p.add_argument("--seed", type=int, default=None, help="seed of the virtual population (default 20170614)")
    p.add_argument("--params", type=Path, default=None,
                   help="parameter file of the typical patient (default: bundled priors)")
    p.add_argument("--responder-threshold", type=float, default=1.5,
                   help="responder: measured Treg fold change >= this (column responder_fraction; default 1.5)")
    p.add_argument("--strict", action="store_true", help="exit 1 when any number or check fails")
    from tregpd.model.models_cli import add_model_option
    add_model_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tregpd.errors import TregpdError
    from tregpd.model.models_cli import check_model
    from .validate import DEFAULT_POPULATION, DEFAULT_SEED, validate

    seed = DEFAULT_SEED if args.seed is None else args.seed
    if seed < 0:
        raise TregpdError(f"--seed must be >= 0, got {seed}")
    n = DEFAULT_POPULATION if args.population is None else args.population
    if n < 2:
        raise TregpdError(f"--population must be >= 2, got {n}")
    if not args.responder_threshold > 0:
        raise TregpdError(f"--responder-threshold must be > 0, got {args.responder_threshold}")
    structure = check_model(getattr(args, "model", None))
    outcome = validate(args.params, population=n, seed=seed, out=args.out, model=structure.name,
                       responder_threshold=args.responder_threshold)
    print(f"model: {structure.name}")
    for path in outcome.files.values():
        print(f"wrote {path}")
    print(outcome.summary)
    return 1 if (args.strict and not outcome.all_pass) else 0
