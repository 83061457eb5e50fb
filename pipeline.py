"""``tregpd all``: the main job of the README.

1. joint calibration: every model structure fitted to the calibration dataset (all public evidence,
   fitting/data/calibration.csv), compared by AIC/BIC; the chosen structure profiled; calibrated parameters
   -> out/calibration/
2. validation, study by study, with the calibrated parameters -> out/validate/ (table, qualitative checks,
   one figure per study)
3. SAT0261 regimen hypotheses: how much the conclusions move with the unknown regimen -> out/hypotheses/, and
   between-patient variability, residual error, responders, virtual SAT0261 trials -> out/variability/
   (both skipped with --quick)
4. fit of the bundled SAT0261 cohort alone (the seed study's medians) -> out/fit/
5. the (assumed) reference regimen with the calibrated parameters -> out/reference/
6. local sensitivities of the week-24 outcomes at the calibrated typical patient -> out/sensitivity/
7. the whole scenario library with the calibrated parameters -> out/scenarios/
8. out/SUMMARY.md: model comparison, validation table, what was fitted and how well, the scenario comparison.
9. out/report.html: the same as one self-contained page with every figure embedded (:mod:`tregpd.report`).

Every file is written atomically with provenance (package version, parameters, regimen, seed).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

DEFAULT_SEED = 20170614
#: the files of a ``tregpd all`` run under out/ (an earlier run's that this one does not write are removed)
ALL_FILES = ("SUMMARY.md", "report.html", "calibration/*", "validate/*", "hypotheses/*", "variability/*",
             "fit/*", "reference/*", "sensitivity/*", "scenarios/*")

#: assumptions of the main job as a whole (Markdown; SUMMARY.md and report.html list them)
ASSUMPTIONS = (
    "The Shanxi SLE regimen is not published in the sources read; the reference regimen is an assumption "
    "(see `tregpd.model.dosing.REFERENCE_ASSUMPTION`); the regimen hypotheses show how much it matters.",
    "Per-m2 doses of other trials use a body-surface area of 1.7 m2; RECALLED numbers carry loose SEs "
    "(fitting/data/CALIBRATION.md).",
    "Qualitative facts enter the calibration as soft constraints (hinge residuals on a stated scale).",
)


def register(sub) -> None:
    p = sub.add_parser("all", help="main job: calibrate on all evidence, validate, run the scenario suite",
                       description="Calibrate the model structures on all public evidence, validate study by "
                                   "study, fit the bundled SAT0261 cohort, simulate the reference regimen, run "
                                   "the scenario library and write trajectories, tables and figures under --out.")
    p.add_argument("--out", type=Path, default=Path("out"), help="output folder (default out/)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of every virtual population")
    p.add_argument("--population", type=int, default=None,
                   help="override the population size of every scenario (default: each file's own)")
    p.add_argument("--quick", action="store_true",
                   help="no profiles, no regimen hypotheses, small populations, no population fit (a smoke run)")
    from tregpd.model.cli import add_verify_options
    add_verify_options(p, "patients of the reference run and of each scenario")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tregpd.fitting import run_fit
    from tregpd.fitting.calibrate import run_calibration
    from tregpd.fitting.validate import validate
    from tregpd.model.cli import run as run_simulate
    from tregpd.errors import TregpdError
    from tregpd.io import atomic_write_text
    from tregpd.model.parameters import load_parameters
    from tregpd.scenarios import library_paths, run_library
    from tregpd.scenarios.questions import answers_markdown

    if args.seed < 0:
        raise TregpdError(f"--seed must be >= 0, got {args.seed}")
    if args.population is not None and args.population < 1:
        raise TregpdError(f"--population must be >= 1, got {args.population}")
    from tregpd.scenarios.cli import _verify_option
    verify = _verify_option(args)       # (n, tol, seed) or None; bad values refused before any work
    out = Path(args.out)
    t0 = time.perf_counter()
    from tregpd.rundir import InPlaceRun
    # out/ reads as incomplete (no MANIFEST.json) until the end; the previous run's files not written again
    # are removed then, and the manifest of the whole out/ is written last
    whole = InPlaceRun(out, "tregpd all", owns=ALL_FILES).begin()
    population = args.population if args.population is not None else (20 if args.quick else None)
    n_steps = 7 if args.quick else 9
    step = iter(range(1, n_steps + 1))

    print(f"== {next(step)}/{n_steps} joint calibration of the model structures on all public evidence", flush=True)
    cal = run_calibration(out / "calibration", do_profiles=not args.quick, n_points=5,
                          progress=lambda msg: print(msg, flush=True), population=0 if args.quick else 40)
    params = load_parameters(cal["files"]["parameters"])
    chosen = cal["chosen"].problem.model
    print(f"   chosen structure {chosen}; calibrated parameters -> {cal['files']['parameters']} "
          f"({cal['runtime_s']:.0f} s)")

    print(f"== {next(step)}/{n_steps} validation, study by study (calibrated parameters)", flush=True)
    val = validate(params, population=20 if args.quick else 200, seed=args.seed, out=out / "validate",
                   model=chosen)
    print(f"   {val.summary}")

    hyp_md = None
    if not args.quick:
        print(f"== {next(step)}/{n_steps} SAT0261 regimen hypotheses", flush=True)
        from tregpd.fitting.hypotheses_cli import run as run_hypotheses
        run_hypotheses(argparse.Namespace(out=out / "hypotheses", model=chosen, only=None, max_nfev=400,
                                          workers=1))
        hyp_md = (out / "hypotheses" / "hypotheses.md").read_text()

    var_md = None
    if not args.quick:
        print(f"== {next(step)}/{n_steps} between-patient variability, residual error, responders", flush=True)
        from tregpd.fitting.variability_cli import run as run_variability
        run_variability(argparse.Namespace(out=out / "variability", params=cal["files"]["parameters"],
                                           population=200, trials=200, patients=82, threshold=1.5,
                                           seed=args.seed))
        var_md = (out / "variability" / "variability.md").read_text()

    print(f"== {next(step)}/{n_steps} fit of the SAT0261 cohort medians alone", flush=True)
    fit = run_fit(None, out / "fit", mode="typical" if args.quick else "both", seed=args.seed,
                  accept_poor_fit=True)
    print(f"   seed-only fit -> {fit.files['parameters']} ({fit.runtime_s:.1f} s)")

    print(f"== {next(step)}/{n_steps} reference regimen with the calibrated parameters", flush=True)
    run_simulate(argparse.Namespace(params=cal["files"]["parameters"], events=None, weeks=24.0, step_day=0.25,
                                    method="dopri5", rtol=1e-6, out=out / "reference",
                                    verify=verify[0] if verify else 0, verify_tol=verify[1] if verify else 1e-4,
                                    verify_seed=verify[2] if verify else 0))

    print(f"== {next(step)}/{n_steps} local sensitivity of the week-24 outcomes at the calibrated typical patient",
          flush=True)
    from tregpd.scenarios.scale_cli import write_sensitivity
    sens_files = write_sensitivity(params, out / "sensitivity", methods=("local",), plot=True)

    print(f"== {next(step)}/{n_steps} scenario library with the calibrated parameters", flush=True)
    hyp_csv = out / "hypotheses" / "hypotheses.csv"
    from tregpd.scenarios.uncertainty import calibrated_names
    # the median band draws the parameters the profiles identify; without profiles (--quick) there are none
    band_kinds = None if calibrated_names(params, chosen) else ["patients"]
    lib = run_library(library_paths(), out / "scenarios", parameters=params, progress=True,
                      population=population, hypotheses=hyp_csv if hyp_md and hyp_csv.is_file() else None,
                      bands=band_kinds, verify=verify)
    for o in lib.outcomes:
        if o.verify is not None:
            print("   " + o.verify.message())
    print(lib.markdown)

    keep = ["week", "observable", "statistic", "value", "role", "model_typical", "relative_error",
            "model_population", "relative_error_population"]
    residuals = fit.residuals[[c for c in keep if c in fit.residuals.columns]]
    vnum = val.numbers[["study", "observable", "mapping", "day", "observed", "se", "predicted", "predicted_p5",
                        "predicted_p95", "z", "in_tolerance"]]
    vqual = val.qualitative[["study", "criterion", "predicted", "pass"]]
    summary = [
        "# tregpd main job", "",
        f"Total run time {time.perf_counter() - t0:.0f} s; seed {args.seed}. The same results as one page with "
        "every figure: `report.html` (re-made by `tregpd report`).", "",
        "## Model comparison (joint calibration on all public evidence)", "",
        cal["markdown"].split("\n", 1)[1].strip(), "",
        f"Calibrated parameter file: `{cal['files']['parameters']}`; report: `{cal['files']['report']}`.", "",
        f"## Validation, study by study ({val.summary})", "",
        "Predicted = the population statistic the study reports (median of per-patient values, or ratio of "
        "medians); p5/p95 = between-patient 5-95 % range; z = (ln predicted - ln observed)/SE; in tolerance "
        "when |z| <= 2. Figures: `validate/validation_<study>.png`.", "",
        _table(vnum), "",
        _table(vqual), "",
    ]
    if hyp_md:
        summary += ["## SAT0261 regimen hypotheses", "", hyp_md, ""]
    if var_md:
        summary += ["## Variability, residual error and responders", "", var_md, ""]
    summary += [
        "## Fit of the SAT0261 medians alone", "",
        f"Parameters: `{fit.files['parameters']}`; report: `{fit.files['report']}`. The seed study's two medians "
        "alone, fitted with the chosen structure: the calibration above, not this fit, drives the scenarios.", "",
        _table(residuals), "",
        "## Scenario comparison (calibrated parameters)", "",
        _bands_note(lib, hyp_md is not None), "",
        lib.markdown, "",
        "Figure with both bands: `scenarios/bands.png`; every scenario's `trajectories.csv` and `summary.csv` "
        "carry a `band` column (`between_patients_5_95`, `median_uncertainty_90`).", "",
        "## Local sensitivity (calibrated typical patient)", "",
        "Normalised derivatives d ln(output) / d ln(parameter): "
        + ", ".join(f"`{p}`" for p in sens_files if str(p).endswith(".csv")), "",
        "## Study questions", "",
        answers_markdown(lib.outcomes), "",
        "## Assumptions", "",
        *(f"- {a}" for a in ASSUMPTIONS),
    ]
    path = atomic_write_text(out / "SUMMARY.md", "\n".join(summary) + "\n")
    print(f"wrote {path}")
    from tregpd.report import write_report
    report = write_report(out)
    print(f"wrote {report} (self-contained HTML report; re-make it with `tregpd report --out {out}`)")
    manifest = whole.finish()
    print(f"{manifest} lists every file of the run (check with `tregpd verify {out}`) "
          f"({time.perf_counter() - t0:.0f} s in all)")
    return 0


def _bands_note(lib, with_hypotheses: bool) -> str:
    """What the two bands of the scenario comparison are, with the draws actually used."""
    bands = [o.band for o in lib.outcomes if getattr(o, "band", None) is not None]
    text = ("Two bands. **Between patients**: 5–95 % of the virtual patients at the point estimate, in "
            "[brackets]. **Uncertainty of the median**: in {braces}, ")
    if bands:
        b = bands[0]
        text += (f"5–95 % of the population median over {b.n_draws} parameter draws of the calibrated parameters "
                 f"({', '.join(b.parameters)}; multivariate normal with lmfit's covariance of the joint calibration; "
                 f"{b.population} virtual patients per draw, the same in every draw)")
        text += (", widened to the median under each SAT0261 regimen hypothesis's refitted parameters"
                 if with_hypotheses and b.hypotheses else "; the regimen hypotheses are not included in this run")
        text += (". The parameters the calibration only bounds (role `bounded`) and the priors are held fixed "
                 "(an assumption: the band is a lower bound on the parameter uncertainty).")
    else:
        text += ("not computed in this run: no parameter has role `calibrated` (the profiles that identify them "
                 "are skipped with --quick).")
    return text


def _table(frame) -> str:
    if _has_tabulate():
        return frame.to_markdown(index=False)
    return "```\n" + frame.to_string(index=False) + "\n```"


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False
