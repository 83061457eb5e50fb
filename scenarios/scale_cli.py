"""``tregpd trial`` and ``tregpd sensitivity``: virtual trials and global sensitivity, in-process or on Dask.

Both take ``--workers N`` (a local Dask cluster of N single-threaded processes) or ``--scheduler
tcp://host:port`` (an existing Dask cluster); without either they run in this process. Results are the same
numbers whatever the backend, number of workers or chunk size.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _backend_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution")
    g.add_argument("--workers", type=int, default=None,
                   help="run on a local Dask cluster with this many worker processes (one thread each)")
    g.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                   help="run on an existing Dask cluster (start it with 'dask scheduler' and "
                        "'dask worker tcp://HOST:PORT --nthreads 1')")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(sub) -> None:
    from tregpd.model.models_cli import add_model_option
    t = sub.add_parser(
        "trial", help="virtual trial of up to millions of patients, summarised in chunks",
        description="Simulate a virtual population on one or more regimens in chunks and write streaming "
                    "summaries (quantiles, means, fractions in the healthy range) at the output weeks: "
                    "trial_summary.csv/.json/.png. Same numbers for any --chunk, --workers or --scheduler.")
    t.add_argument("--patients", type=int, default=100_000, help="number of virtual patients (default 100000)")
    t.add_argument("--chunk", type=int, default=20_000,
                   help="patients per chunk (rounded up to a multiple of --block; default 20000)")
    t.add_argument("--regimen", nargs="+", default=["reference"], metavar="NAME_OR_FILE",
                   help="'reference' (assumed Shanxi regimen), 'untreated', a scenario name from the bundled "
                        "library (e.g. lupil2, il2_alone) or a scenario TOML file; several = same patients on "
                        "each regimen (default: reference)")
    t.add_argument("--weeks", type=float, nargs="+", default=[0.0, 6.0, 12.0, 24.0],
                   help="output weeks (default 0 6 12 24; week 0 is always added)")
    t.add_argument("--params", type=Path, default=None, help="parameter file (TOML); default: literature priors")
    t.add_argument("--seed", type=int, default=1, help="random seed of the population (default 1)")
    t.add_argument("--block", type=int, default=None,
                   help="patients per random-number block (default 1024; part of the population's definition)")
    t.add_argument("--ratio-target", type=float, default=None,
                   help="Th17/Treg target for the 'below target' fraction (default 0.29, the SAT0261 week-24 "
                        "median)")
    t.add_argument("--out", type=Path, default=Path("out/trial"), help="output folder")
    t.add_argument("--no-plot", action="store_true", help="skip the PNG")
    add_model_option(t)
    _backend_args(t)
    from tregpd.model.cli import add_verify_options
    add_verify_options(t, "patients of the first chunk (on every regimen)")
    t.set_defaults(func=run_trial_command)

    s = sub.add_parser(
        "sensitivity", help="global (Sobol, Morris) and local sensitivity of the week-24 outcomes",
        description="Sensitivity of week-24 Treg, Th17, Th17/Treg (absolute and fold change from week 0) and the "
                    "IL-2 selectivity margin (peak C_IL2 "
                    "in the first course / il2_ec50_effector) to every model parameter within its bounds "
                    "(log-uniform where upper/lower >= 10). Writes sensitivity_<method>.csv (ranked), .json "
                    "(provenance) and .png.")
    s.add_argument("--method", nargs="+", choices=["sobol", "morris", "local"], default=["sobol"],
                   help="one or more of sobol (default), morris, local")
    s.add_argument("--n", type=int, default=None,
                   help="Sobol base samples (power of 2; default 512 -> 512 (D + 2) runs for D parameters) or Morris "
                        "trajectories (default 64 -> 64 (D + 1) runs); ignored by local")
    s.add_argument("--params", type=Path, default=None,
                   help="parameter file (TOML) giving the values, bounds and the local-analysis point; "
                        "default: literature priors")
    s.add_argument("--regimen", default="reference", metavar="NAME_OR_FILE",
                   help="'reference' (default), 'untreated', a library scenario name or a scenario TOML file")
    s.add_argument("--seed", type=int, default=1, help="sampler and bootstrap seed (default 1)")
    s.add_argument("--chunk", type=int, default=2000, help="model runs per chunk (default 2000)")
    s.add_argument("--top", type=int, default=12, help="parameters shown per output in the plot and table")
    s.add_argument("--out", type=Path, default=Path("out/sensitivity"), help="output folder")
    s.add_argument("--no-plot", action="store_true", help="skip the PNG")
    add_model_option(s)
    _backend_args(s)
    s.set_defaults(func=run_sensitivity_command)


# ---------------------------------------------------------------------------------------- helpers
def resolve_regimen(spec: str, weeks: float, with_tdm: bool = False):
    """A Regimen from 'reference', 'untreated', a bundled scenario name or a scenario TOML path; with
    ``with_tdm``, the pair (Regimen, the scenario's trough-titration rule or None)."""
    from tregpd.model.dosing import no_treatment, reference_regimen
    from tregpd.errors import TregpdError
    if spec in ("reference", "untreated"):
        reg = reference_regimen(weeks=weeks) if spec == "reference" else no_treatment()
        return (reg, None) if with_tdm else reg
    from .schema import library_dir, load_scenario
    path = Path(spec)
    if not path.suffix and not path.exists():
        path = library_dir() / f"{spec}.toml"
        if not path.is_file():
            names = sorted(p.stem for p in library_dir().glob("*.toml"))
            raise TregpdError(f"unknown regimen {spec!r}: not 'reference', 'untreated', a scenario file, or a "
                              f"library scenario ({', '.join(names)})")
    sc = load_scenario(path)
    reg = sc.regimen
    if reg.name != sc.name:
        from dataclasses import replace
        reg = replace(reg, name=sc.name)
    if sc.tdm is not None and not with_tdm:
        raise TregpdError(f"regimen {spec!r} titrates sirolimus to a trough window ([tdm] table), which this "
                          f"command does not simulate (it would give every patient the starting dose); use a "
                          f"fixed-dose regimen, or `tregpd trial` / `tregpd scenarios run`, which titrate")
    return (reg, sc.tdm) if with_tdm else reg


def _check_positive(value, flag):
    from tregpd.errors import TregpdError
    if value is not None and value < 1:
        raise TregpdError(f"{flag} must be >= 1, got {value}")


def _print(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------- trial
def verify_trial(plan, first_chunk: int, n: int = 1, seed: int = 0, tol: float = 1e-4) -> list:
    """Check ``n`` random patients of a trial's first chunk (patients ``0 .. first_chunk - 1``) on every
    regimen of ``plan`` (:class:`tregpd.scenarios.trial.TrialPlan`): their parameters are drawn as the chunk
    draws them, simulated with the plan's solver options (the kernels give each patient the same numbers
    whatever the batch) and compared with the reference. Returns one :class:`VerifyReport` per regimen."""
    from tregpd.model.simulate import simulate_population
    from tregpd.model.verify import VerifyReport, _check_n, verify_patients, verify_titrated
    from .trial import trial_theta
    _check_n(n, tol)
    stop = min(int(first_chunk), plan.n_patients)
    import numpy as np
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(stop, size=min(int(n), stop), replace=False)) if n else np.array([], int)
    theta_all, _ = trial_theta(plan, 0, stop)
    theta = theta_all[pick]
    reports = []
    for r, events in enumerate(plan.events):
        label = f"trial regimen {plan.regimen_names[r]!r}"
        if not pick.size:
            reports.append(VerifyReport(tol=float(tol), label=label, model=plan.model, seed=int(seed)))
            continue
        rule = plan.tdm_rule(r)
        if rule is None:
            res = simulate_population(theta, events=events, t_out=plan.t_out, options=plan.options,
                                      parallel=False, on_failure="keep", model=plan.model, patient_ids=pick)
            res.regimen = None
            rep = verify_patients(res, pick.size, seed, tol, events=events, label=label,
                                  rows=np.flatnonzero(res.ok))
        else:
            from .tdm import simulate_titrated, titrate
            tit = titrate(theta, plan.regimens[r], rule, float(plan.t_out[-1]), seed=plan.seed, patient_ids=pick,
                          model=plan.model)
            res = simulate_titrated(theta, tit, plan.t_out, parallel=False, model=plan.model, options=plan.options,
                                    patient_ids=pick)
            rep = verify_titrated(res, tit, pick.size, seed, tol, label=label, rows=np.flatnonzero(res.ok))
        rep.requested = int(n)
        reports.append(rep)
    return reports


def run_trial_command(args: argparse.Namespace) -> int:
    from tregpd.io import atomic_save_figure, atomic_write_frame, atomic_write_json, provenance
    from tregpd.model.parameters import load_parameters
    from .backends import check_backend_options, make_backend
    from tregpd.model.models_cli import check_model
    from .trial import (DEFAULT_BLOCK, DEFAULT_RATIO_TARGET, check_trial_memory, make_plan, run_trial,
                        summary_table)

    _check_positive(args.patients, "--patients")
    _check_positive(args.chunk, "--chunk")
    _check_positive(args.workers, "--workers")
    check_backend_options(args.workers, args.scheduler)   # conflicting options and the process limit, first
    params = load_parameters(args.params)
    weeks = max(args.weeks)
    pairs = [resolve_regimen(r, weeks, with_tdm=True) for r in args.regimen]
    regimens = [reg for reg, _ in pairs]
    plan = make_plan(params, regimens, args.patients, seed=args.seed, weeks=args.weeks,
                     block=args.block if args.block is not None else DEFAULT_BLOCK,
                     ratio_target=args.ratio_target if args.ratio_target is not None else DEFAULT_RATIO_TARGET,
                     model=check_model(getattr(args, "model", None)).name, tdm=[t for _, t in pairs])
    check_trial_memory(plan, args.chunk)   # before a cluster is started or anything simulated
    n_verify = getattr(args, "verify", 0) or 0
    if n_verify or getattr(args, "verify_tol", 1e-4) != 1e-4:
        from tregpd.model.verify import _check_n
        _check_n(n_verify, args.verify_tol)
    out = Path(args.out)
    from tregpd.rundir import RunDir
    # one run: staged under out/, moved into place with MANIFEST.json last; Dask's scratch space inside it
    with RunDir(out, "tregpd trial", owns=("trial_summary.*",)) as run:
        with make_backend(workers=args.workers, scheduler=args.scheduler,
                          local_directory=run.scratch if (args.workers or args.scheduler) else None) as backend:
            desc = backend.describe()
            _print(f"trial: {plan.n_patients} patients x {len(regimens)} regimen(s) on {desc['backend']}"
                   + (f" ({desc['n_workers']} workers, {desc['scheduler']})" if desc["backend"] == "dask"
                      else ""))
            res = run_trial(plan, args.chunk, backend, progress=not args.no_progress and sys.stderr.isatty())
        checked = {}
        if n_verify:   # N patients of the first chunk, before anything is written (a failure leaves the old run)
            from tregpd.model.verify import merged_provenance
            reports = verify_trial(plan, min(res.chunk_patients, plan.n_patients), n_verify,
                                   seed=getattr(args, "verify_seed", 0), tol=args.verify_tol)
            for rep in reports:
                rep.raise_if_failed()
            for rep in reports:
                _print(rep.message())
            checked = merged_provenance(reports)
        prov = provenance(params, regimens[0] if len(regimens) == 1 else [r.to_dict() for r in regimens],
                          args.seed, command="tregpd trial", **res.provenance_extra(), **checked)
        atomic_write_frame(run.path / "trial_summary.csv", res.summary, prov)
        atomic_write_json(run.path / "trial_summary.json",
                          {"provenance": prov, "summary": res.summary.to_dict(orient="records")})
        written = [out / "trial_summary.csv", out / "trial_summary.json"]
        if not args.no_plot:
            from .scale_plots import plot_trial_summary
            fig = plot_trial_summary(res.summary)
            atomic_save_figure(run.path / "trial_summary.png", fig)
            import matplotlib.pyplot as plt
            plt.close(fig)
            written.append(out / "trial_summary.png")
    for reg in regimens:
        if reg.assumption:
            _print(f"{reg.name}: {reg.assumption}")
    _print(summary_table(res.summary).to_string(index=False))
    if plan.tdm:
        from .trial import tdm_table
        _print("sirolimus trough titration (each patient on his own PK):")
        _print(tdm_table(res.summary).to_string(index=False))
    failed = sum(res.n_failed.values())
    if failed:
        _print(f"WARNING: {failed} patient simulation(s) failed and are excluded: {res.failure_counts}")
    _print(f"{res.n_patients * len(regimens)} patient simulations in {res.elapsed_s:.1f} s: "
           f"{res.patients_per_second:,.0f} patients/s ({res.n_chunks} chunks of {res.chunk_patients})")
    _print("wrote " + ", ".join(str(p) for p in written))
    return 0


# ------------------------------------------------------------------------------------- sensitivity
def run_sensitivity_command(args: argparse.Namespace) -> int:
    from tregpd.model.parameters import load_parameters
    from .backends import check_backend_options, make_backend

    _check_positive(args.workers, "--workers")
    check_backend_options(args.workers, args.scheduler)   # conflicting options and the process limit, first
    _check_positive(args.chunk, "--chunk")
    _check_positive(args.top, "--top")
    from tregpd.model.models_cli import check_model
    structure = check_model(getattr(args, "model", None))
    params = load_parameters(args.params)
    regimen = resolve_regimen(args.regimen, 24.0)
    from tregpd.rundir import RunDir
    with RunDir(args.out, "tregpd sensitivity", owns=("sensitivity_*",)) as run:
        with make_backend(workers=args.workers, scheduler=args.scheduler,
                          local_directory=run.scratch if (args.workers or args.scheduler) else None) as backend:
            written = write_sensitivity(params, run.path, methods=args.method, n=args.n, regimen=regimen,
                                        seed=args.seed, backend=backend, chunk=args.chunk, top=args.top,
                                        plot=not args.no_plot,
                                        progress=not args.no_progress and sys.stderr.isatty(),
                                        model=structure.name, echo=lambda msg: _print(run.final_text(msg)))
    _print("wrote " + ", ".join(str(run.final(p)) for p in written))
    return 0


def write_sensitivity(parameters, out, methods=("local", "sobol"), n=None, regimen=None, seed: int = 1,
                      backend=None, chunk: int = 2000, top: int = 12, plot: bool = True, progress: bool = False,
                      echo=_print, model: str | None = None) -> list[Path]:
    """Run the sensitivity ``methods`` for ``parameters`` and write ``sensitivity_<method>.csv/.json/.png``
    under ``out``; prints the top parameters per output through ``echo``. Returns the written paths.

    This is what ``tregpd sensitivity`` does (``regimen`` default: the reference regimen; ``backend`` default:
    in-process; ``model``: the model structure, default the default structure); the pipeline can call it with
    the fitted parameters.
    """
    from tregpd.model.dosing import reference_regimen
    from tregpd.io import atomic_save_figure, atomic_write_frame, atomic_write_json, model_record, provenance
    from tregpd.model.simulate import SolverOptions
    from .backends import InProcessBackend
    from .sensitivity import ParameterSpace, TregpdModel, run_sensitivity

    regimen = regimen if regimen is not None else reference_regimen(24.0)
    backend = backend if backend is not None else InProcessBackend()
    structure = model
    space = ParameterSpace.from_parameters(parameters, model=structure)
    model = TregpdModel(parameters, space, regimen, model=structure)
    out = Path(out)
    written: list[Path] = []
    desc = backend.describe()
    for method in dict.fromkeys(methods):
        echo(f"sensitivity ({method}): model {model.model}, {space.dimension} parameters, regimen {regimen.name}, "
             f"backend {desc['backend']}")
        # local differences need a tight solver tolerance (solver error / step << truncation error)
        m = model if method != "local" else TregpdModel(parameters, space, regimen,
                                                         options=SolverOptions(rtol=1e-9, atol=1e-11),
                                                         model=model.model)
        res = run_sensitivity(method, m, space, n, seed=seed, backend=backend, chunk=chunk, progress=progress)
        prov = provenance(parameters, regimen, seed, command="tregpd sensitivity", method=method,
                          settings=res.settings, n_evaluations=res.n_evaluations,
                          elapsed_s=round(res.elapsed_s, 2), backend=desc, model=model_record(model.model),
                          sensitivity_model=m.describe(),
                          input_space=space.to_frame().to_dict(orient="records"))
        atomic_write_frame(out / f"sensitivity_{method}.csv", res.table, prov)
        atomic_write_json(out / f"sensitivity_{method}.json",
                          {"provenance": prov, "table": res.table.to_dict(orient="records")})
        written += [out / f"sensitivity_{method}.csv", out / f"sensitivity_{method}.json"]
        if plot:
            from .scale_plots import plot_sensitivity
            fig = plot_sensitivity(res.table, top=top)
            atomic_save_figure(out / f"sensitivity_{method}.png", fig)
            import matplotlib.pyplot as plt
            plt.close(fig)
            written.append(out / f"sensitivity_{method}.png")
        key = {"sobol": ["S1", "ST"], "morris": ["mu_star", "sigma"], "local": ["elasticity"]}[method]
        for output in model.output_names:
            t = res.table[(res.table["output"] == output) & (res.table["rank"] <= min(top, 5))]
            cells = ", ".join(f"{p} ({'/'.join(f'{v:.3g}' for v in vals)})"
                              for p, vals in zip(t["parameter"], t[key].to_numpy()))
            echo(f"  {output:<20s} {'/'.join(key)}: {cells}")
        echo(f"  {res.n_evaluations} model runs in {res.elapsed_s:.1f} s")
        if method == "sobol":
            g = res.table.groupby("output", sort=False)
            shaky = [o for o, t in g if (t["ST_conf"] > 0.3).any() or (t["ST"] > 1.05).any()]
            if shaky:
                echo(f"  WARNING: Sobol indices of {', '.join(shaky)} are unreliable (an ST above 1 or a 95 % "
                     "interval wider than +/-0.3): the output is heavy-tailed over the parameter box (e.g. a few "
                     "runaway samples); increase --n or read the ranking with its confidence intervals")
    return written
