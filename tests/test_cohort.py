"""Cohort data: the seed file, validation errors naming line and field, weights from n and IQR."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tregpd.model import CohortError
from tregpd.fitting.cohort import baseline_values, load_cohort, parse_cohort, seed_cohort
from tregpd.fitting.objective import DEFAULT_LOG_SD, standard_errors

HEADER = "week,observable,statistic,value,n,source\n"
GOOD = HEADER + "0,treg,median,12.98,82,abstract\n24,treg,median,22.1,82,abstract\n"


def test_seed_cohort_contents():
    c = seed_cohort()
    f = c.frame
    assert c.weeks == [0.0, 24.0]
    assert c.value(0, "treg", "median") == 12.98
    assert c.value(24, "treg", "median") == 22.1
    assert c.value(0, "ratio", "median") == 0.44
    assert c.value(24, "ratio", "median") == 0.29
    assert set(f["n"]) == {82}
    soft = f[f["statistic"] == "median_fold_change"]
    assert len(soft) == 1 and soft["observable"].iloc[0] == "th17" and soft["value"].iloc[0] == 1.0
    assert "ASSUMPTION" in soft["source"].iloc[0]
    assert soft["rel_se"].iloc[0] == 0.25
    base, src, used = baseline_values(c)
    assert base["treg_baseline"] == 12.98
    assert base["th17_baseline"] == pytest.approx(0.44 * 12.98, rel=1e-12)
    assert "naive_baseline" not in base


def test_seed_weights_follow_the_documented_rule():
    c = seed_cohort()
    sigma, rules = standard_errors(c)
    f = c.frame
    med = (f["statistic"] == "median").to_numpy()
    # SE of a log median with the default between-patient log-SD: sqrt(pi/2) * 0.5 / sqrt(82)
    assert np.allclose(sigma[med], math.sqrt(math.pi / 2) * DEFAULT_LOG_SD / math.sqrt(82))
    assert sigma[~med][0] == 0.25


def test_iqr_gives_weight_and_user_cohort_with_more_weeks_and_observables(tmp_path):
    text = HEADER.strip() + ",rel_se,unit\n" + "\n".join([
        "0,treg,median,10,40,x,,cells/µL",
        "0,treg,q25,5,40,x,,",
        "0,treg,q75,20,40,x,,",
        "0,naive,median,150,40,x,,cells/uL",
        "6,treg,median,15,38,x,,",
        "12,treg,mean,16,38,x,,",
        "12,treg,sd,8,38,x,,",
        "12,th17,median,4,38,x,0.3,",
        "24,ratio,median,0.3,35,x,,1",
    ]) + "\n"
    path = tmp_path / "user.csv"
    path.write_text(text)
    c = load_cohort(path)
    assert c.weeks == [0.0, 6.0, 12.0, 24.0]
    sigma, rules = standard_errors(c)
    f = c.frame
    i_med = int(np.flatnonzero((f["week"] == 0) & (f["observable"] == "treg") & (f["statistic"] == "median"))[0])
    sd_log = (math.log(20) - math.log(5)) / 1.349
    assert sigma[i_med] == pytest.approx(math.sqrt(math.pi / 2) * sd_log / math.sqrt(40), rel=1e-12)
    i_q25 = int(np.flatnonzero((f["week"] == 0) & (f["statistic"] == "q25"))[0])
    assert sigma[i_q25] == pytest.approx(1.3626 * sd_log / math.sqrt(40), rel=1e-12)
    i_mean = int(np.flatnonzero(f["statistic"] == "mean")[0])
    assert sigma[i_mean] == pytest.approx(8 / (16 * math.sqrt(38)), rel=1e-12)
    i_rel = int(np.flatnonzero(f["observable"] == "th17")[0])
    assert sigma[i_rel] == 0.3
    base, _, _ = baseline_values(c)
    assert base == {"treg_baseline": 10.0, "naive_baseline": 150.0}


@pytest.mark.parametrize("row, line_no, field, fragment", [
    ("24,tregs,median,22.1,82,a", 3, "observable", "unknown observable"),
    ("24,treg,average,22.1,82,a", 3, "statistic", "unknown statistic"),
    ("24,treg,median,nan,82,a", 3, "value", "finite"),
    ("24,treg,median,,82,a", 3, "value", "empty"),
    ("24,treg,median,abc,82,a", 3, "value", "not a number"),
    ("24,treg,median,-1,82,a", 3, "value", "> 0"),
    ("-1,treg,median,22.1,82,a", 3, "week", ">= 0"),
    ("24,treg,median,22.1,8.5,a", 3, "n", "positive integer"),
    ("24,treg,median,22.1,0,a", 3, "n", "positive integer"),
    ("24,treg,median,22.1,82,", 3, "source", "empty"),
])
def test_bad_rows_are_rejected_naming_line_and_field(row, line_no, field, fragment):
    text = HEADER + "0,treg,median,12.98,82,a\n" + row + "\n"
    with pytest.raises(CohortError) as exc:
        parse_cohort(text, origin="bad.csv")
    msg = str(exc.value)
    assert f"bad.csv, line {line_no}" in msg
    assert f"field {field!r}" in msg
    assert fragment in msg


def test_line_numbers_count_comment_lines():
    text = "# a comment\n\n" + HEADER + "0,treg,median,12.98,82,a\n24,treg,median,inf,82,a\n"
    with pytest.raises(CohortError, match=r"line 5, field 'value'"):
        parse_cohort(text, origin="c.csv")


def test_duplicates_missing_columns_and_structure():
    with pytest.raises(CohortError, match=r"line 4: duplicate row for week 24, observable 'treg'.*line 3"):
        parse_cohort(GOOD + "24,treg,median,23,82,b\n", origin="d.csv")
    with pytest.raises(CohortError, match=r"missing required column\(s\) \['n'\]"):
        parse_cohort("week,observable,statistic,value,source\n0,treg,median,1,a\n", origin="m.csv")
    with pytest.raises(CohortError, match=r"unknown column\(s\) \['weight'\]"):
        parse_cohort(HEADER.strip() + ",weight\n0,treg,median,1,5,a,2\n", origin="u.csv")
    with pytest.raises(CohortError, match=r"line 2: expected 6 fields"):
        parse_cohort(HEADER + "0,treg,median,1,5\n", origin="f.csv")
    with pytest.raises(CohortError, match="nothing to fit"):
        parse_cohort(HEADER + "0,treg,median,12.98,82,a\n", origin="w0.csv")
    with pytest.raises(CohortError, match="no data rows"):
        parse_cohort(HEADER, origin="e.csv")
    with pytest.raises(CohortError, match=r"fc.csv, line 4, field 'week'.*needs week > 0"):
        parse_cohort(GOOD + "0,th17,median_fold_change,1,82,a\n", origin="fc.csv")
    with pytest.raises(CohortError, match=r"field 'unit'.*'cells/uL'"):
        parse_cohort(HEADER.strip() + ",unit\n0,treg,median,12,5,a,1\n24,treg,median,13,5,a,\n", origin="un.csv")


def test_quantile_order_and_fold_change_needs_baseline():
    text = GOOD + "24,treg,q25,25,82,a\n"
    with pytest.raises(CohortError, match=r"q.csv, line 3, field 'value': treg median at week 24 \(22.1\) is below the q25 on line 4"):
        parse_cohort(text, origin="q.csv")
    with pytest.raises(CohortError, match=r"line 3, field 'statistic'.*week-0 median"):
        parse_cohort(HEADER + "24,treg,median,22,82,a\n24,naive,median_fold_change,1,82,a\n", origin="b.csv")


def test_missing_file_and_non_utf8(tmp_path):
    with pytest.raises(CohortError, match="does not exist"):
        load_cohort(tmp_path / "nope.csv")
    p = tmp_path / "latin1.csv"
    p.write_bytes(HEADER.encode() + "0,treg,median,12,5,caf\xe9\n".encode("latin-1"))
    with pytest.raises(CohortError, match="latin1.csv. is not UTF-8 text"):
        load_cohort(p)
