"""``tregpd all``: the main job of the README.

1. fit the bundled SAT0261 cohort (typical patient + virtual population, profiles, identifiability) -> out/fit/
2. simulate the (assumed) reference regimen with the fitted parameters -> out/reference/ (trajectory CSV, PNG)
3. local sensitivities of the week-24 outcomes at the fitted typical patient -> out/sensitivity/
4. run the whole scenario library with the fitted parameters -> out/scenarios/ (per-scenario trajectories as
   CSV + Parquet, summary tables, figures; comparison table and figures across scenarios)
5. write out/SUMMARY.md: what was fitted, how well, and the scenario comparison, with every file's path.

Every file is written atomically with provenance (package version, parameters, regimen, seed).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

DEFAULT_SEED = 20170614


def register(sub) -> None:
    p = sub.add_parser("all", help="main job: fit the bundled cohort, run the scenario suite, write outputs",
                       description="Fit the bundled SAT0261 cohort, simulate the reference regimen with the fitted "
                                   "parameters, run the scenario library and write trajectories, tables and "
                                   "figures under --out.")
    p.add_argument("--out", type=Path, default=Path("out"), help="output folder (default out/)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of every virtual population")
    p.add_argument("--population", type=int, default=None,
                   help="override the population size of every scenario (default: each file's own)")
    p.add_argument("--quick", action="store_true",
                   help="small populations and no population fit (a smoke run of the whole pipeline)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tregpd.fitting import run_fit
    from tregpd.model.cli import run as run_simulate
    from tregpd.model.errors import TregpdError
    from tregpd.model.io import atomic_write_text
    from tregpd.scenarios import library_paths, run_library
    from tregpd.scenarios.questions import answers_markdown

    if args.seed < 0:
        raise TregpdError(f"--seed must be >= 0, got {args.seed}")
    if args.population is not None and args.population < 1:
        raise TregpdError(f"--population must be >= 1, got {args.population}")
    out = Path(args.out)
    t0 = time.perf_counter()
    population = args.population if args.population is not None else (20 if args.quick else None)

    print("== 1/4 fitting the bundled cohort (SAT0261 medians)", flush=True)
    fit = run_fit(None, out / "fit", mode="typical" if args.quick else "both", seed=args.seed)
    print(f"   fitted parameters -> {fit.files['parameters']} ({fit.runtime_s:.1f} s)")

    print("== 2/4 reference regimen with the fitted parameters", flush=True)
    run_simulate(argparse.Namespace(params=fit.files["parameters"], events=None, weeks=24.0, step_day=0.25,
                                    method="dopri5", rtol=1e-6, out=out / "reference"))

    print("== 3/4 local sensitivity of the week-24 outcomes at the fitted typical patient", flush=True)
    from tregpd.scenarios.scale_cli import write_sensitivity
    sens_files = write_sensitivity(fit.parameters, out / "sensitivity", methods=("local",), plot=True)

    print("== 4/4 scenario library with the fitted parameters", flush=True)
    lib = run_library(library_paths(), out / "scenarios", parameters=fit.parameters, progress=True,
                      population=population, figure_workers=None)
    print(lib.markdown)

    keep = ["week", "observable", "statistic", "value", "role", "model_typical", "relative_error",
            "model_population", "relative_error_population"]
    residuals = fit.residuals[[c for c in keep if c in fit.residuals.columns]]
    summary = [
        "# tregpd main job", "",
        f"Total run time {time.perf_counter() - t0:.0f} s; seed {args.seed}.", "",
        "## Fit of the SAT0261 medians", "",
        f"Parameters: `{fit.files['parameters']}`; report: `{fit.files['report']}`.", "",
        residuals.to_markdown(index=False) if hasattr(residuals, "to_markdown") and _has_tabulate()
        else "```\n" + residuals.to_string(index=False) + "\n```", "",
        "## Scenario comparison (fitted parameters)", "",
        lib.markdown, "",
        "## Local sensitivity (fitted typical patient)", "",
        "Normalised derivatives d ln(output) / d ln(parameter): "
        + ", ".join(f"`{p}`" for p in sens_files if str(p).endswith(".csv")), "",
        "## Study questions", "",
        answers_markdown(lib.outcomes), "",
        "## Assumptions", "",
        "- The Shanxi SLE regimen is not published in the sources read; the reference regimen is an assumption "
        "(see `tregpd.model.dosing.REFERENCE_ASSUMPTION`).",
        "- Fitted to two reported medians (weeks 0 and 24) and a soft 'Th17 unchanged' constraint; see the fit "
        "report for which parameters the data identify and which are fixed at literature priors.",
    ]
    path = atomic_write_text(out / "SUMMARY.md", "\n".join(summary) + "\n")
    print(f"wrote {path} ({time.perf_counter() - t0:.0f} s in all)")
    return 0


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False
