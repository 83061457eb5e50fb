"""``tregpd fit``: fit a cohort (default: the bundled SAT0261 medians) and write the fitted parameter file, the
report, figures and the residual table."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("fit", help="fit model parameters to cohort medians (typical patient and/or population)",
                       description="Fit the model to cohort summary statistics (tidy CSV: week, observable, "
                                   "statistic, value, n, source[, rel_se]) and write fitted_parameters.toml, "
                                   "fit_report.txt, fit.png, profiles.png, residuals.csv and provenance.json.")
    p.add_argument("cohort", nargs="?", type=Path, default=None,
                   help="cohort CSV; default: the bundled SAT0261 seed cohort")
    p.add_argument("--out", type=Path, default=Path("out/fit"), help="output folder (default out/fit)")
    p.add_argument("--mode", choices=["typical", "population", "both"], default="both")
    p.add_argument("--seed", type=int, default=None, help="seed of the virtual population (default 20170614)")
    p.add_argument("--params", type=Path, default=None, help="prior parameter file (default: bundled)")
    p.add_argument("--free", default=None,
                   help="comma-separated parameters to fit (default: those flagged fitted in the parameter file)")
    p.add_argument("--patients", type=int, default=None, help="virtual patients in the population fit (300)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes for the profile likelihoods (default: one per available core; 1 = serial); "
                        "the profiles do not depend on it")
    p.add_argument("--emcee", type=int, default=0, metavar="STEPS",
                   help="also sample the posterior with lmfit's emcee interface for STEPS steps (slow; off)")
    p.add_argument("--accept-poor-fit", action="store_true",
                   help="write the fitted parameters even when the goodness-of-fit check fails (a fitted "
                        "statistic more than 3 SE from the model, no convergence, or a parameter pinned at a "
                        "bound); without it such a fit exits with status 2 and writes only the report, residuals "
                        "and figures")
    from tregpd.model.models_cli import add_model_option
    add_model_option(p)
    p.set_defaults(func=run)


#: the files of a ``tregpd fit`` run (an earlier run's are replaced together; a fitted parameter file left
#: from an earlier run would be taken for this run's result)
FIT_FILES = ("fitted_parameters.toml", "fitted_parameters_typical.toml", "fit_report.txt", "residuals.csv",
             "fit.png", "profiles.png", "provenance.json", "posterior*")


def run(args: argparse.Namespace) -> int:
    from tregpd.errors import TregpdError
    from tregpd.model.models_cli import check_model
    from .workflow import DEFAULT_POPULATION_SIZE, DEFAULT_SEED, run_fit

    seed = DEFAULT_SEED if args.seed is None else args.seed
    if seed < 0:
        raise TregpdError(f"--seed must be >= 0, got {seed}")
    n = DEFAULT_POPULATION_SIZE if args.patients is None else args.patients
    if n < 10:
        raise TregpdError(f"--patients must be >= 10, got {n}")
    if args.workers is not None:
        from tregpd.scenarios.backends import available_cpus
        limit = available_cpus()
        if not 1 <= args.workers <= limit:
            raise TregpdError(f"--workers must be between 1 and the {limit} CPUs available on this machine, got "
                              f"{args.workers}")
    if args.emcee < 0:
        raise TregpdError(f"--emcee must be >= 0, got {args.emcee}")
    structure = check_model(getattr(args, "model", None))
    free = None
    if args.free:
        free = tuple(s.strip() for s in args.free.split(",") if s.strip())
    from tregpd.rundir import RunDir
    from .workflow import PoorFitError
    poor = None
    # one run: staged under --out, moved into place as a whole with MANIFEST.json last; a poor fit is a
    # complete run too (report, residuals, figures; no parameter file), committed before the error is raised
    with RunDir(args.out, "tregpd fit", owns=FIT_FILES) as run:
        try:
            outcome = run_fit(args.cohort, out_dir=run.path, mode=args.mode, seed=seed, parameters=args.params,
                              free=free, n_patients=n, emcee_steps=args.emcee,
                              accept_poor_fit=args.accept_poor_fit, model=structure.name,
                              workers=args.workers)
        except PoorFitError as exc:
            poor = exc
    if poor is not None:
        raise PoorFitError(run.final_text(str(poor)), poor.outcome)
    outcome.files = {k: run.final(p) for k, p in outcome.files.items()}
    res = outcome.residuals
    fit_rows = res[res["role"] == "fitted"]
    print(f"cohort: {outcome.typical.problem.cohort.origin}; model: {structure.name}")
    dropped = outcome.typical.problem.dropped_free
    if dropped:
        print(f"note: not read by model {structure.name}, so not fitted: {', '.join(dropped)}")
    for r in fit_rows.itertuples():
        line = (f"  week {r.week:g} {r.observable} {r.statistic}: observed {r.value:.4g}, typical "
                f"{r.model_typical:.4g} ({r.residual_typical_se:+.2f} SE)")
        if "model_population" in res:
            line += f", population {r.model_population:.4g} ({r.residual_population_se:+.2f} SE)"
        print(line)
    for name, text in outcome.typical.decisions.items():
        print(f"  {name}: {text.split(' - ')[0]}")
    print(f"verdict: {outcome.verdict.summary()}")
    for label, path in outcome.files.items():
        print(f"wrote {path}")
    print(f"done in {outcome.runtime_s:.1f} s")
    return 0
