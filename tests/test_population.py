"""Virtual populations: sampling, parallel == serial (bit-identical), single == population row, chunking,
and numerical faults (a failed patient is reported with a status and a clear message, never NaN)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from tregpd.model import (DEFAULT_IIV, PARAMETER_NAMES, IntegrationError, ParameterError, TregpdError,
                          sample_population, simulate, simulate_population)
from tregpd.model import kernels as K
from tregpd.model.parameters import I_IL2_EMAX_R, I_NAIVE_DEATH, I_R_CROWD

T = [0.0, 42.0, 84.0, 168.0]
NO_JIT = os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0")


@pytest.fixture(scope="module")
def theta(params):
    return sample_population(params, n=12 if NO_JIT else 60, seed=7)


# -------------------------------------------------------------------------------------------- sampling
def test_sampling_is_seeded_lognormal_and_within_bounds(params):
    a = sample_population(params, n=4000, seed=3)
    b = sample_population(params, n=4000, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sample_population(params, n=4000, seed=4))
    typical = params.to_theta()
    for j, name in enumerate(PARAMETER_NAMES):
        col = a[:, j]
        p = params[name]
        f = 24.0 if p.unit in ("1/h", "L/h") else 1.0
        assert np.all(col >= p.lower * f - 1e-12) and np.all(col <= p.upper * f + 1e-12), name
        if name not in DEFAULT_IIV:
            assert np.all(col == typical[j]), name
        else:
            # log-normal around the typical value with SD omega (unclipped part), 4000 draws: loose check
            logs = np.log(col / typical[j])
            assert abs(np.median(logs)) < 0.05, name
            assert np.std(logs) == pytest.approx(DEFAULT_IIV[name], rel=0.1), name
    # a prefix of a larger population is the smaller population (same seed): draws are patient-major
    np.testing.assert_array_equal(sample_population(params, n=10, seed=3), a[:10])


def test_sampling_clipped_fraction_reported(params):
    _, info = sample_population(params, n=2000, iiv={"treg_baseline": 3.0}, seed=1, return_info=True)
    # P(|z| > log(100/12.98)/3) + P(z < log(1/12.98)/3): about 0.3-0.4 of draws are clipped
    assert 0.2 < info["treg_baseline"] < 0.5


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(n=0), "population size n must be a positive integer, got 0"),
    (dict(n=3.0), "positive integer"),
    (dict(n=3, seed=-1), "seed must be a non-negative integer"),
    (dict(n=3, iiv={"il2_foo": 0.1}), "IIV: unknown parameter 'il2_foo'"),
    (dict(n=3, iiv={"il2_cl": -0.1}), "omega of 'il2_cl' must be a finite number >= 0, got -0.1"),
    (dict(n=3, iiv={"il2_cl": float("nan")}), "omega of 'il2_cl'"),
])
def test_sampling_errors(params, kwargs, fragment):
    with pytest.raises(ParameterError) as exc:
        sample_population(params, **kwargs)
    assert fragment in str(exc.value)


# ------------------------------------------------------------------------------------ serial/parallel
def test_parallel_equals_serial_bit_identical(theta, reference):
    par = simulate_population(theta, reference, t_out=T, parallel=True)
    ser = simulate_population(theta, reference, t_out=T, parallel=False)
    assert np.array_equal(par.values, ser.values)
    assert np.array_equal(par.steps, ser.steps)
    assert par.n_failed == 0
    # IIV produced a real spread of outcomes (the comparison is not of 60 copies of one patient)
    assert np.ptp(par.at("treg", 168.0)) > 1.0


def test_chunking_does_not_change_numbers(theta, reference):
    whole = simulate_population(theta, reference, t_out=T)
    chunked = simulate_population(theta, reference, t_out=T, chunk_size=7, progress=False)
    assert np.array_equal(whole.values, chunked.values)


def test_single_simulate_equals_population_row(params, theta, reference):
    pop = simulate_population(theta[:5], reference, t_out=T)
    typical = simulate(params, reference, t_out=T)
    for i in range(5):
        one = simulate(theta[i], reference, t_out=T)
        assert np.array_equal(one.values[0], pop.values[i])
    # the typical patient through both paths
    pop_typ = simulate_population(params.to_theta()[None], reference, t_out=T)
    assert np.array_equal(pop_typ.values[0], typical.values[0])


def test_population_result_views(theta, reference, params):
    pop = simulate_population(theta[:4], reference, t_out=T, parameters=params, seed=7, patient_ids=[10, 11, 12, 13])
    frame = pop.to_frame(["treg", "ratio"])
    assert list(frame.columns) == ["patient", "time_day", "variable", "value", "unit"]
    assert len(frame) == 4 * len(T) * 2
    assert sorted(frame["patient"].unique()) == [10, 11, 12, 13]
    ratio = pop.get("ratio")
    np.testing.assert_array_equal(ratio, pop.get("th17") / pop.get("treg"))
    prov = pop.provenance(extra_key=1)
    assert prov["seed"] == 7 and prov["n_patients"] == 4 and prov["n_failed"] == 0 and prov["extra_key"] == 1
    assert prov["parameters"]["values"]["il2_cl"] == params["il2_cl"].value
    with pytest.raises(TregpdError, match="not on the output grid"):
        pop.at("treg", 50.0)
    with pytest.raises(TregpdError, match="unknown variable 'cd8'"):
        pop.get("cd8")


# ------------------------------------------------------------------------------------ numerical faults
#: enough for every normal patient here (~1000 steps), far too few for the stiff one (needs ~1e9 explicit steps)
MAX_STEPS = 5_000


def _faulty(params, n_ok=4):
    """A population in which patient 2 explodes (Emax 1e300: the Treg growth rate overflows) and patient 4 is
    so stiff (naive death 1e7 /day) that explicit dopri5 runs out of steps."""
    th = np.tile(params.to_theta(), (n_ok + 2, 1))
    th[2, I_IL2_EMAX_R] = 1e300
    th[2, I_R_CROWD] = 1e300
    th[4, I_NAIVE_DEATH] = 1e7
    return th


def test_single_patient_failure_raises_clear_error(params, reference):
    with pytest.raises(IntegrationError) as exc:
        simulate(params, reference, t_out=T, max_steps=50)
    msg = str(exc.value)
    assert "patient 0: maximum number of steps reached" in msg
    t_reached = exc.value.failures[0][2]
    assert 0 < t_reached < 168 and f"at t = {t_reached:.4g} d" in msg
    assert "\n" not in msg


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # pure-Python run (no JIT) of the 1e300 patient
def test_population_keep_counts_failures_and_keeps_the_rest(params, reference):
    th = _faulty(params)
    pop = simulate_population(th, reference, t_out=T, on_failure="keep", max_steps=MAX_STEPS,
                              patient_ids=np.arange(100, 106))
    assert pop.n_failed == 2
    np.testing.assert_array_equal(pop.ok, [True, True, False, True, False, True])
    assert pop.status[2] == K.STATUS_STEP_TOO_SMALL and pop.status[4] == K.STATUS_MAX_STEPS
    fails = pop.failures()
    assert [f[0] for f in fails] == [102, 104]
    assert "step size became too small" in fails[0][1] and "maximum number of steps" in fails[1][1]
    assert fails[1][2] < 1.0  # time reached, days
    # failed patients are excluded; kept patients are finite and equal to their own single simulation
    treg = pop.get("treg")
    assert treg.shape == (4, len(T)) and np.all(np.isfinite(treg))
    frame = pop.to_frame()
    assert set(frame["patient"]) == {100, 101, 103, 105}
    assert frame["value"].notna().all()
    np.testing.assert_array_equal(treg[0], simulate(params, reference, t_out=T).get("treg")[0])
    assert pop.provenance()["n_failed"] == 2


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # pure-Python run (no JIT) of the 1e300 patient
def test_population_raise_names_patients_and_times(params, reference):
    with pytest.raises(IntegrationError) as exc:
        simulate_population(_faulty(params), reference, t_out=T, max_steps=MAX_STEPS)
    msg = str(exc.value)
    assert msg.startswith("integration failed for 2 of 6 patients")
    assert "patient 2: step size became too small" in msg and "patient 4: maximum number of steps" in msg
    assert len(exc.value.failures) == 2


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # pure-Python run (no JIT) of the 1e300 patient
def test_nonfinite_output_is_never_returned_as_a_value(params, reference):
    """Even if a kernel finished with status OK, a non-finite output marks the patient failed."""
    from tregpd.model.simulate import SolverOptions, _run
    th = params.to_theta()[None].copy()
    th[0, I_IL2_EMAX_R] = 1e300
    th[0, I_R_CROWD] = 1e300
    out, status, _, _ = _run(th, reference.events(), np.array(T), SolverOptions(), parallel=False)
    assert status[0] != K.STATUS_OK
    res = simulate_population(th, reference, t_out=T, on_failure="keep")
    assert res.get("treg").shape == (0, len(T))


@pytest.mark.parametrize("bad,fragment", [
    ("nan", "must be finite and >= 0, got nan"),
    ("neg", "must be finite and >= 0, got -1.0"),
    ("zero", "parameter 'il2_v' must be > 0, got 0.0"),
    ("imax", "'rapa_imax_th17_prolif' is a fractional inhibition and must be <= 1, got 1.5"),
    ("shape", f"theta must have shape (n_patients, {len(PARAMETER_NAMES)})"),
])
def test_theta_validation(params, reference, bad, fragment):
    th = np.tile(params.to_theta(), (3, 1))
    j = {n: i for i, n in enumerate(PARAMETER_NAMES)}
    if bad == "nan":
        th[1, j["il2_cl"]] = np.nan
    elif bad == "neg":
        th[1, j["il2_cl"]] = -1.0
    elif bad == "zero":
        th[1, j["il2_v"]] = 0.0
    elif bad == "imax":
        th[1, j["rapa_imax_th17_prolif"]] = 1.5
    else:
        th = th[:, :5]
    with pytest.raises(ParameterError) as exc:
        simulate_population(th, reference, t_out=T)
    assert fragment in str(exc.value)
    if bad != "shape":
        assert "patient 1" in str(exc.value)


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(on_failure="ignore"), "on_failure must be 'raise' or 'keep'"),
    (dict(chunk_size=0), "chunk_size must be a positive integer"),
    (dict(method="rk4"), "'method' must be one of ['dopri5', 'rosenbrock23'], got 'rk4'"),
    (dict(pk="analytic"), "'pk' must be one of"),
    (dict(rtol=0.0), "'rtol' must be a number in (0, 1)"),
    (dict(rtol=1e-15), "'rtol' must be >= 1e-13"),
    (dict(max_steps=0), "'max_steps' must be a positive integer"),
    (dict(t_out=[0, -1]), "output times: entry 1 must be finite and >= 0, got -1.0"),
    (dict(t_out=[]), "at least one time"),
    (dict(patient_ids=[1, 2]), "patient_ids must have length 3"),
])
def test_population_option_errors(params, reference, kwargs, fragment):
    th = np.tile(params.to_theta(), (3, 1))
    kw = dict(t_out=T) | kwargs
    with pytest.raises(TregpdError) as exc:
        simulate_population(th, reference, **kw)
    assert fragment in str(exc.value)
