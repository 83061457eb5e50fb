"""``tregpd simulate``: one patient (or a virtual population) on one regimen; CSV + PNG + provenance."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_verify_options(p: argparse.ArgumentParser, what: str = "patients of the run") -> None:
    """``--verify N`` / ``--verify-tol TOL`` / ``--verify-seed``: the solver check of
    :mod:`tregpd.model.verify` (argparse only, so that ``--help`` imports nothing heavy)."""
    g = p.add_argument_group("solver check")
    g.add_argument("--verify", type=int, default=0, metavar="N",
                   help=f"re-simulate N random {what} with an independent integrator (scipy Radau, rtol 1e-10, "
                        "plain-Python right-hand side from the model declaration) and fail if the largest "
                        "normalised difference exceeds --verify-tol; ~10-60 s per 24-week patient "
                        "(default 0: no check)")
    g.add_argument("--verify-tol", type=float, default=1e-4, metavar="TOL",
                   help="tolerance of the solver check on |kernel - Radau| / |Radau| (default 1e-4)")
    g.add_argument("--verify-seed", type=int, default=0, help="seed choosing the checked patients (default 0)")


def run_verify(report) -> dict:
    """Raise VerifyError (one line: patient, variable, time, difference, tolerance) if a
    :class:`~tregpd.model.verify.VerifyReport` failed, else print its line; return its provenance entries."""
    report.raise_if_failed()
    print(report.message(), flush=True)
    return report.provenance()


def register(sub) -> None:
    from .models_cli import add_model_option
    p = sub.add_parser("simulate", help="simulate the reference (or a NONMEM event-file) regimen",
                       description="Simulate a typical patient and write trajectories (CSV), a figure (PNG) "
                                   "and provenance (JSON).")
    p.add_argument("--params", type=Path, default=None, help="parameter file (TOML); default: literature priors")
    p.add_argument("--events", type=Path, default=None,
                   help="NONMEM-style dose file (ID, TIME [day], AMT, CMT, EVID, II, ADDL); default: the "
                        "assumed Shanxi reference regimen")
    p.add_argument("--weeks", type=float, default=24.0, help="simulated duration in weeks (default 24)")
    p.add_argument("--step-day", type=float, default=0.25, help="output grid spacing in days (default 0.25)")
    p.add_argument("--method", default="dopri5", choices=["dopri5", "rosenbrock23"])
    p.add_argument("--rtol", type=float, default=1e-6)
    p.add_argument("--out", type=Path, default=Path("out/simulate"), help="output folder")
    add_model_option(p)
    add_verify_options(p, "patients (the one patient) of the run")
    p.set_defaults(func=run)

    x = sub.add_parser("sbml", help="export the model and a regimen as SBML L3V2 (for COPASI, tellurium, ...)",
                       description="Export the 8-state model (PK as ODE states) with a parameter set and the doses "
                                   "of a regimen as SBML events.")
    x.add_argument("--params", type=Path, default=None, help="parameter file (TOML); default: literature priors")
    x.add_argument("--weeks", type=float, default=24.0, help="reference-regimen duration in weeks (default 24)")
    x.add_argument("--no-taper", action="store_true", help="leave out the background prednisone taper")
    x.add_argument("--out", type=Path, default=Path("out/tregpd.xml"), help="output SBML file")
    add_model_option(x)
    x.set_defaults(func=run_sbml, out_kind="file")


def run_sbml(args: argparse.Namespace) -> int:
    from .dosing import reference_regimen
    from .parameters import load_parameters
    from .sbml import to_sbml
    from .models_cli import check_model
    structure = check_model(getattr(args, "model", None))
    to_sbml(load_parameters(args.params), reference_regimen(args.weeks, taper=not args.no_taper), path=args.out,
            model=structure)
    print(f"wrote {args.out} (model {structure.name}, declaration {structure.content_hash[:12]})")
    return 0


#: the files of a ``tregpd simulate`` run (an earlier run's are replaced together)
SIMULATE_FILES = ("trajectory.csv", "trajectory.png", "provenance.json")


def run(args: argparse.Namespace) -> int:
    from .dosing import read_nonmem, reference_regimen, Regimen
    from tregpd.errors import TregpdError
    from tregpd.io import atomic_save_figure, atomic_write_json, atomic_write_text
    from .parameters import load_parameters
    from .simulate import simulate
    from .. import plotting

    from .models_cli import check_model
    # getattr: callers that build the Namespace themselves (tregpd.pipeline) may leave --model out
    structure = check_model(getattr(args, "model", None))
    if getattr(args, "verify", 0):
        from .verify import _check_n
        _check_n(args.verify, args.verify_tol)
    params = load_parameters(args.params)
    if not 0 < args.weeks <= 5200:  # also rejects nan and inf
        raise TregpdError(f"--weeks must be > 0 and <= 5200, got {args.weeks}")
    t_end = args.weeks * 7.0
    events = None
    if args.events is not None:
        tables = read_nonmem(args.events)
        if len(tables) != 1:
            raise TregpdError(f"{args.events}: 'simulate' takes one ID, found {sorted(tables)}")
        (events,) = tables.values()
        res = simulate(params, events=events, t_end_day=t_end, output_step_day=args.step_day,
                       method=args.method, rtol=args.rtol, model=structure)
        res.regimen = Regimen(name=Path(args.events).stem, description=f"events from {args.events}")
    else:
        res = simulate(params, reference_regimen(args.weeks), t_end_day=t_end, output_step_day=args.step_day,
                       method=args.method, rtol=args.rtol, model=structure)
    prov = res.provenance(command="tregpd simulate")
    if getattr(args, "verify", 0):   # before anything is written: a failed check leaves the previous run
        from .verify import verify_patients
        prov.update(run_verify(verify_patients(res, args.verify, seed=getattr(args, "verify_seed", 0),
                                               tol=args.verify_tol, events=events)))
    out = Path(args.out)
    from tregpd.rundir import RunDir
    # the three files are one run: staged, moved into place together, MANIFEST.json written last
    with RunDir(out, "tregpd simulate", owns=SIMULATE_FILES) as run:
        # written without pandas (importing it is a quarter of a small run); same bytes as
        # atomic_write_frame(res.to_frame()), see tests/test_cli.py::test_trajectory_csv_matches_the_frame_writer
        atomic_write_text(run.path / "trajectory.csv", trajectory_csv(res, prov))
        atomic_write_json(run.path / "provenance.json", prov)
        fig = plotting.plot_trajectory(res)
        # constrained layout already fits the figure: no second ("tight") drawing pass
        atomic_save_figure(run.path / "trajectory.png", fig, bbox_inches=None)
    print(f"Model: {res.model}")
    print(f"Regimen: {res.regimen.name if res.regimen else '?'}")
    if res.regimen is not None and res.regimen.assumption:
        print(res.regimen.assumption)
    print(weekly_table(res, t_end))
    print(f"wrote {out / 'trajectory.csv'}, {out / 'trajectory.png'}, {out / 'provenance.json'}")
    return 0


def trajectory_csv(res, provenance: dict | None = None) -> str:
    """The tidy trajectory CSV of :meth:`SimulationResult.to_frame` (patient, time_day, variable, value, unit;
    successful patients; provenance as ``# key: value`` lines on top), formatted as pandas writes it."""
    import json
    from tregpd.io import _json_default

    def num(x: float) -> str:
        return "" if x != x else repr(x)            # pandas writes NaN as an empty field

    lines = [f"# {k}: {json.dumps(v, default=_json_default)}\n" for k, v in (provenance or {}).items()]
    lines.append("patient,time_day,variable,value,unit\n")
    times = [num(float(t)) for t in res.time_day.tolist()]
    ids = [str(int(i)) for i in res.patient_ids[res.ok].tolist()]
    for var, (_, unit) in res.variables.items():
        values = res.get(var)
        for pid, row in zip(ids, values.tolist()):
            lines.extend(f"{pid},{t},{var},{num(x)},{unit}\n" for t, x in zip(times, row))
    return "".join(lines)


def weekly_table(res, t_end: float, variables=("treg", "th17", "ratio")) -> str:
    """Treg, Th17 and ratio every 6 weeks and at the end, one patient (the first successful one), as text."""
    t = res.time_day
    keep = [k for k, d in enumerate(t.tolist()) if d % 42 == 0 or d == t_end]
    cols = {v: [round(float(res.get(v)[0, k]), 3) for k in keep] for v in variables}

    def fmt(values):
        nd = max((len(f"{x:.3f}".rstrip("0").split(".")[1]) for x in values), default=0)
        return [f"{x:.{nd}f}" for x in values]

    rows = [f"week {t[k] / 7:g}" for k in keep]
    texts = {v: fmt(cols[v]) for v in variables}
    w0 = max([len("variable"), *map(len, rows)])
    widths = {v: max([len(v), *map(len, texts[v])]) for v in variables}
    lines = ["variable".ljust(w0) + "".join("  " + v.rjust(widths[v]) for v in variables)]
    for i, label in enumerate(rows):
        lines.append(label.ljust(w0) + "".join("  " + texts[v][i].rjust(widths[v]) for v in variables))
    return "\n".join(lines)

