"""Where the time goes: work per patient, time per evaluation, and the distance to a stated lower limit.

    python benchmarks/where_time.py [--rtol 1e-6] [--patients 500]     # also part of benchmarks/run.py

For every registered model structure, one typical patient on the reference regimen (24 weeks, drug doses only)
with tregpd's default solver (Dormand-Prince 5(4), closed-form PK for the linear blocks): the fast path's work
counters (``simulate_patient_cf_dp5_stats``: right-hand-side and forcing evaluations, accepted and rejected
steps, dose segments, exp() calls), the CPU time per patient (``time.process_time`` of the serial population
kernel ``lanes_range`` over ``--patients`` copies, minimum of repeats; it integrates LANES patients side by
side; the same patients one after another, ``population_fast_one_by_one``, are timed
beside it), the time per right-hand-side evaluation, and a **lower limit**:

    limit = flops / R_flop + exps x t_exp

* ``flops``: floating-point operations per patient, counted from the code that runs: every arithmetic
  operator, comparison, ``max``/``min`` and ``abs`` in the generated ``derivs_cf`` (per RHS evaluation) and
  ``forcing`` (per forcing evaluation), counted on their AST (a division counts as one operation, although it
  costs several multiplications), plus the Dormand-Prince arithmetic per trial step (:data:`DP5_FLOPS_PER_STATE`
  per state: the five stage combinations 35, solution 11, error estimate 12, error norm 7) and the closed-form
  stage concentrations (:data:`STAGE_FLOPS_PER_MODE` per active PK mode and step);
* ``R_flop``: the machine's scalar rate, measured in the same run by a numba loop of 8 independent
  multiply-add chains (:func:`machine_rates`; the kernel is scalar code, so this is the rate it could reach at
  best: no dependency stalls, no loads, every operation as cheap as a multiply-add);
* ``t_exp``: the time of one ``math.exp`` in a numba loop (independent arguments), measured in the same run.

The ratio measured / limit is therefore an upper bound on what tuning the scalar arithmetic of the same
algorithm could gain; fewer evaluations (another integrator) are not covered by it. The lanes kernel runs the
stage chain of 8 patients in SIMD registers, so part of its work is not bound by this scalar limit.
"""
from __future__ import annotations

import ast
import time

import numpy as np

#: Dormand-Prince 5(4) arithmetic per state and trial step, outside the right-hand side: stage states
#: y + h sum_r a_sr k_r for s = 1..5 (2s + 1 each: 35), the 5th-order solution (5 nonzero weights: 11), the
#: embedded error (6 nonzero weights: 12), the error norm (abs, max, multiply-add for the scale, divide,
#: square, add: 7)
DP5_FLOPS_PER_STATE = 35 + 11 + 12 + 7
#: closed-form PK per active mode and trial step besides its exp(): lam h / 90 (2), the 10 multiplications of
#: the powers w^18..w^90, the amplitude coef * E(t) (1), five stage concentrations (2 each: 10)
STAGE_FLOPS_PER_MODE = 2 + 10 + 1 + 10
N_FMA_CHAINS = 8


def _njit():
    from numba import njit
    return njit(cache=False)


def machine_rates(seconds: float = 0.3) -> dict:
    """Scalar flop rate (multiply-adds in 8 independent chains, numba) and the time of one exp(), measured now.

    Returns a dict with ``flops_per_s`` (2 flops per multiply-add), ``exp_s`` (seconds per exp), and
    ``numpy_flops_per_s`` (a*x + b on 1e6-element arrays: memory-bound, for comparison).
    """
    import math

    njit = _njit()

    @njit
    def fma_loop(n, a, b):
        x0, x1, x2, x3, x4, x5, x6, x7 = 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7
        for _ in range(n):
            x0 = x0 * a + b
            x1 = x1 * a + b
            x2 = x2 * a + b
            x3 = x3 * a + b
            x4 = x4 * a + b
            x5 = x5 * a + b
            x6 = x6 * a + b
            x7 = x7 * a + b
        return x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7

    @njit
    def exp_loop(x):
        s = 0.0
        for i in range(x.size):
            s += math.exp(x[i])
        return s

    fma_loop(10, 0.999999, 1e-7)
    xs = -np.linspace(0.0, 50.0, 200_000)
    exp_loop(xs[:10])

    def best(fn, work, reps=5):
        t_best = np.inf
        for _ in range(reps):
            t0 = time.process_time()
            fn()
            t_best = min(t_best, time.process_time() - t0)
        return work / t_best, t_best

    n = 20_000_000
    t0 = time.process_time()
    fma_loop(n // 20, 0.999999, 1e-7)
    dt = max(time.process_time() - t0, 1e-6)
    n = max(1_000_000, int(n // 20 * seconds / dt))
    flops, _ = best(lambda: fma_loop(n, 0.999999, 1e-7), 2.0 * N_FMA_CHAINS * n)
    exps_per_s, _ = best(lambda: exp_loop(xs), xs.size)
    a = np.random.default_rng(0).random(1_000_000)
    out = np.empty_like(a)

    def np_axpb():
        np.multiply(a, 0.999, out=out)
        np.add(out, 1e-7, out=out)
    np_rate, _ = best(np_axpb, 2.0 * a.size)
    return {"flops_per_s": flops, "exp_s": 1.0 / exps_per_s, "numpy_flops_per_s": np_rate,
            "how": f"numba loop of {N_FMA_CHAINS} independent multiply-add chains; numba loop of math.exp over "
                   f"{xs.size:,} arguments; numpy a*x+b on 1e6 elements; CPU time, best of 5"}


class _OpCounter(ast.NodeVisitor):
    def __init__(self):
        self.ops = 0
        self.divisions = 0

    def visit_BinOp(self, node):  # noqa: N802
        self.ops += 1
        if isinstance(node.op, ast.Div):
            self.divisions += 1
        self.generic_visit(node)

    def visit_UnaryOp(self, node):  # noqa: N802
        if isinstance(node.op, ast.USub):
            self.ops += 1
        self.generic_visit(node)

    def visit_Compare(self, node):  # noqa: N802
        self.ops += len(node.ops)
        self.generic_visit(node)

    def visit_Call(self, node):  # noqa: N802
        name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        if name in ("max", "min"):
            self.ops += max(len(node.args) - 1, 1)
        elif name == "abs":
            self.ops += 1
        self.generic_visit(node)

    def visit_Subscript(self, node):  # noqa: N802 - index arithmetic is not floating point
        self.visit(node.value)


def generated_flops(kern) -> dict:
    """Floating-point operations of one call of the generated ``derivs_cf`` and ``forcing`` of ``kern``
    (counted on the AST of the generated module; see the module docstring)."""
    src = open(kern.__file__).read()
    tree = ast.parse(src)
    res = {}
    for fn in tree.body:
        if isinstance(fn, ast.FunctionDef) and fn.name in ("derivs_cf", "forcing"):
            c = _OpCounter()
            for stmt in fn.body:
                c.visit(stmt)
            res[fn.name] = c.ops
            res[fn.name + "_divisions"] = c.divisions
    return res


def where_rows(rtol: float = 1e-6, atol: float = 1e-8, n_patients: int = 500, repeats: int = 3,
               rates: dict | None = None, structures=None, log=print) -> tuple[list[dict], dict]:
    """One row per structure (see the module docstring). Returns (rows, machine rates)."""
    from tregpd.model import default_parameters, reference_regimen
    from tregpd.model.kernels import for_model
    from tregpd.model.structures import models

    rates = rates or machine_rates()
    ev = reference_regimen(24, taper=False).events()
    t_out = np.array([0.0, 42.0, 84.0, 168.0])
    rows = []
    for name in (structures or list(models())):
        k = for_model(name)
        theta = np.ascontiguousarray(default_parameters().to_theta(name))
        out = np.zeros((t_out.size, k.N_OUT))
        stats = np.zeros(k.N_STATS, dtype=np.int64)
        st, _, steps = k.simulate_patient_cf_dp5_stats(theta, ev.time_day, ev.cmt, ev.amount, t_out, rtol, atol,
                                                       10**7, out, stats)
        if st != 0:
            raise RuntimeError(f"{name}: status {st}")
        th = np.ascontiguousarray(np.tile(theta, (n_patients, 1)))
        outs = np.zeros((n_patients, t_out.size, k.N_OUT))
        status = np.zeros(n_patients, np.int64)
        t_r = np.zeros(n_patients)
        nst = np.zeros(n_patients, np.int64)
        k.lanes_range(th[:1], 0, 1, ev.time_day, ev.cmt, ev.amount, t_out, rtol, atol, 10**7, outs[:1],
                      status[:1], t_r[:1], nst[:1])
        cpu = np.inf
        for _ in range(repeats):
            t0 = time.process_time()
            k.lanes_range(th, 0, n_patients, ev.time_day, ev.cmt, ev.amount, t_out, rtol, atol, 10**7, outs,
                          status, t_r, nst)
            cpu = min(cpu, (time.process_time() - t0) / n_patients)
        cpu_one = np.inf  # the same patients one after another (no lanes), for comparison
        for _ in range(repeats):
            t0 = time.process_time()
            k.population_fast_one_by_one(th, ev.time_day, ev.cmt, ev.amount, t_out, rtol, atol, 10**7, outs,
                                         status, t_r, nst)
            cpu_one = min(cpu_one, (time.process_time() - t0) / n_patients)
        fl = generated_flops(k)
        n_y = k.N_Y_CF
        stage_modes = stats[k.STAT_EXP]            # one exp per active mode and trial step (plus a few per segment)
        flops = (stats[k.STAT_RHS] * fl["derivs_cf"] + stats[k.STAT_FORCING] * fl["forcing"]
                 + steps * n_y * DP5_FLOPS_PER_STATE + stage_modes * STAGE_FLOPS_PER_MODE)
        limit = flops / rates["flops_per_s"] + stats[k.STAT_EXP] * rates["exp_s"]
        row = {"model": name, "rtol": rtol, "n_states": n_y, "segments": int(stats[k.STAT_SEGMENTS]),
               "accepted": int(stats[k.STAT_ACCEPTED]), "rejected": int(stats[k.STAT_REJECTED]),
               "rhs_evals": int(stats[k.STAT_RHS]), "forcing_evals": int(stats[k.STAT_FORCING]),
               "exp_calls": int(stats[k.STAT_EXP]), "flops_rhs": fl["derivs_cf"], "divisions_rhs":
               fl["derivs_cf_divisions"], "flops_forcing": fl["forcing"], "flops_per_patient": int(flops),
               "us_per_patient": cpu * 1e6, "ns_per_rhs_eval": cpu / stats[k.STAT_RHS] * 1e9,
               "us_limit": limit * 1e6, "ratio_to_limit": cpu / limit,
               "us_per_patient_one_by_one": cpu_one * 1e6, "lanes_speedup": cpu_one / cpu,
               "patients_per_cpu_s": 1.0 / cpu}
        rows.append(row)
        log(f"  {name:20s} {row['accepted']:5d} acc {row['rejected']:3d} rej {row['rhs_evals']:6d} RHS "
            f"({fl['derivs_cf']} flops, {fl['derivs_cf_divisions']} div) {row['exp_calls']:5d} exp: "
            f"{row['us_per_patient']:7.1f} us/patient = {row['ns_per_rhs_eval']:5.1f} ns/RHS; limit "
            f"{row['us_limit']:6.1f} us -> {row['ratio_to_limit']:4.1f}x the limit (one patient after another "
            f"without lanes: {row['us_per_patient_one_by_one']:7.1f} us)")
    return rows, rates


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rtol", type=float, default=1e-6)
    ap.add_argument("--patients", type=int, default=500)
    args = ap.parse_args(argv)
    rates = machine_rates()
    print(f"machine: {rates['flops_per_s'] / 1e9:.2f} Gflop/s scalar (numba, {N_FMA_CHAINS} chains), exp "
          f"{rates['exp_s'] * 1e9:.1f} ns, numpy a*x+b {rates['numpy_flops_per_s'] / 1e9:.2f} Gflop/s")
    where_rows(args.rtol, min(1e-8, args.rtol * 1e-2), args.patients, rates=rates)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
