"""Regression tests pinning the key published facts (issue 10) on the default structure with the bundled
(jointly calibrated) parameters: a prediction that disagrees with a trial fails here like a crash.

Each study is simulated with its own regimen from fitting/data/calibration_regimens.toml (doses, BSA 1.7 m2,
product, study baseline) for the typical patient. The tolerances are the issue's, or 2 SE of the dataset's
own standard error where the issue gives none.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from tregpd.fitting.calibration import load_calibration, load_regimens
from tregpd.model import default_parameters, simulate
from tregpd.model.structures import DEFAULT_MODEL


@pytest.fixture(scope="module")
def regimens():
    return load_regimens()


def _run(regimens, rid, days):
    reg = regimens[rid]
    p = default_parameters()
    p = p.with_values(**reg.baseline) if reg.baseline else p
    t = np.unique(np.r_[0.0, np.asarray(days, float)])
    res = simulate(p, reg.regimen(), t_out=t, model=DEFAULT_MODEL)
    return t, res


def _fold(res, var="treg"):
    x = res.get(var)[0]
    return x / x[0]


def test_single_dose_dilt1d_gives_about_ten_percent_within_a_week(regimens):
    """DILT1D: the dose giving a +10 % Treg peak within 7 days is 0.101 MIU/m2 (SE 0.078 MIU/m2)."""
    t, res = _run(regimens, "dilt1d_0p101", np.arange(0, 7.01, 0.125))
    peak = _fold(res).max()
    row = load_calibration().set_index("id").loc["dilt1d-1"]
    assert abs(math.log(peak / 1.10)) <= 2 * row["se"], peak


def test_one_shanxi_course_gives_about_two_and_a_half_fold(regimens):
    """Feng 2019: one 5-day course of 0.5 MIU: Treg 8.1 -> 20.7 cells/uL ("2.5-fold"); 1.5-3.5 accepted."""
    t, res = _run(regimens, "feng2019", [7.0])
    assert 1.5 <= _fold(res)[-1] <= 3.5


def test_every_three_days_holds_a_modest_steady_state(regimens):
    """DILfrequency: 0.26 MIU/m2 every 3 days holds Treg about +30 % at steady state; 1.1-1.7x accepted."""
    t, res = _run(regimens, "dilfrequency", np.arange(42, 84.01, 1.0))
    steady = _fold(res)[1:].mean()
    assert 1.1 <= steady <= 1.7, steady


def test_daily_dosing_peaks_within_weeks_wanes_and_returns(regimens):
    """Koreth 2011: daily IL-2 for 8 weeks: peak in weeks 2-6, waning under continued dosing, return after
    stopping (Koreth: falling after IL-2 stops; Whangbo 2019: decline despite continued daily dosing)."""
    reg = regimens["koreth2011"]
    t, res = _run(regimens, "koreth2011", np.arange(0, reg.duration_day + 0.01, 1.0))
    f = _fold(res)
    on = t <= 56
    peak_day = t[on][np.argmax(f[on])]
    assert 14 <= peak_day <= 42, peak_day
    assert f[t == 56][0] < 0.95 * f[on].max()            # waning under continued dosing
    assert f[-1] < 0.5 * f[on].max() and f[-1] < f[t == 56][0]     # return after stopping


def test_sirolimus_alone_does_not_raise_treg_but_lowers_th17(regimens):
    """Shanxi rapamycin trial in SLE (PMID 31551029): Th17 fell (p=0.003), Th17/Treg fell (p=0.044), Treg not
    significantly changed (p=0.574)."""
    t, res = _run(regimens, "shanxi_rapa_sle", [168.0])
    assert abs(math.log(_fold(res)[-1])) < math.log(1.25)
    assert _fold(res, "th17")[-1] < 0.95
    assert _fold(res, "ratio")[-1] < 0.95


def test_sat0261_week24_medians_within_two_se(regimens):
    """SAT0261: Treg 12.98 -> 22.1 (P = 0.002), Th17/Treg 0.44 -> 0.29 (P = 0.029). With the joint evidence the
    typical patient does not reach them within 5 % (calibration report, residuals.csv shows by how much); it
    must stay within 2 SE derived from the study's own P values."""
    t, res = _run(regimens, "sat0261", [168.0])
    cal = load_calibration().set_index("id")
    for rid, var in (("sat0261-2", "treg"), ("sat0261-4", "ratio")):
        obs, se = cal.loc[rid, "value"], cal.loc[rid, "se"]
        assert abs(math.log(_fold(res, var)[-1] / obs)) <= 2 * se, (var, _fold(res, var)[-1], obs)
