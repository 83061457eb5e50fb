"""The calibration dataset and the regimens of its studies, loaded and validated.

* :func:`load_calibration` reads ``fitting/data/calibration.csv`` (built from ``shared/evidence/evidence.csv`` by
  :mod:`tregpd.fitting.build_calibration`; column meanings and SE rules there and in
  ``fitting/data/CALIBRATION.md``) and checks it: known observables, mappings, statistics and regimen ids;
  finite SE > 0 for every quantitative row; a parseable check for every qualitative row.
* :func:`load_regimens` reads ``fitting/data/calibration_regimens.toml`` (format in that file's header).
* :func:`study_regimen` turns one regimen id into a :class:`tregpd.model.Regimen`: per-m2 doses times the stated
  body-surface area (ASSUMPTION 1.7 m2 where used), IL-2 doses times the product's potency (a multiplier of
  the labelled IU dose; 1.0 for every product by default; potency per product is meant to become a fitted
  parameter).

Errors are :class:`CalibrationError` (a :class:`~tregpd.errors.TregpdError`) naming the file, the row id
or regimen id, the field and the bad value.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Mapping

from tregpd.model.dosing import Regimen
from tregpd.errors import RegimenError, TregpdError

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

CALIBRATION_FILE = "calibration.csv"
REGIMENS_FILE = "calibration_regimens.toml"

#: model observables a row may refer to -> unit of the absolute value
OBSERVABLES = {"treg": "cells/uL", "th17": "cells/uL", "naive": "cells/uL", "ratio": "1", "c_il2": "pM",
               "auc_il2": "pM*day", "c_rapa": "ng/mL"}
#: observables that are 0 on day 0 (no fold change possible)
ZERO_AT_BASELINE = ("c_il2", "auc_il2", "c_rapa")
MAPPINGS = ("absolute", "fold_change", "percent_of_cd4")
QUANT_STATISTICS = ("median", "mean", "ratio_of_medians", "ratio_of_means")
CHECK_TYPES = ("direction", "not_significant", "lower_bound", "peak_window", "decline", "greater_than",
               "dose_order")
WEIGHT_CLASSES = ("calibration", "loose_check", "qualitative")
STATUSES = ("VERIFIED", "RECALLED")
PRODUCTS = ("aldesleukin", "chinese_rhil2", "ilt101", "none")
TIME_SUMMARIES = ("point", "max", "mean")
SE_RULES = ("p_value", "sd_n", "reported_se_dose", "iqr", "range_over_4", "default_verified",
            "default_context_loose", "default_recalled")
REQUIRED_COLUMNS = ("id", "study", "study_slug", "evidence_rows", "regimen_id", "day", "day_end",
                    "time_summary", "observable", "mapping", "statistic", "value", "se", "se_scale", "se_rule",
                    "check", "criterion", "weight_class", "status", "confidence", "product", "source")
#: parameters a regimen's [baseline] table may set (study-population baselines)
BASELINE_PARAMETERS = ("naive_baseline", "treg_baseline", "th17_baseline", "gc_baseline_dose")
REGIMEN_KEYS = {"description", "source", "assumption", "product", "bsa_m2", "duration_day", "output_step_day",
                "schedules", "taper", "baseline"}


class CalibrationError(TregpdError, ValueError):
    """The calibration dataset or the regimen table is invalid."""


def _data_path(name: str) -> Path:
    return Path(str(resources.files("tregpd.fitting") / "data" / name))


# ------------------------------------------------------------------------------------------ regimens
@dataclass(frozen=True)
class StudyRegimen:
    """One entry of the regimen table (see the header of ``calibration_regimens.toml``).

    Attributes
    ----------
    regimen_id : str
    product : str
        IL-2 product (``aldesleukin``, ``chinese_rhil2``, ``ilt101``) or ``none``.
    bsa_m2 : float or None
        Body-surface area for per-m2 doses, m2 (ASSUMPTION where given).
    duration_day, output_step_day : float
        Simulated days and output grid spacing, days.
    baseline : dict
        Study-population baseline parameter values (file units) for the typical patient.
    data : dict
        The raw table (schedules with ``amount_per_m2`` not yet converted).
    """

    regimen_id: str
    product: str
    bsa_m2: float | None
    duration_day: float
    output_step_day: float
    description: str = ""
    source: str = ""
    assumption: str = ""
    baseline: Mapping[str, float] = field(default_factory=dict)
    data: Mapping = field(default_factory=dict, repr=False)

    def regimen(self, potency: Mapping[str, float] | None = None) -> Regimen:
        """The :class:`Regimen` with BSA and the product's potency applied (see :func:`study_regimen`)."""
        pot = _potency(potency)
        factor = pot[self.product] if self.product != "none" else 1.0
        where = f"calibration regimen {self.regimen_id!r}"
        scheds = []
        for i, s in enumerate(self.data.get("schedules", [])):
            s = dict(s)
            if "amount_per_m2" in s:
                if "amount" in s:
                    raise CalibrationError(f"{where} schedule {i + 1}: give 'amount' or 'amount_per_m2', not both")
                if self.bsa_m2 is None:
                    raise CalibrationError(f"{where} schedule {i + 1}: 'amount_per_m2' needs the regimen's "
                                           "'bsa_m2'")
                s["amount"] = float(s.pop("amount_per_m2")) * self.bsa_m2
            if s.get("drug") == "il2" and "amount" in s and isinstance(s["amount"], (int, float)):
                s["amount"] = float(s["amount"]) * factor
                if self.product != "none" and "product" not in s:
                    s["product"] = self.product   # the model's potency parameter of this product applies
            scheds.append(s)
        assumption = self.assumption
        if self.bsa_m2 is not None:
            assumption += f" BSA {self.bsa_m2:g} m2 (ASSUMPTION) for per-m2 doses."
        if factor != 1.0:
            assumption += f" IL-2 doses x potency {factor:g} ({self.product})."
        table = {"name": self.regimen_id, "description": self.description, "assumption": assumption.strip(),
                 "schedules": scheds}
        if "taper" in self.data:
            table["taper"] = dict(self.data["taper"])
        try:
            return Regimen.from_dict(table, where=where)
        except RegimenError as exc:
            raise CalibrationError(str(exc)) from None


def _potency(potency: Mapping[str, float] | None) -> dict[str, float]:
    """Product -> multiplier of the labelled IU dose; defaults 1.0; unknown products and non-positive values
    are errors."""
    out = {p: 1.0 for p in PRODUCTS if p != "none"}
    for k, v in (potency or {}).items():
        if k not in out:
            raise CalibrationError(f"potency: unknown product {k!r}; known: {', '.join(out)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise CalibrationError(f"potency: value for {k!r} must be a finite number > 0, got {v!r}")
        out[k] = float(v)
    return out


def _positive(table: dict, key: str, where: str, default=None) -> float | None:
    v = table.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise CalibrationError(f"{where}: field {key!r} must be a finite number > 0, got {v!r}")
    return float(v)


def parse_regimens(data: Mapping, origin: str = "<regimens>") -> dict[str, StudyRegimen]:
    """Validate the parsed regimen TOML (``{"regimens": {id: table}}``); every regimen must compile."""
    regs = data.get("regimens") if isinstance(data, Mapping) else None
    if not isinstance(regs, Mapping) or not regs:
        raise CalibrationError(f"{origin}: needs a non-empty [regimens] table")
    out = {}
    for rid, t in regs.items():
        where = f"{origin}: regimen {rid!r}"
        if not isinstance(t, Mapping):
            raise CalibrationError(f"{where}: must be a table")
        unknown = sorted(set(t) - REGIMEN_KEYS)
        if unknown:
            raise CalibrationError(f"{where}: unknown keys {unknown}; allowed: {sorted(REGIMEN_KEYS)}")
        product = t.get("product")
        if product not in PRODUCTS:
            raise CalibrationError(f"{where}: field 'product' must be one of {PRODUCTS}, got {product!r}")
        duration = _positive(t, "duration_day", where)
        if duration is None:
            raise CalibrationError(f"{where}: field 'duration_day' is required")
        baseline = t.get("baseline", {})
        if not isinstance(baseline, Mapping):
            raise CalibrationError(f"{where}: 'baseline' must be a table")
        for k in baseline:
            if k not in BASELINE_PARAMETERS:
                raise CalibrationError(f"{where}: baseline parameter {k!r} not allowed; allowed: "
                                       f"{', '.join(BASELINE_PARAMETERS)}")
            _positive(baseline, k, f"{where} baseline")
        sr = StudyRegimen(regimen_id=rid, product=product, bsa_m2=_positive(t, "bsa_m2", where),
                          duration_day=duration, output_step_day=_positive(t, "output_step_day", where, 0.25),
                          description=str(t.get("description", "")), source=str(t.get("source", "")),
                          assumption=str(t.get("assumption", "")),
                          baseline={k: float(v) for k, v in baseline.items()}, data=dict(t))
        sr.regimen()  # compiles, or raises naming the regimen and field
        out[rid] = sr
    return out


def load_regimens(path: str | Path | None = None) -> dict[str, StudyRegimen]:
    """Read and validate the regimen table (default: the bundled ``calibration_regimens.toml``)."""
    path = Path(path) if path is not None else _data_path(REGIMENS_FILE)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CalibrationError(f"regimen file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise CalibrationError(f"{path}: not valid TOML ({exc})") from None
    return parse_regimens(data, origin=str(path))


def study_regimen(regimen_id: str, potency: Mapping[str, float] | None = None,
                  regimens: Mapping[str, StudyRegimen] | None = None) -> Regimen:
    """The :class:`tregpd.model.Regimen` of a study.

    Parameters
    ----------
    regimen_id : str
        Key of ``calibration_regimens.toml``.
    potency : mapping product -> float, optional
        Multiplier of the labelled IU dose per IL-2 product (``aldesleukin``, ``chinese_rhil2``, ``ilt101``);
        missing products default to 1.0.
    regimens : mapping, optional
        A loaded regimen table (default: the bundled one).
    """
    regimens = regimens if regimens is not None else load_regimens()
    if regimen_id not in regimens:
        raise CalibrationError(f"unknown regimen_id {regimen_id!r}; known: {', '.join(sorted(regimens))}")
    return regimens[regimen_id].regimen(potency)


# ------------------------------------------------------------------------------------------ dataset
def parse_check(text: str, where: str) -> dict:
    """The JSON check of a qualitative row, validated."""
    try:
        chk = json.loads(text)
    except (TypeError, json.JSONDecodeError):
        raise CalibrationError(f"{where}: field 'check' must be a JSON object, got {text!r}") from None
    if not isinstance(chk, dict) or chk.get("type") not in CHECK_TYPES:
        raise CalibrationError(f"{where}: field 'check' needs a 'type' in {CHECK_TYPES}, got {text!r}")
    need = {"direction": ("sign",), "not_significant": ("threshold",), "lower_bound": ("bound",),
            "peak_window": ("lo", "hi"), "decline": ("ref_window", "ref_summary", "threshold"),
            "greater_than": ("other",), "dose_order": ("regimens",)}[chk["type"]]
    missing = [k for k in need if k not in chk]
    if missing:
        raise CalibrationError(f"{where}: check {chk['type']!r} is missing {missing}")
    return chk


def validate_calibration(frame, regimens: Mapping[str, StudyRegimen], origin: str = "<calibration>"):
    """Check a calibration table; returns it with numeric columns as floats. Raises :class:`CalibrationError`."""
    import numpy as np
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise CalibrationError(f"{origin}: missing columns {missing}")
    dup = frame["id"][frame["id"].duplicated()]
    if len(dup):
        raise CalibrationError(f"{origin}: duplicate id {dup.iloc[0]!r}")
    frame = frame.copy()
    for c in ("day", "day_end", "value", "se"):
        frame[c] = frame[c].astype(float)
    for c in ("check", "criterion", "se_scale", "se_rule", "statistic"):
        frame[c] = frame[c].fillna("").astype(str)
    for r in frame.itertuples(index=False):
        where = f"{origin}: row {r.id!r}"

        def bad(fld, val, allowed):
            raise CalibrationError(f"{where}: field {fld!r} must be one of {tuple(allowed)}, got {val!r}")
        if r.observable not in OBSERVABLES:
            bad("observable", r.observable, OBSERVABLES)
        if r.mapping not in MAPPINGS:
            bad("mapping", r.mapping, MAPPINGS)
        if r.mapping != "absolute" and r.observable in ZERO_AT_BASELINE:
            raise CalibrationError(f"{where}: observable {r.observable!r} is 0 on day 0; mapping must be "
                                   f"'absolute', got {r.mapping!r}")
        if r.mapping == "percent_of_cd4" and r.observable != "treg" and r.observable != "th17":
            raise CalibrationError(f"{where}: mapping 'percent_of_cd4' needs observable treg or th17, "
                                   f"got {r.observable!r}")
        if r.weight_class not in WEIGHT_CLASSES:
            bad("weight_class", r.weight_class, WEIGHT_CLASSES)
        if r.status not in STATUSES:
            bad("status", r.status, STATUSES)
        if r.product not in PRODUCTS:
            bad("product", r.product, PRODUCTS)
        if r.time_summary not in TIME_SUMMARIES:
            bad("time_summary", r.time_summary, TIME_SUMMARIES)
        if r.regimen_id not in regimens:
            bad("regimen_id", r.regimen_id, sorted(regimens))
        reg = regimens[r.regimen_id]
        if reg.product != r.product:
            raise CalibrationError(f"{where}: field 'product' is {r.product!r} but regimen {r.regimen_id!r} "
                                   f"has product {reg.product!r}")
        if not (math.isfinite(r.day) and r.day >= 0):
            raise CalibrationError(f"{where}: field 'day' must be finite and >= 0, got {r.day!r}")
        if r.time_summary != "point" and not (math.isfinite(r.day_end) and r.day_end >= r.day):
            raise CalibrationError(f"{where}: field 'day_end' must be >= day for time_summary "
                                   f"{r.time_summary!r}, got {r.day_end!r}")
        last = r.day_end if r.time_summary != "point" else r.day
        if last > reg.duration_day + 1e-9:
            raise CalibrationError(f"{where}: day {last:g} is after the end of regimen {r.regimen_id!r} "
                                   f"(duration_day {reg.duration_day:g})")
        if r.weight_class == "qualitative":
            chk = parse_check(r.check, where)
            if r.statistic != chk["type"]:
                raise CalibrationError(f"{where}: field 'statistic' must equal the check type "
                                       f"{chk['type']!r}, got {r.statistic!r}")
            for rid in chk.get("regimens", []):
                if rid not in regimens:
                    bad("check.regimens", rid, sorted(regimens))
            if chk["type"] == "greater_than" and chk["other"] not in OBSERVABLES:
                bad("check.other", chk["other"], OBSERVABLES)
        else:
            if r.statistic not in QUANT_STATISTICS:
                bad("statistic", r.statistic, QUANT_STATISTICS)
            if not (np.isfinite(r.value) and r.value > 0):
                raise CalibrationError(f"{where}: field 'value' must be finite and > 0, got {r.value!r}")
            if not (np.isfinite(r.se) and r.se > 0):
                raise CalibrationError(f"{where}: field 'se' must be finite and > 0, got {r.se!r}")
            if r.se_scale != "log":
                bad("se_scale", r.se_scale, ("log",))
            if r.se_rule not in SE_RULES:
                bad("se_rule", r.se_rule, SE_RULES)
    return frame


def load_calibration(path: str | Path | None = None, regimens: Mapping[str, StudyRegimen] | None = None):
    """Read and validate the calibration dataset.

    Parameters
    ----------
    path : str or Path, optional
        Tidy CSV (lines starting with ``#`` are comments); default: the bundled ``fitting/data/calibration.csv``.
    regimens : mapping, optional
        Regimen table to check ``regimen_id`` against (default: the bundled one).

    Returns
    -------
    pandas.DataFrame
        One row per reported number or qualitative fact (columns in :mod:`tregpd.fitting.build_calibration`).
    """
    import pandas as pd
    path = Path(path) if path is not None else _data_path(CALIBRATION_FILE)
    if not path.is_file():
        raise CalibrationError(f"calibration file {str(path)!r} does not exist")
    import io
    text = "".join(ln for ln in path.read_text(encoding="utf-8").splitlines(keepends=True)
                   if not ln.startswith("#"))  # header comments only: '#' may occur inside fields
    try:
        frame = pd.read_csv(io.StringIO(text), dtype={"evidence_rows": str, "n": str})
    except Exception as exc:  # pandas raises several types for malformed CSV
        raise CalibrationError(f"{path}: not a readable CSV ({' '.join(str(exc).split())})") from None
    regimens = regimens if regimens is not None else load_regimens()
    return validate_calibration(frame, regimens, origin=str(path))
