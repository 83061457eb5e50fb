"""The fit objective's fast path (fitting/problem.py): residuals computed from a kernel-unit parameter vector,
a precomputed statistics plan and a cache of recent points must equal the residuals computed independently
through the public API (a ParameterSet, :func:`simulate` / :func:`sample_population` +
:func:`simulate_population`, statistics by numpy here); a problem pickles (profiles in other processes) and the
parallel profiles equal the serial ones exactly."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from tregpd.errors import ParameterError
from tregpd.fitting import FitProblem, minimize, parse_cohort, seed_cohort
from tregpd.fitting.optimise import profile_likelihoods
from tregpd.model import sample_population, simulate, simulate_population

COHORT = "\n".join([
    "week,observable,statistic,value,n,source",
    "0,treg,median,12.98,82,x", "0,ratio,median,0.44,82,x",
    "6,treg,median,25,82,x", "6,treg,q25,16,82,x", "6,treg,q75,33,82,x",
    "12,th17,mean,6,80,x", "12,th17,sd,3,80,x",
    "24,treg,median,22.1,82,x", "24,ratio,median,0.29,82,x", "24,th17,median_fold_change,1.0,82,x",
]) + "\n"
VALUES = {"il2_emax_treg": 14.5, "rapa_imax_th17_prolif": 0.2, "il2_ec50_treg": 30.0}


def independent_statistics(problem, res):
    """Model value of every fitted row from the public SimulationResult accessors (the pre-fast-path code)."""
    rows = problem.table[problem.table["role"] == "fitted"]
    out = []
    for r in rows.itertuples():
        arr = res.at(r.observable, 7.0 * r.week)
        if r.statistic == "median_fold_change":
            out.append(np.median(arr) / np.median(res.at(r.observable, 0.0)))
        elif r.statistic == "mean":
            out.append(arr.mean())
        else:
            out.append(np.percentile(arr, {"median": 50, "q25": 25, "q75": 75}[r.statistic]))
    return np.array(out), rows


@pytest.mark.parametrize("mode", ["typical", "population"])
def test_fast_residuals_equal_the_public_api(mode):
    cohort = parse_cohort(COHORT, origin="objective-test")
    problem = FitProblem(cohort, free=("il2_emax_treg", "rapa_imax_th17_prolif"), mode=mode, n_patients=40,
                         seed=7, rtol=1e-6, atol=1e-8)
    pset = problem.parameters.with_values(**VALUES)
    if mode == "typical":
        res = simulate(pset, problem.regimen, t_out=problem.t_out, options=problem.options, model=problem.model)
    else:       # the IIV parameter il2_emax_treg is drawn around its new typical value
        theta = sample_population(pset, 40, iiv=problem.iiv, seed=7, model=problem.model)
        res = simulate_population(theta, problem.regimen, t_out=problem.t_out, options=problem.options,
                                  model=problem.model)
    stats, rows = independent_statistics(problem, res)
    expected = (np.log(stats) - np.log(rows["value"].to_numpy())) / rows["sigma_log"].to_numpy()
    got = problem.residuals(VALUES)
    np.testing.assert_array_equal(got, expected)          # same numbers, not merely close
    assert problem.n_targets == (4 if mode == "typical" else 7)   # + q25, q75, mean


def test_repeated_points_are_not_simulated_twice():
    problem = FitProblem(seed_cohort())
    a = problem.residuals({"il2_emax_treg": 12.0})
    assert problem.n_evaluations == 1
    a[:] = 0.0                                          # the caller's copy, not the cache
    b = problem.residuals({"il2_emax_treg": 12.0})
    assert problem.n_evaluations == 1 and np.all(b != 0.0)
    c = problem.residuals({"il2_emax_treg": 12.0 * (1 + 1e-12)})
    assert problem.n_evaluations == 2 and not np.array_equal(b, c)


def test_values_outside_the_bounds_name_the_parameter():
    problem = FitProblem(seed_cohort())
    hi = problem.parameters["il2_emax_treg"].upper
    with pytest.raises(ParameterError, match="il2_emax_treg.*outside its bounds"):
        problem.residuals({"il2_emax_treg": 2 * hi})
    with pytest.raises(ParameterError, match="unknown parameter 'not_a_parameter'"):
        problem.residuals({"not_a_parameter": 1.0})


def test_a_problem_pickles_to_the_same_objective():
    cohort = parse_cohort(COHORT, origin="objective-test")
    for mode in ("typical", "population"):
        problem = FitProblem(cohort, free=("il2_emax_treg",), mode=mode, n_patients=20, seed=3, rtol=1e-6,
                             atol=1e-8)
        copy = pickle.loads(pickle.dumps(problem))
        assert copy.free == problem.free and copy.n_evaluations == 0
        np.testing.assert_array_equal(copy.residuals(VALUES), problem.residuals(VALUES))


def test_parallel_profiles_equal_serial_profiles():
    problem = FitProblem(seed_cohort(), free=("il2_emax_treg", "rapa_imax_th17_prolif"))
    _, best = minimize(problem)
    names = ["il2_emax_treg", "il2_ec50_treg"]
    serial = profile_likelihoods(problem, best, names, n_points=5, workers=1)
    before = problem.n_evaluations
    parallel = profile_likelihoods(problem, best, names, n_points=5, workers=2)
    assert list(parallel) == names
    assert problem.n_evaluations > before           # the workers' simulations are counted
    for n in names:
        np.testing.assert_array_equal(parallel[n].values, serial[n].values)
        np.testing.assert_array_equal(parallel[n].chisqr, serial[n].chisqr)
        assert parallel[n].ci95 == serial[n].ci95


def test_a_failed_integration_is_reported_not_returned():
    from tregpd.errors import IntegrationError
    from tregpd.model import SolverOptions
    for mode in ("typical", "population"):
        problem = FitProblem(seed_cohort(), mode=mode, n_patients=10)
        problem.options = SolverOptions(rtol=1e-8, atol=1e-10, max_steps=20)
        with pytest.raises(IntegrationError, match="maximum number of steps reached"):
            problem.residuals({"il2_emax_treg": 12.0})


def test_cli_workers_must_fit_the_machine(tmp_path, capsys):
    from tregpd.cli import main
    from tregpd.scenarios.backends import available_cpus
    for bad in (0, available_cpus() + 1):
        assert main(["fit", "--workers", str(bad), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert "--workers" in err and f"got {bad}" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
