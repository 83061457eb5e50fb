"""Bands, outcomes over time and the multi-criteria ranking (issue 11).

References: closed forms on synthetic trajectories (a triangle's peak, mean and value; an exponential return to
baseline), an independent finite-difference Jacobian of the calibration objective for the lmfit covariance, the
exactness of the band's shift when the covariance is zero, and explicit rows for the ranking rule.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tregpd.cli import main as cli_main
from tregpd.model import ScenarioError, default_parameters
from tregpd.scenarios import library_paths, load_scenario, run_scenario
from tregpd.scenarios import metrics as M
from tregpd.scenarios.comparison import comparison_markdown, rank_regimens, ranking_rule

LIB = {p.stem: p for p in library_paths()}


# ------------------------------------------------------------------------------------- outcomes over time
def triangle(t, t_peak, height, t_end):
    """0 at day 0, ``height`` at ``t_peak``, 0 again at ``t_end`` (piecewise linear), 0 after."""
    return np.interp(t, [0.0, t_peak, t_end], [0.0, height, 0.0])


def test_triangle_peak_time_mean_and_value_are_the_closed_form():
    t = np.linspace(0.0, 70.0, 71)                       # daily grid
    heights = np.array([2.0, 5.0])
    v = np.array([triangle(t, 14.0, h, 42.0) for h in heights])
    peak, when = M.peak_in_window(t, v, 0.0, 56.0)
    np.testing.assert_allclose(peak, heights)
    np.testing.assert_allclose(when, 14.0)
    # mean over [0, 42] = area / 42 = h/2; over a window ending between grid points (0, 20.5):
    np.testing.assert_allclose(M.time_average(t, v, 0.0, 42.0), heights / 2, rtol=1e-12)
    a = 0.5 * 14 * heights + (heights + triangle(20.5, 14.0, 1.0, 42.0) * heights) / 2 * 6.5
    np.testing.assert_allclose(M.time_average(t, v, 0.0, 20.5), a / 20.5, rtol=1e-12)
    np.testing.assert_allclose(M.value_at(t, v, 35.5), heights * (42 - 35.5) / 28, rtol=1e-12)
    # the peak inside a window that ends on the rising side is the window's end
    p2, w2 = M.peak_in_window(t, v, 0.0, 7.5)
    np.testing.assert_allclose(p2, heights * 7.5 / 14) and np.testing.assert_allclose(w2, 7.5)
    with pytest.raises(ValueError, match="outside"):
        M.value_at(t, v, 71.0)


def test_return_to_baseline_matches_the_exponential_closed_form():
    # x(t) = x0 (1 + A exp(-k (t - ts))) after ts: within 10 % when A exp(-k tau) = 0.1, tau = ln(10 A)/k
    x0, ts = np.array([10.0, 20.0, 5.0]), 30.0
    A, k = np.array([2.0, 0.5, 0.05]), 0.1
    t = np.linspace(0.0, 200.0, 20001)
    v = x0[:, None] * (1 + A[:, None] * np.exp(-k * np.clip(t - ts, 0, None))[None, :])
    v[:, t < ts] = (x0 * (1 + A))[:, None]
    tau = M.return_time(t, v, x0, ts)
    expected = np.array([math.log(10 * 2.0) / k, math.log(10 * 0.5) / k, 0.0])   # third: already within
    np.testing.assert_allclose(tau, expected, atol=1e-4)
    # a fall below baseline comes back from below: x0 (1 - A e^{-k tau}) -> same tau
    vb = 2 * x0[:, None] - v
    np.testing.assert_allclose(M.return_time(t, vb, x0, ts), expected, atol=1e-4)
    # never back within a short follow-up: inf, stated explicitly in the summary
    short = t <= 40.0
    assert np.isinf(M.return_time(t[short], v[:, short], x0, ts)[0])
    vs = v[:, short].copy()
    vs[:, 0] = x0                                       # baseline = the day-0 value
    out = M.treatment_outcomes(t[short], {"treg": vs, "ratio": vs}, ts)
    assert np.isinf(out["treg_weeks_to_baseline"][0]) and np.isinf(out["ratio_weeks_to_baseline"][1])
    s = M.percentile_stats_inf(np.array([1.0, np.inf, np.inf]))
    assert s["median"] == math.inf and s["p95"] == math.inf and s["p05"] == 1.0   # no inf - inf, no 1 + x inf
    assert M.percentile_stats_inf(np.array([1.0, 2.0, 3.0])) == M.percentile_stats(np.array([1.0, 2.0, 3.0]))


def test_treatment_outcomes_and_summary_rows_of_a_stopped_regimen():
    t = np.arange(0.0, 169.0, 7.0)
    treg = np.array([triangle(t, 28.0, 40.0, 84.0) + 10.0, triangle(t, 28.0, 80.0, 84.0) + 10.0])
    th17 = np.full_like(treg, 3.0)
    values = {"treg": treg, "th17": th17, "ratio": th17 / treg}
    s = M.summarise("tri", t, values, (12.0, 24.0), 0.29, 2, 0, t_treat_end=56.0)
    L = lambda *a: M.lookup(s, *a)
    assert L("treg_peak_on_treatment", 8.0) == pytest.approx(np.median([50.0, 90.0]))
    assert L("treg_time_to_peak", 8.0) == pytest.approx(4.0)
    assert L("treg_end_of_treatment", 8.0) == pytest.approx(10 + np.median([40.0, 80.0]) * 28 / 56)
    # back within 10 % of 10 cells/uL once 10 + h (84 - t)/56 <= 11: t = 84 - 56/h, after day 56
    back = [(84 - 56 / 40 - 56) / 7, (84 - 56 / 80 - 56) / 7]
    assert L("treg_weeks_to_baseline", 8.0) == pytest.approx(np.median(back))
    assert L("treg_not_back_within_followup", 8.0, "fraction") == 0.0
    assert L("fraction_treg_above_healthy_end_of_treatment", 8.0, "fraction") == pytest.approx(0.0)
    assert L("treatment_end_week", None, "value") == pytest.approx(8.0)
    assert set(s.loc[s["statistic"].isin(["p05", "p95"]), "band"]) == {M.BAND_PATIENTS}


# ------------------------------------------------------------------------------------------------ schema
BASE = """
[scenario]
name = "b"
description = "band keys"
weeks = 12
population = 3
{extra}

[[regimen.schedules]]
drug = "il2"
amount = 0.5
unit = "MIU"
interval_day = 1
doses_per_course = 5
"""


@pytest.mark.parametrize("extra, message", [
    ('bands = ["patients", "posterior"]', "bands: unknown bands ['posterior']"),
    ('bands = "median"', "bands: must be a list"),
    ("uncertainty_draws = 1", "uncertainty_draws: must be an integer >= 2, got 1"),
    ("uncertainty_population = 0", "uncertainty_population: must be an integer >= 1, got 0"),
    ("compare_week = 30", "compare_week: must be <= weeks (12), got 30"),
    ("report_weeks = [0, 4]", "report_weeks: must be a list of weeks in (0, weeks = 12]"),
])
def test_band_keys_are_validated(tmp_path, extra, message):
    p = tmp_path / "b.toml"
    p.write_text(BASE.format(extra=extra))
    with pytest.raises(ScenarioError, match=None) as err:
        load_scenario(p)
    assert str(p) in str(err.value) and message in str(err.value)


def test_band_keys_defaults_and_report_weeks(tmp_path):
    p = tmp_path / "b.toml"
    p.write_text(BASE.format(extra='compare_week = 8\nreport_weeks = [2.5]\nbands = ["patients"]'))
    sc = load_scenario(p)
    assert sc.bands == ("patients",) and sc.comparison_week() == 8.0
    assert sc.report_weeks() == (2.5, 6.0, 8.0, 12.0)
    assert sc.with_overrides(population=2).report_weeks() == sc.report_weeks()    # round-trips
    d = load_scenario(LIB["koreth_daily"])
    assert d.bands == ("patients", "median") and d.comparison_week() == 24.0
    assert d.treatment_end_day() == pytest.approx(56.0)


# ------------------------------------------------------------------------------------------------ ranking
def _row(name, healthy, ratio_mean, treg_eot, treg_peak, dose, above=0.0, margin=0.01):
    return {"scenario": name, "fraction_healthy_eot": healthy, "ratio_mean_on_treatment": ratio_mean,
            "treg_median_eot": treg_eot, "treg_peak_on_treatment": treg_peak, "treg_median_cmp": treg_eot,
            "fraction_treg_above_healthy_eot": above, "selectivity_margin": margin,
            "selectivity_margin_p95": margin, "il2_miu_total": dose}


def test_over_expanding_regimen_is_flagged_and_never_first():
    t = pd.DataFrame([
        _row("daily", 0.95, 0.05, 127.0, 160.0, 84.0),            # best numbers, Treg twice the healthy max
        _row("peak_only", 0.95, 0.06, 50.0, 90.0, 40.0),           # returns, but its peak over-expands
        _row("many_above", 0.95, 0.06, 60.0, 60.0, 40.0, above=0.3),
        _row("course", 0.80, 0.15, 30.0, 40.0, 15.0),
        _row("course_cheaper", 0.81, 0.15, 30.0, 40.0, 10.0),      # same 5 % step: ratio tie -> less IL-2
        _row("untreated", 0.40, 0.45, 13.0, float("nan"), 0.0),
    ])
    r = rank_regimens(t).set_index("scenario")
    assert list(rank_regimens(t)["scenario"][:3]) == ["course_cheaper", "course", "untreated"]
    assert r.loc["daily", "flags"] == r.loc["peak_only", "flags"] == "median_treg_above_healthy"
    assert r.loc["many_above", "flags"] == "patients_treg_above_healthy"
    assert (r.loc[["daily", "peak_only", "many_above"], "rank"] > 3).all()
    assert "FLAGGED" in ranking_rule() and "64.58" in ranking_rule()


def test_real_daily_il2_is_flagged_and_ranked_after_the_reference(tmp_path):
    """With the bundled (calibrated) parameters continuous daily IL-2 drives the median Treg peak above the
    healthy maximum: flagged, ranked after the reference course regimen."""
    from tregpd.scenarios import run_library
    run = run_library([LIB["shanxi_reference"], LIB["il2_freq_daily"]], None, population=40, progress=False,
                      output_step_day=7.0, bands=["patients"])
    t = run.table.set_index("scenario")
    assert t.loc["il2_freq_daily", "treg_peak_on_treatment"] > M.HEALTHY_RANGE["treg"][1]
    assert "median_treg_above_healthy" in t.loc["il2_freq_daily", "flags"]
    assert t.loc["shanxi_reference", "rank"] < t.loc["il2_freq_daily", "rank"]
    md = comparison_markdown(run.table)
    assert "Ranking rule" in md and "between-patient range" in md and "90% PI" not in md


# ------------------------------------------------------------------------------------------------ median band
def test_lmfit_covariance_equals_the_finite_difference_gauss_newton_covariance():
    from tregpd.fitting.joint import JointProblem
    from tregpd.scenarios.uncertainty import calibration_covariance
    params = default_parameters()
    cov = calibration_covariance(params, "v2_lean")
    assert cov.names == ("treg_crowding", "il2_emax_treg")
    prob = JointProblem("v2_lean", base=params, free=cov.names)
    x0 = {n: params.value(n) for n in cov.names}
    cols = []
    for n in cov.names:
        h = 1e-4 * abs(x0[n])
        up, dn = dict(x0), dict(x0)
        up[n] += h
        dn[n] -= h
        cols.append((prob.residuals(up) - prob.residuals(dn)) / (2 * h))
    J = np.column_stack(cols)
    ref = np.linalg.inv(J.T @ J)
    np.testing.assert_allclose(np.sqrt(np.diag(cov.covariance)), np.sqrt(np.diag(ref)), rtol=0.1)
    corr = lambda c: c[0, 1] / math.sqrt(c[0, 0] * c[1, 1])
    assert corr(cov.covariance) == pytest.approx(corr(ref), abs=0.1)


def test_draws_follow_the_covariance():
    from tregpd.scenarios.uncertainty import ParameterCovariance, parameter_draws
    params = default_parameters()
    cov = ParameterCovariance(("treg_crowding", "il2_emax_treg"), np.array([56.0, 14.0]),
                              np.array([[25.0, -3.0], [-3.0, 1.0]]), 0.0)
    draws = parameter_draws(params, cov, 3000, seed=1)
    x = np.array([[d.value("treg_crowding"), d.value("il2_emax_treg")] for d in draws])
    np.testing.assert_allclose(x.mean(axis=0), cov.mean, atol=0.3)
    np.testing.assert_allclose(np.cov(x.T), cov.covariance, rtol=0.1, atol=0.1)
    # everything else untouched
    assert draws[0].value("treg_baseline") == params.value("treg_baseline")


def _small(name, **kw):
    return load_scenario(LIB[name]).with_overrides(population=30, output_step_day=7.0, uncertainty_draws=6,
                                                   uncertainty_population=12, **kw)


def test_zero_covariance_gives_a_band_equal_to_the_point_estimate(monkeypatch):
    """With no parameter uncertainty every draw is the point estimate; the shift puts the band exactly on the
    full population's median (common random numbers make the draws identical)."""
    from tregpd.scenarios import uncertainty as U
    real = U.calibration_covariance

    def zero(params, model, **kw):
        c = real(params, model)
        return U.ParameterCovariance(c.names, c.mean, np.zeros_like(c.covariance), c.chi2)
    monkeypatch.setattr(U, "calibration_covariance", zero)
    out = run_scenario(_small("shanxi_reference"), None, progress=False)
    lo, hi = out.band.trajectories["treg"]
    med = np.median(out.result.get("treg"), axis=0)
    np.testing.assert_allclose(lo, med, rtol=1e-12)
    np.testing.assert_allclose(hi, med, rtol=1e-12)
    assert out.value("treg", 24.0, "median_lower") == pytest.approx(out.value("treg", 24.0))


def test_median_band_is_inside_the_patient_range_and_widened_by_hypotheses():
    from tregpd.scenarios.uncertainty import hypothesis_parameter_sets
    sc = _small("shanxi_reference")
    out = run_scenario(sc, None, progress=False)
    for w in (12.0, 24.0):
        lo, hi = out.value("treg", w, "median_lower"), out.value("treg", w, "median_upper")
        assert out.value("treg", w, "p05") < lo < hi < out.value("treg", w, "p95")
    assert "lmfit covariance" in out.band.description
    params = default_parameters()
    table = pd.DataFrame([{"hypothesis": "more_emax", "param_il2_emax_treg": 2 * params.value("il2_emax_treg")}])
    hyps = hypothesis_parameter_sets(table, params)
    wide = run_scenario(sc, None, progress=False, hypotheses=table)
    assert wide.band.hypotheses == ("more_emax",) and hyps[0][1].value("il2_emax_treg") > 28
    assert wide.value("treg", 24.0, "median_upper") > out.value("treg", 24.0, "median_upper")
    assert wide.value("treg", 24.0, "median_lower") == pytest.approx(out.value("treg", 24.0, "median_lower"))
    with pytest.raises(ScenarioError, match="param_<name>"):
        hypothesis_parameter_sets(pd.DataFrame([{"x": 1}]), params)


def test_uncalibrated_parameter_file_asks_for_patients_band_only():
    from dataclasses import replace
    from tregpd.scenarios.uncertainty import calibration_covariance
    params = default_parameters()
    prior = replace(params, parameters={n: replace(p, role="prior") for n, p in params.parameters.items()})
    with pytest.raises(ScenarioError, match='bands = \\["patients"\\]'):
        calibration_covariance(prior, "v2_lean")
    # the default (bands not named) leaves the median band out with a warning; a requested one is an error
    from tregpd.scenarios.schema import ScenarioWarning
    sc = load_scenario(LIB["untreated"]).with_overrides(population=3, output_step_day=7.0)
    assert not sc.bands_requested
    with pytest.warns(ScenarioWarning, match="no uncertainty-of-the-median band"):
        out = run_scenario(sc, None, parameters=prior, progress=False)
    assert out.band is None and out.scenario.bands == ("patients",)
    assert "median_lower" not in set(out.summary["statistic"])
    with pytest.raises(ScenarioError, match="role"):
        run_scenario(sc.with_overrides(bands=["median"]), None, parameters=prior, progress=False)


# ------------------------------------------------------------------------------------------------ outputs
def test_cli_outputs_carry_both_bands_and_the_new_outcomes(tmp_path, capsys):
    files = [str(LIB["shanxi_reference"]), str(LIB["koreth_daily"])]
    rc = cli_main(["scenarios", "run", *files, "--population", "12", "--step-day", "7", "--out", str(tmp_path),
                   "--no-progress", "--compare-week", "12"])
    assert rc == 0
    md = capsys.readouterr().out
    assert "{" in md and "[" in md and "uncertainty of the median" in md
    comp = pd.read_csv(tmp_path / "comparison.csv", comment="#").set_index("scenario")
    assert (comp["compare_week"] == 12).all()
    assert comp.loc["koreth_daily", "treatment_end_week"] == pytest.approx(8.0)
    assert comp.loc["shanxi_reference", "treatment_end_week"] == pytest.approx(24.0)
    for col in ("treg_median_cmp_lower", "treg_median_cmp_upper", "treg_p05_cmp", "treg_peak_on_treatment",
                "treg_time_to_peak", "ratio_mean_on_treatment", "ratio_weeks_to_baseline", "fraction_healthy_eot",
                "flags", "rank"):
        assert col in comp.columns, col
    assert np.isfinite(comp.loc["koreth_daily", "ratio_weeks_to_baseline"])
    summ = pd.read_csv(tmp_path / "koreth_daily" / "summary.csv", comment="#")
    assert {"between_patients_5_95", "median_uncertainty_90"} <= set(summ["band"].dropna())
    assert (tmp_path / "bands.png").is_file() and (tmp_path / "comparison.png").is_file()
    prov = (tmp_path / "koreth_daily" / "provenance.json").read_text()
    assert "median_uncertainty_90" in prov and "parameters_drawn" in prov
    # --bands patients: no median band anywhere
    rc = cli_main(["scenarios", "run", files[0], "--population", "6", "--step-day", "7", "--out",
                   str(tmp_path / "p"), "--no-progress", "--no-figures", "--bands", "patients"])
    assert rc == 0
    traj = pd.read_csv(tmp_path / "p" / "shanxi_reference" / "trajectories.csv", comment="#")
    assert set(traj["band"].dropna()) == {"between_patients_5_95"}


def test_dosefind_flags_over_expansion_with_the_same_rule(tmp_path, capsys):
    """3 MIU every day continuously over-expands Treg: flagged by the comparison's rule, never the best."""
    from tregpd.scenarios.dosefind import dose_find
    res = dose_find(doses=(0.5, 3.0), intervals=(1.0,), course_days=(5.0, 28.0), population=6, progress=False,
                    max_selectivity=1.0)
    g = res.grid.set_index("regimen")
    assert g.loc["3MIU_q1d_continuous", "treg_peak_on_treatment"] > M.HEALTHY_RANGE["treg"][1]
    assert "median_treg_above_healthy" in g.loc["3MIU_q1d_continuous", "flags"]
    assert not g.loc["3MIU_q1d_continuous", "feasible"] and res.best["regimen"] != "3MIU_q1d_continuous"
    assert res.settings["rule"] == ranking_rule(max_treg=M.HEALTHY_RANGE["treg"][1], max_selectivity=1.0)
    assert res.settings["rule"] in res.report()


def test_compare_week_option_is_checked(tmp_path, capsys):
    rc = cli_main(["scenarios", "run", str(LIB["untreated"]), "--compare-week", "-3", "--out", str(tmp_path),
                   "--no-progress"])
    err = capsys.readouterr().err
    assert rc != 0 and "--compare-week must be a number of weeks > 0, got -3.0" in err
