"""Dosing regimens as data, compiled to sorted event tables; NONMEM-style event files in and out.

A :class:`DoseSchedule` is one drug given at a fixed interval in repeated courses ("5 daily doses every
28 days, 6 courses"). A :class:`Regimen` is a named set of schedules. :meth:`Regimen.events` compiles it to an
:class:`EventTable`: dose times (days), compartments and amounts, sorted, which the solver integrates segment
by segment (a dose is a jump at a known time, never searched for).

Compartments (NONMEM ``CMT``), shared with the 8-state ODE form of the model:

=====  ==========================  =====
CMT    compartment                 unit
=====  ==========================  =====
1      IL-2 s.c. depot             IU
2      IL-2 central                IU
3      sirolimus gut               mg
4      sirolimus central           mg
5      sirolimus peripheral        mg
6      naive CD4                   cells/uL
7      Treg                        cells/uL
8      Th17                        cells/uL
=====  ==========================  =====

IL-2 doses go to CMT 1 (``route="sc"``, bioavailability applied) or CMT 2 (``route="iv"``); sirolimus doses
go to CMT 3 (``route="oral"``; apparent CL/F and V/F already include bioavailability).

CMT 9 is not a compartment: an event on it SETS the background glucocorticoid (prednisone-equivalent) dose
level in mg/day from its time on (a piecewise-constant covariate; see :class:`SteroidTaper`). This is a
tregpd convention; NONMEM users would carry it as a time-varying covariate column.

NONMEM files use ``TIME`` in **days** (the model's time unit) and ``AMT`` in IU (IL-2) or mg (sirolimus);
the unit is written in the file's header comment.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from tregpd.errors import RegimenError
from tregpd.safeio import shorten

CMT_IL2_DEPOT, CMT_IL2_CENTRAL, CMT_RAPA_GUT, CMT_RAPA_CENTRAL, CMT_RAPA_PERIPH = 1, 2, 3, 4, 5
CMT_NAIVE, CMT_TREG, CMT_TH17 = 6, 7, 8
#: not a compartment: an event on CMT 9 SETS the glucocorticoid (prednisone-equivalent) dose level, mg/day,
#: from its TIME on (a piecewise-constant time-varying covariate; AMT >= 0)
CMT_GC_LEVEL = 9
#: IL-2 products other than aldesleukin get their own dosing compartments (same depot/central, scaled by the
#: product's potency parameter, e.g. ``il2_potency_chinese_rhil2``): s.c. and i.v.
CMT_CHINESE_RHIL2_SC, CMT_CHINESE_RHIL2_IV, CMT_ILT101_SC, CMT_ILT101_IV = 10, 11, 12, 13
#: IL-2 products: aldesleukin (Proleukin, the potency reference), the Chinese rhIL-2 (labelled in WIU; potency
#: per labelled IU relative to aldesleukin unverified, a calibrated parameter), ILT-101 (LUPIL-2, TRANSREG)
IL2_PRODUCTS = ("aldesleukin", "chinese_rhil2", "ilt101")
PRODUCT_CMTS = {("aldesleukin", "sc"): CMT_IL2_DEPOT, ("aldesleukin", "iv"): CMT_IL2_CENTRAL,
                ("chinese_rhil2", "sc"): CMT_CHINESE_RHIL2_SC, ("chinese_rhil2", "iv"): CMT_CHINESE_RHIL2_IV,
                ("ilt101", "sc"): CMT_ILT101_SC, ("ilt101", "iv"): CMT_ILT101_IV}
DOSABLE_CMTS = (CMT_IL2_DEPOT, CMT_IL2_CENTRAL, CMT_RAPA_GUT, CMT_GC_LEVEL, CMT_CHINESE_RHIL2_SC,
                CMT_CHINESE_RHIL2_IV, CMT_ILT101_SC, CMT_ILT101_IV)

DRUGS = ("il2", "sirolimus")
#: route -> dosing compartment, per drug
ROUTES = {"il2": {"sc": CMT_IL2_DEPOT, "iv": CMT_IL2_CENTRAL}, "sirolimus": {"oral": CMT_RAPA_GUT}}
#: amount unit -> factor to the model unit (IU for IL-2, mg for sirolimus)
AMOUNT_UNITS = {"il2": {"MIU": 1e6, "WIU": 1e4, "IU": 1.0}, "sirolimus": {"mg": 1.0, "ug": 1e-3}}
MODEL_AMOUNT_UNIT = {"il2": "IU", "sirolimus": "mg"}
#: dosing compartments of IL-2 (any product), and the s.c. ones
IL2_CMTS = (CMT_IL2_DEPOT, CMT_IL2_CENTRAL, CMT_CHINESE_RHIL2_SC, CMT_CHINESE_RHIL2_IV, CMT_ILT101_SC, CMT_ILT101_IV)
IL2_SC_CMTS = (CMT_IL2_DEPOT, CMT_CHINESE_RHIL2_SC, CMT_ILT101_SC)
DRUG_OF_CMT = {CMT_IL2_DEPOT: "il2", CMT_IL2_CENTRAL: "il2", CMT_RAPA_GUT: "sirolimus",
               CMT_CHINESE_RHIL2_SC: "il2", CMT_CHINESE_RHIL2_IV: "il2", CMT_ILT101_SC: "il2",
               CMT_ILT101_IV: "il2"}
#: most doses one schedule may compile to (100 years of hourly doses); more is a typo that would exhaust memory
MAX_DOSES_PER_SCHEDULE = 1_000_000


def _number(value, fieldname: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise RegimenError(f"{where}: field {fieldname!r} must be a number, got {shorten(value)}")
    try:
        value = float(value)
    except OverflowError:  # an integer beyond the float range
        raise RegimenError(f"{where}: field {fieldname!r} must be finite, got an integer of {len(str(value))} "
                           "digits") from None
    if not math.isfinite(value):
        raise RegimenError(f"{where}: field {fieldname!r} must be finite, got {value!r}")
    return value


def _count(value, fieldname: str, where: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise RegimenError(f"{where}: field {fieldname!r} must be an integer >= {minimum}, got {shorten(value)}")
    return int(value)


@dataclass(frozen=True)
class DoseSchedule:
    """One drug given repeatedly.

    Doses are at ``start_day + c * course_interval_day + k * interval_day`` for course ``c`` in
    ``range(n_courses)`` and dose ``k`` in ``range(doses_per_course)``, dropping any at or after
    ``stop_day`` (if given).

    Parameters
    ----------
    drug : {"il2", "sirolimus"}
    amount : float
        Dose amount in ``unit`` (> 0).
    unit : str
        "MIU", "WIU" (10^4 IU, Chinese labelling) or "IU" for IL-2; "mg" or "ug" for sirolimus.
    interval_day : float
        Time between doses within a course, days (> 0; ignored if ``doses_per_course == 1``).
    doses_per_course : int
    n_courses : int
    course_interval_day : float or None
        Time from the start of one course to the start of the next, days; must exceed the course's own
        span. Required when ``n_courses > 1``.
    start_day : float
    stop_day : float or None
    route : str
        "sc" or "iv" for IL-2, "oral" for sirolimus.
    product : str, optional
        IL-2 product (:data:`IL2_PRODUCTS`; default "aldesleukin"); selects the dosing compartment whose
        potency parameter scales the dose. Not used for sirolimus.
    """

    drug: str
    amount: float
    unit: str
    interval_day: float = 1.0
    doses_per_course: int = 1
    n_courses: int = 1
    course_interval_day: float | None = None
    start_day: float = 0.0
    stop_day: float | None = None
    route: str | None = None
    product: str | None = None

    def __post_init__(self) -> None:
        where = f"dose schedule ({shorten(self.drug)})"
        if self.drug not in DRUGS:
            raise RegimenError(f"dose schedule: field 'drug' must be one of {DRUGS}, got {shorten(self.drug)}")
        route = self.route if self.route is not None else next(iter(ROUTES[self.drug]))
        if not isinstance(route, str) or route not in ROUTES[self.drug]:
            raise RegimenError(
                f"{where}: field 'route' must be one of {tuple(ROUTES[self.drug])}, got {shorten(route)}")
        object.__setattr__(self, "route", route)
        if self.drug == "il2":
            product = self.product if self.product is not None else "aldesleukin"
            if not isinstance(product, str) or product not in IL2_PRODUCTS:
                raise RegimenError(f"{where}: field 'product' must be one of {IL2_PRODUCTS}, got "
                                   f"{shorten(product)}")
            object.__setattr__(self, "product", product)
        elif self.product is not None:
            raise RegimenError(f"{where}: field 'product' is only for IL-2 schedules, got {shorten(self.product)}")
        if not isinstance(self.unit, str) or self.unit not in AMOUNT_UNITS[self.drug]:
            raise RegimenError(
                f"{where}: field 'unit' must be one of {tuple(AMOUNT_UNITS[self.drug])}, got {shorten(self.unit)}")
        amount = _number(self.amount, "amount", where)
        if amount <= 0:
            raise RegimenError(f"{where}: field 'amount' must be > 0, got {amount!r}")
        object.__setattr__(self, "amount", amount)
        interval = _number(self.interval_day, "interval_day", where)
        if interval <= 0:
            raise RegimenError(f"{where}: field 'interval_day' must be > 0, got {interval!r}")
        object.__setattr__(self, "interval_day", interval)
        object.__setattr__(self, "doses_per_course", _count(self.doses_per_course, "doses_per_course", where))
        object.__setattr__(self, "n_courses", _count(self.n_courses, "n_courses", where))
        if self.doses_per_course * self.n_courses > MAX_DOSES_PER_SCHEDULE:
            raise RegimenError(
                f"{where}: doses_per_course x n_courses = {self.doses_per_course * self.n_courses} exceeds "
                f"{MAX_DOSES_PER_SCHEDULE} doses")
        start = _number(self.start_day, "start_day", where)
        if start < 0:
            raise RegimenError(f"{where}: field 'start_day' must be >= 0, got {start!r}")
        object.__setattr__(self, "start_day", start)
        span = (self.doses_per_course - 1) * interval
        if self.n_courses > 1:
            if self.course_interval_day is None:
                raise RegimenError(f"{where}: field 'course_interval_day' is required when n_courses > 1")
            ci = _number(self.course_interval_day, "course_interval_day", where)
            if ci <= span:
                raise RegimenError(
                    f"{where}: field 'course_interval_day' ({ci} d) must exceed the course span "
                    f"({span} d = (doses_per_course - 1) x interval_day); courses would overlap")
            object.__setattr__(self, "course_interval_day", ci)
        elif self.course_interval_day is not None:
            object.__setattr__(self, "course_interval_day",
                               _number(self.course_interval_day, "course_interval_day", where))
        if self.stop_day is not None:
            stop = _number(self.stop_day, "stop_day", where)
            if stop <= start:
                raise RegimenError(f"{where}: field 'stop_day' ({stop}) must be after start_day ({start})")
            object.__setattr__(self, "stop_day", stop)

    @property
    def cmt(self) -> int:
        if self.drug == "il2":
            return PRODUCT_CMTS[(self.product, self.route)]
        return ROUTES[self.drug][self.route]

    @property
    def amount_model_units(self) -> float:
        """Dose in IU (IL-2) or mg (sirolimus)."""
        return self.amount * AMOUNT_UNITS[self.drug][self.unit]

    def dose_times(self) -> np.ndarray:
        """Dose times in days, sorted, shape ``(n,)``."""
        k = np.arange(self.doses_per_course) * self.interval_day
        c = np.arange(self.n_courses) * (self.course_interval_day or 0.0)
        t = (self.start_day + c[:, None] + k[None, :]).ravel()
        if self.stop_day is not None:
            t = t[t < self.stop_day]
        return np.sort(t)

    def to_dict(self) -> dict:
        d = {"drug": self.drug, "amount": self.amount, "unit": self.unit, "route": self.route,
             "interval_day": self.interval_day, "doses_per_course": self.doses_per_course,
             "n_courses": self.n_courses, "start_day": self.start_day}
        if self.course_interval_day is not None:
            d["course_interval_day"] = self.course_interval_day
        if self.stop_day is not None:
            d["stop_day"] = self.stop_day
        if self.drug == "il2" and self.product != "aldesleukin":
            d["product"] = self.product
        return d


@dataclass(frozen=True)
class EventTable:
    """Sorted dose events of one regimen.

    Attributes
    ----------
    time_day : ndarray, shape (n,)
        Dose times in days, non-decreasing.
    cmt : ndarray of int64, shape (n,)
        Dosing compartment (1, 2 or 3; see module docstring).
    amount : ndarray, shape (n,)
        Amount in IU (IL-2) or mg (sirolimus), > 0.
    """

    time_day: np.ndarray
    cmt: np.ndarray
    amount: np.ndarray

    def __post_init__(self) -> None:
        t = np.ascontiguousarray(self.time_day, dtype=np.float64)
        c = np.ascontiguousarray(self.cmt, dtype=np.int64)
        a = np.ascontiguousarray(self.amount, dtype=np.float64)
        if not (t.ndim == c.ndim == a.ndim == 1 and t.shape == c.shape == a.shape):
            raise RegimenError("event table: time_day, cmt and amount must be 1-D arrays of one length")
        bad = np.flatnonzero(~np.isfinite(t) | (t < 0))
        if bad.size:
            raise RegimenError(
                f"event table row {bad[0]}: TIME must be finite and >= 0, got {float(t[bad[0]])!r}")
        bad = np.flatnonzero(~np.isfinite(a) | (a < 0) | ((a == 0) & (c != CMT_GC_LEVEL)))
        if bad.size:
            what = (f"AMT (CMT {CMT_GC_LEVEL} glucocorticoid level, mg/day) must be finite and >= 0"
                    if c[bad[0]] == CMT_GC_LEVEL else "AMT must be finite and > 0")
            raise RegimenError(f"event table row {bad[0]}: {what}, got {float(a[bad[0]])!r}")
        bad = np.flatnonzero(~np.isin(c, DOSABLE_CMTS))
        if bad.size:
            raise RegimenError(
                f"event table row {bad[0]}: CMT must be one of {DOSABLE_CMTS} (dosable compartments), "
                f"got {int(c[bad[0]])!r}")
        bad = np.flatnonzero(np.diff(t) < 0)
        if bad.size:
            raise RegimenError(
                f"event table row {bad[0] + 1}: TIME {float(t[bad[0] + 1])} is before the previous row's "
                f"{float(t[bad[0]])}; "
                "events must be sorted by time")
        for arr in (t, c, a):
            arr.setflags(write=False)
        object.__setattr__(self, "time_day", t)
        object.__setattr__(self, "cmt", c)
        object.__setattr__(self, "amount", a)

    def __len__(self) -> int:
        return self.time_day.size

    @classmethod
    def empty(cls) -> "EventTable":
        return cls(np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0))

    def scaled(self, factor: float) -> "EventTable":
        """All drug doses multiplied by ``factor`` (> 0); glucocorticoid levels (CMT 9) are left as they are."""
        drug = self.cmt != CMT_GC_LEVEL
        return EventTable(self.time_day, self.cmt, np.where(drug, self.amount * factor, self.amount))

    def drug_doses(self) -> "EventTable":
        """The drug doses only: covariate level events (CMT 9, the prednisone level) are not doses."""
        m = self.cmt != CMT_GC_LEVEL
        return EventTable(self.time_day[m], self.cmt[m], self.amount[m])

    def total_amount(self, drug: str) -> float:
        """Total amount of ``drug`` in model units (IU or mg)."""
        mask = np.isin(self.cmt, [c for c, d in DRUG_OF_CMT.items() if d == drug])
        return float(self.amount[mask].sum())

    def to_frame(self, patient_id: int = 1):
        """NONMEM-style dose records: ID, TIME (day), AMT, CMT, EVID=1, II=0, ADDL=0."""
        import pandas as pd
        n = len(self)
        return pd.DataFrame({"ID": np.full(n, patient_id), "TIME": self.time_day, "AMT": self.amount,
                             "CMT": self.cmt, "EVID": np.ones(n, dtype=int), "II": np.zeros(n),
                             "ADDL": np.zeros(n, dtype=int)})


@dataclass(frozen=True)
class SteroidTaper:
    """A glucocorticoid (prednisone-equivalent) taper of the background therapy, as stepwise level changes.

    The daily dose falls linearly from ``start_mg_per_day`` at ``start_day`` to ``end_mg_per_day`` at
    ``end_day`` in steps every ``step_day`` days (the level is constant between steps, as real tapers are),
    then stays at ``end_mg_per_day``. Compiled to CMT 9 "set level" events. Before ``start_day`` the level is
    the model parameter ``gc_baseline_dose`` (the dose at which the baseline is a steady state).

    SAT0261 reports mean prednisone 17.20 mg/d at week 0 and 8.87 mg/d at week 24 (FOUNDING DOC); the linear
    shape and the 14-day steps are ASSUMPTIONS.
    """

    start_mg_per_day: float
    end_mg_per_day: float
    end_day: float
    start_day: float = 0.0
    step_day: float = 14.0

    def __post_init__(self) -> None:
        where = "steroid taper"
        for fld in ("start_mg_per_day", "end_mg_per_day", "end_day", "start_day", "step_day"):
            v = _number(getattr(self, fld), fld, where)
            if v < 0:
                raise RegimenError(f"{where}: field {fld!r} must be >= 0, got {v!r}")
            object.__setattr__(self, fld, v)
        if self.end_day <= self.start_day:
            raise RegimenError(f"{where}: field 'end_day' ({self.end_day}) must be after start_day "
                               f"({self.start_day})")
        if self.step_day <= 0:
            raise RegimenError(f"{where}: field 'step_day' must be > 0, got {self.step_day!r}")
        if (self.end_day - self.start_day) / self.step_day > MAX_DOSES_PER_SCHEDULE:
            raise RegimenError(f"{where}: too many steps ({self.end_day - self.start_day} d / {self.step_day} d)")

    def level_events(self) -> tuple[np.ndarray, np.ndarray]:
        """(times in days, levels in mg/day) of the step changes, sorted."""
        span = self.end_day - self.start_day
        n = max(1, int(math.ceil(span / self.step_day - 1e-9)))
        k = np.arange(n + 1)
        t = np.minimum(self.start_day + k * self.step_day, self.end_day)
        frac = (t - self.start_day) / span
        lv = self.start_mg_per_day + (self.end_mg_per_day - self.start_mg_per_day) * frac
        return t.astype(float), lv.astype(float)

    def level_at(self, time_day) -> np.ndarray:
        """The level (mg/day) in force at each time (after any step at that time); NaN before start_day."""
        t, lv = self.level_events()
        idx = np.searchsorted(t, np.asarray(time_day, float), side="right") - 1
        return np.where(idx >= 0, lv[np.clip(idx, 0, None)], np.nan)

    def to_dict(self) -> dict:
        return {"start_mg_per_day": self.start_mg_per_day, "end_mg_per_day": self.end_mg_per_day,
                "start_day": self.start_day, "end_day": self.end_day, "step_day": self.step_day}


#: SAT0261: mean prednisone 17.20 mg/d at week 0 -> 8.87 mg/d at week 24 (values FOUNDING DOC; shape ASSUMPTION)
SAT0261_TAPER = SteroidTaper(start_mg_per_day=17.20, end_mg_per_day=8.87, start_day=0.0, end_day=168.0,
                             step_day=14.0)


@dataclass(frozen=True)
class Regimen:
    """A named dosing regimen: one or more :class:`DoseSchedule`.

    ``assumption`` records, in words, what about the regimen is assumed rather than published (the Shanxi SLE
    regimen, for instance, is not in the sources; see :func:`reference_regimen`).
    """

    name: str
    schedules: tuple[DoseSchedule, ...] = ()
    description: str = ""
    assumption: str = ""
    taper: "SteroidTaper | None" = None

    def __post_init__(self) -> None:
        if self.taper is not None and not isinstance(self.taper, SteroidTaper):
            raise RegimenError(f"regimen: field 'taper' must be a SteroidTaper, got {shorten(self.taper)}")
        if not isinstance(self.name, str) or not self.name.strip():
            raise RegimenError(f"regimen: field 'name' must be a non-empty string, got {shorten(self.name)}")
        for fld in ("description", "assumption"):
            if not isinstance(getattr(self, fld), str):
                raise RegimenError(f"regimen {shorten(self.name)}: field {fld!r} must be a string, "
                                   f"got {shorten(getattr(self, fld))}")
        scheds = tuple(self.schedules)
        for s in scheds:
            if not isinstance(s, DoseSchedule):
                raise RegimenError(f"regimen {shorten(self.name)}: schedules must be DoseSchedule objects, got {shorten(s)}")
        object.__setattr__(self, "schedules", scheds)

    def events(self, until_day: float | None = None) -> EventTable:
        """Compile to a sorted :class:`EventTable`; doses at or after ``until_day`` are dropped."""
        times, cmts, amts = [], [], []
        for s in self.schedules:
            t = s.dose_times()
            times.append(t)
            cmts.append(np.full(t.size, s.cmt, dtype=np.int64))
            amts.append(np.full(t.size, s.amount_model_units))
        if self.taper is not None:
            t, lv = self.taper.level_events()
            times.append(t)
            cmts.append(np.full(t.size, CMT_GC_LEVEL, dtype=np.int64))
            amts.append(lv)
        if not times:
            return EventTable.empty()
        t = np.concatenate(times)
        c = np.concatenate(cmts)
        a = np.concatenate(amts)
        if until_day is not None:
            keep = t < until_day
            t, c, a = t[keep], c[keep], a[keep]
        order = np.lexsort((c, t))
        return EventTable(t[order], c[order], a[order])

    def drugs(self) -> tuple[str, ...]:
        return tuple(sorted({s.drug for s in self.schedules}))

    def to_dict(self) -> dict:
        d = {"name": self.name, "description": self.description, "assumption": self.assumption,
             "schedules": [s.to_dict() for s in self.schedules]}
        if self.taper is not None:
            d["taper"] = self.taper.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict, where: str = "regimen") -> "Regimen":
        """Build from a plain dict (as in a scenario file); unknown keys are errors."""
        if not isinstance(data, dict):
            raise RegimenError(f"{where}: must be a table, got {type(data).__name__}")
        from tregpd.safeio import check_nesting
        check_nesting(data, where, error=RegimenError)
        allowed = {"name", "description", "assumption", "schedules", "doses", "taper"}
        unknown = sorted(map(str, set(data) - allowed))
        if unknown:
            raise RegimenError(f"{where}: unknown keys {shorten(unknown)}; allowed: {sorted(allowed)}")
        raw = data.get("schedules", data.get("doses", []))
        if not isinstance(raw, list):
            raise RegimenError(f"{where}: 'schedules' must be a list of tables")
        scheds = [_from_table(DoseSchedule, s, f"{where} schedule {i + 1}", ("drug", "amount", "unit"))
                  for i, s in enumerate(raw)]
        taper = data.get("taper")
        if taper is not None:
            taper = _from_table(SteroidTaper, taper, f"{where} taper",
                                ("start_mg_per_day", "end_mg_per_day", "end_day"))
        return cls(name=data.get("name", where), schedules=tuple(scheds),
                   description=data.get("description", ""), assumption=data.get("assumption", ""),
                   taper=taper)


def _from_table(cls, table, where: str, required: Sequence[str]):
    """Build dataclass ``cls`` from a dict: a table, no unknown keys, the ``required`` keys present; errors
    (including the constructor's) are prefixed with ``where``."""
    if not isinstance(table, dict):
        raise RegimenError(f"{where}: must be a table")
    fields = set(cls.__dataclass_fields__)
    unknown = sorted(map(str, set(table) - fields))
    if unknown:
        raise RegimenError(f"{where}: unknown keys {shorten(unknown)}; allowed: {sorted(fields)}")
    missing = sorted(set(required) - set(table))
    if missing:
        raise RegimenError(f"{where}: missing keys {missing}")
    try:
        return cls(**table)
    except RegimenError as exc:
        raise RegimenError(f"{where}: {exc}") from None


REFERENCE_ASSUMPTION = (
    "ASSUMPTION: the Shanxi SLE regimen (SAT0261) is not published in the sources read (literature.md f1, f3). "
    "Taken as the group's verified RA/PsA IL-2 course (0.5 MIU s.c. daily x 5 days) repeated every 4 weeks, "
    "plus the group's RA sirolimus dose (0.5 mg orally every other day, Wen 2019), for 24 weeks. "
    "Background prednisone tapered 17.20 -> 8.87 mg/d over 24 weeks as reported (mean doses), in 2-weekly "
    "linear steps (shape assumed).")


def reference_regimen(weeks: float = 24, taper: bool = True) -> Regimen:
    """The study's assumed reference regimen (see :data:`REFERENCE_ASSUMPTION`), ``weeks`` in (0, 5200]."""
    weeks = _number(weeks, "weeks", "reference regimen")
    if not 0 < weeks <= 5200:
        raise RegimenError(f"reference regimen: 'weeks' must be > 0 and <= 5200 (100 years), got {shorten(weeks)}")
    days = weeks * 7.0
    return Regimen(
        name="shanxi_reference",
        description="rhIL-2 0.5 MIU s.c. daily x5 every 28 days + sirolimus 0.5 mg p.o. every other day"
                    + (" + prednisone taper 17.2 -> 8.87 mg/d over 24 wk" if taper else ""),
        assumption=REFERENCE_ASSUMPTION,
        taper=SAT0261_TAPER if taper else None,
        schedules=(
            DoseSchedule("il2", 0.5, "MIU", interval_day=1, doses_per_course=5,
                         n_courses=int(math.ceil(days / 28.0)), course_interval_day=28, stop_day=days,
                         product="chinese_rhil2"),
            DoseSchedule("sirolimus", 0.5, "mg", interval_day=2, doses_per_course=int(math.ceil(days / 2.0)),
                         stop_day=days),
        ))


def no_treatment() -> Regimen:
    return Regimen(name="untreated", description="conventional therapy only (baseline steady state)")


# ----------------------------------------------------------------------------------- NONMEM-style files
#: the time-varying covariate column of NONMEM-style files: prednisone-equivalent dose, mg/day
COVARIATE_COLUMN = "PRED"
NONMEM_COLUMNS = ("ID", "TIME", "AMT", "CMT", "EVID", "II", "ADDL")
#: largest ADDL accepted on one record (100 years of hourly doses); a typo such as 1e9 would exhaust memory
MAX_ADDL = 1_000_000
#: most doses one event file may expand to, all records and IDs together (sum of ADDL + 1), checked before
#: expanding: 60 records of ADDL 1e6 would otherwise take 4 GB
MAX_TOTAL_DOSES = 2_000_000


def write_nonmem(events: dict[int, EventTable] | EventTable, path: str | Path | None = None,
                 compress: bool = True, covariate_column: bool = False) -> str:
    """Write dose records as a NONMEM-style CSV (ID, TIME, AMT, CMT, EVID, II, ADDL).

    Runs of equally spaced, equal doses to one compartment are written as one record with ``II`` and ``ADDL``
    when ``compress`` is true. TIME and II are in days; AMT in IU (CMT 1-2) or mg (CMT 3). Returns the text;
    writes it atomically to ``path`` if given. With ``covariate_column``, prednisone levels are written as the
    time-varying covariate column ``PRED`` (an EVID 2 record at each change, the current value carried on every
    record) instead of CMT 9 records.
    """
    if isinstance(events, EventTable):
        events = {1: events}
    rows = []
    for pid, ev in events.items():
        for cmt in np.unique(ev.cmt):
            m = ev.cmt == cmt
            t, a = ev.time_day[m], ev.amount[m]
            i = 0
            while i < t.size:
                j = i
                ii = 0.0
                if compress and i + 1 < t.size and a[i + 1] == a[i]:
                    ii = t[i + 1] - t[i]
                    j = i + 1
                    while (j + 1 < t.size and a[j + 1] == a[i] and ii > 0
                           and math.isclose(t[j + 1] - t[j], ii, rel_tol=0, abs_tol=1e-9)):
                        j += 1
                    if ii <= 0:
                        j, ii = i, 0.0
                    else:
                        ii = _interval(t[i], t[j], j - i)
                rows.append((pid, t[i], a[i], int(cmt), 1, ii, j - i))
                i = j + 1
    rows.sort(key=lambda r: (r[0], r[1], r[3]))
    if covariate_column:
        return _write_with_covariate(rows, path)
    buf = io.StringIO()
    buf.write("# tregpd event table: TIME and II in days; AMT in IU (CMT 1 IL-2 depot, 2 IL-2 central) "
              "or mg (CMT 3 sirolimus gut); CMT 9 sets the prednisone-equivalent level in mg/day\n")
    buf.write(",".join(NONMEM_COLUMNS) + "\n")
    for r in rows:
        # float() first: numpy 2 scalars repr as "np.float64(...)", which no CSV reader accepts
        buf.write(f"{int(r[0])},{float(r[1])!r},{float(r[2])!r},{r[3]},{r[4]},{float(r[5])!r},{int(r[6])}\n")
    text = buf.getvalue()
    if path is not None:
        from tregpd.io import atomic_write_text
        atomic_write_text(path, text)
    return text


def _write_with_covariate(rows, path) -> str:
    """NONMEM text with prednisone levels as the PRED column (LOCF on every record; EVID 2 at each change)."""
    buf = io.StringIO()
    buf.write("# tregpd event table: TIME and II in days; AMT in IU (IL-2) or mg (sirolimus); PRED = "
              "prednisone-equivalent dose in mg/day (time-varying covariate, last value carried forward)\n")
    buf.write(",".join(NONMEM_COLUMNS) + f",{COVARIATE_COLUMN}\n")
    level: dict[int, float] = {}
    for r in rows:
        pid = int(r[0])
        if r[3] == CMT_GC_LEVEL:
            level[pid] = float(r[2])
            buf.write(f"{pid},{float(r[1])!r},0,{CMT_GC_LEVEL},2,0.0,0,{level[pid]!r}\n")
            continue
        pred = repr(level[pid]) if pid in level else ""
        buf.write(f"{pid},{float(r[1])!r},{float(r[2])!r},{r[3]},{r[4]},{float(r[5])!r},{int(r[6])},{pred}\n")
    text = buf.getvalue()
    if path is not None:
        from tregpd.io import atomic_write_text
        atomic_write_text(path, text)
    return text


def _interval(t_first: float, t_last: float, n: int) -> float:
    """II of a run of n + 1 equally spaced doses: the mean spacing, shortened to 12 significant digits when that
    reproduces the last dose time at least as well (1.0 rather than 0.9999999999999998 from a difference of
    floats, so ``TIME + k * II`` gives back the scheduled times)."""
    mean = (t_last - t_first) / n
    short = float(f"{mean:.12g}")
    return short if abs(t_first + n * short - t_last) <= abs(t_first + n * mean - t_last) else mean


def read_nonmem(source: str | Path | io.StringIO) -> dict[int, EventTable]:
    """Read a NONMEM-style CSV of dose records into one :class:`EventTable` per ID.

    Required columns: ID, TIME, AMT, CMT, EVID; optional II, ADDL (expanded), RATE (must be 0), and the
    time-varying covariate column ``PRED`` (prednisone-equivalent dose, mg/day; read on every row, blank =
    last value carried forward; each change becomes a level event, as CMT 9 records do, which remain an alias).
    Rows with EVID 0 (observations) and 2 (other events) are read for the covariate only; EVID 1 (dose) and 4
    (reset and dose; only at the start) are read as doses.
    Lines starting with '#' are comments. Errors name the file line and the column.
    """
    import pandas as pd
    from tregpd.safeio import MAX_INPUT_BYTES, read_text_file
    name = shorten(str(source))[1:-1] if not isinstance(source, io.StringIO) else "<text>"
    if isinstance(source, (str, Path)):
        text = read_text_file(source, "event file", error=RegimenError)
    else:  # StringIO or another text stream
        text = source.getvalue() if hasattr(source, "getvalue") else source.read(MAX_INPUT_BYTES + 1)
        if not isinstance(text, str):
            raise RegimenError(f"{name}: an event table must be text, got {type(text).__name__}")
        if len(text) > MAX_INPUT_BYTES:
            raise RegimenError(f"{name}: more than {MAX_INPUT_BYTES} characters; the limit of an event file")
    # keep the file line number of every header/data line, so errors can name it
    kept = [(i + 1, ln) for i, ln in enumerate(text.splitlines())
            if ln.strip() and not ln.lstrip().startswith("#")]
    try:
        df = pd.read_csv(io.StringIO("\n".join(ln for _, ln in kept)), comment="#", skipinitialspace=True)
    except Exception as exc:  # pandas raises several types for malformed CSV
        reason = " ".join(str(exc).split())  # pandas messages can end in a newline; keep one line
        raise RegimenError(f"{name}: not a readable CSV ({shorten(reason)[1:-1]})") from None
    line_of = [n for n, _ in kept[1:]] if len(kept) - 1 == len(df) else None

    def at(r: int) -> str:
        """Location of data record r (1-based): the file line when known."""
        return f"{name}, line {line_of[r - 1]}" if line_of is not None else f"{name}, record {r}"
    df.columns = [str(c).strip().upper() for c in df.columns]
    missing = [c for c in ("ID", "TIME", "AMT", "CMT", "EVID") if c not in df.columns]
    if missing:
        raise RegimenError(f"{name}: missing columns {shorten(missing)}; required ID, TIME, AMT, CMT, EVID")
    known = set(NONMEM_COLUMNS) | {"RATE", "DV", "MDV", COVARIATE_COLUMN}
    unknown = [c for c in df.columns if c not in known]
    if unknown:
        raise RegimenError(f"{name}: unknown columns {shorten(unknown)}; known: {sorted(known)}")
    for col in df.columns:
        vals = pd.to_numeric(df[col], errors="coerce")
        # DV and the covariate column may be blank (a blank covariate carries the last value forward)
        bad = np.flatnonzero(vals.isna().to_numpy() & ~(col in ("DV", COVARIATE_COLUMN)))
        if bad.size:
            r = int(bad[0])
            raise RegimenError(f"{at(r + 1)}: column {col} must be a number, got {shorten(df[col].iloc[r])}")
        if col in ("ID", "EVID", "CMT", "ADDL", "MDV"):
            # integer columns: inf or 1.5 would overflow int() or be silently truncated
            arr = vals.to_numpy(dtype=float)
            bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
            if bad.size:
                r = int(bad[0])
                raise RegimenError(f"{at(r + 1)}: column {col} must be an integer, got {float(arr[r])}")
        df[col] = vals
    if "ADDL" in df.columns:
        evid = df["EVID"].to_numpy(dtype=float)
        addl = np.clip(df["ADDL"].to_numpy(dtype=float), 0, None)
        # a record above MAX_ADDL is refused by name below, before it is expanded
        total = float(np.where(((evid == 1) | (evid == 4)) & (addl <= MAX_ADDL), addl + 1, 0).sum())
        if total > MAX_TOTAL_DOSES:
            raise RegimenError(
                f"{name}: the dose records expand to {total:.0f} doses (sum of ADDL + 1), more than the limit of "
                f"{MAX_TOTAL_DOSES} doses in one event file; split the file by ID and simulate the IDs "
                f"separately, or lower ADDL (doses after the end of the simulation have no effect)")
    out: dict[int, tuple[list, list, list]] = {}
    prev = {}
    last_level: dict[int, float] = {}
    for r, row in enumerate(df.itertuples(index=False), start=1):
        rec = row._asdict()
        evid = int(rec["EVID"])
        pid = int(rec["ID"])
        t = float(rec["TIME"])
        if not math.isfinite(t) or t < 0:
            raise RegimenError(f"{at(r)}: TIME must be finite and >= 0, got {t!r}")
        if pid in prev and t < prev[pid]:
            raise RegimenError(f"{at(r)}: TIME {t} is before the previous TIME {prev[pid]} of ID {pid}; "
                               "records must be sorted by time within each ID")
        prev[pid] = t
        if COVARIATE_COLUMN in rec and math.isfinite(float(rec[COVARIATE_COLUMN])):
            level = float(rec[COVARIATE_COLUMN])
            if level < 0:
                raise RegimenError(f"{at(r)}: column {COVARIATE_COLUMN} (prednisone-equivalent dose, mg/day) must "
                                   f"be >= 0, got {level!r}")
            if last_level.get(pid) != level:      # a change of the time-varying covariate: a level event
                ts, cs, as_ = out.setdefault(pid, ([], [], []))
                ts.append(t)
                cs.append(CMT_GC_LEVEL)
                as_.append(level)
                last_level[pid] = level
        if evid == 0 or evid == 2:
            continue
        if evid not in (1, 4):
            raise RegimenError(f"{at(r)}: EVID must be 0, 1, 2 or 4, got {evid}")
        if evid == 4 and pid in out and any(c != CMT_GC_LEVEL for c in out[pid][1]):
            raise RegimenError(f"{at(r)}: EVID 4 (reset) is only supported as the first dose of an ID")
        if rec.get("RATE", 0) not in (0, 0.0):
            raise RegimenError(f"{at(r)}: RATE must be 0 (bolus doses only), got {shorten(rec['RATE'])}")
        amt = float(rec["AMT"])
        cmt = int(rec["CMT"])
        if cmt not in DOSABLE_CMTS or cmt != rec["CMT"]:
            raise RegimenError(f"{at(r)}: CMT must be one of {DOSABLE_CMTS}, got {shorten(rec['CMT'])}")
        if cmt == CMT_GC_LEVEL and not (math.isfinite(amt) and amt >= 0):
            raise RegimenError(f"{at(r)}: AMT (CMT {CMT_GC_LEVEL} glucocorticoid level, mg/day) must be finite "
                               f"and >= 0, got {amt!r}")
        if cmt != CMT_GC_LEVEL and not (math.isfinite(amt) and amt > 0):
            raise RegimenError(f"{at(r)}: AMT must be finite and > 0, got {amt!r}")
        ii = float(rec.get("II", 0.0))
        addl = rec.get("ADDL", 0)
        if addl != int(addl) or addl < 0:
            raise RegimenError(f"{at(r)}: ADDL must be a non-negative integer, got {shorten(addl)}")
        addl = int(addl)
        if addl > MAX_ADDL:
            raise RegimenError(f"{at(r)}: ADDL must be <= {MAX_ADDL} (additional doses expanded in "
                               f"memory), got {addl}")
        if addl > 0 and not ii > 0:
            raise RegimenError(f"{at(r)}: II must be > 0 when ADDL > 0, got {ii!r}")
        ts, cs, as_ = out.setdefault(pid, ([], [], []))
        for k in range(addl + 1):
            ts.append(t + k * ii)
            cs.append(cmt)
            as_.append(amt)
    tables = {}
    for pid, (ts, cs, as_) in out.items():
        t, c, a = np.asarray(ts), np.asarray(cs, dtype=np.int64), np.asarray(as_)
        order = np.lexsort((c, t))
        try:
            tables[pid] = EventTable(t[order], c[order], a[order])
        except RegimenError as exc:  # e.g. II x ADDL beyond the float range
            raise RegimenError(f"{name}, ID {pid} after expanding ADDL: {exc}") from None
    return tables
