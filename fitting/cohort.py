"""Cohort data: tidy summary statistics of an observed cohort, loaded from CSV and validated.

File format (one summary statistic per row; ``#`` lines and blank lines are ignored)::

    week,observable,statistic,value,n,source[,rel_se][,unit][,note]

``week``
    Sampling time in weeks from the start of treatment, >= 0 (the model samples at day ``7 * week``).
``observable``
    One of :data:`OBSERVABLES`: ``treg``, ``th17``, ``naive`` (cells/uL) or ``ratio`` (Th17/Treg, computed per
    patient, unit 1).
``statistic``
    One of :data:`STATISTICS`: ``median``, ``q25``, ``q75``, ``mean``, ``sd``, or ``median_fold_change`` (the
    median at this week divided by the median of the same observable at week 0; used for soft constraints
    such as "not significantly changed", value 1).
``value``
    A finite number > 0 (the fit works on the log scale).
``n``
    Number of patients behind the statistic, a positive integer.
``source``
    Where the number comes from (free text, required). Derived or assumed rows must say so.
``rel_se`` (optional)
    Relative standard error of the statistic (its SE on the log scale). Overrides the default weight; a soft
    constraint is a row with a wide ``rel_se``. Blank = use the default (see :mod:`tregpd.fitting.objective`).
``unit`` (optional)
    If given, must be the observable's unit (``cells/uL`` or ``1``; ``cells/µL`` is accepted).

Any error raises :class:`~tregpd.errors.CohortError` naming the file, the line, the field and the bad value.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tregpd.errors import CohortError
from tregpd.safeio import MAX_INPUT_BYTES, shorten

#: observable -> unit
OBSERVABLES = {"treg": "cells/uL", "th17": "cells/uL", "naive": "cells/uL", "ratio": "1"}
STATISTICS = ("median", "q25", "q75", "mean", "sd", "median_fold_change")
REQUIRED_COLUMNS = ("week", "observable", "statistic", "value", "n", "source")
OPTIONAL_COLUMNS = ("rel_se", "unit", "note")
_UNIT_ALIASES = {"cells/µL": "cells/uL", "cells/ul": "cells/uL", "cells/μL": "cells/uL", "": None}

#: The bundled seed cohort (SAT0261 medians plus the Th17 soft constraint).
SEED_COHORT_FILE = "sat0261_medians.csv"


@dataclass(frozen=True)
class Cohort:
    """A validated cohort.

    Attributes
    ----------
    frame : pandas.DataFrame
        Tidy rows with columns week (float), observable, statistic, value (float), n (int), source (str),
        rel_se (float or NaN = default weight), line (int, line number in the file).
    origin : str
        File the data came from.
    """

    frame: object
    origin: str

    @property
    def weeks(self) -> list[float]:
        return sorted(set(float(w) for w in self.frame["week"]))

    @property
    def max_week(self) -> float:
        return float(self.frame["week"].max())

    def rows(self, statistic: str | None = None, observable: str | None = None, week: float | None = None):
        import numpy as np
        f = self.frame
        mask = np.ones(len(f), dtype=bool)
        if statistic is not None:
            mask &= (f["statistic"] == statistic).to_numpy()
        if observable is not None:
            mask &= (f["observable"] == observable).to_numpy()
        if week is not None:
            mask &= np.isclose(f["week"].to_numpy(dtype=float), week)
        return f[mask]

    def value(self, week: float, observable: str, statistic: str) -> float | None:
        """The value of one statistic, or None if the cohort does not have it."""
        r = self.rows(statistic, observable, week)
        return float(r["value"].iloc[0]) if len(r) else None


def _err(origin, line, field, value, msg) -> CohortError:
    return CohortError(f"{origin}, line {line}, field {field!r}: {msg} (got {shorten(value)})")


def parse_cohort(text: str, origin: str = "<string>") -> Cohort:
    """Parse and validate cohort CSV text (see the module docstring for the format)."""
    import numpy as np
    import pandas as pd

    if not isinstance(text, str):
        raise CohortError(f"{origin}: cohort text must be a string, got {type(text).__name__}")
    if len(text) > MAX_INPUT_BYTES:
        raise CohortError(f"{origin}: {len(text)} characters, larger than the limit of {MAX_INPUT_BYTES}")
    lines = text.splitlines()
    # keep (line number, text) of non-comment, non-blank lines so errors can name the file line
    content = [(i + 1, ln) for i, ln in enumerate(lines) if ln.strip() and not ln.lstrip().startswith("#")]
    if not content:
        raise CohortError(f"{origin}: no header and no data rows")
    reader = csv.reader(io.StringIO("\n".join(ln for _, ln in content)))
    try:
        records = list(reader)
    except csv.Error as exc:
        raise CohortError(f"{origin}: not valid CSV: {shorten(str(exc))[1:-1]}") from None
    header_line, header = content[0][0], [h.strip() for h in records[0]]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise CohortError(f"{origin}, line {header_line}: missing required column(s) {shorten(missing)}; "
                          f"the header must contain {', '.join(REQUIRED_COLUMNS)}")
    unknown = [c for c in header if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        raise CohortError(f"{origin}, line {header_line}: unknown column(s) {shorten(unknown)}; allowed: "
                          f"{', '.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}")
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:
        raise CohortError(f"{origin}, line {header_line}: duplicated column(s) {shorten(dup)}")
    if len(records) < 2:
        raise CohortError(f"{origin}: the file has a header but no data rows")

    rows = []
    seen: dict[tuple, int] = {}
    for (line, _), rec in zip(content[1:], records[1:]):
        if len(rec) != len(header):
            raise CohortError(f"{origin}, line {line}: expected {len(header)} fields "
                              f"({shorten(', '.join(header))[1:-1]}), found {len(rec)}")
        raw = {h: v.strip() for h, v in zip(header, rec)}

        def number(field, *, required=True):
            v = raw.get(field, "")
            if v == "":
                if required:
                    raise _err(origin, line, field, v, "is empty; a number is required")
                return math.nan
            try:
                x = float(v)
            except ValueError:
                raise _err(origin, line, field, v, "is not a number") from None
            if not math.isfinite(x):
                raise _err(origin, line, field, v, "must be a finite number (NaN/inf are not data)")
            return x

        week = number("week")
        if week < 0:
            raise _err(origin, line, "week", raw["week"], "must be >= 0")
        obs = raw["observable"]
        if obs not in OBSERVABLES:
            raise _err(origin, line, "observable", obs, f"unknown observable; known: {', '.join(OBSERVABLES)}")
        stat = raw["statistic"]
        if stat not in STATISTICS:
            raise _err(origin, line, "statistic", stat, f"unknown statistic; known: {', '.join(STATISTICS)}")
        value = number("value")
        if value <= 0:
            raise _err(origin, line, "value", raw["value"],
                       "must be > 0 (cell counts, ratios and fold changes are positive; the fit is on the log "
                       "scale)")
        n_raw = raw["n"]
        n_val = number("n")
        if n_val != int(n_val) or n_val < 1:
            raise _err(origin, line, "n", n_raw, "must be a positive integer (number of patients)")
        source = raw["source"]
        if not source:
            raise _err(origin, line, "source", source, "is empty; say where the number comes from")
        rel_se = number("rel_se", required=False) if "rel_se" in raw else math.nan
        if not math.isnan(rel_se) and rel_se <= 0:
            raise _err(origin, line, "rel_se", raw["rel_se"], "must be > 0 (or blank for the default weight)")
        if "unit" in raw:
            unit = _UNIT_ALIASES.get(raw["unit"], raw["unit"])
            if unit is not None and unit != OBSERVABLES[obs]:
                raise _err(origin, line, "unit", raw["unit"], f"{obs} is in {OBSERVABLES[obs]!r}")
        if stat == "median_fold_change" and week == 0:
            raise _err(origin, line, "week", raw["week"],
                       "a median_fold_change is relative to week 0 and needs week > 0")
        key = (week, obs, stat)
        if key in seen:
            raise CohortError(f"{origin}, line {line}: duplicate row for week {week:g}, observable {obs!r}, "
                              f"statistic {stat!r} (first given on line {seen[key]})")
        seen[key] = line
        rows.append({"week": week, "observable": obs, "statistic": stat, "value": value, "n": int(n_val),
                     "source": source, "rel_se": rel_se, "line": line})

    frame = pd.DataFrame(rows)
    frame["observable"] = frame["observable"].astype(object)
    frame["statistic"] = frame["statistic"].astype(object)
    frame["source"] = frame["source"].astype(object)
    _check_consistency(frame, origin)
    return Cohort(frame=frame.reset_index(drop=True), origin=origin)


def _check_consistency(frame, origin) -> None:
    """q25 <= median <= q75 at each (week, observable); something to fit after week 0."""
    by = {}
    for r in frame.itertuples():
        by.setdefault((r.week, r.observable), {})[r.statistic] = r
    for (week, obs), stats in by.items():
        order = [s for s in ("q25", "median", "q75") if s in stats]
        for a, b in zip(order, order[1:]):
            if stats[a].value > stats[b].value:
                raise CohortError(
                    f"{origin}, line {stats[b].line}, field 'value': {obs} {b} at week {week:g} "
                    f"({stats[b].value!r}) is below the {a} on line {stats[a].line} ({stats[a].value!r})")
    fit_rows = frame[(frame["week"] > 0) & frame["statistic"].isin(["median", "q25", "q75", "mean",
                                                                       "median_fold_change"])]
    if fit_rows.empty:
        raise CohortError(f"{origin}: no statistic after week 0 (median, q25, q75, mean or "
                          f"median_fold_change), so there is nothing to fit")
    fold = frame[frame["statistic"] == "median_fold_change"]
    for r in fold.itertuples():
        base = frame[(frame["week"] == 0) & (frame["observable"] == r.observable)
                     & (frame["statistic"] == "median")]
        derivable = not base.empty or (r.observable == "th17" and not frame[
            (frame["week"] == 0) & (frame["statistic"] == "median")
            & frame["observable"].isin(["treg", "ratio"])].empty)
        if not derivable:
            raise CohortError(f"{origin}, line {r.line}, field 'statistic': median_fold_change of {r.observable} "
                              f"needs its week-0 median in the file")


def load_cohort(path: str | Path | None = None) -> Cohort:
    """Load and validate a cohort CSV; ``None`` loads the bundled seed cohort (SAT0261)."""
    if path is None:
        text = resources.files("tregpd.fitting").joinpath("data", SEED_COHORT_FILE).read_text(encoding="utf-8")
        return parse_cohort(text, origin=f"tregpd/fitting/data/{SEED_COHORT_FILE}")
    from tregpd.safeio import read_text_file
    text = read_text_file(path, "cohort file", error=CohortError)
    return parse_cohort(text, origin=str(path))


def seed_cohort() -> Cohort:
    """The bundled SAT0261 seed cohort."""
    return load_cohort(None)


def baseline_values(cohort: Cohort) -> tuple[dict[str, float], dict[str, str], list[int]]:
    """Baseline cell counts from the week-0 medians.

    Treg and naive come from their week-0 medians; Th17 from its week-0 median, else from
    ``median ratio x median Treg`` (the ratio of medians stands in for the median of ratios, as in the
    parameter file). If Treg is missing but Th17 and ratio are given, Treg = Th17 / ratio.

    Returns
    -------
    values : dict parameter name -> value (cells/uL), only for baselines the data determine
    sources : dict parameter name -> text for the parameter file's ``source`` field
    lines : file lines of the rows used (these rows are matched by construction and not fitted)
    """
    med = {o: cohort.rows("median", o, 0.0) for o in OBSERVABLES}
    val = {o: (float(r["value"].iloc[0]) if len(r) else None) for o, r in med.items()}
    line = {o: (int(r["line"].iloc[0]) if len(r) else None) for o, r in med.items()}
    out, src, used = {}, {}, []
    o = cohort.origin
    if val["treg"] is not None:
        out["treg_baseline"] = val["treg"]
        src["treg_baseline"] = f"week-0 median Treg of {o} (line {line['treg']})"
        used.append(line["treg"])
    if val["th17"] is not None:
        out["th17_baseline"] = val["th17"]
        src["th17_baseline"] = f"week-0 median Th17 of {o} (line {line['th17']})"
        used.append(line["th17"])
    elif val["ratio"] is not None and val["treg"] is not None:
        out["th17_baseline"] = val["ratio"] * val["treg"]
        src["th17_baseline"] = (f"week-0 median Th17/Treg x median Treg of {o} (lines {line['ratio']}, "
                                f"{line['treg']}); the ratio of medians stands in for the median ratio")
        used.append(line["ratio"])
    if "treg_baseline" not in out and val["th17"] is not None and val["ratio"] is not None:
        out["treg_baseline"] = val["th17"] / val["ratio"]
        src["treg_baseline"] = f"week-0 median Th17 / median Th17/Treg of {o} (lines {line['th17']}, {line['ratio']})"
        used.append(line["ratio"])
    if val["naive"] is not None:
        out["naive_baseline"] = val["naive"]
        src["naive_baseline"] = f"week-0 median naive CD4 of {o} (line {line['naive']})"
        used.append(line["naive"])
    return out, src, sorted(set(used))


def cohort_from_result(result, weeks, observables=("treg", "th17", "ratio"), statistics=("median",), n=None,
                       source="simulated") -> Cohort:
    """A cohort summarising a simulation (for recovery tests and study design).

    Parameters
    ----------
    result : SimulationResult
        One patient (its values are the "medians") or a virtual population (statistics over patients, the
        ratio per patient). Must contain ``7 * week`` for every week in its output times.
    weeks : sequence of float
    statistics : subset of median, q25, q75, mean, sd (computed over patients)
    n : int, the ``n`` written to the rows (default: number of patients in ``result``)
    """
    import numpy as np
    pct = {"median": 50.0, "q25": 25.0, "q75": 75.0}
    lines = ["week,observable,statistic,value,n,source"]
    for w in weeks:
        idx = np.flatnonzero(np.isclose(result.time_day, 7.0 * w))
        if idx.size == 0:
            raise CohortError(f"week {w:g} (day {7 * w:g}) is not an output time of the simulation")
        j = int(idx[0])
        for obs in observables:
            arr = result.get(obs)[:, j]
            nn = int(n if n is not None else arr.size)
            for stat in statistics:
                if stat in pct:
                    v = float(np.percentile(arr, pct[stat]))
                elif stat == "mean":
                    v = float(arr.mean())
                elif stat == "sd":
                    if arr.size < 2:
                        continue
                    v = float(arr.std(ddof=1))
                else:
                    raise CohortError(f"cohort_from_result: unsupported statistic {stat!r}")
                lines.append(f"{w:g},{obs},{stat},{v!r},{nn},{source}")
    return parse_cohort("\n".join(lines) + "\n", origin=f"<{source}>")
