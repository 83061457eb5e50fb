"""``tregpd scenarios run|list|validate|question`` and ``tregpd dosefind``."""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from tregpd.model.models_cli import add_model_option


def _common(p, out_default: str) -> None:
    p.add_argument("--params", type=Path, default=None,
                   help="parameter file (TOML) used for every scenario, e.g. a fitted set; default: each file's "
                        "own 'parameters' (the literature priors for the bundled library)")
    p.add_argument("--out", type=Path, default=Path(out_default), help=f"output folder (default {out_default})")
    p.add_argument("--population", type=int, default=None,
                   help="override every scenario's population size (e.g. 20 for a quick look)")
    p.add_argument("--step-day", type=float, default=None, help="override the trajectory grid spacing (days)")
    p.add_argument("--ratio-target", type=float, default=None,
                   help="Th17/Treg target for 'time with ratio below target' (default: each file's ratio_target, "
                        "0.29 = the study's week-24 median; e.g. 0.76 = top of the healthy range)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-figures", action="store_true",
                   help="write no PNG (tables and trajectories only; the quickest, for scripted use); the same "
                        "as 'figures = false' in every scenario file")
    p.add_argument("--bands", nargs="+", choices=("patients", "median"), default=None,
                   help="bands the outputs carry (default: each file's 'bands', both unless it says otherwise): "
                        "'patients' = between-patient range, 5-95%% of virtual patients; 'median' = uncertainty "
                        "of the median over parameter draws of the calibrated parameters")
    p.add_argument("--compare-week", type=float, default=None,
                   help="week at which the comparison reports values (default: each file's compare_week, 24 or "
                        "the end); outcomes over treatment always use each regimen's own treatment window")
    p.add_argument("--hypotheses", type=Path, default=None,
                   help="hypotheses.csv of `tregpd hypotheses`: the median band then also spans the medians "
                        "under each SAT0261 regimen hypothesis's refitted parameters")
    add_model_option(p, overrides=" or each file's 'model' key, which this option overrides")


def register(sub) -> None:
    p = sub.add_parser("scenarios", help="run, list and validate dosing scenarios (TOML files)",
                       description="Dosing scenarios: simulate a virtual population per scenario file and write "
                                   "trajectories (CSV, Parquet), summaries, figures and a comparison table.")
    ssub = p.add_subparsers(dest="action", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])

    r = ssub.add_parser("run", help="run scenario files and compare them",
                        description="Simulate each scenario and write out/<name>/ (trajectories.csv/.parquet, "
                                    "summary.csv, trajectories.png, provenance.json) plus comparison.csv/.md/.png "
                                    "and dose_response.png; prints the comparison as a Markdown table.")
    r.add_argument("files", nargs="*", type=Path, help="scenario TOML files")
    r.add_argument("--library", action="store_true", help="run the whole bundled library")
    _common(r, "out/scenarios")
    from tregpd.model.cli import add_verify_options
    add_verify_options(r, "patients of each scenario")
    r.set_defaults(func=run_command)

    ls = ssub.add_parser("list", help="list the bundled scenario library")
    ls.set_defaults(func=list_command)

    v = ssub.add_parser("validate", help="check scenario files without simulating")
    v.add_argument("files", nargs="+", type=Path)
    v.set_defaults(func=validate_command)

    from .catalog import QUESTIONS
    q = ssub.add_parser("question", help="compare the library scenarios that answer one study question",
                        description="Study questions: " + "; ".join(f"{k} ({v})" for k, v in QUESTIONS.items())
                                    + ". 'all' runs each.")
    q.add_argument("question", help="one of: " + ", ".join(QUESTIONS) + ", or all")
    _common(q, "out/questions")
    q.set_defaults(func=question_command)

    d = sub.add_parser("dosefind", help="rank IL-2 regimens by the comparison's multi-criteria rule",
                       description="Grid search over IL-2 dose, interval and course length (same virtual "
                                   "population for every regimen), ranked by the scenario comparison's rule: "
                                   "regimens flagged for Treg above the healthy maximum, a 95th-percentile "
                                   "selectivity margin (peak IL-2 / intermediate-receptor EC50) above the limit or "
                                   "too much IL-2 come last; then the fraction of patients in the healthy range at "
                                   "the end of treatment, the mean Th17/Treg on treatment and the cumulative dose. "
                                   "Reports the best regimen against the (assumed) reference regimen.")
    d.add_argument("--max-selectivity", type=float, default=0.03,
                   help="limit on the 95th-percentile peak C_IL2 / EC50_E (default 0.03 = ~3%% intermediate-"
                        "receptor occupancy at peak)")
    d.add_argument("--max-cumulative-miu", type=float, default=None, help="limit on total IL-2 (MIU)")
    d.add_argument("--max-treg", type=float, default=64.58,
                   help="Treg flag: median Treg (end of treatment, on-treatment peak, week 24) above this, or 25%% "
                        "of patients above it, cells/uL (default 64.58, top of the healthy range; 0 = no limit)")
    d.add_argument("--doses", type=float, nargs="+", default=None, help="IL-2 doses, MIU (default 0.25 ... 3)")
    d.add_argument("--intervals", type=float, nargs="+", default=None, help="intervals, days (default 1 2 3 7 14)")
    d.add_argument("--course-days", type=float, nargs="+", default=None,
                   help="dosing days per 28-day cycle (default 5 14 28; 28 = continuous)")
    d.add_argument("--sirolimus-mg", type=float, default=0.5, help="background sirolimus dose, mg (0 = none)")
    d.add_argument("--sirolimus-interval-day", type=float, default=2.0, help="background sirolimus interval, days")
    d.add_argument("--weeks", type=float, default=24.0, help="simulated duration in weeks (default 24)")
    d.add_argument("--population", type=int, default=200, help="virtual patients per regimen (default 200)")
    d.add_argument("--seed", type=int, default=20170614)
    d.add_argument("--params", type=Path, default=None, help="parameter file (TOML); default: literature priors")
    d.add_argument("--out", type=Path, default=Path("out/dosefind"), help="output folder")
    d.add_argument("--no-progress", action="store_true")
    add_model_option(d)
    d.set_defaults(func=dosefind_command)


def _warnings_to_stderr():
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)
    warnings.showwarning = show


def _load_params(path):
    if path is None:
        return None
    from tregpd.model.parameters import load_parameters
    return load_parameters(path)


def _model_name(name):
    """``--model``: None, or the name of a known structure (else one line listing the known ones)."""
    if name is None:
        return None
    from tregpd.model.models_cli import check_model
    return check_model(name).name


#: files a scenario batch writes at the top of --out (an earlier run's are replaced together)
LIBRARY_FILES = ("comparison.*", "comparison_*.png", "answers.md", "answer.md", "summary_all.csv",
                 "dose_response.png")


def _band_options(args) -> dict:
    from tregpd.errors import ScenarioError
    cw = getattr(args, "compare_week", None)
    if cw is not None and not (cw > 0 and cw == cw and cw < float("inf")):
        raise ScenarioError(f"--compare-week must be a number of weeks > 0, got {cw!r}")
    return {"bands": getattr(args, "bands", None), "compare_week": cw, "hypotheses": getattr(args, "hypotheses", None)}


def _verify_option(args) -> tuple | None:
    """(n, tol, seed) of ``--verify`` or None; bad values refused before any work."""
    n = getattr(args, "verify", 0) or 0
    tol = getattr(args, "verify_tol", 1e-4)
    from tregpd.model.verify import _check_n
    _check_n(n, tol)
    return (n, tol, getattr(args, "verify_seed", 0)) if n else None


def run_command(args: argparse.Namespace) -> int:
    from tregpd.errors import ScenarioError
    from .runner import run_library
    from .schema import library_paths
    _warnings_to_stderr()
    from .schema import load_scenario
    from tregpd.rundir import RunDir
    files = list(args.files)
    if args.library:
        files += library_paths()
    if not files:
        raise ScenarioError("give scenario files (e.g. scenarios/library/*.toml) or --library")
    # every file, name and option checked before any work (a bad second scenario leaves nothing behind)
    scenarios = [load_scenario(f) for f in files]
    names = [s.name for s in scenarios]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ScenarioError(f"scenario names must be unique (they name the output folders); repeated: {dup}")
    params = _load_params(args.params)
    model = _model_name(getattr(args, "model", None))
    verify = _verify_option(args)
    # one run: staged under --out and moved into place as a whole, MANIFEST.json last
    with RunDir(args.out, "tregpd scenarios run", owns=LIBRARY_FILES + tuple(f"{n}/*" for n in names)) as rd:
        run = run_library(scenarios, rd.path, parameters=params, progress=not args.no_progress,
                          population=args.population, output_step_day=args.step_day,
                          ratio_target=args.ratio_target, figures=not args.no_figures, figure_workers=None,
                          model=model, verify=verify, **_band_options(args))
    run.files = [rd.final(f) for f in run.files]
    for o in run.outcomes:
        if o.verify is not None:
            print(o.verify.message())
    print(run.markdown)
    failed = int(run.table["n_failed"].sum())
    if failed:
        print(f"note: {failed} virtual patients failed to integrate across scenarios (see each summary.csv, "
              "metric n_failed, and provenance.json 'failures'); they are excluded from the statistics",
              file=sys.stderr)
    top = [Path(f).name for f in run.files if Path(f).parent == Path(args.out)]
    print(f"{len(run.outcomes)} scenarios in {run.seconds:.1f} s; wrote {args.out}/ ({', '.join(top)}) and "
          f"{args.out}/<scenario>/")
    return 0


def list_command(args: argparse.Namespace) -> int:
    from .schema import library_paths, load_scenario
    _warnings_to_stderr()
    for path in library_paths():
        sc = load_scenario(path)
        print(f"{sc.name:30s} {sc.question or '-':15s} {sc.weeks:4g} wk  {sc.description}")
    return 0


def validate_command(args: argparse.Namespace) -> int:
    from tregpd.errors import TregpdError
    from .schema import load_scenario
    bad = 0
    for path in args.files:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                sc = load_scenario(path)
            except TregpdError as exc:
                print(f"INVALID {exc}")
                bad += 1
                continue
        for w in caught:
            print(f"warning: {w.message}")
        print(f"ok      {path}: {sc.name} ({sc.weeks:g} weeks, {sc.population} patients, "
              f"{len(sc.regimen.events(until_day=sc.t_end_day).drug_doses())} doses)")
    return 2 if bad else 0


def question_command(args: argparse.Namespace) -> int:
    from .questions import normalise_question, run_question
    from .schema import QUESTIONS
    _warnings_to_stderr()
    names = list(QUESTIONS) if args.question == "all" else [normalise_question(args.question)]
    model = _model_name(getattr(args, "model", None))
    params = _load_params(args.params)
    from tregpd.rundir import RunDir
    for q in names:
        if q == "reference" and len(names) > 1:
            continue
        # each question's folder is one run (staged, MANIFEST.json last)
        with RunDir(args.out / q, f"tregpd scenarios question {q}", owns=LIBRARY_FILES + ("*/*",)) as rd:
            run = run_question(q, None, parameters=params, progress=not args.no_progress,
                               population=args.population, output_step_day=args.step_day,
                               ratio_target=args.ratio_target, figures=not args.no_figures, figure_workers=None,
                               model=model, folder=rd.path, **_band_options(args))
        print(run.answer)
        print(f"wrote {args.out / q}/")
    return 0


def dosefind_command(args: argparse.Namespace) -> int:
    from tregpd.io import atomic_save_figure, atomic_write_frame, atomic_write_json, atomic_write_text
    from tregpd.io import model_record, provenance
    from . import dosefind as D
    from . import plots
    params = _load_params(args.params)
    kw = {}
    if args.doses is not None:
        kw["doses"] = args.doses
    if args.intervals is not None:
        kw["intervals"] = args.intervals
    if args.course_days is not None:
        kw["course_days"] = args.course_days
    res = D.dose_find(params, max_selectivity=args.max_selectivity, max_cumulative_miu=args.max_cumulative_miu,
                      max_treg_median=args.max_treg if args.max_treg > 0 else None, weeks=args.weeks,
                      population=args.population, seed=args.seed,
                      sirolimus_mg=args.sirolimus_mg, sirolimus_interval_day=args.sirolimus_interval_day,
                      progress=not args.no_progress, model=_model_name(getattr(args, "model", None)), **kw)
    from tregpd.model.parameters import default_parameters
    prov = provenance(params if params is not None else default_parameters(), None, args.seed,
                      command="tregpd dosefind", settings=res.settings,
                      model=model_record(res.settings["model"]))
    out = Path(args.out)
    report = res.report()
    from tregpd.rundir import RunDir
    with RunDir(out, "tregpd dosefind", owns=("dosefind*", "provenance.json")) as rd:
        atomic_write_frame(rd.path / "dosefind_grid.csv", res.grid, prov)
        atomic_write_text(rd.path / "dosefind.md", report)
        atomic_write_json(rd.path / "provenance.json", {**prov, "best": res.best, "reference": res.reference})
        fig = plots.plot_dosefind(res.grid, res.best, res.reference, args.max_selectivity)
        atomic_save_figure(rd.path / "dosefind.png", fig)
        plots.close(fig)
    print(report)
    print(f"wrote {out}/ (dosefind_grid.csv, dosefind.md, dosefind.png, provenance.json)")
    return 0
