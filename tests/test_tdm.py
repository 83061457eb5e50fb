"""Sirolimus trough titration (therapeutic drug monitoring): rules, closed-form troughs, populations, outputs.

References are independent of the code under test: hand-computed rule outcomes; the trough from the matrix
exponential of a rate matrix written out here from the parameter file (scipy.linalg.expm, not the modal sums of
:mod:`tregpd.scenarios.tdm`); the integrator's own ``c_rapa``; counts recomputed from the written CSV.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st
from scipy.linalg import expm

from tregpd.cli import main as cli_main
from tregpd.errors import ScenarioError
from tregpd.model import DoseSchedule, Regimen, default_parameters
from tregpd.model.dosing import CMT_GC_LEVEL, CMT_RAPA_GUT, SteroidTaper
from tregpd.model.population import sample_population
from tregpd.model.simulate import simulate_population
from tregpd.model.structures import get_model
from tregpd.scenarios import library_paths, load_scenario, run_scenario
from tregpd.scenarios.schema import parse_scenario
from tregpd.scenarios.comparison import comparison_row
from tregpd.scenarios.tdm_plots import plot_titration
from tregpd.scenarios.tdm import (TDM_KEYS, TdmRule, assay_factors, next_dose, parse_tdm, round_to_tablet,
                                  simulate_titrated, titrate)
from tregpd.scenarios.trial import make_plan, run_trial, trial_theta

LAI = {"window_ng_ml": [6.0, 15.0], "max_dose_mg": 10.0}


def rule(**kw) -> TdmRule:
    return parse_tdm({**LAI, "sampling_days": [14.0], **kw}, "t.toml")


def daily(amount=2.0, days=364, interval=1.0) -> Regimen:
    return Regimen("r", (DoseSchedule("sirolimus", amount, "mg", interval_day=interval, doses_per_course=days),))


# ----------------------------------------------------------------------------------------- the pure rule
@pytest.mark.parametrize("kw, dose, measured, new, action", [
    # proportional to the midpoint 10.5, 0.5 mg tablets, limits 0.5-10 mg
    ({}, 2.0, 3.0, 7.0, 1),           # 2 x 10.5 / 3 = 7.0
    ({}, 2.0, 5.9, 3.5, 1),           # 3.559 -> 3.5
    ({}, 2.0, 6.0, 2.0, 0),           # window edges are inside
    ({}, 2.0, 15.0, 2.0, 0),
    ({}, 2.0, 10.0, 2.0, 0),
    ({}, 4.0, 20.0, 2.0, -1),         # 2.1 -> 2.0
    ({}, 2.0, 16.8, 1.5, -1),         # 1.25 -> 1.5 (halves round up)
    ({}, 8.0, 1.0, 10.0, 1),          # 84 -> capped at max_dose_mg
    ({}, 2.0, 0.0, 10.0, 1),          # nothing measurable -> the ceiling
    ({}, 0.5, 40.0, 0.5, 0),          # already at the floor
    ({"target_ng_ml": 14.9}, 10.0, 15.2, 9.5, -1),   # 9.80 rounds back to 10: one tablet down instead
    ({"target_ng_ml": 6.1}, 3.0, 5.95, 3.5, 1),      # 3.076 rounds back to 3: one tablet up instead
    ({"tablet_mg": 0.25, "min_dose_mg": 0.25}, 2.0, 5.0, 4.25, 1),   # 4.2 -> 4.25 on quarter tablets
    # step rule, +/- 0.5 mg
    ({"rule": "step"}, 2.0, 3.0, 2.5, 1),
    ({"rule": "step"}, 2.0, 16.0, 1.5, -1),
    ({"rule": "step"}, 2.0, 10.0, 2.0, 0),
    ({"rule": "step"}, 10.0, 3.0, 10.0, 0),
    ({"rule": "step", "step_mg": 1.0}, 2.0, 1.0, 3.0, 1),
])
def test_next_dose_table(kw, dose, measured, new, action):
    got, act = next_dose(rule(**kw), np.array([dose]), np.array([measured]))
    assert got[0] == pytest.approx(new, abs=1e-12)
    assert act[0] == action


def test_round_to_tablet_rounds_halves_up():
    assert round_to_tablet([0.24, 0.25, 1.25, 1.74, 2.0], 0.5).tolist() == [0.0, 0.5, 1.5, 1.5, 2.0]


def test_sampling_schedules():
    r = parse_tdm({**LAI, "sampling_every_day": 7, "sampling_until_day": 28, "sampling_then_every_day": 28})
    assert r.sampling_schedule(0.0, 130.0).tolist() == [7, 14, 21, 28, 56, 84, 112]
    r = parse_tdm({**LAI, "sampling_every_day": 14, "sampling_start_day": 10})
    assert r.sampling_schedule(0.0, 50.0).tolist() == [10, 24, 38]
    # days at or before the first dose, and at or after the end, are not sampled
    assert rule(sampling_days=[1.0, 5.0, 20.0, 30.0]).sampling_schedule(5.0, 30.0).tolist() == [20.0]


@pytest.mark.parametrize("table, message", [
    ({"max_dose_mg": 10.0}, "missing required key 'window_ng_ml'"),
    ({**LAI, "window_ng_ml": [15, 6], "sampling_days": [7]}, "window_ng_ml: low must be below high"),
    ({**LAI, "window_ng_ml": [6], "sampling_days": [7]}, "window_ng_ml: must be a list [low, high]"),
    ({**LAI, "window_ng_ml": [-1, 6], "sampling_days": [7]}, "window_ng_ml: must be > 0, got -1"),
    ({**LAI, "sampling_days": [7], "target_ng_ml": 20}, "target_ng_ml: must lie in the window"),
    ({**LAI, "sampling_days": [7], "rule": "pid"}, "rule: must be one of ['proportional', 'step'], got 'pid'"),
    ({**LAI}, "missing the sampling schedule"),
    ({**LAI, "sampling_days": [14, 7]}, "sampling_days: must be strictly increasing"),
    ({**LAI, "sampling_days": []}, "sampling_days: must be a non-empty list"),
    ({**LAI, "sampling_days": [7], "sampling_every_day": 7}, "give either sampling_days or the periodic keys"),
    ({**LAI, "sampling_every_day": 0.5}, "sampling_every_day: must be >= 1 day"),
    ({**LAI, "sampling_every_day": 7, "sampling_then_every_day": 28}, "needs sampling_until_day"),
    ({**LAI, "sampling_days": [7], "tablet_mg": 0}, "tablet_mg: must be > 0, got 0"),
    ({**LAI, "sampling_days": [7], "max_dose_mg": 10.3}, "max_dose_mg: must be a multiple of tablet_mg"),
    ({**LAI, "sampling_days": [7], "min_dose_mg": 12.0}, "max_dose_mg: must be >= min_dose_mg (12)"),
    ({**LAI, "sampling_days": [7], "assay_cv": 10}, "assay_cv: must be <= 2"),
    ({**LAI, "sampling_days": [7], "assay_cv": -0.1}, "assay_cv: must be >= 0, got -0.1"),
    ({**LAI, "sampling_days": [7], "assay_seed": -1}, "assay_seed: must be an integer >= 0, got -1"),
    ({**LAI, "sampling_days": [7, 10], "result_delay_day": 3}, "result_delay_day: must be shorter than"),
    ({**LAI, "sampling_days": [7], "result_delay_day": "1"}, "result_delay_day: must be a number, got '1'"),
    ({**LAI, "sampling_days": [7], "window": [1, 2]}, "unknown keys ['window']"),
    ([1, 2], "[tdm] must be a table"),
])
def test_bad_tdm_tables_name_the_key_and_value(table, message):
    with pytest.raises(ScenarioError) as exc:
        parse_tdm(table, "s.toml")
    assert str(exc.value).startswith("s.toml: [tdm]")
    assert message in str(exc.value)


def _scenario(tdm: dict, schedules=None, weeks=8, **extra) -> dict:
    sched = schedules if schedules is not None else [
        {"drug": "sirolimus", "amount": 2.0, "unit": "mg", "interval_day": 1, "doses_per_course": weeks * 7}]
    return {"scenario": {"name": "t", "description": "t", "weeks": weeks, "population": 4, "seed": 3,
                         "output_step_day": 7.0, "figures": False, **extra},
            "regimen": {"schedules": sched}, "tdm": tdm}


@pytest.mark.parametrize("tdm, schedules, message", [
    ({**LAI, "sampling_days": [14]}, [], "the regimen has 0 sirolimus schedules, need exactly 1"),
    ({**LAI, "sampling_days": [14]}, [{"drug": "sirolimus", "amount": 0.7, "unit": "mg"}],
     "starting sirolimus dose 0.7 mg is not a multiple of tablet_mg"),
    ({**LAI, "sampling_days": [14], "max_dose_mg": 1.0}, None, "starting sirolimus dose 2 mg is outside"),
    ({**LAI, "sampling_days": [70]}, None, "no sampling day falls after the first sirolimus dose"),
])
def test_rule_must_fit_the_regimen(tdm, schedules, message):
    with pytest.raises(ScenarioError, match="t.toml: \\[tdm\\]") as exc:
        parse_scenario(_scenario(tdm, schedules), "t.toml")
    assert message in str(exc.value)


def test_scenario_round_trip_keeps_the_rule():
    sc = parse_scenario(_scenario({**LAI, "sampling_every_day": 14, "assay_cv": 0.1, "rule": "step"}), "t.toml")
    assert sc.tdm.window_ng_ml == (6.0, 15.0) and sc.tdm.rule == "step" and sc.tdm.assay_cv == 0.1
    again = sc.with_overrides(population=7)
    assert again.tdm == sc.tdm and again.population == 7
    with pytest.raises(ScenarioError, match="unknown top-level tables/keys \\['tdms'\\]"):
        parse_scenario({**_scenario(LAI), "tdms": {}}, "t.toml")


# ------------------------------------------------------------------------------ closed form, one patient
def _rapa(params):
    """Sirolimus rate matrix (1/day) of gut, central, peripheral, written out from the parameter file."""
    ka, cl, vc, q, vp = (params[n].value * (24.0 if params[n].unit in ("1/h", "L/h") else 1.0)
                         for n in ("rapa_ka", "rapa_cl", "rapa_vc", "rapa_q", "rapa_vp"))
    K = np.array([[-ka, 0.0, 0.0],
                  [ka, -(cl + q) / vc, q / vp],
                  [0.0, q / vc, -q / vp]])
    return K, vc


def _trough_reference(params, dose_mg, n_doses=None):
    """Trough (ng/mL) before the next once-daily dose: after ``n_doses`` doses, or at steady state (None)."""
    K, vc = _rapa(params)
    E = expm(K * 1.0)
    b = np.array([dose_mg, 0.0, 0.0])
    if n_doses is None:
        x = np.linalg.solve(np.eye(3) - E, E @ b)
    else:
        x = sum(np.linalg.matrix_power(E, n_doses - k) @ b for k in range(n_doses))
    return 1000.0 * x[1] / vc


def test_one_proportional_step_lands_the_typical_patient_in_the_window(params):
    theta = params.to_theta("v2_lean")[None, :]
    r = parse_tdm({**LAI, "sampling_days": [56.0, 112.0]})
    tit = titrate(theta, daily(2.0, 168), r, 168.0, model="v2_lean")
    # the trough on day 56 (56 doses given) from the matrix exponential
    assert tit.trough_true[0, 0] == pytest.approx(_trough_reference(params, 2.0, 56), rel=1e-9)
    css2 = _trough_reference(params, 2.0)
    assert tit.trough_true[0, 0] == pytest.approx(css2, rel=1e-3)       # steady state by day 56
    assert not 6.0 <= css2 <= 15.0                                      # 2 mg/day misses the window here
    expected = math.floor(2.0 * 10.5 / css2 / 0.5 + 0.5) * 0.5          # the clinician's arithmetic
    assert tit.dose_after[0, 0] == expected
    css_new = _trough_reference(params, expected)
    assert 6.0 <= css_new <= 15.0
    # 56 days on the new dose: the second trough is that steady state, in the window, and the dose is kept
    assert tit.trough_true[0, 1] == pytest.approx(css_new, rel=1e-3)
    assert tit.action[0, 1] == 0 and tit.dose_after[0, 1] == expected


def test_closed_form_troughs_equal_the_integrator(params):
    theta = sample_population(params, 12, seed=4, model="v2_lean")
    r = parse_tdm({**LAI, "sampling_days": [7.0, 14.0, 21.5, 40.0], "result_delay_day": 1.0, "assay_cv": 0.2})
    reg = daily(2.0, 30, interval=2.0)                 # every other day: troughs off the dose days too
    tit = titrate(theta, reg, r, 60.0, seed=9, model="v2_lean")
    res = simulate_titrated(theta, tit, tit.sample_day, model="v2_lean", parallel=False)
    assert res.n_failed == 0
    np.testing.assert_allclose(res.get("c_rapa"), tit.trough_true, rtol=1e-6)
    # each patient's events carry his own doses: dose k uses the dose decided before it
    for i in (0, 5):
        ev = tit.events_for(tit.segment_doses()[i])
        amounts = ev.amount[ev.cmt == CMT_RAPA_GUT]
        day = ev.time_day[ev.cmt == CMT_RAPA_GUT]
        for s, eff in enumerate(tit.effective_day):
            assert np.all(amounts[(day >= eff) & (day < (tit.effective_day[s + 1] if s + 1 < 4 else 99))]
                          == tit.dose_after[i, s])
        assert np.all(amounts[day < tit.effective_day[0]] == 2.0)


def test_assay_error_is_seeded_per_patient():
    a = assay_factors(7, np.arange(2100), 3, 0.2)
    b = assay_factors(7, np.array([5, 2099]), 3, 0.2)
    np.testing.assert_array_equal(a[[5, 2099]], b)
    assert np.std(np.log(a)) == pytest.approx(math.sqrt(math.log1p(0.04)), rel=0.05)
    assert not np.array_equal(a, assay_factors(8, np.arange(2100), 3, 0.2))
    assert np.all(assay_factors(7, np.arange(5), 3, 0.0) == 1.0)


# ---------------------------------------------------------------------------------------------- populations
@pytest.mark.slow
def test_titration_narrows_the_trough_spread_against_the_fixed_dose(params):
    lai = next(p for p in library_paths() if p.stem == "lai2018_sirolimus_tdm")
    sc = load_scenario(lai).with_overrides(population=300)
    theta = sample_population(params, 300, seed=sc.seed, model=sc.model)
    tit = titrate(theta, sc.regimen, sc.tdm, sc.t_end_day, seed=sc.seed, model=sc.model)
    last = float(tit.sample_day[-1])
    fixed = simulate_population(theta, sc.regimen, t_out=[last], model=sc.model).get("c_rapa")[:, 0]
    titrated = simulate_titrated(theta, tit, [last], model=sc.model).get("c_rapa")[:, 0]
    np.testing.assert_allclose(titrated, tit.trough_true[:, -1], rtol=1e-6)

    def spread(x):
        return float(np.std(np.log(x)))
    in_fixed = np.mean((fixed >= 6) & (fixed <= 15))
    in_tdm = np.mean((titrated >= 6) & (titrated <= 15))
    assert spread(titrated) < 0.6 * spread(fixed)
    assert np.percentile(titrated, 95) / np.percentile(titrated, 5) < 0.6 * (
        np.percentile(fixed, 95) / np.percentile(fixed, 5))
    assert in_fixed < 0.4 and in_tdm > 0.9
    # patients are titrated on their own PK: higher clearance, higher final dose
    cl = theta[:, get_model(sc.model).parameter_names.index("rapa_cl")]
    final = tit.segment_doses()[:, -1]
    assert np.corrcoef(np.log(cl), final)[0, 1] > 0.5


def test_scenario_outputs_hold_every_patients_titrated_doses(tmp_path):
    text = _scenario({**LAI, "sampling_every_day": 14, "result_delay_day": 1, "assay_cv": 0.15}, weeks=10,
                     population=6)
    sc = parse_scenario(text, "t.toml")
    out = run_scenario(sc, tmp_path, progress=False)
    tit = out.titration
    folder = tmp_path / "t"
    rec = pd.read_csv(folder / "tdm_doses.csv", comment="#")
    assert len(rec) == 6 * (1 + tit.sample_day.size)
    assert set(rec["action"]) <= {"start", "increase", "decrease", "keep"}
    for pid, g in rec.groupby("patient"):
        g = g.sort_values("day")
        assert g["action"].iloc[0] == "start" and g["dose_after_mg"].iloc[0] == 2.0
        # one dose history per patient: each sample's dose before = the previous dose after
        np.testing.assert_array_equal(g["dose_before_mg"].to_numpy()[1:], g["dose_after_mg"].to_numpy()[:-1])
        np.testing.assert_allclose(g["dose_after_mg"].to_numpy()[1:], tit.dose_after[pid])
        # the doses actually simulated are those of the file
        ev = tit.events_for(tit.segment_doses()[pid])
        rapa = ev.cmt == CMT_RAPA_GUT
        total = ev.amount[rapa].sum()
        assert total == pytest.approx(tit.cumulative_dose()[pid])
    # the summary's fractions recomputed from the records
    summ = pd.read_csv(folder / "tdm_summary.csv", comment="#")
    for day, g in rec[rec["action"] != "start"].groupby("day"):
        frac = ((g["measured_ng_ml"] >= 6) & (g["measured_ng_ml"] <= 15)).mean()
        row = summ[(summ["day"] == day) & (summ["quantity"] == "in_window")]
        assert row["value"].iloc[0] == pytest.approx(frac)
    final = pd.read_csv(folder / "tdm_final_doses.csv", comment="#")
    last = rec[rec["day"] == rec["day"].max()]["dose_after_mg"].value_counts()
    assert dict(zip(final["dose_mg"], final["patients"])) == {k: v for k, v in last.items()}
    header = (folder / "tdm_doses.csv").read_text().split("scenario,patient")[0]
    assert '"tdm": {"window_ng_ml": [6.0, 15.0]' in header and "# seed: 3" in header
    assert json.loads((folder / "provenance.json").read_text())["scenario"]["tdm"]["assay_cv"] == 0.15
    cum = out.value("sirolimus_cumulative_dose", statistic="value")
    assert cum == pytest.approx(np.median(tit.cumulative_dose()))
    # the comparison row reports the titrated mean daily dose, not the starting dose
    assert comparison_row(out)["sirolimus_mg_per_day"] == pytest.approx(np.median(tit.cumulative_dose()) / 70.0)


def test_titration_figure(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sc = parse_scenario(_scenario({**LAI, "sampling_every_day": 14}, weeks=10, population=5, figures=True,
                                  outputs=["csv", "png"]), "t.toml")
    out = run_scenario(sc, tmp_path, progress=False)
    png = tmp_path / "t" / "tdm.png"
    assert png in out.files and png.stat().st_size > 10_000
    tit = out.titration
    fig, axes = plt.subplots(1, 4)
    assert plot_titration(tit.summary_frame("t"), tit.final_dose_frame("t"), (6, 15), axes=axes) is fig
    line = axes[0].get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(), np.median(tit.trough_true, axis=0))
    plt.close(fig)


def test_non_dose_events_are_never_titrated_or_counted_as_doses(params):
    taper = SteroidTaper(17.2, 8.87, end_day=70.0, step_day=14.0)
    il2 = DoseSchedule("il2", 0.5, "MIU", interval_day=1, doses_per_course=5)
    rapa = DoseSchedule("sirolimus", 2.0, "mg", interval_day=1, doses_per_course=70)
    with_all = Regimen("all", (il2, rapa), taper=taper)
    alone = Regimen("alone", (rapa,))
    theta = sample_population(params, 5, seed=2, model="v2_lean")
    r = parse_tdm({**LAI, "sampling_every_day": 14})
    a = titrate(theta, with_all, r, 70.0, model="v2_lean")
    b = titrate(theta, alone, r, 70.0, model="v2_lean")
    np.testing.assert_array_equal(a.trough_true, b.trough_true)    # IL-2 and prednisone levels are no doses
    np.testing.assert_array_equal(a.dose_after, b.dose_after)
    ev = a.events_for(a.segment_doses()[0])
    base = with_all.events(until_day=70.0)
    keep = ev.cmt != CMT_RAPA_GUT
    np.testing.assert_array_equal(ev.amount[keep], base.amount[keep])   # IL-2 and the taper untouched
    assert np.any(ev.cmt == CMT_GC_LEVEL)
    assert a.cumulative_dose()[0] == pytest.approx(ev.amount[ev.cmt == CMT_RAPA_GUT].sum())
    assert a.dose_times.size == 70                                     # sirolimus doses only
    rec = a.records_frame("all")
    assert len(rec) == 5 * (1 + a.sample_day.size)


# ------------------------------------------------------------------------------------------------ trials
def _trial_plan(params, chunk_block=64, n=150):
    lai = next(p for p in library_paths() if p.stem == "lai2018_sirolimus_tdm")
    sc = load_scenario(lai)
    reg = sc.regimen
    return make_plan(params, [reg], n, seed=11, weeks=[0, 8], block=chunk_block, tdm=[sc.tdm], model=sc.model)


def test_trial_titrates_each_patient_whatever_the_chunking(params):
    plan = _trial_plan(params)
    a = run_trial(plan, 64).summary
    b = run_trial(plan, 192).summary
    pd.testing.assert_frame_equal(a, b)
    rows = a[a["variable"] == "sirolimus_trough"]
    assert sorted(set(np.round(rows["week"] * 7, 9))) == [14.0, 28.0, 42.0]
    # the exact counts equal a direct titration of the same patients
    theta, _ = trial_theta(plan, 0, plan.n_patients)
    tit = titrate(theta, plan.regimens[0], plan.tdm[0], 56.0, seed=11, model=plan.model)
    for k, day in enumerate(tit.sample_day):
        m = tit.trough_measured[:, k]
        got = a[(np.isclose(a["week"], day / 7)) & (a["statistic"] == "frac_in_window")]["value"].iloc[0]
        assert got == pytest.approx(np.mean((m >= 6) & (m <= 15)))
        med = a[(np.isclose(a["week"], day / 7)) & (a["variable"] == "sirolimus_dose")
                & (a["statistic"] == "median")]["value"].iloc[0]
        assert med == np.quantile(tit.dose_after[:, k], 0.5, method="inverted_cdf")
    last = tit.dose_after[:, -1]
    for dose in np.unique(last):
        got = a[(np.isclose(a["week"], 6.0)) & (a["statistic"] == f"frac_at_{dose:g}mg")]["value"].iloc[0]
        assert got == pytest.approx(np.mean(last == dose))


def test_trial_refuses_more_sampling_days_than_the_limit(params):
    r = parse_tdm({**LAI, "sampling_every_day": 1})
    with pytest.raises(ScenarioError, match="trial regimen 'r': \\[tdm\\] 13999 sampling days until day 14000, "
                                            "more than the limit of 10000"):
        make_plan(params, [daily(2.0, 14000)], 10, weeks=[0, 2000], tdm=[r])


def test_trial_cli_runs_a_titrated_library_regimen(tmp_path, capsys):
    out = tmp_path / "trial"
    code = cli_main(["trial", "--patients", "40", "--chunk", "64", "--block", "64", "--regimen",
                     "lai2018_sirolimus_tdm", "--weeks", "4", "--out", str(out), "--no-progress", "--no-plot"])
    assert code == 0
    text = capsys.readouterr().out
    assert "sirolimus trough titration" in text and "in window (measured)" in text
    frame = pd.read_csv(out / "trial_summary.csv", comment="#")
    assert {"sirolimus_trough", "sirolimus_dose"} <= set(frame["variable"])
    prov = json.loads((out / "trial_summary.json").read_text())["provenance"]
    assert prov["tdm"]["lai2018_sirolimus_tdm"]["window_ng_ml"] == [6.0, 15.0]


# ------------------------------------------------------------------------------------------------ library
def test_library_tdm_files_and_the_fixed_lai_file():
    lib = {p.stem: p for p in library_paths()}
    fixed = load_scenario(lib["lai2018_sirolimus"])
    assert fixed.tdm is None                                  # the fixed-dose file stays fixed
    (s,) = fixed.regimen.schedules
    assert (s.drug, s.amount, s.unit, s.interval_day, s.doses_per_course) == ("sirolimus", 2.0, "mg", 1.0, 364)
    tdm = load_scenario(lib["lai2018_sirolimus_tdm"])
    assert tdm.tdm.window_ng_ml == (6.0, 15.0) and tdm.regimen.schedules[0].amount == 2.0 and tdm.weeks == 52
    assert "ASSUMPTION" in tdm.tdm.assumption and "Lai" in tdm.source
    low = load_scenario(lib["sirolimus_low_trough_tdm"])
    assert low.tdm.high <= 5.0 and "ASSUMPTION" in low.tdm.assumption


def test_sensitivity_refuses_a_titrated_regimen_it_would_not_titrate(tmp_path, capsys):
    assert cli_main(["sensitivity", "--method", "local", "--regimen", "lai2018_sirolimus_tdm",
                     "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "titrates sirolimus to a trough window" in err and "lai2018_sirolimus_tdm" in err


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=True),
                    st.text(max_size=5), st.lists(st.floats(-5, 400), max_size=4),
                    st.lists(st.integers(-3, 400), max_size=4), st.dictionaries(st.text(max_size=3), st.integers()))


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(sorted(TDM_KEYS) + ["bogus"]), _VALUES, max_size=8), st.booleans())
def test_fuzzed_tdm_tables_give_a_rule_or_a_scenario_error(table, with_required):
    if with_required:
        table = {**LAI, "sampling_every_day": 7, **table}
    try:
        r = parse_tdm(table, "f.toml")
    except ScenarioError as exc:
        assert str(exc).startswith("f.toml: [tdm]") and len(str(exc)) <= 800
        return
    assert r.low < r.high and r.tablet_mg > 0 and r.min_dose <= r.max_dose_mg
    assert parse_tdm(r.to_dict(), "again") == r
    r.sampling_schedule(0.0, 364.0)


def test_median_band_of_a_titrated_scenario_simulates_the_titrated_doses():
    """The uncertainty-of-the-median band re-simulates its draw population on each patient's own titrated
    doses: its point-estimate row equals the titrated scenario run on the same patients, and differs from the
    same file given at a fixed dose."""
    sc = load_scenario(next(p for p in library_paths() if p.stem == "lai2018_sirolimus_tdm"))
    sc = sc.with_overrides(population=16, weeks=12, bands=["median"], uncertainty_draws=3,
                           uncertainty_population=16)
    out = run_scenario(sc, None, progress=False)
    assert out.band is not None and out.titration is not None
    point_row = out.band.draw_statistics[0]            # the draw population at the point estimate
    direct = float(np.median(out.result.get("treg")[:, -1]))
    assert point_row[("treg", 12.0)] == pytest.approx(direct, rel=1e-9)
    d = sc.to_dict()
    d.pop("tdm", None)
    fixed = run_scenario(parse_scenario(d, origin="fixed"), None, progress=False)
    assert fixed.band.draw_statistics[0][("treg", 12.0)] != pytest.approx(direct, rel=1e-6)
