"""SAT0261 regimen hypotheses: the compiled dose days, the reference reproducing the plain problem, the table."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tregpd.cli import main
from tregpd.fitting.calibration import load_regimens
from tregpd.fitting.joint import JointFitError, JointProblem, default_free
from tregpd.fitting.regimen_hypotheses import (CONCLUSIONS, HYPOTHESES, VISIT_DAY, conclusion_ranges,
                                               fit_under_hypotheses, get_hypotheses, il2_alone, summary_markdown)
from tregpd.model import reference_regimen

CHEAP_FREE = ("il2_emax_treg",)


def _course_days(starts, offsets):
    return sorted(float(s + o) for s in starts for o in offsets if s + o < VISIT_DAY)


def test_hypothesis_set_is_stated():
    names = [h.name for h in HYPOTHESES]
    assert 6 <= len(HYPOTHESES) <= 9 and len(set(names)) == len(names)
    assert [h.name for h in HYPOTHESES if h.reference] == ["q4w_trough"]
    for h in HYPOTHESES:
        assert "ASSUMPTION" in h.description and h.changes
        assert "REGIMEN HYPOTHESIS" in h.regimen().assumption or h.reference


@pytest.mark.parametrize("name, days", [
    # hand-computed IL-2 dose days; day k of a course = first dose + (k - 1)
    ("q4w_trough", _course_days([0, 28, 56, 84, 112, 140], range(5))),
    ("q2w_trough", _course_days(range(0, 155, 14), range(5))),
    ("q8w_trough", _course_days([0, 56, 112], range(5))),
    ("peking_trough", _course_days([0, 28, 56, 84, 112, 140], range(0, 13, 2))),
    # day 168 = day 3 of the course starting on day 166 (doses on 166, 167; 168 not given before the sample)
    ("q4w_day3", _course_days([26, 54, 82, 110, 138, 166], range(5))),
    # day 168 = day 6 of the course starting on day 163 (its five doses 163-167 all before the sample)
    ("q4w_day6", _course_days([23, 51, 79, 107, 135, 163], range(5))),
    ("q4w_day3_from0", _course_days([0, 26, 54, 82, 110, 138, 166], range(5))),
    ("peking_day7", _course_days([22, 50, 78, 106, 134, 162], range(0, 13, 2))),
])
def test_hypothesis_dose_days(name, days):
    (h,) = get_hypotheses([name])
    got = h.il2_dose_days()
    np.testing.assert_array_equal(got, np.array(days))
    reg = h.regimen()
    # everything else of the entry unchanged: sirolimus every other day from day 0, the taper
    base = load_regimens()["sat0261"].regimen()
    sir = [s for s in reg.schedules if s.drug == "sirolimus"]
    assert [s.to_dict() for s in sir] == [s.to_dict() for s in base.schedules if s.drug == "sirolimus"]
    assert reg.taper == base.taper
    assert all(s.product == "chinese_rhil2" for s in reg.schedules if s.drug == "il2")


def test_sampling_phase_of_day_168():
    """Days from the latest given course start to day 168: one course spacing for the trough hypotheses (day
    168 = day 1 of the next course, not given), 2 (day 3), 5 (day 6), 6 (day 7 of a Peking block)."""
    expected = {"q4w_trough": 28, "q2w_trough": 14, "q8w_trough": 56, "peking_trough": 28,
                "q4w_day3": 2, "q4w_day6": 5, "q4w_day3_from0": 2, "peking_day7": 6}
    for h in HYPOTHESES:
        d = h.il2_dose_days()
        starts = [d[0]] + [b for a, b in zip(d, d[1:]) if b - a > 2]
        assert VISIT_DAY - starts[-1] == expected[h.name], h.name


def test_reference_hypothesis_reproduces_plain_problem():
    ref, day3 = get_hypotheses(["q4w_trough", "q4w_day3"])
    plain = JointProblem("v2_lean")
    hyp = JointProblem("v2_lean", regimens=ref.regimens())
    values = {n: plain.base[n].value for n in default_free("v2_lean")}
    r0 = plain.residuals(values)
    np.testing.assert_array_equal(hyp.residuals(values), r0)
    for rid in plain.needed:
        np.testing.assert_array_equal(hyp._t_out[rid], plain._t_out[rid])
    # another hypothesis changes only the SAT0261 residuals
    other = JointProblem("v2_lean", regimens=day3.regimens())
    r1 = other.residuals(values)
    sat = np.r_[(plain.rows["regimen_id"] == "sat0261").to_numpy(), (plain.checks["regimen_id"] == "sat0261")]
    np.testing.assert_array_equal(r1[~sat], r0[~sat])
    assert not np.allclose(r1[sat], r0[sat])


def test_il2_alone_drops_sirolimus_only():
    ref = reference_regimen(24)
    alone = il2_alone(ref)
    assert alone.drugs() == ("il2",) and alone.taper == ref.taper
    assert [s.to_dict() for s in alone.schedules] == [s.to_dict() for s in ref.schedules if s.drug == "il2"]


def test_unknown_hypothesis_is_an_error():
    with pytest.raises(JointFitError, match="unknown regimen hypothesis"):
        get_hypotheses(["q3w"])


@pytest.fixture(scope="module")
def small_table():
    hyps = get_hypotheses(["q4w_trough", "q4w_day6"])
    return fit_under_hypotheses("v2_lean", hyps, max_nfev=4, free=CHEAP_FREE)


def test_table_one_row_per_hypothesis_finite(small_table):
    t = small_table
    assert t["hypothesis"].tolist() == ["q4w_trough", "q4w_day6"]
    num = ["chi2_numbers", "chi2_facts", "chi2", "delta_chi2", "chi2_sat0261", "sat0261_treg_fold_pred",
           "sat0261_ratio_fold_pred", *CONCLUSIONS, "param_il2_emax_treg", "seconds"]
    assert np.all(np.isfinite(t[num].to_numpy(float)))
    assert (t[list(CONCLUSIONS)] > 0).all().all()
    assert t["delta_chi2"].min() == 0.0
    np.testing.assert_allclose(t["chi2"], t["chi2_numbers"] + t["chi2_facts"])
    # the reference hypothesis' SAT0261 prediction is the reference scenario itself (same regimen, baseline)
    ref = t[t["reference"]].iloc[0]
    assert ref["sat0261_treg_fold_pred"] == pytest.approx(ref["combo_treg_fold"], rel=1e-6)
    assert ref["sat0261_ratio_fold_pred"] == pytest.approx(ref["combo_ratio_fold"], rel=1e-6)
    rng = conclusion_ranges(t)
    assert len(rng) == len(CONCLUSIONS) + 2 and (rng["max"] >= rng["min"]).all()
    md = summary_markdown(t)
    assert "How much conclusions move" in md and "Best fit" in md and "q4w_day6" in md


def test_cli_writes_three_files(tmp_path, capsys):
    out = tmp_path / "hyp"
    code = main(["hypotheses", "--out", str(out), "--only", "q4w_trough", "q8w_trough", "--max-nfev", "1"])
    assert code == 0
    t = pd.read_csv(out / "hypotheses.csv", comment="#")
    assert t["hypothesis"].tolist() == ["q4w_trough", "q8w_trough"]
    assert "SAT0261 regimen uncertainty" in (out / "hypotheses.md").read_text()
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["command"] == "tregpd hypotheses" and prov["hypotheses"] == ["q4w_trough", "q8w_trough"]
    assert sorted(p.name for p in out.iterdir()) == ["hypotheses.csv", "hypotheses.md", "provenance.json"]


def test_cli_unknown_model_is_one_line_error(tmp_path, capsys):
    assert main(["hypotheses", "--out", str(tmp_path / "x"), "--model", "nope"]) == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
