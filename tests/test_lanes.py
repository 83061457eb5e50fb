"""The population fast path's lanes kernel (LANES patients side by side on one core; model/_engine.py
``lanes_range``) against the one-patient kernel run patient after patient, and its exponential ``exp_simd``
against ``math.exp``.

The lanes kernel promises the one-patient arithmetic per lane, so the reference is exact equality of every
output, status, time reached and step count, whatever the number of patients (fewer than the lanes, a
multiple, a remainder), their fates (failures free a lane for the next patient) and the structure's features
(negligible-state flushes, covariate changes)."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

from tregpd.model import kernels as K
from tregpd.model import reference_regimen, sample_population
from tregpd.model.parameters import I_IL2_EMAX_R, I_NAIVE_DEATH, I_R_CROWD, PARAMETER_NAMES
from tregpd.model.structures import get_model

NO_JIT = os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0")
#: a shorter horizon without the JIT (the kernels then run as plain Python)
T_END = 14.0 if NO_JIT else 168.0


def _grid(t_end=T_END):
    return np.unique(np.concatenate([np.arange(0.0, t_end + 1e-9, 1.0), [0.5, t_end / 3]]))


def _run(fn, kern, theta, events, t_out, max_steps=100_000, **kw):
    n = theta.shape[0]
    out = np.full((n, t_out.size, kern.N_OUT), -1.0)
    status = np.full(n, -1, dtype=np.int64)
    t_reached = np.full(n, -1.0)
    steps = np.full(n, -1, dtype=np.int64)
    fn(np.ascontiguousarray(theta), events.time_day, events.cmt, events.amount, t_out, 1e-6, 1e-8, max_steps, out,
       status, t_reached, steps, **kw)
    return out, status, t_reached, steps


def _lanes(kern):
    """The lanes kernel over all patients of ``theta`` (the drivers call it the same way)."""
    def run(theta, *args):
        kern.lanes_range(theta, 0, theta.shape[0], *args)
    return run


def _assert_same(a, b):
    for x, y, name in zip(a, b, ("out", "status", "t_reached", "steps")):
        assert np.array_equal(x, y), f"{name} differs: max |diff| {np.max(np.abs(np.asarray(x) - y))}"


def test_exp_simd_matches_math_exp():
    kern = K.for_model(None)
    x = np.concatenate([np.linspace(-708.0, 709.0, 20_001 if not NO_JIT else 2_001),
                        np.random.default_rng(0).uniform(-2.0, 0.0, 20_000 if not NO_JIT else 2_000),
                        [0.0, -0.0, -1e-300, -1e-17, 1e-17, -math.log(2.0), -0.5 * math.log(2.0)]])
    got = np.array([kern.exp_simd(v) for v in x])
    ref = np.exp(x)
    rel = np.abs(got / ref - 1.0)
    assert rel.max() <= 4.5e-16  # two units in the last place (Estrin summation; Horner gave one)
    assert kern.exp_simd(0.0) == 1.0 and kern.exp_simd(-0.0) == 1.0
    assert kern.exp_simd(-708.5) == 0.0 and kern.exp_simd(-1e6) == 0.0 and kern.exp_simd(-708.0) > 0.0


@pytest.mark.parametrize("model,n", [
    ("v2_lean", 1), ("v2_lean", 8), ("v2_lean", 13),          # fewer than the lanes, exactly, with a remainder
    ("v1_il2_consumption", 11),                               # IL-2 amounts as states, negligible flushes
    ("v1_gc_all", 5),                                         # the prednisone taper: covariate changes
])
def test_lanes_equal_patient_after_patient(params, model, n):
    kern = K.for_model(model)
    theta = sample_population(params, n=n, seed=11, model=model)
    events = reference_regimen(24, taper=model == "v1_gc_all").events()
    t_out = _grid()
    lanes = _run(_lanes(kern), kern, theta, events, t_out)
    single = _run(kern.population_fast_one_by_one, kern, theta, events, t_out)
    _assert_same(lanes, single)
    assert np.all(lanes[1] == K.STATUS_OK) and np.all(lanes[3] > 0)


def test_lanes_equal_patient_after_patient_for_failures(params):
    """Failing patients (overflow, too many steps) end their lane early; the next patient takes it over."""
    kern = K.for_model("sat0261_v1")
    theta = np.tile(params.to_theta("sat0261_v1"), (19, 1))
    names = get_model("sat0261_v1").parameter_names
    theta[2, names.index(PARAMETER_NAMES[I_IL2_EMAX_R])] = 1e300
    theta[2, names.index(PARAMETER_NAMES[I_R_CROWD])] = 1e300
    theta[4, names.index(PARAMETER_NAMES[I_NAIVE_DEATH])] = 1e7
    theta[9, names.index(PARAMETER_NAMES[I_NAIVE_DEATH])] = 1e7
    theta[:, names.index(PARAMETER_NAMES[I_NAIVE_DEATH])] *= np.linspace(1.0, 1.3, 19)  # all different
    events = reference_regimen(24).events()
    t_out = _grid()
    with np.errstate(all="ignore"):
        lanes = _run(_lanes(kern), kern, theta, events, t_out, max_steps=3_000)
        single = _run(kern.population_fast_one_by_one, kern, theta, events, t_out, max_steps=3_000)
    _assert_same(lanes, single)
    status = lanes[1]
    assert status[2] in (K.STATUS_STEP_TOO_SMALL, K.STATUS_NONFINITE) and status[4] == K.STATUS_MAX_STEPS
    assert status[9] == K.STATUS_MAX_STEPS and np.sum(status == K.STATUS_OK) == 16


def test_parallel_blocks_equal_serial(params):
    """simulate_population_parallel: blocks of patients on threads (GIL released), the serial numbers."""
    kern = K.for_model(None)
    n = 3 * 4 * kern.LANES + 5  # three blocks on two threads, uneven
    assert len(kern.fast_blocks(n, 2)) == 3 and kern.fast_blocks(n, 2)[-1][1] == n
    assert kern.fast_blocks(10, 2) == [(0, 10)] and kern.fast_blocks(1000, 2)[1][0] == 250
    theta = sample_population(params, n=n, seed=5, model="v2_lean")
    events = reference_regimen(24).events()
    t_out = _grid(min(T_END, 28.0))
    serial = _run(_lanes(kern), kern, theta, events, t_out)

    def parallel(*args):
        kern.simulate_population_parallel(*args[:7], kern.METHOD_DOPRI5, kern.MODE_CLOSED_FORM, *args[7:])
    _assert_same(_run(parallel, kern, theta, events, t_out), serial)
