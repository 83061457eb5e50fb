#!/usr/bin/env python
"""Workflow timings (issue 15): the five things users wait for, on the default model structure, in one process.

    python benchmarks/bench_workflows.py            # 3 repeats of each, the minimum wall time is reported
    python benchmarks/bench_workflows.py --quick    # 1 repeat

Targets (issue 15, "Fits in seconds" and "Global sensitivity"):

1. typical-patient fit of the bundled SAT0261 cohort, as ``tregpd fit --mode typical`` does it (fit, profile
   likelihood of every free parameter and of il2_ec50_treg on 2 processes, identifiability decisions, refit,
   lmfit confidence intervals, report, figures, files): <= 5 s;
2. population fit, 300 virtual patients (common random numbers), started from the typical fit: <= 30 s;
3. the same four profile likelihoods on 2 processes against the serial loop of this run: parallel must be
   faster (the limit is the serial time measured here);
4. the joint multi-study fit of one structure (``tregpd calibrate``'s fit: v2_lean, its 9 free parameters, 26
   calibration numbers + 24 soft facts, 26 studies simulated per evaluation), started 1.5x away from the bundled
   calibration (clipped to the bounds), at most 300 evaluations as in ``calibrate``: <= 120 s;
5. Sobol indices (SALib, N = 512, no second order, 200 bootstrap resamples) of the 7 week-24 outcomes on all 33
   parameters of v2_lean: 512 x 35 = 17,920 simulated patients, on the default in-process backend (the prange
   kernel on every core): <= 15 s.

Each row reports the wall time (minimum over repeats; the machine is shared, so the minimum is the best
estimate of the cost) with the CPU seconds of that run (this process and its worker processes) in ``note``.
Compilation is excluded: :func:`warm_up` loads the kernels, imports lmfit and SALib and starts one process
pool before anything is timed, and its duration is stated in the output. ``workflow_rows`` returns dicts with
keys target, measured, unit, limit, met (and note); ``benchmarks/run.py`` prints them with its own targets.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

LIMIT_TYPICAL_S = 5.0
LIMIT_POPULATION_S = 30.0
LIMIT_JOINT_S = 120.0
LIMIT_SOBOL_S = 15.0
POPULATION_SIZE = 300
SOBOL_N = 512
JOINT_MODEL = "v2_lean"
JOINT_START_FACTOR = 1.5
PROFILE_WORKERS = 2

#: what the last call of :func:`workflow_rows` measured besides the rows (warm-up, load, repeats)
LAST_RUN: dict = {}


def _cpu() -> float:
    """CPU seconds of this process and of its waited-for children (worker processes)."""
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _timed(fn, repeats: int):
    """(result of the fastest run, min wall s, CPU s of that run)."""
    best = None
    for _ in range(repeats):
        c0, w0 = _cpu(), time.perf_counter()
        out = fn()
        wall, cpu = time.perf_counter() - w0, _cpu() - c0
        if best is None or wall < best[1]:
            best = (out, wall, cpu)
    return best


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def warm_up() -> float:
    """Load or compile everything the timed runs use; returns the seconds it took (excluded from the rows)."""
    t0 = time.perf_counter()
    import lmfit  # noqa: F401
    from SALib.analyze import sobol  # noqa: F401
    from tregpd.fitting import FitProblem, load_cohort, minimize
    from tregpd.fitting.joint import JointProblem
    from tregpd.fitting.optimise import profile_likelihoods
    from tregpd.scenarios.sensitivity import TregpdModel, sobol_analysis
    cohort = load_cohort(None)
    problem = FitProblem(cohort, model=JOINT_MODEL)
    _, best = minimize(problem)
    profile_likelihoods(problem, best, list(problem.free)[:2], n_points=3, workers=2)
    pop = FitProblem(cohort, mode="population", n_patients=16, rtol=1e-6, atol=1e-8, model=JOINT_MODEL)
    pop.residuals({})
    joint = JointProblem(JOINT_MODEL)
    joint.residuals({n: joint.base.value(n) for n in joint.free})
    model = TregpdModel(model=JOINT_MODEL)
    sobol_analysis(model, model.space, 2, seed=1)
    import io
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()          # first render loads the fonts
    ax.plot([0, 1], [0, 1])
    ax.set_title("warm-up")
    fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)
    return time.perf_counter() - t0


def workflow_rows(quick: bool) -> list[dict]:
    """Time the five workflow targets (see the module docstring); one dict per target.

    Keys: ``target`` (what was timed), ``measured`` (min wall seconds over 1 (quick) or 3 repeats), ``unit``
    ("s"), ``limit`` (seconds), ``met`` (measured <= limit; for the profiles: parallel faster than serial),
    ``note`` (CPU seconds of the fastest run, evaluations, speed-up). :data:`LAST_RUN` holds the warm-up time,
    the load averages and the repeats.
    """
    from tregpd.fitting import fit_population, load_cohort, run_fit
    from tregpd.fitting.joint import JointProblem, fit_structure
    from tregpd.fitting.optimise import profile_likelihoods
    from tregpd.model import default_parameters
    from tregpd.scenarios.sensitivity import TregpdModel, sobol_analysis

    repeats = 1 if quick else 3
    LAST_RUN.clear()
    LAST_RUN.update(load_start=_load(), repeats=repeats)
    LAST_RUN["warm_up_s"] = warm_up()
    rows = []
    cohort = load_cohort(None)

    # 1. tregpd fit --mode typical
    with tempfile.TemporaryDirectory() as tmp:
        outcome, wall, cpu = _timed(lambda: run_fit(None, Path(tmp) / "fit", mode="typical", accept_poor_fit=True,
                                                    workers=PROFILE_WORKERS, model=JOINT_MODEL), repeats)
    typ = outcome.typical
    rows.append({"target": "typical-patient SAT0261 fit (tregpd fit --mode typical: fit, 4 profiles on 2 "
                           "processes, refit, conf. intervals, report, figures)",
                 "measured": wall, "unit": "s", "limit": LIMIT_TYPICAL_S, "met": wall <= LIMIT_TYPICAL_S,
                 "note": f"CPU {cpu:.1f} s; {typ.problem.n_evaluations} simulations in the final refit"})

    # 2. population fit, 300 patients
    free_pop = tuple(n for n, p in typ.result.params.items() if p.vary)
    pop, wall, cpu = _timed(lambda: fit_population(cohort, free=free_pop, regimen=typ.problem.regimen,
                                                   start=typ.values, n_patients=POPULATION_SIZE,
                                                   model=JOINT_MODEL), repeats)
    rows.append({"target": f"population fit, {POPULATION_SIZE} virtual patients (common random numbers), "
                           f"free: {', '.join(free_pop)}",
                 "measured": wall, "unit": "s", "limit": LIMIT_POPULATION_S, "met": wall <= LIMIT_POPULATION_S,
                 "note": f"CPU {cpu:.1f} s; {pop.problem.n_evaluations} population simulations"})

    # 3. profile likelihoods: 2 processes against the serial loop
    problem = typ.problem.__class__(cohort, model=JOINT_MODEL)
    from tregpd.fitting import minimize
    _, best = minimize(problem)
    names = list(problem.free) + ["il2_ec50_treg"]
    par, wall_p, cpu_p = _timed(lambda: profile_likelihoods(problem, best, names, workers=PROFILE_WORKERS),
                                repeats)
    ser, wall_s, cpu_s = _timed(lambda: profile_likelihoods(problem, best, names, workers=1), repeats)
    same = all((par[n].chisqr == ser[n].chisqr).all() for n in names)
    rows.append({"target": f"profile likelihoods of {len(names)} parameters on {PROFILE_WORKERS} processes "
                           f"(limit: the serial loop, this run)",
                 "measured": wall_p, "unit": "s", "limit": wall_s, "met": wall_p < wall_s,
                 "note": f"speed-up {wall_s / wall_p:.2f}x; CPU parallel {cpu_p:.1f} s, serial {cpu_s:.1f} s; "
                         f"profiles identical: {same}"})

    # 4. joint multi-study fit of one structure
    p0 = default_parameters()

    def joint():
        prob = JointProblem(JOINT_MODEL, base=p0)
        start = {n: min(max(p0.value(n) * JOINT_START_FACTOR, p0[n].lower), p0[n].upper) for n in prob.free}
        return fit_structure(prob, start=start, max_nfev=300)

    fit, wall, cpu = _timed(joint, repeats)
    as_calibrate, wall_c, _ = _timed(lambda: fit_structure(JointProblem(JOINT_MODEL, base=p0), max_nfev=300), 1)
    rows.append({"target": f"joint multi-study fit of {JOINT_MODEL} ({len(fit.problem.free)} free, "
                           f"{fit.problem.n_data} data, {len(fit.problem.needed)} studies), start "
                           f"{JOINT_START_FACTOR:g}x off the bundled calibration",
                 "measured": wall, "unit": "s", "limit": LIMIT_JOINT_S, "met": wall <= LIMIT_JOINT_S,
                 "note": f"CPU {cpu:.1f} s; {fit.result.nfev} evaluations, chi2 {fit.chi2:.3f}; from the bundled "
                         f"values as tregpd calibrate starts: {wall_c:.1f} s, {as_calibrate.result.nfev} evaluations"})

    # 5. Sobol, N = 512, all parameters
    model = TregpdModel(model=JOINT_MODEL)
    res, wall, cpu = _timed(lambda: sobol_analysis(model, model.space, SOBOL_N, seed=1), repeats)
    rows.append({"target": f"Sobol N = {SOBOL_N} on all {model.space.dimension} parameters "
                           f"({res.n_evaluations:,} patients, 7 outputs, 200 bootstrap resamples)",
                 "measured": wall, "unit": "s", "limit": LIMIT_SOBOL_S, "met": wall <= LIMIT_SOBOL_S,
                 "note": f"CPU {cpu:.1f} s on {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} cores"})
    LAST_RUN["load_end"] = _load()
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        verdict = "MET" if r["met"] else f"MISSED by {r['measured'] / r['limit']:.2f}x"
        lines.append(f"  {r['target']}\n      {r['measured']:.2f} {r['unit']} (limit {r['limit']:.2f} {r['unit']}) "
                     f"-> {verdict}; {r['note']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one repeat instead of three")
    args = ap.parse_args(argv)
    rows = workflow_rows(args.quick)
    import tregpd
    print(f"tregpd {tregpd.__version__} workflow timings ({'quick' if args.quick else 'full'}), "
          f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC; warm-up (compile/load, excluded) "
          f"{LAST_RUN['warm_up_s']:.1f} s; load average (1/5/15 min) {LAST_RUN['load_start']} at start, "
          f"{LAST_RUN['load_end']} at end; min of {LAST_RUN['repeats']} repeat(s)")
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
