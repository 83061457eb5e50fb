"""``tregpd variability``: residual error, between-patient variability estimated from the reported spreads
(Feng 2019 SDs, SAT0261 P values), responder fractions and virtual SAT0261 trials. Writes variability.csv,
variability.md and provenance.json (atomically)."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("variability", help="estimate between-patient variability, responders, virtual trials",
                       description="Fit the omegas of treg_baseline and il2_emax_treg to the between-patient "
                                   "spreads of Feng 2019 (mean +- SD) and SAT0261 (paired P values) with a stated "
                                   "residual error model; responder fractions; virtual SAT0261 trials (Wilcoxon "
                                   "week 24 vs 0). Writes variability.csv, variability.md, provenance.json.")
    p.add_argument("--out", type=Path, default=Path("out/variability"), help="output folder")
    p.add_argument("--params", type=Path, default=None, help="parameter file (default: bundled)")
    p.add_argument("--population", type=int, default=200, help="virtual patients per study in the fit")
    p.add_argument("--trials", type=int, default=200, help="virtual SAT0261 cohorts")
    p.add_argument("--patients", type=int, default=82, help="patients per virtual cohort")
    p.add_argument("--threshold", type=float, default=1.5, help="responder: Treg fold change >= this")
    p.add_argument("--seed", type=int, default=20170614)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time
    from tregpd.errors import TregpdError
    for name in ("population", "trials", "patients"):
        if getattr(args, name) < 2:
            raise TregpdError(f"--{name} must be >= 2, got {getattr(args, name)}")
    if args.seed < 0 or not args.threshold > 0:
        raise TregpdError("--seed must be >= 0 and --threshold > 0")
    from tregpd.model import default_parameters, load_parameters
    from .variability import run_variability, write_report
    t0 = time.perf_counter()
    params = load_parameters(args.params) if args.params else default_parameters()
    rep = run_variability(params, n_population=args.population, n_trials=args.trials, n_patients=args.patients,
                          seed=args.seed, threshold=args.threshold, progress=lambda m: print(m, flush=True))
    files = write_report(rep, args.out, params, time.perf_counter() - t0)
    for f in files.values():
        print(f"wrote {f}")
    print(rep["trial_summary"].to_string(index=False))
    return 0
