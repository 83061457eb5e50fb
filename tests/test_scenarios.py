"""Scenario files, validation, summary metrics, runner, CLI and dose finding.

References are independent of the code under test: closed forms (one-compartment s.c. PK peak and AUC, linear
trajectories crossing a target), explicit Python loops over patients, and the model's own reference regimen.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from tregpd.cli import main as cli_main
from tregpd.model import (DoseSchedule, Regimen, ScenarioError, SimulationResult, default_parameters,
                          reference_regimen)
from tregpd.model import kernels as K
from tregpd.scenarios import (QUESTIONS, library_paths, load_scenario, run_library, run_scenario,
                              time_below)
from tregpd.scenarios import metrics as M
from tregpd.scenarios.dosefind import candidate_regimens, dose_find
from tregpd.scenarios.runner import cumulative_doses, mean_daily_dose, summarise_result
from tregpd.scenarios.schema import Scenario, ScenarioWarning

LIBRARY = library_paths()

GOOD = """
[scenario]
name = "t1"
description = "test"
weeks = 4
population = 3
seed = 1
output_step_day = 7.0

[[regimen.schedules]]
drug = "il2"
amount = 0.5
unit = "MIU"
interval_day = 1
doses_per_course = 5
"""


def write(tmp_path, text, name="s.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------------------------------------ library
def test_library_is_complete():
    names = {p.stem for p in LIBRARY}
    assert len(LIBRARY) >= 25
    for required in ("shanxi_reference", "untreated", "il2_alone", "sirolimus_alone", "il2_dose_0p25miu",
                     "il2_dose_3p0miu", "il2_freq_qod_2on2off", "il2_freq_q3d", "il2_freq_weekly", "il2_freq_q15d",
                     "lupil2", "transreg", "peking_he2020", "lai2018_sirolimus", "sirolimus_2p0mg_daily",
                     "duration_12wk", "duration_48wk", "stop24_washout48"):
        assert required in names
    tagged = {load_scenario(p).question for p in LIBRARY}
    assert tagged == set(QUESTIONS)


@pytest.mark.parametrize("path", LIBRARY, ids=[p.stem for p in LIBRARY])
def test_library_file_parses_cleanly(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sc = load_scenario(path)
    assert sc.name == path.stem
    assert sc.description and sc.source
    assert sc.parameters == "default"
    assert len(sc.regimen.events(until_day=sc.t_end_day)) > 0 or sc.name == "untreated"


def test_reference_file_matches_model_reference_regimen():
    sc = load_scenario(Path(LIBRARY[0]).parent / "shanxi_reference.toml")
    mine = sc.regimen.events(until_day=sc.t_end_day)
    ref = reference_regimen(24).events(until_day=sc.t_end_day)
    np.testing.assert_array_equal(mine.time_day, ref.time_day)
    np.testing.assert_array_equal(mine.cmt, ref.cmt)
    np.testing.assert_array_equal(mine.amount, ref.amount)
    assert "ASSUMPTION" in sc.assumption and "ASSUMPTION" in sc.regimen.assumption
    # 6 courses x 5 x 0.5 MIU, 84 x 0.5 mg
    assert cumulative_doses(sc) == {"il2_cumulative_dose": 15.0, "sirolimus_cumulative_dose": 42.0}
    assert mean_daily_dose(sc, "sirolimus") == pytest.approx(0.25)


@pytest.mark.parametrize("path", LIBRARY, ids=[p.stem for p in LIBRARY])
def test_library_smoke_run(path):
    """Every library file runs (3 patients, weekly grid) with finite summaries at its report weeks."""
    sc = load_scenario(path).with_overrides(population=3, output_step_day=7.0)
    out = run_scenario(sc, None, progress=False)
    assert out.result.n_failed == 0
    s = out.summary
    assert set(s.columns) == {"scenario", "metric", "week", "statistic", "value", "unit", "band"}
    for week in sc.report_weeks():
        for var in ("treg", "th17", "ratio"):
            assert np.isfinite(out.value(var, week))
            assert out.value(var, week, "p05") <= out.value(var, week) <= out.value(var, week, "p95")
    if any(x.drug == "il2" for x in sc.regimen.schedules):
        assert 0 < out.value("selectivity_margin") < 1
    if sc.name == "untreated":   # no drug: everyone stays at baseline
        assert out.value("ratio_change", sc.report_weeks()[-1], "p95") == pytest.approx(0, abs=1e-6)


# ------------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("old, new, message", [
    ('weeks = 4', 'weeks = 4\ncolour = "red"', "unknown keys ['colour']"),
    ('doses_per_course = 5', 'doses_per_course = 5\nfrequency = 2', "unknown keys ['frequency']"),
    ('amount = 0.5', 'amount = -0.5', "'amount' must be > 0, got -0.5"),
    ('amount = 0.5', 'amount = 0', "'amount' must be > 0, got 0"),
    ('amount = 0.5', 'amount = "half"', "'amount' must be a number"),
    ('doses_per_course = 5', 'doses_per_course = 5\nn_courses = 3\ncourse_interval_day = 3', "courses would overlap"),
    ('weeks = 4', 'weeks = "4"', "weeks: must be a number"),
    ('weeks = 4', 'weeks = 0', "weeks: must be > 0"),
    ('population = 3', 'population = 0', "population: must be an integer >= 1"),
    ('population = 3', 'population = 2.5', "population: must be an integer >= 1"),
    ('seed = 1', 'seed = -1', "seed: must be an integer >= 0"),
    ('weeks = 4', 'weeks = 4\nquestion = "cost"', "question: must be one of"),
    ('weeks = 4', 'weeks = 4\noutputs = ["pdf"]', "unknown output kinds ['pdf']"),
    ('weeks = 4', 'weeks = 4\niiv = { treg_baseline = -0.1 }', "omega of 'treg_baseline'"),
    ('weeks = 4', 'weeks = 4\niiv = { nonsense = 0.1 }', "unknown parameter 'nonsense'"),
    ('weeks = 4', 'weeks = 4\nparameters = "missing.toml"', "does not exist"),
    ('name = "t1"', 'name = "bad/name"', "name: must start with"),
    ('drug = "il2"', 'drug = "aspirin"', "'drug' must be one of"),
    ('unit = "MIU"', 'unit = "mg"', "'unit' must be one of"),
    ('interval_day = 1', 'interval_day = 1\nstart_day = 40', "start_day 40 is at or after the end"),
])
def test_invalid_scenarios_name_file_and_field(tmp_path, old, new, message):
    assert old in GOOD
    p = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ScenarioError) as exc:
        load_scenario(p)
    assert message in str(exc.value)
    assert str(p) in str(exc.value)


def test_missing_required_key_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ScenarioError, match=r"missing required keys \['description'\]"):
        load_scenario(write(tmp_path, GOOD.replace('description = "test"\n', "")))
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(write(tmp_path, "[scenario\nname = 1"))
    with pytest.raises(ScenarioError, match="scenario file .*nope.toml. does not exist"):
        load_scenario(tmp_path / "nope.toml")
    with pytest.raises(ScenarioError, match=r"unknown top-level tables/keys \['regimens'\]"):
        load_scenario(write(tmp_path, GOOD.replace("regimen.schedules", "regimens.schedules")))


def test_doses_past_the_end_warn(tmp_path):
    p = write(tmp_path, GOOD.replace("doses_per_course = 5", "doses_per_course = 40"))
    with pytest.warns(ScenarioWarning, match="12 of 40 doses fall at or after the end"):
        sc = load_scenario(p)
    assert len(sc.regimen.events(until_day=sc.t_end_day)) == 28


def test_fitted_parameters_need_the_runner_option(tmp_path):
    p = write(tmp_path, GOOD.replace("weeks = 4", 'weeks = 4\nparameters = "fitted"'))
    with pytest.raises(ScenarioError, match="needs a fitted parameter file"):
        run_scenario(p, None, progress=False)
    params = default_parameters().with_values(il2_emax_treg=default_parameters().value("il2_emax_treg") * 2)
    out = run_scenario(p, None, parameters=params, progress=False)
    assert out.parameters is params


def test_duplicate_names_rejected(tmp_path):
    p = write(tmp_path, GOOD)
    with pytest.raises(ScenarioError, match=r"repeated: \['t1'\]"):
        run_library([p, p], None, progress=False)


# ------------------------------------------------------------------------------------------------ metrics
def test_time_below_matches_closed_form_crossings():
    t = np.linspace(0.0, 10.0, 11)
    # ratio(t) = 0.5 - 0.04 t crosses 0.3 at t = 5 -> 5 days below; a V shape 0.5 - 0.1 t then up again
    lin = 0.5 - 0.04 * t
    v = np.where(t <= 5, 0.5 - 0.1 * t, 0.1 * t - 0.5)      # below 0.3 for t in (2, 8): 6 days
    flat = np.full_like(t, 0.2)
    got = time_below(t, np.stack([lin, v, flat, flat + 1]), 0.3)
    np.testing.assert_allclose(got, [5.0, 6.0, 10.0, 0.0], atol=1e-12)
    # a coarse grid with a crossing inside an interval: exact under linear interpolation
    np.testing.assert_allclose(time_below(np.array([0.0, 4.0]), np.array([[0.0, 1.0]]), 0.25), [1.0])


def _hand_built_result(treg, th17, time_day):
    n, nt = treg.shape
    vals = np.zeros((n, nt, K.N_OUT))
    vals[:, :, K.OUT_TREG] = treg
    vals[:, :, K.OUT_TH17] = th17
    vals[:, :, K.OUT_NAIVE] = 200.0
    vals[:, :, K.OUT_AUC_IL2] = np.linspace(0, 3, nt)[None, :]
    return SimulationResult(time_day, vals, np.zeros(n, dtype=np.int64), np.full(n, time_day[-1]),
                            np.zeros(n, dtype=np.int64), np.arange(n))


def test_summary_against_explicit_loops():
    rng = np.random.default_rng(3)
    time_day = np.array([0.0, 42.0, 84.0, 168.0])
    n = 101
    treg = rng.uniform(5, 70, size=(n, 4))
    th17 = rng.uniform(0.5, 25, size=(n, 4))
    res = _hand_built_result(treg, th17, time_day)
    sc = Scenario(name="hand", description="hand-built", weeks=24, regimen=Regimen("hand"), ratio_target=0.3)
    s = summarise_result(sc, res, {})
    L = lambda *a: M.lookup(s, *a)
    for k, week in enumerate([0, 6, 12, 24]):
        ratio = th17[:, k] / treg[:, k]
        inside = 0
        for i in range(n):   # explicit loop, as a clinician would count patients
            ok_treg = 13.47 <= treg[i, k] <= 64.58
            ok_ratio = 0.04 <= th17[i, k] / treg[i, k] <= 0.76
            inside += ok_treg and ok_ratio
        assert L("fraction_healthy", week, "fraction") == pytest.approx(inside / n)
        assert L("ratio", week, "median") == pytest.approx(sorted(ratio)[n // 2])
        if week:
            change = sorted(100 * (treg[i, k] - treg[i, 0]) / treg[i, 0] for i in range(n))
            assert L("treg_change_pct", week, "median") == pytest.approx(change[n // 2])
            assert L("fraction_ratio_below_target", week, "fraction") == pytest.approx(
                sum(r < 0.3 for r in ratio) / n)
    # the median of changes differs from the change of medians here (a reason to report the former)
    assert L("treg_change", 24) != pytest.approx(np.median(treg[:, 3]) - np.median(treg[:, 0]), rel=1e-3)
    assert L("n_patients", None, "count") == n and L("n_failed", None, "count") == 0


def test_failed_patients_are_excluded_and_counted():
    time_day = np.array([0.0, 42.0, 84.0, 168.0])
    treg = np.tile([10.0, 20.0, 30.0, 40.0], (4, 1))
    res = _hand_built_result(treg, treg * 0.1, time_day)
    res.values[3, :, K.OUT_TREG] = 1e6          # garbage in a failed row must not leak into statistics
    res.status[3] = K.STATUS_MAX_STEPS
    sc = Scenario(name="hand", description="hand-built", weeks=24, regimen=Regimen("hand"))
    s = summarise_result(sc, res, {})
    assert M.lookup(s, "treg", 24, "p95") == pytest.approx(40.0)
    assert M.lookup(s, "n_failed", None, "count") == 1 and M.lookup(s, "n_patients", None, "count") == 4


def test_peak_selectivity_and_auc_match_one_compartment_closed_form():
    """Single s.c. dose, typical patient: C(t) = F D ka s / (V (ka - ke)) (e^-ke t - e^-ka t), s = pmol/IU."""
    p = default_parameters()
    dose_iu = 1.5e6
    reg = Regimen("one", (DoseSchedule("il2", 1.5, "MIU", doses_per_course=1),))
    sc = Scenario(name="one", description="single dose", weeks=2, regimen=reg, population=1,
                  output_step_day=1.0)
    out = run_scenario(sc, None, parameters=p, progress=False)
    ka, ke = p.value("il2_ka") * 24, p.value("il2_cl") / p.value("il2_v") * 24     # per day
    scale = p.value("il2_bioavailability") * dose_iu * p.value("il2_pmol_per_iu") / p.value("il2_v")
    tmax = math.log(ka / ke) / (ka - ke)
    cmax = scale * ka / (ka - ke) * (math.exp(-ke * tmax) - math.exp(-ka * tmax))
    # 30-min grid: the sampled peak is at most the second-order error of being <= 15 min off the true peak
    assert out.value("il2_peak") == pytest.approx(cmax, rel=5e-3)
    assert out.value("il2_peak") <= cmax * (1 + 1e-9)
    assert out.value("selectivity_margin") == pytest.approx(out.value("il2_peak") / p.value("il2_ec50_effector"))
    auc = scale / ke     # pM * day, to infinity (2 weeks is effectively infinity here)
    assert out.value("auc_il2", 2) == pytest.approx(auc, rel=1e-6)


def test_selectivity_margin_scales_linearly_with_dose():
    """Linear PK: peaks scale exactly with the dose (same population, same schedule)."""
    res = {}
    for d in (0.5, 3.0):
        reg = Regimen("x", (DoseSchedule("il2", d, "MIU", interval_day=1, doses_per_course=5),))
        sc = Scenario(name="x", description="x", weeks=1, regimen=reg, population=8, seed=4, output_step_day=1.0)
        res[d] = run_scenario(sc, None, progress=False).exposure["selectivity_margin"]
    np.testing.assert_allclose(res[3.0], 6.0 * res[0.5], rtol=1e-9)


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_run_end_to_end(tmp_path, capsys):
    lib = Path(LIBRARY[0]).parent
    files = [str(lib / "shanxi_reference.toml"), str(lib / "il2_dose_1p0miu.toml")]
    rc = cli_main(["scenarios", "run", *files, "--population", "6", "--step-day", "7", "--out", str(tmp_path),
                   "--no-progress"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "| shanxi_reference | " in stdout and "| il2_dose_1p0miu | " in stdout
    assert "90% PI" not in stdout and "between-patient range" in stdout and "Ranking rule" in stdout
    for name in ("comparison.csv", "comparison.md", "comparison.png", "dose_response.png", "summary_all.csv",
                 "shanxi_reference/trajectories.csv", "shanxi_reference/trajectories.parquet",
                 "shanxi_reference/summary.csv", "shanxi_reference/trajectories.png",
                 "shanxi_reference/provenance.json"):
        assert (tmp_path / name).is_file(), name
    traj = pd.read_csv(tmp_path / "shanxi_reference/trajectories.csv", comment="#")
    assert set(traj["statistic"]) == {"median", "p05", "p95", "median_lower", "median_upper"}
    assert set(traj["band"].fillna("")) == {"", "between_patients_5_95", "median_uncertainty_90"}
    import pyarrow.parquet as pq
    meta = json.loads(pq.read_schema(tmp_path / "shanxi_reference/trajectories.parquet").metadata[b"tregpd"])
    assert meta["seed"] == 20170614 and meta["regimen"]["name"] == "shanxi_reference"
    assert "ASSUMPTION" in meta["regimen"]["assumption"]
    comp = pd.read_csv(tmp_path / "comparison.csv", comment="#")
    # the 1 MIU series point has twice the reference's IL-2 and a lower median ratio (more IL-2, more Treg)
    row = comp.set_index("scenario")
    assert row.loc["il2_dose_1p0miu", "il2_miu_total"] == 2 * row.loc["shanxi_reference", "il2_miu_total"]
    summ = pd.read_csv(tmp_path / "shanxi_reference/summary.csv", comment="#")
    assert M.lookup(summ, "ratio", 24) == pytest.approx(row.loc["shanxi_reference", "ratio_median_cmp"])


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = write(tmp_path, GOOD.replace("amount = 0.5", "amount = -1"))
    rc = cli_main(["scenarios", "run", str(bad), "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "'amount' must be > 0" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    rc = cli_main(["scenarios", "validate", str(bad), str(write(tmp_path, GOOD, "good.toml"))])
    out = capsys.readouterr().out
    assert rc == 2 and "INVALID" in out and "ok      " in out
    assert cli_main(["scenarios", "question", "cost"]) == 2


def test_question_combination(tmp_path):
    from tregpd.scenarios.questions import run_question
    run = run_question("combination", tmp_path, population=4, output_step_day=7.0, progress=False)
    assert set(run.table["scenario"]) == {"shanxi_reference", "il2_alone", "sirolimus_alone", "untreated",
                                         "taper_only"}
    text = (tmp_path / "combination" / "answer.md").read_text()
    assert "Ranking rule" in text
    r = run.table.set_index("scenario")["ratio_median_cmp"]
    assert r["shanxi_reference"] < r["il2_alone"] < r["untreated"]   # each drug adds to the other (priors)


# ------------------------------------------------------------------------------------------------ dose finding
def test_candidate_grid_deduplicates_and_respects_cycles():
    cands = candidate_regimens(doses=(1.0,), intervals=(1.0, 7.0, 14.0), course_days=(5.0, 14.0, 28.0), weeks=24,
                               sirolimus_mg=0)
    times = {info["regimen"]: reg.events().time_day for info, reg in cands}
    # q7d or q14d within a 5-day course, and q14d within a 14-day course, are all one dose per 28-day cycle:
    # the same dose times, evaluated once (under the first label)
    assert "1MIU_q7d_5of28d" in times
    assert "1MIU_q14d_5of28d" not in times and "1MIU_q14d_14of28d" not in times
    np.testing.assert_array_equal(times["1MIU_q7d_5of28d"], np.arange(6) * 28.0)
    np.testing.assert_array_equal(times["1MIU_q7d_14of28d"][:4], [0, 7, 28, 35])
    np.testing.assert_array_equal(times["1MIU_q1d_5of28d"][:6], [0, 1, 2, 3, 4, 28])
    np.testing.assert_array_equal(times["1MIU_q7d_continuous"], np.arange(24) * 7.0)
    assert all(t.max() < 168 for t in times.values())


def test_dose_find_respects_limits():
    kw = dict(doses=(0.5, 3.0), intervals=(1.0, 7.0), course_days=(5.0,), population=5, progress=False)
    res = dose_find(max_selectivity=1.0, max_treg_median=None, **kw)
    g = res.grid
    assert len(g) == 4 and g["feasible"].all()
    from tregpd.scenarios.comparison import rank_regimens
    # one implementation: the grid is in the order of the comparison's ranking function
    again = rank_regimens(g.drop(columns=["flags", "flagged", "rank", "feasible"]), max_treg=None, max_selectivity=1.0)
    assert list(again["regimen"]) == list(g["regimen"]) and res.best["regimen"] == g["regimen"].iloc[0]
    # 3 MIU peaks are 6x the 0.5 MIU peaks (linear PK); a limit between them excludes the 3 MIU regimens
    m05 = g[g["dose_miu"] == 0.5]["selectivity_margin_p95"].max()
    limit = 3 * m05
    res2 = dose_find(max_selectivity=limit, max_treg_median=None, **kw)
    assert set(res2.grid[res2.grid["feasible"]]["dose_miu"]) == {0.5}
    assert res2.best["selectivity_margin_p95"] <= limit
    assert res2.reference["regimen"].startswith("shanxi_reference")
    assert "Best feasible" in res2.report()
    res3 = dose_find(max_selectivity=1e-6, max_treg_median=None, **kw)
    assert res3.best is None and "no regimen satisfies" in res3.report()
    res4 = dose_find(max_selectivity=1.0, max_cumulative_miu=5.0, max_treg_median=None, **kw)
    assert (res4.grid[res4.grid["feasible"]]["il2_miu_total"] <= 5.0).all()
    with pytest.raises(ScenarioError, match="every dose must be a positive number"):
        dose_find(doses=(-1.0,), intervals=(1.0,), course_days=(5.0,), population=2, progress=False)


def test_dosefind_cli(tmp_path, capsys):
    rc = cli_main(["dosefind", "--doses", "0.5", "1", "--intervals", "1", "7", "--course-days", "5",
                   "--population", "4", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    assert "Best feasible" in capsys.readouterr().out
    for name in ("dosefind_grid.csv", "dosefind.md", "dosefind.png", "provenance.json"):
        assert (tmp_path / name).is_file()


def test_washout_returns_towards_baseline_and_rebound_week():
    """24 weeks after stopping the drugs the typical patient is back near the drug-free trajectory with the same
    background prednisone taper (the file keeps the study's taper, which alone moves the steady state)."""
    from tregpd.model import Regimen, default_parameters, simulate
    from tregpd.scenarios.questions import rebound_week
    sc = load_scenario(Path(LIBRARY[0]).parent / "stop24_washout48.toml").with_overrides(population=1)
    out = run_scenario(sc, None, progress=False)
    assert out.value("ratio", 24) < 0.29 < out.value("ratio", 0)
    drug_free = simulate(default_parameters(), Regimen("taper_only", taper=sc.regimen.taper), t_out=[0.0, 336.0])
    assert out.value("ratio", 48) == pytest.approx(drug_free.get("ratio")[0, -1], rel=0.05)
    wk = rebound_week(out, 0.29)
    ratio = out.result.get("ratio")[0]
    weeks = out.result.time_day / 7
    assert 24 < wk < 48
    k = np.flatnonzero(np.isclose(weeks, wk))[0]
    assert ratio[k] >= 0.29 and ratio[k - 1] < 0.29


def test_parameter_file_relative_to_scenario_and_patient_output(tmp_path):
    base = default_parameters()
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "p.toml").write_text(base.with_values(treg_baseline=20.0).to_toml())
    text = GOOD.replace("weeks = 4", 'weeks = 4\nparameters = "params/p.toml"\noutputs = ["csv", "patients"]')
    sc = load_scenario(write(tmp_path, text))
    out = run_scenario(sc, tmp_path / "out", progress=False)
    assert out.parameters.value("treg_baseline") == 20.0
    patients = pd.read_parquet(tmp_path / "out" / "t1" / "patients.parquet")
    assert sorted(patients["patient"].unique()) == [0, 1, 2]
    week0 = patients[(patients["variable"] == "treg") & (patients["time_day"] == 0)]["value"].to_numpy()
    np.testing.assert_allclose(np.sort(week0), np.sort(out.result.get("treg")[:, 0]))
    assert not (tmp_path / "out" / "t1" / "trajectories.parquet").exists()     # not asked for
    assert not (tmp_path / "out" / "t1" / "trajectories.png").exists()


def test_library_run_writes_answers_per_question(tmp_path):
    lib = Path(LIBRARY[0]).parent
    files = [lib / f"{n}.toml" for n in ("shanxi_reference", "il2_alone", "il2_dose_3p0miu", "untreated")]
    run = run_library(files, tmp_path, population=4, output_step_day=7.0, progress=False, figures=False)
    text = (tmp_path / "answers.md").read_text()
    assert "## combination:" in text and "## il2_dose:" in text and "## washout" not in text
    # comparison rows in study-question order: reference first
    assert list(run.table["scenario"]) == ["shanxi_reference", "il2_alone", "untreated", "il2_dose_3p0miu"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 2.0), min_size=2, max_size=12), st.floats(0.05, 1.95))
def test_time_below_plus_time_above_is_the_whole_period(values, target):
    """Below-target time of v plus below-(-target) time of -v (i.e. time above) covers the whole period."""
    v = np.asarray(values)
    t = np.cumsum(np.r_[0.0, np.full(v.size - 1, 1.5)])
    below = time_below(t, v[None, :], target)[0]
    above = time_below(t, -v[None, :], -target)[0]
    assert 0.0 <= below <= t[-1] + 1e-12
    assert below + above == pytest.approx(t[-1], abs=1e-9) or np.any(np.isclose(v, target))


# ------------------------------------------------------------------------------------------------ figures
def test_cli_no_figures_writes_tables_but_no_png(tmp_path, capsys):
    lib = Path(LIBRARY[0]).parent
    files = [str(lib / "shanxi_reference.toml"), str(lib / "il2_dose_1p0miu.toml")]
    rc = cli_main(["scenarios", "run", *files, "--population", "4", "--step-day", "7", "--out", str(tmp_path),
                   "--no-progress", "--no-figures"])
    assert rc == 0, capsys.readouterr().err
    assert "| shanxi_reference | – | 24 (24.0) |" in capsys.readouterr().out
    for name in ("comparison.csv", "comparison.md", "summary_all.csv", "shanxi_reference/trajectories.csv",
                 "shanxi_reference/trajectories.parquet", "shanxi_reference/summary.csv",
                 "shanxi_reference/provenance.json", "il2_dose_1p0miu/summary.csv"):
        assert (tmp_path / name).is_file(), name
    assert not list(tmp_path.rglob("*.png"))
    prov = json.loads((tmp_path / "shanxi_reference" / "provenance.json").read_text())
    assert prov["scenario"]["scenario"]["figures"] is False


def test_figures_key_in_scenario_files(tmp_path):
    sc = load_scenario(write(tmp_path, GOOD.replace("weeks = 4", "weeks = 4\nfigures = false")))
    assert sc.figures is False and sc.to_dict()["scenario"]["figures"] is False
    assert load_scenario(write(tmp_path, GOOD)).figures is True                    # default
    assert load_scenario(write(tmp_path, GOOD.replace("weeks = 4", "weeks = 4\nfigures = true"))).figures
    for bad in ('"no"', "0", "1", '"false"'):
        with pytest.raises(ScenarioError, match=r"\[scenario\] figures: must be true or false"):
            load_scenario(write(tmp_path, GOOD.replace("weeks = 4", f"weeks = 4\nfigures = {bad}")))
    # a scenario with figures = false writes no PNG, even with "png" in outputs; the others still do
    off = write(tmp_path, GOOD.replace("weeks = 4", 'weeks = 4\nfigures = false\noutputs = ["csv", "png"]'),
                "off.toml")
    on = write(tmp_path, GOOD.replace('name = "t1"', 'name = "t2"').replace("weeks = 4", 'weeks = 4\noutputs = ["csv", "png"]'),
               "on.toml")
    run_library([off, on], tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "t1" / "trajectories.png").exists()
    assert (tmp_path / "out" / "t2" / "trajectories.png").is_file()
    assert (tmp_path / "out" / "comparison.png").is_file()
    # every scenario figures = false: no comparison figure either
    run_library([off], tmp_path / "out2", progress=False)
    assert not list((tmp_path / "out2").rglob("*.png"))
    assert (tmp_path / "out2" / "comparison.csv").is_file()


def test_summary_index_lookup_matches_frame_lookup():
    sc = load_scenario(LIBRARY[0]).with_overrides(population=4, output_step_day=7.0)
    out = run_scenario(sc, None, progress=False)
    idx = M.summary_index(out.summary)
    keys = {(m, s) for m, s in zip(out.summary["metric"], out.summary["statistic"])}
    for metric, stat in sorted(keys):
        for week in (None, 0.0, 6.0, 24.0, 23.0):
            a, b = M.lookup(out.summary, metric, week, stat), M.lookup_index(idx, metric, week, stat)
            assert (math.isnan(a) and math.isnan(b)) or a == b, (metric, stat, week)
    assert math.isnan(M.lookup_index(idx, "no_such_metric"))


def test_figures_drawn_by_worker_processes_match_the_inline_run(tmp_path):
    """``figure_workers`` (what the CLI uses for larger runs) writes the same files; tables are identical."""
    lib = Path(LIBRARY[0]).parent
    files = [lib / f"{n}.toml" for n in ("shanxi_reference", "il2_alone", "il2_dose_1p0miu", "untreated")]
    kw = dict(population=3, output_step_day=7.0, progress=False)
    inline = run_library(files, tmp_path / "a", figure_workers=0, **kw)
    pooled = run_library(files, tmp_path / "b", figure_workers=2, **kw)
    names = sorted(str(p.relative_to(tmp_path / "a")) for p in (tmp_path / "a").rglob("*.png"))
    assert names == sorted(str(p.relative_to(tmp_path / "b")) for p in (tmp_path / "b").rglob("*.png"))
    assert "comparison.png" in names and "dose_response.png" in names and "untreated/trajectories.png" in names
    for name in names:
        assert (tmp_path / "b" / name).read_bytes()[:4] == b"\x89PNG", name
    assert [Path(f).name for f in inline.files] == [Path(f).name for f in pooled.files]
    assert (tmp_path / "a" / "comparison.md").read_text() == (tmp_path / "b" / "comparison.md").read_text()


def test_figure_writer_errors_propagate_and_workers_auto(tmp_path, monkeypatch):
    from tregpd import plotting
    monkeypatch.delenv(plotting.WORKERS_ENV, raising=False)
    assert plotting.figure_workers(3) == 0                       # too few figures to repay starting workers
    monkeypatch.setattr(plotting.os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    assert plotting.figure_workers(40) == 0                      # no idle CPU: workers would only add start-up
    assert plotting.figure_workers(40, requested=0) == 0
    assert plotting.figure_workers(1, requested=4) == 1          # never more workers than figures
    monkeypatch.setenv(plotting.WORKERS_ENV, "0")
    assert plotting.figure_workers(40) == 0
    curves = plotting.Curves(np.arange(3.0), {v: np.ones((2, 3)) for v in ("treg", "th17", "ratio")})
    with pytest.raises(OSError):
        with plotting.FigureWriter(workers=1) as w:               # unwritable target: the error reaches us
            (tmp_path / "file").write_text("x")
            w.submit(plotting.plot_trajectory, tmp_path / "file" / "sub" / "x.png", curves)
