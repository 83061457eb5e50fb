"""Calibration dataset, study regimens and ``tregpd validate`` (issue 10)."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from tregpd.fitting import build_calibration as bc
from tregpd.fitting.calibration import (CalibrationError, load_calibration, load_regimens, parse_regimens,
                                        study_regimen, validate_calibration)

EVIDENCE = bc.DEFAULT_EVIDENCE


@pytest.fixture(scope="module")
def cal():
    return load_calibration()


@pytest.fixture(scope="module")
def regimens():
    return load_regimens()


def test_dataset_loads_and_validates(cal, regimens):
    assert len(cal) > 30
    assert cal["id"].is_unique
    assert set(cal["regimen_id"]) <= set(regimens)
    quant = cal[cal["weight_class"] != "qualitative"]
    assert (np.isfinite(quant["se"]) & (quant["se"] > 0)).all()
    assert set(cal["weight_class"]) == {"calibration", "loose_check", "qualitative"}
    # RECALLED numbers are loose checks, except the seed study's (values of the founding document)
    recalled = quant[(quant["status"] == "RECALLED") & (quant["regimen_id"] != "sat0261")]
    assert (recalled["weight_class"] == "loose_check").all()
    # SAT0261 seed rows: week 0 and 24, and Th17 'no significant change' as a qualitative row
    sat = cal[cal["regimen_id"] == "sat0261"]
    assert set(sat["day"]) == {0.0, 168.0}
    th17 = sat[sat["observable"] == "th17"]
    assert list(th17["statistic"]) == ["not_significant"]


def test_validation_rejects_bad_rows(cal, regimens):
    bad = cal.copy()
    bad.loc[bad.index[1], "se"] = 0.0
    with pytest.raises(CalibrationError, match="field 'se'"):
        validate_calibration(bad, regimens)
    bad = cal.copy()
    bad.loc[bad.index[0], "observable"] = "cd4"
    with pytest.raises(CalibrationError, match="observable.*'cd4'"):
        validate_calibration(bad, regimens)
    bad = cal.copy()
    bad.loc[bad.index[0], "regimen_id"] = "nope"
    with pytest.raises(CalibrationError, match="regimen_id.*'nope'"):
        validate_calibration(bad, regimens)


@pytest.mark.skipif(not EVIDENCE.is_file(), reason="shared evidence file not present")
def test_every_evidence_row_used_or_excluded(cal):
    with open(EVIDENCE, newline="", encoding="utf-8") as fh:
        n_evidence = len(list(csv.DictReader(fh)))
    used = bc.used_rows(cal)
    excluded = set(bc.EXCLUSIONS)
    assert not used & excluded
    assert used | excluded == set(range(1, n_evidence + 1))
    assert len(used) + len(excluded) == n_evidence
    assert all(reason.strip() for reason in bc.EXCLUSIONS.values())


@pytest.mark.skipif(not EVIDENCE.is_file(), reason="shared evidence file not present")
def test_committed_dataset_is_reproducible(cal):
    built = bc.build(EVIDENCE)
    committed = load_calibration()
    assert list(built["id"]) == list(committed["id"])
    np.testing.assert_allclose(built["value"].to_numpy(float), committed["value"].to_numpy(float), rtol=1e-5)
    np.testing.assert_allclose(built["se"].to_numpy(float), committed["se"].to_numpy(float), rtol=1e-5)


def test_se_rules_by_hand(cal):
    # from a P value: SAT0261 Treg 12.98 -> 22.1, P = 0.002 (two-sided)
    row = cal[(cal["regimen_id"] == "sat0261") & (cal["observable"] == "treg") & (cal["day"] == 168)].iloc[0]
    hand = abs(math.log(22.1 / 12.98)) / norm.ppf(1 - 0.002 / 2)
    assert row["se_rule"] == "p_value"
    assert row["value"] == pytest.approx(22.1 / 12.98, rel=1e-5)
    assert row["se"] == pytest.approx(hand, rel=1e-5)
    assert hand == pytest.approx(0.1722, abs=5e-4)
    # ratio: 0.44 -> 0.29, P = 0.029
    row = cal[(cal["regimen_id"] == "sat0261") & (cal["observable"] == "ratio") & (cal["day"] == 168)].iloc[0]
    assert row["se"] == pytest.approx(abs(math.log(0.29 / 0.44)) / norm.ppf(1 - 0.029 / 2), rel=1e-5)
    # from SD and n: Feng 2019, 8.1 +- 7.59 -> 20.71 +- 14.47 cells/uL, n = 35
    row = cal[(cal["regimen_id"] == "feng2019") & (cal["mapping"] == "fold_change")].iloc[0]
    hand = math.sqrt((7.59 / 8.1) ** 2 / 35 + (14.47 / 20.71) ** 2 / 35)
    assert row["se_rule"] == "sd_n"
    assert row["se"] == pytest.approx(hand, rel=1e-5)
    row = cal[(cal["regimen_id"] == "feng2019") & (cal["day"] == 0)].iloc[0]
    assert row["se"] == pytest.approx(7.59 / 8.1 / math.sqrt(35), rel=1e-5)


def test_every_three_days_bsa_regimen_by_hand(regimens):
    # DILfrequency: 0.26 MIU/m2 x 1.7 m2 = 0.442 MIU = 442,000 IU on days 0, 3, ..., 81
    ev = study_regimen("dilfrequency", regimens=regimens).events()
    np.testing.assert_allclose(ev.time_day, np.arange(0, 84, 3.0))
    np.testing.assert_allclose(ev.amount, 0.26 * 1.7 * 1e6)
    assert set(ev.cmt) == {1}
    # single BSA dose: DILT1D 0.101 MIU/m2 x 1.7 m2 = 171,700 IU on day 0
    ev = study_regimen("dilt1d_0p101", regimens=regimens).events()
    assert list(ev.time_day) == [0.0]
    assert ev.amount[0] == pytest.approx(171_700.0)


def test_potency_scales_only_its_product(regimens):
    base = study_regimen("sat0261", regimens=regimens).events()
    pot = study_regimen("sat0261", potency={"chinese_rhil2": 0.5, "aldesleukin": 3.0}, regimens=regimens).events()
    il2 = base.cmt == 10          # Chinese rhIL-2 s.c.: its own compartment (the model's potency parameter)
    assert il2.any() and not (base.cmt == 1).any()
    np.testing.assert_allclose(pot.amount[il2], 0.5 * base.amount[il2])
    np.testing.assert_allclose(pot.amount[~il2], base.amount[~il2])  # sirolimus and taper untouched
    assert base.amount[il2][0] == pytest.approx(0.5e6)
    ald = study_regimen("koreth2011", potency={"chinese_rhil2": 0.5}, regimens=regimens).events()
    assert ald.amount[0] == pytest.approx(1.7e6)  # aldesleukin default potency 1.0
    with pytest.raises(CalibrationError, match="unknown product 'foo'"):
        study_regimen("sat0261", potency={"foo": 1.0}, regimens=regimens)
    with pytest.raises(CalibrationError, match="potency: value for 'ilt101'"):
        study_regimen("lupil2", potency={"ilt101": -1.0}, regimens=regimens)


def test_regimen_table_errors_name_the_field():
    good = {"product": "aldesleukin", "duration_day": 7,
            "schedules": [{"drug": "il2", "amount_per_m2": 1.0, "unit": "MIU"}]}
    with pytest.raises(CalibrationError, match="'amount_per_m2' needs the regimen's 'bsa_m2'"):
        parse_regimens({"regimens": {"x": good}})
    with pytest.raises(CalibrationError, match="field 'product'"):
        parse_regimens({"regimens": {"x": {**good, "product": "generic"}}})
    with pytest.raises(CalibrationError, match="baseline parameter 'il2_cl'"):
        parse_regimens({"regimens": {"x": {**good, "bsa_m2": 1.7, "baseline": {"il2_cl": 1.0}}}})
    with pytest.raises(CalibrationError, match="unknown keys"):
        parse_regimens({"regimens": {"x": {**good, "bsa_m2": 1.7, "typo": 1}}})
    assert parse_regimens({"regimens": {"x": {**good, "bsa_m2": 2.0}}})["x"].regimen().events().amount[0] == 2e6


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    from tregpd.fitting.validate import validate
    out = tmp_path_factory.mktemp("validate")
    return out, validate(population=20, seed=3, out=out)


def test_validate_writes_every_file_and_row(validated, cal):
    out, outcome = validated
    for name in ("validation.csv", "qualitative.csv", "validation.md", "provenance.json"):
        assert (out / name).is_file()
    for slug in set(cal["study_slug"]):
        assert (out / f"validation_{slug}.png").is_file()
    num = pd.read_csv(out / "validation.csv", comment="#")
    qual = pd.read_csv(out / "qualitative.csv", comment="#")
    assert sorted(list(num["id"]) + list(qual["id"])) == sorted(cal["id"])
    quant = cal[cal["weight_class"] != "qualitative"]
    assert len(num) == len(quant) and len(qual) == len(cal) - len(quant)
    # tolerance rule: in <=> |ln pred - ln obs| <= 2 SE
    z = (np.log(num["predicted"]) - np.log(num["observed"])) / num["se"]
    np.testing.assert_allclose(z, num["z"], rtol=1e-9)
    assert (num["in_tolerance"] == (z.abs() <= 2.0)).all()
    assert (num["predicted_p5"] <= num["predicted_p95"]).all()
    md = (out / "validation.md").read_text()
    assert outcome.summary in md
    assert "| study |" in md
    n_in = int(num["in_tolerance"].sum())
    assert outcome.summary.startswith(f"{n_in} of {len(num)} numbers in tolerance, "
                                      f"{int(qual['pass'].sum())} of {len(qual)} qualitative checks pass")


def test_validate_baseline_and_fold_mapping(validated):
    _, outcome = validated
    num = outcome.numbers.set_index("id")
    sims = outcome.simulations
    # the typical patient of a study starts at the study's reported baseline (Feng 2019: 8.1 cells/uL)
    assert sims["feng2019"].typical.get("treg")[0, 0] == pytest.approx(8.1)
    feng0 = num[(num["regimen_id"] == "feng2019") & (num["day"] == 0)].iloc[0]
    assert feng0["predicted_typical"] == pytest.approx(8.1)
    # a fold change is 1 at day 0 by construction, for every patient: the band of a day-0 fold is [1, 1]
    from tregpd.fitting.validate import row_quantity
    q = row_quantity(sims["sat0261"], "treg", "fold_change", 0.0, math.nan, "point", "median")
    assert q["predicted"] == pytest.approx(1.0) and q["predicted_p5"] == pytest.approx(1.0)


def test_validate_accepts_model_keyword(tmp_path):
    from tregpd.fitting.validate import validate
    cal = load_calibration()
    small = cal[cal["regimen_id"] == "dilt1d_0p101"]
    outcome = validate(population=5, seed=1, out=None, model="v1_waning", calibration=small)
    assert len(outcome.numbers) == len(small[small["weight_class"] != "qualitative"])
    assert outcome.files == {}
    sim = next(iter(outcome.simulations.values()))
    assert sim.typical.model == "v1_waning"
    with pytest.raises(Exception, match="unknown model"):
        validate(population=5, seed=1, out=None, model="no-such-structure", calibration=small)


def test_cli_validate(tmp_path, capsys):
    from tregpd.cli import main
    rc = main(["validate", "--out", str(tmp_path / "v"), "--population", "5", "--seed", "2"])
    assert rc == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "numbers in tolerance" in last and "qualitative checks pass" in last
    assert (tmp_path / "v" / "validation.md").is_file()
    import re
    n_in, n_num, k_pass, n_q = map(int, re.findall(r"(\d+) of (\d+)", last)[0] + re.findall(r"(\d+) of (\d+)", last)[1])
    rc = main(["validate", "--out", str(tmp_path / "v2"), "--population", "5", "--seed", "2", "--strict"])
    assert rc == (0 if (n_in == n_num and k_pass == n_q) else 1)
    assert main(["validate", "--out", str(tmp_path / "v3"), "--population", "1"]) == 2
