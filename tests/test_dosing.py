"""Dosing: schedule compilation, validation messages, NONMEM event files (write -> read round trip, errors)."""
from __future__ import annotations

import io

import numpy as np
import pytest

from tregpd.model import (DoseSchedule, EventTable, Regimen, RegimenError, TregpdError, no_treatment,
                          read_nonmem, reference_regimen, write_nonmem)
from tregpd.model.dosing import REFERENCE_ASSUMPTION


# ------------------------------------------------------------------------------------------ compilation
def test_course_dose_times():
    s = DoseSchedule("il2", 1.0, "MIU", interval_day=1, doses_per_course=5, n_courses=3, course_interval_day=28,
                     start_day=2.0)
    expected = np.concatenate([2 + np.arange(5), 30 + np.arange(5), 58 + np.arange(5)])
    np.testing.assert_array_equal(s.dose_times(), expected)
    assert s.cmt == 1 and s.route == "sc"
    assert s.amount_model_units == 1e6


def test_stop_day_drops_doses_at_and_after_it():
    s = DoseSchedule("sirolimus", 0.5, "mg", interval_day=2, doses_per_course=100, stop_day=10.0)
    np.testing.assert_array_equal(s.dose_times(), [0, 2, 4, 6, 8])


def test_units_and_routes():
    assert DoseSchedule("il2", 50.0, "WIU").amount_model_units == 5e5
    assert DoseSchedule("il2", 3.0, "IU").amount_model_units == 3.0
    assert DoseSchedule("sirolimus", 500.0, "ug").amount_model_units == pytest.approx(0.5)
    assert DoseSchedule("il2", 1.0, "MIU", route="iv").cmt == 2
    assert DoseSchedule("sirolimus", 1.0, "mg").cmt == 3


def test_reference_regimen_events():
    reg = reference_regimen(weeks=24)
    ev = reg.events()
    il2 = ev.time_day[ev.cmt == 10]    # the Shanxi group's Chinese rhIL-2 s.c. (its own compartment)
    rapa = ev.time_day[ev.cmt == 3]
    assert not np.any(ev.cmt == 1)
    assert il2.size == 6 * 5  # 6 courses of 5 daily doses in 168 days
    np.testing.assert_array_equal(il2[:6], [0, 1, 2, 3, 4, 28])
    assert il2.max() == 140.0 + 4
    np.testing.assert_array_equal(rapa, np.arange(0, 168, 2.0))
    assert np.all(np.diff(ev.time_day) >= 0)
    assert ev.total_amount("il2") == pytest.approx(30 * 0.5e6)
    assert ev.total_amount("sirolimus") == pytest.approx(84 * 0.5)
    assert "ASSUMPTION" in reg.assumption and reg.assumption == REFERENCE_ASSUMPTION
    # same-time doses are ordered by compartment
    both = np.flatnonzero(ev.time_day == 0.0)
    np.testing.assert_array_equal(ev.cmt[both], [3, 9, 10])
    # background prednisone taper (SAT0261: 17.20 -> 8.87 mg/d over 24 weeks) as CMT 9 level events every 14 d
    gc_t, gc_level = ev.time_day[ev.cmt == 9], ev.amount[ev.cmt == 9]
    np.testing.assert_array_equal(gc_t, np.arange(0, 169, 14.0))
    np.testing.assert_allclose(gc_level, 17.20 + (8.87 - 17.20) * gc_t / 168.0, rtol=1e-14)
    assert reference_regimen(weeks=24, taper=False).events().cmt.tolist().count(9) == 0


@pytest.mark.parametrize("weeks", [0, -1, float("nan"), float("inf"), 1e308, "24"])
def test_reference_regimen_rejects_bad_weeks(weeks):
    """NaN/huge weeks used to escape as ValueError/OverflowError from math.ceil (a CLI traceback)."""
    with pytest.raises(RegimenError, match="reference regimen: (field )?'weeks' must be"):
        reference_regimen(weeks=weeks)


def test_events_until_day_and_empty():
    ev = reference_regimen().events(until_day=3.0)
    assert ev.time_day.max() < 3.0 and len(ev) == 3 + 2 + 1   # IL-2, sirolimus, prednisone level at day 0
    assert len(no_treatment().events()) == 0
    assert len(EventTable.empty()) == 0


def test_event_table_is_read_only():
    ev = reference_regimen().events()
    with pytest.raises(ValueError):
        ev.amount[0] = 1.0


# ------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs,fragment", [
    (dict(drug="il2", amount=-1.0, unit="MIU"), "'amount' must be > 0, got -1.0"),
    (dict(drug="il2", amount=0, unit="MIU"), "'amount' must be > 0, got 0.0"),
    (dict(drug="il2", amount=float("nan"), unit="MIU"), "'amount' must be finite"),
    (dict(drug="il2", amount="1", unit="MIU"), "'amount' must be a number, got '1'"),
    (dict(drug="il2", amount=True, unit="MIU"), "'amount' must be a number"),
    (dict(drug="aspirin", amount=1.0, unit="mg"), "'drug' must be one of ('il2', 'sirolimus'), got 'aspirin'"),
    (dict(drug="il2", amount=1.0, unit="mg"), "'unit' must be one of ('MIU', 'WIU', 'IU'), got 'mg'"),
    (dict(drug="sirolimus", amount=1.0, unit="MIU"), "'unit' must be one of ('mg', 'ug'), got 'MIU'"),
    (dict(drug="il2", amount=1.0, unit="MIU", route="oral"), "'route' must be one of ('sc', 'iv'), got 'oral'"),
    (dict(drug="sirolimus", amount=1.0, unit="mg", route="sc"), "'route' must be one of ('oral',)"),
    (dict(drug="il2", amount=1.0, unit="MIU", interval_day=0), "'interval_day' must be > 0"),
    (dict(drug="il2", amount=1.0, unit="MIU", doses_per_course=0), "'doses_per_course' must be an integer >= 1"),
    (dict(drug="il2", amount=1.0, unit="MIU", doses_per_course=2.5), "'doses_per_course' must be an integer"),
    (dict(drug="il2", amount=1.0, unit="MIU", n_courses=2), "'course_interval_day' is required"),
    (dict(drug="il2", amount=1.0, unit="MIU", doses_per_course=5, n_courses=2, course_interval_day=4),
     "courses would overlap"),
    (dict(drug="il2", amount=1.0, unit="MIU", start_day=-1), "'start_day' must be >= 0, got -1.0"),
    (dict(drug="il2", amount=1.0, unit="MIU", start_day=5, stop_day=5), "'stop_day' (5.0) must be after"),
    (dict(drug="il2", amount=1.0, unit="MIU", stop_day=float("inf")), "'stop_day' must be finite"),
])
def test_schedule_validation_messages(kwargs, fragment):
    with pytest.raises(RegimenError) as exc:
        DoseSchedule(**kwargs)
    assert fragment in str(exc.value)


@pytest.mark.parametrize("kwargs,fragment", [
    # found by fuzzing Regimen.from_dict: these escaped as TypeError, OverflowError, ValueError or MemoryError
    (dict(drug="il2", amount=1.0, unit="MIU", route=["sc"]), "'route' must be one of ('sc', 'iv'), got ['sc']"),
    (dict(drug="il2", amount=1.0, unit=["MIU"]), "'unit' must be one of ('MIU', 'WIU', 'IU'), got ['MIU']"),
    (dict(drug="il2", amount=10**400, unit="MIU"), "'amount' must be finite, got an integer of 401 digits"),
    (dict(drug="il2", amount=1.0, unit="MIU", interval_day=10**400), "'interval_day' must be finite"),
    (dict(drug="il2", amount=1.0, unit="MIU", doses_per_course=10**30), "exceeds 1000000 doses"),
    (dict(drug="il2", amount=1.0, unit="MIU", doses_per_course=10**4, n_courses=1000, course_interval_day=1e5),
     "doses_per_course x n_courses = 10000000 exceeds 1000000 doses"),
])
def test_schedule_validation_of_wrong_types_and_sizes(kwargs, fragment):
    with pytest.raises(RegimenError) as exc:
        DoseSchedule(**kwargs)
    assert fragment in str(exc.value)


def test_event_table_validation():
    with pytest.raises(RegimenError, match=r"row 2: TIME 1.0 is before the previous row's 3.0; events must be"):
        EventTable([0.0, 3.0, 1.0], [1, 1, 1], [1.0, 1.0, 1.0])
    with pytest.raises(RegimenError, match=r"row 1: AMT must be finite and > 0, got 0.0$"):
        EventTable([0.0, 1.0], [1, 1], [1.0, 0.0])
    with pytest.raises(RegimenError, match=r"row 0: CMT must be one of \(1, 2, 3, 9, 10, 11, 12, 13\).*got 7"):
        EventTable([0.0], [7], [1.0])
    with pytest.raises(RegimenError, match=r"row 0: TIME must be finite and >= 0"):
        EventTable([-1.0], [1], [1.0])
    with pytest.raises(RegimenError, match="one length"):
        EventTable([0.0, 1.0], [1], [1.0])
    with pytest.raises(RegimenError, match="AMT must be finite and > 0, got 0.0"):
        EventTable([0.0], [1], [1.0]).scaled(0.0)


def test_regimen_from_dict_round_trip_and_errors():
    reg = reference_regimen(weeks=12)
    again = Regimen.from_dict(reg.to_dict())
    assert again == reg
    np.testing.assert_array_equal(again.events().time_day, reg.events().time_day)
    with pytest.raises(RegimenError, match=r"my.toml \[regimen\]: unknown keys \['dose'\]"):
        Regimen.from_dict({"name": "x", "dose": []}, where="my.toml [regimen]")
    with pytest.raises(RegimenError, match=r"r schedule 2: missing keys \['unit'\]"):
        Regimen.from_dict({"name": "x", "schedules": [{"drug": "il2", "amount": 1, "unit": "MIU"},
                                                      {"drug": "il2", "amount": 1}]}, where="r")
    with pytest.raises(RegimenError, match=r"r schedule 1: dose schedule \('il2'\): field 'amount' must be > 0"):
        Regimen.from_dict({"name": "x", "schedules": [{"drug": "il2", "amount": -2, "unit": "MIU"}]}, where="r")
    with pytest.raises(RegimenError, match=r"r schedule 1: unknown keys \['every'\]"):
        Regimen.from_dict({"schedules": [{"drug": "il2", "amount": 1, "unit": "MIU", "every": 2}]}, where="r")
    with pytest.raises(RegimenError, match="must be a table"):
        Regimen.from_dict([1, 2], where="r")
    with pytest.raises(RegimenError, match="'name' must be a non-empty string"):
        Regimen.from_dict({"name": "", "schedules": []})
    with pytest.raises(RegimenError, match="regimen 'x': field 'description' must be a string, got 5"):
        Regimen.from_dict({"name": "x", "description": 5, "schedules": []})


# -------------------------------------------------------------------------------------- NONMEM files
def test_nonmem_round_trip_compresses_with_addl(tmp_path):
    ev = reference_regimen(weeks=24).events()
    path = tmp_path / "events.csv"
    text = write_nonmem(ev, path)
    assert path.read_text() == text
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert lines[0] == "ID,TIME,AMT,CMT,EVID,II,ADDL"
    # 6 IL-2 courses: each 5-dose course compresses to one record (II=1, ADDL=4); sirolimus to one record
    # (II=2, ADDL=83); plus 13 prednisone-level records (CMT 9, days 0, 14, ..., 168: levels differ)
    assert len(lines) - 1 < 15 + 13
    assert sum(ln.split(",")[3] == "9" for ln in lines[1:]) == 13
    assert "1,0.0,0.5,3,1,2.0,83" in lines
    assert "1,0.0,500000.0,10,1,1.0,4" in lines
    back = read_nonmem(path)
    assert list(back) == [1]
    np.testing.assert_array_equal(back[1].time_day, ev.time_day)
    np.testing.assert_array_equal(back[1].cmt, ev.cmt)
    np.testing.assert_array_equal(back[1].amount, ev.amount)


def test_nonmem_round_trip_uncompressed_and_multiple_ids():
    a = reference_regimen(weeks=8).events()
    b = Regimen("b", (DoseSchedule("il2", 1.5, "MIU", interval_day=0.5, doses_per_course=3, start_day=0.25),
                      DoseSchedule("il2", 2.0, "MIU", route="iv", start_day=1.0))).events()
    text = write_nonmem({3: a, 7: b}, compress=False)
    assert sum(1 for ln in text.splitlines() if ln[:1].isdigit()) == len(a) + len(b)
    back = read_nonmem(io.StringIO(text))
    assert sorted(back) == [3, 7]
    for pid, ev in ((3, a), (7, b)):
        np.testing.assert_array_equal(back[pid].time_day, ev.time_day)
        np.testing.assert_array_equal(back[pid].cmt, ev.cmt)
        np.testing.assert_array_equal(back[pid].amount, ev.amount)


def test_nonmem_interval_is_clean_and_reproduces_times():
    """II used to be the float difference of the first two times (0.9999999999999998 for doses at 1.8 and
    2.8), so read-back times drifted and a sirolimus dose sorted before a simultaneous IL-2 dose (found by
    hypothesis)."""
    reg = Regimen("r", (DoseSchedule("il2", 1.0, "MIU", start_day=4.8),
                        DoseSchedule("sirolimus", 1.0, "mg", interval_day=1.0, doses_per_course=4, start_day=1.8),
                        DoseSchedule("sirolimus", 1.0, "mg", interval_day=0.1, doses_per_course=30, start_day=10)))
    ev = reg.events()
    text = write_nonmem(ev)
    assert "1,1.8,1.0,3,1,1.0,3" in text and "1,10.0,1.0,3,1,0.1,29" in text
    back = read_nonmem(io.StringIO(text))[1]
    np.testing.assert_array_equal(back.cmt, ev.cmt)
    np.testing.assert_allclose(back.time_day, ev.time_day, rtol=0, atol=1e-12)


def test_read_nonmem_accepts_observations_and_lowercase_headers():
    text = "# comment\nid,time,amt,cmt,evid,dv\n1,0,1e6,1,1,.\n1,1,0,7,0,12.5\n1,2,0.5,3,1,.\n"
    ev = read_nonmem(io.StringIO(text))[1]
    np.testing.assert_array_equal(ev.time_day, [0.0, 2.0])
    np.testing.assert_array_equal(ev.cmt, [1, 3])


@pytest.mark.parametrize("body,fragment", [
    ("ID,TIME,AMT,CMT\n1,0,1,1\n", "missing columns ['EVID']"),
    ("ID,TIME,AMT,CMT,EVID,FOO\n1,0,1,1,1,2\n", "unknown columns ['FOO']"),
    ("ID,TIME,AMT,CMT,EVID\n1,0,1,1,1\n1,abc,1,1,1\n", "<text>, line 3: column TIME must be a number, got 'abc'"),
    ("ID,TIME,AMT,CMT,EVID\n1,0,-5,1,1\n", "<text>, line 2: AMT must be finite and > 0, got -5.0"),
    ("ID,TIME,AMT,CMT,EVID\n1,0,5,7,1\n", "<text>, line 2: CMT must be one of (1, 2, 3, 9, 10, 11, 12, 13), got 7"),
    ("ID,TIME,AMT,CMT,EVID\n1,0,-1,9,1\n",
     "<text>, line 2: AMT (CMT 9 glucocorticoid level, mg/day) must be finite and >= 0, got -1.0"),
    ("ID,TIME,AMT,CMT,EVID\n1,0,5,1.5,1\n", "<text>, line 2: column CMT must be an integer, got 1.5"),
    ("ID,TIME,AMT,CMT,EVID\n1,2,5,1,1\n1,1,5,1,1\n",
     "<text>, line 3: TIME 1.0 is before the previous TIME 2.0 of ID 1"),
    ("ID,TIME,AMT,CMT,EVID\n1,-1,5,1,1\n", "<text>, line 2: TIME must be finite and >= 0, got -1.0"),
    ("ID,TIME,AMT,CMT,EVID\n1,0,5,1,3\n", "<text>, line 2: EVID must be 0, 1, 2 or 4, got 3"),
    ("ID,TIME,AMT,CMT,EVID,II,ADDL\n1,0,5,1,1,0,3\n", "<text>, line 2: II must be > 0 when ADDL > 0, got 0.0"),
    ("ID,TIME,AMT,CMT,EVID,II,ADDL\n1,0,5,1,1,1,-2\n", "<text>, line 2: ADDL must be a non-negative integer, got -2"),
    ("ID,TIME,AMT,CMT,EVID,RATE\n1,0,5,1,1,10\n", "<text>, line 2: RATE must be 0 (bolus doses only)"),
    ("ID,TIME,AMT,CMT,EVID\n1,0,5,1,1\n1,1,5,1,4\n", "<text>, line 3: EVID 4 (reset) is only supported as the first"),
    # found by fuzzing: inf in an integer column escaped as OverflowError, 1.5 was truncated silently
    ("ID,TIME,AMT,CMT,EVID\n1,0,5,1,inf\n", "<text>, line 2: column EVID must be an integer, got inf"),
    ("ID,TIME,AMT,CMT,EVID\ninf,0,5,1,1\n", "<text>, line 2: column ID must be an integer, got inf"),
    ("ID,TIME,AMT,CMT,EVID\n1.5,0,5,1,1\n", "<text>, line 2: column ID must be an integer, got 1.5"),
    ("ID,TIME,AMT,CMT,EVID,II,ADDL\n1,0,5,1,1,1,inf\n", "<text>, line 2: column ADDL must be an integer, got inf"),
    ("ID,TIME,AMT,CMT,EVID,II,ADDL\n1,0,5,1,1,1,1e9\n", "<text>, line 2: ADDL must be <= 1000000"),
    ("ID\n0\n0,0\n", "not a readable CSV (Error tokenizing data"),
])
def test_read_nonmem_errors_name_row_and_column(body, fragment):
    with pytest.raises(RegimenError) as exc:
        read_nonmem(io.StringIO(body))
    assert fragment in str(exc.value)
    assert "\n" not in str(exc.value)


def test_read_nonmem_file_errors(tmp_path):
    with pytest.raises(RegimenError, match="does not exist"):
        read_nonmem(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("ID,TIME,AMT,CMT,EVID\n1,0,5,1,1\n1,x,5,1,1\n")
    with pytest.raises(RegimenError) as exc:
        read_nonmem(bad)
    assert str(exc.value) == f"{bad}, line 3: column TIME must be a number, got 'x'"
    # comment and blank lines count: the message names the line a text editor shows
    bad.write_text("# dose file\n\nID,TIME,AMT,CMT,EVID\n# first dose\n1,0,5,1,1\n\n1,1,-5,1,1\n")
    with pytest.raises(RegimenError, match=r"bad.csv, line 7: AMT must be finite and > 0, got -5.0"):
        read_nonmem(bad)
    bad.write_bytes(b"\xff\xfeID")
    with pytest.raises(RegimenError, match="bad.csv' is not UTF-8 text"):
        read_nonmem(bad)
    big = tmp_path / "big.csv"
    big.write_text("ID,TIME,AMT,CMT,EVID,II,ADDL\n1,0,5,1,1,1e308,3\n")
    with pytest.raises(RegimenError, match=r"big.csv, ID 1 after expanding ADDL: .*TIME must be finite"):
        read_nonmem(big)


def test_regimen_errors_are_tregpd_errors():
    assert issubclass(RegimenError, TregpdError)


def test_steroid_taper_levels_and_validation():
    from tregpd.model.dosing import SteroidTaper
    taper = SteroidTaper(start_mg_per_day=20.0, end_mg_per_day=5.0, start_day=7.0, end_day=37.0, step_day=7.0)
    t, lv = taper.level_events()
    np.testing.assert_array_equal(t, [7, 14, 21, 28, 35, 37])
    np.testing.assert_allclose(lv, 20 - 15 * (t - 7) / 30)
    np.testing.assert_allclose(taper.level_at([8.0, 36.9, 100.0]), [20.0, 20 - 15 * 28 / 30, 5.0])
    with pytest.raises(RegimenError, match="end_day"):
        SteroidTaper(start_mg_per_day=20.0, end_mg_per_day=5.0, start_day=10.0, end_day=5.0)
    with pytest.raises(RegimenError, match="start_mg_per_day"):
        SteroidTaper(start_mg_per_day=-1.0, end_mg_per_day=5.0, end_day=5.0)
    reg = Regimen.from_dict({"name": "t", "taper": {"start_mg_per_day": 10, "end_mg_per_day": 0, "end_day": 28}})
    assert reg.events().amount[-1] == 0.0          # a level of 0 mg/day is allowed on CMT 9
    with pytest.raises(RegimenError, match="unknown keys"):
        Regimen.from_dict({"name": "t", "taper": {"start_mg_per_day": 10, "end_mg_per_day": 0, "end_day": 28,
                                                  "shape": "linear"}})


def test_scaled_leaves_glucocorticoid_levels():
    ev = reference_regimen(weeks=24).events()
    doubled = ev.scaled(2.0)
    gc = ev.cmt == 9
    np.testing.assert_array_equal(doubled.amount[gc], ev.amount[gc])
    np.testing.assert_array_equal(doubled.amount[~gc], 2.0 * ev.amount[~gc])


def test_taper_levels_are_not_doses():
    """Issue 11: prednisone taper levels (CMT 9) were counted as doses ('duration_12wk: last dose in week 22')."""
    from tregpd.scenarios import library_paths
    from tregpd.scenarios.schema import load_scenario
    reg = reference_regimen(weeks=12)
    ev = reg.events(until_day=24 * 7)
    doses = ev.drug_doses()
    assert (ev.cmt == 9).any() and not (doses.cmt == 9).any()
    assert doses.time_day.max() < 12 * 7 <= ev.time_day.max()
    sc = load_scenario(next(p for p in library_paths() if p.stem == "duration_12wk"))
    assert sc.treatment_end_day() <= 12 * 7


def test_prednisone_as_a_time_varying_covariate_column_round_trips():
    """Issue 11: prednisone as a NONMEM covariate column (PRED, mg/day, last value carried forward) is read into
    the same level events as CMT 9 records (kept as an alias) and written back as the column."""
    from tregpd.model.dosing import read_nonmem, write_nonmem
    text = ("ID,TIME,AMT,CMT,EVID,II,ADDL,PRED\n"
            "1,0,500000,10,1,1,4,17.2\n"       # dose rows carry the covariate too
            "1,14,0,0,0,0,0,\n"                 # observation, blank PRED: carried forward (no event)
            "1,14,0,0,2,0,0,15\n"               # other-type event: the level changes
            "1,28,500000,10,1,1,4,15\n")        # unchanged value: no new event
    ev = read_nonmem(io.StringIO(text))[1]
    levels = ev.cmt == 9
    np.testing.assert_array_equal(ev.time_day[levels], [0.0, 14.0])
    np.testing.assert_array_equal(ev.amount[levels], [17.2, 15.0])
    assert len(ev.drug_doses()) == 10
    alias = ("ID,TIME,AMT,CMT,EVID,II,ADDL\n1,0,17.2,9,1,0,0\n1,0,500000,10,1,1,4\n1,14,15,9,1,0,0\n"
             "1,28,500000,10,1,1,4\n")
    ev2 = read_nonmem(io.StringIO(alias))[1]
    np.testing.assert_array_equal(ev.time_day, ev2.time_day)
    np.testing.assert_array_equal(ev.cmt, ev2.cmt)
    np.testing.assert_array_equal(ev.amount, ev2.amount)
    out = write_nonmem(ev, covariate_column=True)
    assert out.splitlines()[1] == "ID,TIME,AMT,CMT,EVID,II,ADDL,PRED" and ",9,1," not in out
    back = read_nonmem(io.StringIO(out))[1]
    np.testing.assert_array_equal(back.time_day, ev.time_day)
    np.testing.assert_array_equal(back.amount, ev.amount)
    with pytest.raises(RegimenError, match="column PRED"):
        read_nonmem(io.StringIO("ID,TIME,AMT,CMT,EVID,PRED\n1,0,1,1,1,-3\n"))
