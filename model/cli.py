"""``tregpd simulate``: one patient (or a virtual population) on one regimen; CSV + PNG + provenance."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
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
    p.set_defaults(func=run)

    x = sub.add_parser("sbml", help="export the model and a regimen as SBML L3V2 (for COPASI, tellurium, ...)",
                       description="Export the 8-state model (PK as ODE states) with a parameter set and the doses "
                                   "of a regimen as SBML events.")
    x.add_argument("--params", type=Path, default=None, help="parameter file (TOML); default: literature priors")
    x.add_argument("--weeks", type=float, default=24.0, help="reference-regimen duration in weeks (default 24)")
    x.add_argument("--no-taper", action="store_true", help="leave out the background prednisone taper")
    x.add_argument("--out", type=Path, default=Path("out/tregpd.xml"), help="output SBML file")
    x.set_defaults(func=run_sbml)


def run_sbml(args: argparse.Namespace) -> int:
    from .dosing import reference_regimen
    from .parameters import load_parameters
    from .sbml import to_sbml
    to_sbml(load_parameters(args.params), reference_regimen(args.weeks, taper=not args.no_taper), path=args.out)
    print(f"wrote {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    from .dosing import read_nonmem, reference_regimen, Regimen
    from .errors import TregpdError
    from .io import atomic_save_figure, atomic_write_frame, atomic_write_json
    from .parameters import load_parameters
    from .simulate import simulate
    from .. import plotting

    params = load_parameters(args.params)
    if not 0 < args.weeks <= 5200:  # also rejects nan and inf
        raise TregpdError(f"--weeks must be > 0 and <= 5200, got {args.weeks}")
    t_end = args.weeks * 7.0
    if args.events is not None:
        tables = read_nonmem(args.events)
        if len(tables) != 1:
            raise TregpdError(f"{args.events}: 'simulate' takes one ID, found {sorted(tables)}")
        (events,) = tables.values()
        res = simulate(params, events=events, t_end_day=t_end, output_step_day=args.step_day,
                       method=args.method, rtol=args.rtol)
        res.regimen = Regimen(name=Path(args.events).stem, description=f"events from {args.events}")
    else:
        res = simulate(params, reference_regimen(args.weeks), t_end_day=t_end, output_step_day=args.step_day,
                       method=args.method, rtol=args.rtol)
    prov = res.provenance(command="tregpd simulate")
    out = Path(args.out)
    frame = res.to_frame()
    atomic_write_frame(out / "trajectory.csv", frame, prov)
    atomic_write_json(out / "provenance.json", prov)
    fig = plotting.plot_trajectory(res)
    atomic_save_figure(out / "trajectory.png", fig)
    weekly = frame[frame["variable"].isin(["treg", "th17", "ratio"])]
    weekly = weekly[(weekly["time_day"] % 42 == 0) | (weekly["time_day"] == t_end)]
    table = weekly.pivot_table(index="time_day", columns="variable", values="value")
    table.index = [f"week {d / 7:g}" for d in table.index]
    print(f"Regimen: {res.regimen.name if res.regimen else '?'}")
    if res.regimen is not None and res.regimen.assumption:
        print(res.regimen.assumption)
    print(table[["treg", "th17", "ratio"]].round(3).to_string())
    print(f"wrote {out / 'trajectory.csv'}, {out / 'trajectory.png'}, {out / 'provenance.json'}")
    return 0
