"""Virtual trials: streaming summaries against exact numpy on the full population, reproducibility across
chunk sizes and backends (in-process vs a Dask LocalCluster), failure accounting, CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from tregpd.cli import main
from tregpd.model import SolverOptions, default_parameters, no_treatment, reference_regimen, simulate_population
from tregpd.errors import TregpdError
from tregpd.scenarios.backends import InProcessBackend, make_backend
from tregpd.scenarios.trial import (
    HEALTHY_RANGE, OBSERVABLES, QUANTILE_RELATIVE_ERROR, QUANTILES, TrialError, chunk_bounds, make_plan,
    run_trial, trial_theta)

WEEKS = (0.0, 6.0, 24.0)


@pytest.fixture(scope="module")
def params():
    return default_parameters()


@pytest.fixture(scope="module")
def plan(params):
    return make_plan(params, [reference_regimen()], 1500, seed=11, block=250, weeks=WEEKS)


@pytest.fixture(scope="module")
def trial_500(plan):
    return run_trial(plan, chunk_patients=500)


def _stat(summary, var, week, stat, regimen="shanxi_reference"):
    s = summary[(summary["regimen"] == regimen) & (summary["variable"] == var) & (summary["week"] == week)
                & (summary["statistic"] == stat)]
    assert len(s) == 1, (var, week, stat)
    return float(s["value"].iloc[0])


def test_patients_do_not_depend_on_the_chunk_that_draws_them(plan):
    full, _ = trial_theta(plan, 0, 1500)
    part, _ = trial_theta(plan, 300, 800)          # starts and ends inside blocks
    np.testing.assert_array_equal(part, full[300:800])
    # different seeds give different populations; IIV columns vary, the others stay at the typical value
    other = make_plan(default_parameters(), [reference_regimen()], 1500, seed=12, block=250, weeks=WEEKS)
    assert not np.array_equal(trial_theta(other, 0, 1500)[0], full)
    typical = default_parameters().to_theta()
    varied = {i for i, _ in enumerate(typical) if not np.all(full[:, i] == typical[i])}
    from tregpd.model import PARAMETER_NAMES
    assert {PARAMETER_NAMES[i] for i in varied} == {nm for nm, _ in plan.iiv}


@pytest.mark.slow   # many full trajectories: excluded from make test-nojit
def test_streaming_summary_matches_exact_numpy_on_the_full_population(plan, trial_500):
    theta, _ = trial_theta(plan, 0, plan.n_patients)
    res = simulate_population(theta, reference_regimen(), t_out=plan.t_out)
    summary = trial_500.summary
    for var in OBSERVABLES:
        full = res.get(var)                              # (n, n_times)
        for t, week in enumerate(WEEKS):
            x = full[:, t]
            n = x.size
            assert _stat(summary, var, week, "n") == n
            assert _stat(summary, var, week, "mean") == pytest.approx(x.mean(), rel=1e-12)
            assert _stat(summary, var, week, "sd") == pytest.approx(x.std(ddof=1), rel=1e-9)
            assert _stat(summary, var, week, "min") == x.min()
            assert _stat(summary, var, week, "max") == x.max()
            for q in QUANTILES:
                name = "median" if q == 0.5 else f"q{round(q * 100):02d}"
                exact = np.quantile(x, q, method="inverted_cdf")
                got = _stat(summary, var, week, name)
                assert abs(math.log(got / exact)) <= math.log1p(QUANTILE_RELATIVE_ERROR) + 1e-12, (var, week, q)
            if var in HEALTHY_RANGE:        # exact counts
                lo, hi = HEALTHY_RANGE[var]
                assert _stat(summary, var, week, "frac_in_healthy_range") == ((x >= lo) & (x <= hi)).sum() / n
            if t > 0:
                assert _stat(summary, var, week, "frac_below_week0") == (x < full[:, 0]).sum() / n
                assert _stat(summary, var, week, "frac_above_week0") == (x > full[:, 0]).sum() / n
            if var == "ratio":
                assert _stat(summary, var, week, "frac_below_target") == (x < plan.ratio_target).sum() / n
    assert not summary["value"].isna().any()


@pytest.mark.slow   # many full trajectories: excluded from make test-nojit
def test_summary_is_bit_identical_for_other_chunk_sizes(plan, trial_500):
    other = run_trial(plan, chunk_patients=750, backend=InProcessBackend(parallel_kernel=False))
    assert other.n_chunks == 2 and trial_500.n_chunks == 3
    pd.testing.assert_frame_equal(trial_500.summary, other.summary, check_exact=True)


@pytest.mark.slow   # many full trajectories: excluded from make test-nojit
def test_dask_local_cluster_gives_the_same_numbers_as_in_process(params):
    """One LocalCluster (2 worker processes): a trial and a sensitivity evaluation, bit-identical."""
    from tregpd.scenarios.backends import DaskBackend
    from tregpd.scenarios.sensitivity import ParameterSpace, TregpdModel, evaluate
    plan = make_plan(params, [reference_regimen(), no_treatment()], 2000,
                     seed=3, block=100, weeks=WEEKS)
    local = run_trial(plan, chunk_patients=500)
    # compile (or load) the serial kernel here first, so the workers load it from numba's cache
    simulate_population(trial_theta(plan, 0, 2)[0], reference_regimen(), t_out=plan.t_out, parallel=False)
    model = TregpdModel(params, ParameterSpace.from_parameters(params))
    u = np.random.default_rng(0).random((60, model.space.dimension))
    y_local = evaluate(model, model.space.to_values(u), chunk=25)
    with DaskBackend(n_workers=2) as dask:
        assert dask.describe()["n_workers"] == 2
        remote = run_trial(plan, chunk_patients=700, backend=dask)
        y_remote = evaluate(model, model.space.to_values(u), backend=dask, chunk=7)
    assert remote.backend["backend"] == "dask" and remote.n_chunks == 3 and local.n_chunks == 4
    pd.testing.assert_frame_equal(local.summary, remote.summary, check_exact=True)
    np.testing.assert_array_equal(y_local, y_remote)


def test_failed_patients_are_counted_and_excluded_never_nan(params):
    plan = make_plan(params, [reference_regimen()], 64, seed=1, block=32, weeks=WEEKS,
                     options=SolverOptions(max_steps=3))
    res = run_trial(plan, chunk_patients=32)
    assert res.n_failed == {"shanxi_reference": 64}
    assert res.failure_counts["shanxi_reference"]
    s = res.summary
    assert set(s["statistic"]) == {"n"} and (s["value"] == 0).all()


def test_bad_settings_raise_clear_errors(params):
    with pytest.raises(TrialError, match="seed"):
        make_plan(params, [reference_regimen()], 10, seed=-1)
    with pytest.raises(TrialError, match="unknown parameter 'not_a_parameter'"):
        make_plan(params, [reference_regimen()], 10, iiv={"not_a_parameter": 0.1})
    with pytest.raises(TrialError, match="number of patients"):
        make_plan(params, [reference_regimen()], 0)
    with pytest.raises(TrialError, match="unique"):
        make_plan(params, [reference_regimen(), reference_regimen()], 10)
    with pytest.raises(TrialError, match="multiple of the block size"):
        chunk_bounds(100, 30, 16)
    with pytest.raises(TregpdError, match="positive integer"):
        make_backend(workers=0)


@pytest.mark.slow   # many full trajectories: excluded from make test-nojit
def test_trial_cli_writes_summary_with_provenance(tmp_path, capsys):
    out = tmp_path / "trial"
    code = main(["trial", "--patients", "300", "--chunk", "100", "--block", "100", "--regimen", "reference",
                 "untreated", "--seed", "5", "--weeks", "12", "24", "--out", str(out), "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "patients/s" in text and "shanxi_reference" in text
    frame = pd.read_csv(out / "trial_summary.csv", comment="#")
    assert set(frame["regimen"]) == {"shanxi_reference", "untreated"}
    assert sorted(set(frame["week"])) == [0.0, 12.0, 24.0]
    untreated = frame[(frame["regimen"] == "untreated") & (frame["statistic"] == "median")
                      & (frame["variable"] == "treg")]
    assert untreated["value"].nunique() == 1          # untreated patients stay at their baseline
    prov = json.loads((out / "trial_summary.json").read_text())["provenance"]
    assert prov["seed"] == 5 and prov["n_patients"] == 300 and prov["backend"]["backend"] == "in-process"
    assert (out / "trial_summary.png").stat().st_size > 0


def test_trial_cli_rejects_bad_input_without_traceback(tmp_path, capsys):
    assert main(["trial", "--patients", "0", "--out", str(tmp_path)]) == 2
    assert "--patients must be >= 1" in capsys.readouterr().err
    assert main(["trial", "--patients", "10", "--regimen", "no_such_regimen", "--out", str(tmp_path)]) == 2
    assert "unknown regimen 'no_such_regimen'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
