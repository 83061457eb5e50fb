"""The solver check (``--verify N``, :mod:`tregpd.model.verify`): an independent reference (scipy Radau on a
plain-Python right-hand side built from the declaration) that passes on working kernels and fails on broken ones.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tregpd.cli import main
from tregpd.model import default_parameters, reference_regimen
from tregpd.model.dosing import CMT_IL2_DEPOT, EventTable
from tregpd.model.simulate import simulate
from tregpd.model.verify import (VerifyError, compare, python_model, verify_patients, verify_titrated)


@pytest.fixture(scope="module")
def params():
    return default_parameters()


def test_reference_matches_the_closed_form_of_one_il2_dose(params):
    """The reference alone (no kernel): one s.c. IL-2 dose D into the depot gives the Bateman function
    C(t) = F D k_a/(k_a - k_e) (e^{-k_e t} - e^{-k_a t}) * pmol/IU / V, and the untreated cells stay at their
    baseline (the declaration's initial values are the steady state)."""
    pm = python_model("v2_lean")
    t = np.array([0.0, 0.05, 0.2, 0.5, 1.0, 2.0])
    dose = 1.0e6
    ev = EventTable(np.array([0.0]), np.array([CMT_IL2_DEPOT]), np.array([dose]))
    theta = params.to_theta("v2_lean")
    ref = pm.solve(theta, ev, t)
    v = dict(zip(pm.model.parameter_names, theta))
    ka, ke = v["il2_ka"], v["il2_cl"] / v["il2_v"]
    amount = v["il2_bioavailability"] * dose * ka / (ka - ke) * (np.exp(-ke * t) - np.exp(-ka * t))
    c = amount * v["il2_pmol_per_iu"] / v["il2_v"]
    col = pm.outputs.index("c_il2")
    np.testing.assert_allclose(ref[1:, col], c[1:], rtol=1e-8)
    untreated = pm.solve(theta, EventTable(np.array([]), np.array([], int), np.array([])), t)
    for name in ("naive", "treg", "th17"):
        np.testing.assert_allclose(untreated[:, pm.outputs.index(name)], v[f"{name}_baseline"], rtol=1e-9)


@pytest.mark.parametrize("model", ["v2_lean", "v1_il2_consumption"])
def test_check_passes_at_default_solver_tolerance(params, model):
    """Default kernel options (dopri5, rtol 1e-6): largest normalised difference ~5e-6 (measured), under 1e-4;
    v1_il2_consumption integrates the IL-2 PK as states that depend on the Treg count."""
    res = simulate(params, reference_regimen(weeks=2), t_end_day=14, output_step_day=0.5, model=model)
    rep = verify_patients(res, n=1, seed=0, tol=1e-4)
    assert rep.ok, rep.message()
    assert len(rep.checks) == 1 and rep.checks[0].patient == 0
    assert 1e-9 < rep.max_difference < 1e-4       # a real comparison: never exactly 0
    assert "solver check OK" in rep.message()
    assert rep.provenance()["verify_max_difference"] == rep.max_difference


def test_check_fails_on_a_loose_kernel(params):
    """The kernel at rtol 1e-2 is off by ~4e-3 (measured): the check catches it against a tight tolerance and
    names patient, variable, time, difference and tolerance."""
    res = simulate(params, reference_regimen(weeks=2), t_end_day=14, output_step_day=1.0, rtol=1e-2)
    rep = verify_patients(res, n=1, seed=0, tol=1e-4)
    assert not rep.ok and rep.max_difference > 1e-3
    msg = rep.message()
    assert "FAILED" in msg and "patient 0" in msg and "tolerance 0.0001" in msg and "day" in msg
    with pytest.raises(VerifyError, match="patient 0, variable"):
        rep.raise_if_failed()


def test_check_fails_on_a_corrupted_output(params):
    """One output value corrupted by 1e-3 (relative) after the solve: the check finds that value."""
    res = simulate(params, reference_regimen(weeks=1), t_end_day=7, output_step_day=1.0)
    assert verify_patients(res, 1, tol=1e-4).ok
    col = list(res.variables).index("th17")
    res.values[0, 4, col] *= 1.001
    rep = verify_patients(res, 1, tol=1e-4)
    w = rep.worst
    assert not rep.ok and w.variable == "th17" and w.time_day == res.time_day[4]
    assert w.difference == pytest.approx(1e-3, rel=0.01)


def test_compare_floor_and_nonfinite():
    ref = np.array([[1.0, 0.0], [2.0, 1e-12], [4.0, 1.0]])
    same = ref.copy()
    assert compare(same, ref)[0] == 0.0
    off = ref.copy()
    off[1, 1] = 2e-12                      # below 1e-6 x peak: compared against the floor, not relatively
    assert compare(off, ref)[0] == pytest.approx(1e-12 / 1e-6)
    off = ref.copy()
    off[2, 0] = np.nan
    assert math.isinf(compare(off, ref)[0])


def test_random_patients_are_seeded_and_distinct(params):
    from tregpd.model.population import sample_population
    from tregpd.model.simulate import simulate_population
    theta = sample_population(params, n=6, seed=2, model="v2_lean")
    res = simulate_population(theta, reference_regimen(weeks=1), t_out=np.arange(0, 3.0), model="v2_lean")
    a = verify_patients(res, n=2, seed=5)
    b = verify_patients(res, n=2, seed=5)
    pa = [c.patient for c in a.checks]
    assert pa == [c.patient for c in b.checks] and len(set(pa)) == 2 and a.ok
    assert len(verify_patients(res, n=50, seed=1).checks) == 6     # at most the population


TDM_SCENARIO = {
    "scenario": {"name": "vtdm", "description": "titrated sirolimus, short", "weeks": 3, "parameters": "default",
                 "population": 4, "seed": 3, "outputs": ["csv"], "output_step_day": 1.0, "figures": False},
    "regimen": {"schedules": [{"drug": "sirolimus", "amount": 1.0, "unit": "mg", "route": "oral",
                               "interval_day": 1, "doses_per_course": 21, "n_courses": 1}]},
    "tdm": {"window_ng_ml": [2.0, 5.0], "rule": "proportional", "tablet_mg": 0.5, "min_dose_mg": 0.5,
            "max_dose_mg": 5.0, "sampling_every_day": 7, "sampling_until_day": 14, "result_delay_day": 1,
            "assay_cv": 0.1, "assumption": "test"},
}


def test_tdm_scenario_is_verified_with_each_patients_own_doses(tmp_path):
    """A trough-titrated scenario: the check re-simulates each patient on his own titrated doses and passes;
    the same patients checked against the starting dose (the regimen's events) fail, so the own doses are
    really used."""
    from tregpd.scenarios import run_scenario
    from tregpd.scenarios.schema import parse_scenario
    sc = parse_scenario(TDM_SCENARIO, "vtdm.toml")
    out = run_scenario(sc, tmp_path, progress=False, verify=(1, 1e-4, 0))
    assert out.verify is not None and out.verify.ok and len(out.verify.checks) == 1
    prov = json.loads((tmp_path / "vtdm" / "provenance.json").read_text())
    assert prov["verify_max_difference"] == out.verify.max_difference
    doses = out.titration.segment_doses()
    changed = np.flatnonzero((doses != doses[:, :1]).any(axis=1))
    assert changed.size, "the test scenario must change some patient's dose"
    rows = changed[:1]
    assert verify_titrated(out.result, out.titration, tol=1e-4, rows=rows).ok
    wrong = verify_patients(out.result, tol=1e-4, rows=rows)        # starting dose for everyone
    assert not wrong.ok and wrong.max_difference > 1e-2


def test_cli_simulate_verify_provenance_and_failure(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", "--weeks", "1", "--verify", "1", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "solver check OK" in stdout
    prov = json.loads((out / "provenance.json").read_text())
    assert 0 < prov["verify_max_difference"] < 1e-4 and prov["verify_tolerance"] == 1e-4
    header = (out / "trajectory.csv").read_text().splitlines()
    assert any(line.startswith("# verify_max_difference: ") for line in header)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # a loose kernel and a tight tolerance: exit 2, one line, the previous complete run kept
    code = main(["simulate", "--weeks", "1", "--rtol", "1e-2", "--verify", "1", "--verify-tol", "1e-6",
                 "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "patient 0" in err[0] and "variable" in err[0] and "day" in err[0] and "tolerance 1e-06" in err[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("argv,needle", [
    (["--verify-tol", "nan"], "--verify-tol"), (["--verify-tol", "0"], "--verify-tol"),
    (["--verify", "-1"], "--verify"),
])
def test_cli_bad_verify_options(tmp_path, capsys, argv, needle):
    extra = [] if "--verify" in argv else ["--verify", "1"]
    code = main(["simulate", "--weeks", "1", *extra, *argv, "--out", str(tmp_path / "x")])
    assert code == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "x" / "trajectory.csv").exists()


def test_cli_trial_verify_writes_the_difference(tmp_path, capsys):
    out = tmp_path / "trial"
    code = main(["trial", "--patients", "20", "--chunk", "1024", "--weeks", "0", "1", "--verify", "1",
                 "--no-plot", "--no-progress", "--out", str(out)])
    assert code == 0
    assert "trial regimen 'shanxi_reference': solver check OK" in capsys.readouterr().out
    prov = json.loads((out / "trial_summary.json").read_text())["provenance"]
    assert 0 < prov["verify_max_difference"] < 1e-4
    assert len(prov["verify_patients"]["trial regimen 'shanxi_reference'"]) == 1


@pytest.mark.parametrize("cmd", [["all"], ["scenarios", "run", "--library"], ["trial", "--patients", "5"]])
def test_bad_verify_tolerance_refused_before_any_work(tmp_path, capsys, cmd):
    out = tmp_path / "o"
    assert main([*cmd, "--verify", "1", "--verify-tol", "-1", "--out", str(out)]) == 2
    assert "--verify-tol" in capsys.readouterr().err
    assert not out.exists()
