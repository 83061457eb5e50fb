"""Summary metrics of a simulated virtual population: pure numpy functions, and a tidy summary table.

Definitions (every statistic over the successfully integrated patients; failed patients are counted and
reported, never averaged in):

* **Treg, Th17, ratio at week w**: median and the 5th/95th percentiles (a 90 % interval) across patients. The
  ratio is Th17/Treg computed per patient, then summarised (as the study reports it).
* **Change from baseline**: per patient, ``x(w) - x(0)`` (absolute) and ``100 (x(w) - x(0)) / x(0)`` (percent);
  then median and 5/95 % across patients. (The change of the medians is not the median of the changes.)
* **Time with ratio below target**: per patient, the time in weeks during ``[0, w]`` with ``ratio(t) < target``,
  the trajectory taken piecewise linear between output points (so a crossing inside an interval is located
  exactly on that line, see :func:`time_below`).
* **Healthy range** (Niu et al., healthy Shanxi adults, 95 % reference ranges; literature.md a1/d): Treg
  13.47–64.58 cells/µL, Th17 1.10–19.54 cells/µL, Th17/Treg 0.04–0.76. ``fraction_healthy`` is the fraction
  of patients with **both** Treg and ratio inside their ranges (the two read-outs the study reports as
  improved); the per-variable fractions are also given.
* **Selectivity margin**: per patient, peak IL-2 concentration divided by the patient's intermediate-affinity
  receptor EC50 (``il2_ec50_effector``). Peaks are taken on a dense grid (default every 30 min) over the first
  day after every IL-2 dose (:func:`peak_grid`); s.c. IL-2 peaks a few hours after each dose and is gone within
  a day (t1/2 ~ 1-3 h), so this grid contains the true peak up to the grid's resolution. A margin of 0.03 means
  the peak reaches 3 % of EC50_E, i.e. about 3 % occupancy of the intermediate receptor on effector cells.
* **Drug exposure**: AUC of IL-2 (pM·day) and sirolimus (ng/mL·day, whole blood) from day 0 to week w (the
  model's ``auc_*`` outputs); cumulative amount given (MIU, mg); sirolimus trough (the concentration at the
  time of the last sirolimus dose) and peak over the day after it.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from tregpd.model.dosing import IL2_CMTS, IL2_SC_CMTS


#: Healthy 95 % reference ranges, healthy Shanxi Han adults (Niu et al.; literature.md a1 and d). cells/uL; 1.
HEALTHY_RANGE: Mapping[str, tuple[float, float]] = {
    "treg": (13.47, 64.58),
    "th17": (1.10, 19.54),
    "ratio": (0.04, 0.76),
}
UNITS = {"treg": "cells/uL", "th17": "cells/uL", "ratio": "1", "naive": "cells/uL"}
PERCENTILES = (("median", 50.0), ("p05", 5.0), ("p95", 95.0))


def parameter_index(name: str, model=None) -> int:
    """Column of parameter ``name`` in the theta of model structure ``model`` (default: the default structure)."""
    from tregpd.errors import ScenarioError
    from tregpd.model.structures import get_model
    m = get_model(model)
    try:
        return m.parameter_names.index(name)
    except ValueError:
        raise ScenarioError(f"model {m.name!r} has no parameter {name!r}") from None


def time_below(time_day: np.ndarray, values: np.ndarray, target: float) -> np.ndarray:
    """Time during which a piecewise-linear trajectory is below ``target``.

    Parameters
    ----------
    time_day : (n_times,) increasing, days
    values : (n_patients, n_times)
    target : float

    Returns
    -------
    (n_patients,) days with ``value < target`` over ``[time_day[0], time_day[-1]]``, the trajectory linear
    between output points.
    """
    t = np.asarray(time_day, dtype=float)
    v = np.atleast_2d(np.asarray(values, dtype=float))
    if t.size < 2:
        return np.zeros(v.shape[0])
    a, b = v[:, :-1], v[:, 1:]
    dt = np.diff(t)[None, :]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    frac = np.where(hi <= target, 1.0, 0.0)          # whole interval below (or touching at one end only)
    frac = np.where(lo >= target, 0.0, frac)
    crossing = (lo < target) & (hi > target)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(crossing, (target - lo) / (hi - lo), frac)
    return (frac * dt).sum(axis=1)


def percentile_stats(x: np.ndarray) -> dict[str, float]:
    """Median and 5th/95th percentiles of a 1-D array (NaN if empty)."""
    x = np.asarray(x, dtype=float)
    if x.size == 0:
        return {k: float("nan") for k, _ in PERCENTILES}
    return {k: float(np.percentile(x, q)) for k, q in PERCENTILES}


def in_range(values: np.ndarray, variable: str) -> np.ndarray:
    """Boolean mask: value inside the healthy range of ``variable`` (inclusive)."""
    lo, hi = HEALTHY_RANGE[variable]
    return (values >= lo) & (values <= hi)


def peak_grid(regimen, t_end_day: float, window_day: float = 1.0, step_day: float = 1.0 / 48.0) -> np.ndarray:
    """Output times for peak concentrations: every ``step_day`` over ``[t_d, t_d + window_day]`` after each IL-2
    dose ``t_d``, and over the day after the last sirolimus dose (its exact time included, for the trough).

    Returns an empty array for an untreated regimen.
    """
    ev = regimen.events(until_day=t_end_day)
    if len(ev) == 0:
        return np.zeros(0)
    offsets = np.arange(0.0, window_day + 1e-12, step_day)
    times = []
    il2 = ev.time_day[np.isin(ev.cmt, IL2_CMTS)]
    if il2.size:
        times.append((np.unique(il2)[:, None] + offsets[None, :]).ravel())
    rapa = ev.time_day[ev.cmt == 3]
    if rapa.size:
        times.append(rapa[-1] + offsets)
    if not times:  # no IL-2 or sirolimus dose (e.g. a prednisone taper only)
        return np.zeros(0)
    t = np.unique(np.concatenate(times))
    return t[t <= t_end_day]


def peak_exposure(t_peak: np.ndarray, c_il2: np.ndarray, c_rapa: np.ndarray, theta: np.ndarray,
                  last_rapa_dose_day: float | None, model=None) -> dict[str, np.ndarray]:
    """Per-patient peak IL-2, selectivity margin, sirolimus trough and peak.

    Parameters
    ----------
    t_peak : (n_t,) the grid of :func:`peak_grid`
    c_il2, c_rapa : (n_patients, n_t) concentrations on that grid (pM; ng/mL)
    theta : (n_patients, n_parameters) kernel parameters of the same patients (for ``il2_ec50_effector``), in
        the parameter order of model structure ``model``
    last_rapa_dose_day : time of the last sirolimus dose, or None
    model : model structure name (default: the default structure)

    Returns
    -------
    dict with (n_patients,) arrays: "il2_peak" (pM), "selectivity_margin" (1); and if sirolimus was given
    "rapa_trough", "rapa_peak" (ng/mL).
    """
    out = {}
    if c_il2.shape[1]:
        peak = c_il2.max(axis=1)
        out["il2_peak"] = peak
        out["selectivity_margin"] = peak / theta[:, parameter_index("il2_ec50_effector", model)]
    if last_rapa_dose_day is not None:
        k = int(np.argmin(np.abs(t_peak - last_rapa_dose_day)))
        window = (t_peak >= last_rapa_dose_day) & (t_peak <= last_rapa_dose_day + 1.0 + 1e-9)
        out["rapa_trough"] = c_rapa[:, k]
        out["rapa_peak"] = c_rapa[:, window].max(axis=1)
    return out


def summarise(name: str, time_day: np.ndarray, values: Mapping[str, np.ndarray], report_weeks: Sequence[float],
              ratio_target: float, n_patients: int, n_failed: int, exposure: Mapping[str, np.ndarray] | None = None,
              doses: Mapping[str, float] | None = None):
    """Tidy summary table of one scenario.

    Parameters
    ----------
    name : scenario name
    time_day : (n_times,) output grid (must contain 0 and each report week x 7)
    values : mapping variable -> (n_ok_patients, n_times) for "treg", "th17", "ratio", "auc_il2", "auc_rapa"
    report_weeks : weeks to report (> 0)
    ratio_target : Th17/Treg target for the time-below-target metric
    n_patients, n_failed : population size and number of failed integrations
    exposure : output of :func:`peak_exposure` (per-patient arrays over successful patients), optional
    doses : cumulative amounts, e.g. {"il2_cumulative_dose": MIU, "sirolimus_cumulative_dose": mg}

    Returns
    -------
    pandas.DataFrame with columns scenario, metric, week, statistic, value, unit
    """
    import pandas as pd
    t = np.asarray(time_day, dtype=float)
    rows: list[tuple] = []

    def add(metric, week, stats: Mapping[str, float], unit):
        for stat, val in stats.items():
            rows.append((name, metric, float(week), stat, float(val), unit))

    def idx(week):
        k = np.flatnonzero(np.isclose(t, week * 7.0, atol=1e-9))
        if k.size == 0:
            raise ValueError(f"week {week} (day {week * 7}) is not on the output grid")
        return int(k[0])

    end_week = float(t[-1] / 7.0)
    add("n_patients", end_week, {"count": n_patients}, "patients")
    add("n_failed", end_week, {"count": n_failed}, "patients")
    k0 = idx(0.0)
    for week in (0.0, *report_weeks):
        k = idx(week)
        for var in ("treg", "th17", "ratio"):
            x = values[var][:, k]
            add(var, week, percentile_stats(x), UNITS[var])
            if week > 0:
                x0 = values[var][:, k0]
                add(f"{var}_change", week, percentile_stats(x - x0), UNITS[var])
                add(f"{var}_change_pct", week, percentile_stats(100.0 * (x - x0) / x0), "%")
        n_ok = values["treg"].shape[0]
        frac = {}
        masks = {}
        for var in ("treg", "th17", "ratio"):
            masks[var] = in_range(values[var][:, k], var)
            frac[var] = masks[var].mean() if n_ok else float("nan")
            add(f"fraction_healthy_{var}", week, {"fraction": frac[var]}, "1")
        both = (masks["treg"] & masks["ratio"]).mean() if n_ok else float("nan")
        add("fraction_healthy", week, {"fraction": both}, "1")
        if week > 0:
            below = time_below(t[: k + 1], values["ratio"][:, : k + 1], ratio_target) / 7.0
            add("time_ratio_below_target", week, percentile_stats(below), "week")
            add("fraction_ratio_below_target", week,
                {"fraction": (values["ratio"][:, k] < ratio_target).mean() if n_ok else float("nan")}, "1")
            for var, unit in (("auc_il2", "pM*day"), ("auc_rapa", "ng/mL*day")):
                add(var, week, percentile_stats(values[var][:, k]), unit)
    rows.append((name, "ratio_target", end_week, "value", float(ratio_target), "1"))
    units = {"il2_peak": "pM", "selectivity_margin": "1", "rapa_trough": "ng/mL", "rapa_peak": "ng/mL"}
    for key, arr in (exposure or {}).items():
        add(key, end_week, percentile_stats(arr), units[key])
    for key, val in (doses or {}).items():
        add(key, end_week, {"value": val}, "MIU" if key.startswith("il2") else "mg")
    return pd.DataFrame(rows, columns=["scenario", "metric", "week", "statistic", "value", "unit"])


def lookup(summary, metric: str, week: float | None = None, statistic: str = "median") -> float:
    """One value from a tidy summary (NaN if absent). ``week=None`` takes the last week reported."""
    s = summary[(summary["metric"] == metric) & (summary["statistic"] == statistic)]
    if week is not None:
        s = s[np.isclose(s["week"].to_numpy(dtype=float), week)]
    if len(s) == 0:
        return float("nan")
    return float(s["value"].to_numpy()[-1])


def summary_index(summary) -> dict:
    """A tidy summary indexed by (metric, statistic) -> (weeks, values) arrays in row order, for
    :func:`lookup_index` (same answers as :func:`lookup`, without scanning the frame each time)."""
    index: dict = {}
    cols = [summary[c].to_numpy() for c in ("metric", "statistic", "week", "value")]
    for metric, stat, week, value in zip(*cols):
        index.setdefault((metric, stat), []).append((float(week), float(value)))
    return {k: (np.array([w for w, _ in v]), np.array([x for _, x in v])) for k, v in index.items()}


def lookup_index(index: Mapping, metric: str, week: float | None = None, statistic: str = "median") -> float:
    """:func:`lookup` on a :func:`summary_index`."""
    hit = index.get((metric, statistic))
    if hit is None:
        return float("nan")
    weeks, values = hit
    if week is not None:
        values = values[np.isclose(weeks, week)]
    return float(values[-1]) if values.size else float("nan")

