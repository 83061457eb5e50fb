"""Summary metrics of a simulated virtual population: pure numpy functions, and a tidy summary table.

Definitions (every statistic over the successfully integrated patients; failed patients are counted and
reported, never averaged in):

* **Treg, Th17, ratio at week w**: median and the 5th/95th percentiles across patients (the between-patient
  range, band ``between_patients_5_95``; the uncertainty of the median is another band, ``median_uncertainty_90``,
  from :mod:`tregpd.scenarios.uncertainty`, added by the runner as ``median_lower``/``median_upper``). The
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
* **Outcomes over time** (:func:`treatment_outcomes`), over each regimen's own treatment window ``[0, t_end]``
  (last dose + one interval): Treg peak and time to peak, ratio nadir and time to it, time averages, the value
  at ``t_end``, durability (weeks until back within :data:`RETURN_TOLERANCE` of the patient's baseline, ``inf``
  when not within follow-up, counted in ``*_not_back_within_followup``), and fractions in the healthy range /
  above the healthy Treg maximum at ``t_end``. Reported at week ``t_end / 7``.
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
#: durability: "back to baseline" means within this fraction of the patient's own baseline value
RETURN_TOLERANCE = 0.10
#: the two bands, by name (tables, CSV column ``band``, figure legends)
BAND_PATIENTS = "between_patients_5_95"
BAND_MEDIAN = "median_uncertainty_90"
BAND_LABELS = {
    BAND_PATIENTS: "between-patient range: 5-95 % of virtual patients (at the point estimate)",
    BAND_MEDIAN: "uncertainty of the median: 5-95 % of the population median over parameter draws",
}


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


def patient_metrics(time_day: np.ndarray, values: Mapping[str, np.ndarray], report_weeks: Sequence[float],
                    ratio_target: float, t_treat_end: float | None = None,
                    outcome_weeks: Sequence[float] = ()) -> list[tuple]:
    """The per-patient quantities a summary reports, before any statistic is taken.

    Returns
    -------
    list of ``(metric, week, kind, x, unit)``: ``kind`` "spread" (``x`` is an (n_patients,) array summarised
    by median and 5/95 %; may hold ``inf`` for "not within follow-up") or "fraction" (``x`` is an
    (n_patients,) boolean array summarised by its mean). ``week`` is the week the quantity refers to (the end
    of the treatment window for the outcomes over time).
    """
    t = np.asarray(time_day, dtype=float)
    out: list[tuple] = []

    def idx(week):
        k = np.flatnonzero(np.isclose(t, week * 7.0, atol=1e-9))
        if k.size == 0:
            raise ValueError(f"week {week} (day {week * 7}) is not on the output grid")
        return int(k[0])

    k0 = idx(0.0)
    for week in (0.0, *report_weeks):
        k = idx(week)
        for var in ("treg", "th17", "ratio"):
            x = values[var][:, k]
            out.append((var, week, "spread", x, UNITS[var]))
            if week > 0:
                x0 = values[var][:, k0]
                out.append((f"{var}_change", week, "spread", x - x0, UNITS[var]))
                out.append((f"{var}_change_pct", week, "spread", 100.0 * (x - x0) / x0, "%"))
        masks = {var: in_range(values[var][:, k], var) for var in ("treg", "th17", "ratio")}
        for var in ("treg", "th17", "ratio"):
            out.append((f"fraction_healthy_{var}", week, "fraction", masks[var], "1"))
        out.append(("fraction_healthy", week, "fraction", masks["treg"] & masks["ratio"], "1"))
        out.append(("fraction_treg_above_healthy", week, "fraction",
                    values["treg"][:, k] > HEALTHY_RANGE["treg"][1], "1"))
        if week > 0:
            below = time_below(t[: k + 1], values["ratio"][:, : k + 1], ratio_target) / 7.0
            out.append(("time_ratio_below_target", week, "spread", below, "week"))
            out.append(("fraction_ratio_below_target", week, "fraction", values["ratio"][:, k] < ratio_target, "1"))
            for var, unit in (("auc_il2", "pM*day"), ("auc_rapa", "ng/mL*day")):
                if var in values:
                    out.append((var, week, "spread", values[var][:, k], unit))
    if t_treat_end is not None:
        tw = float(t_treat_end) / 7.0
        units = {"time_to_peak": "week", "time_to_nadir": "week", "weeks_to_baseline": "week"}
        per = treatment_outcomes(t, values, float(t_treat_end), outcome_weeks)
        if t_treat_end > t[0] and "th17" in values:
            at = {v: value_at(t, values[v], float(t_treat_end)) for v in ("treg", "ratio")}
            out.append(("fraction_healthy_end_of_treatment", tw, "fraction",
                        in_range(at["treg"], "treg") & in_range(at["ratio"], "ratio"), "1"))
            out.append(("fraction_healthy_treg_end_of_treatment", tw, "fraction", in_range(at["treg"], "treg"), "1"))
            out.append(("fraction_healthy_ratio_end_of_treatment", tw, "fraction",
                        in_range(at["ratio"], "ratio"), "1"))
            out.append(("fraction_treg_above_healthy_end_of_treatment", tw, "fraction",
                        at["treg"] > HEALTHY_RANGE["treg"][1], "1"))
        for key, x in per.items():
            var = key.split("_", 1)[0]
            unit = next((u for suffix, u in units.items() if key.endswith(suffix)), UNITS[var])
            week = tw
            if "_at_week_" in key:
                week = float(key.rsplit("_", 1)[1])
                key = var
                if any(m == var and w == week for m, w, *_ in out):
                    continue                     # already reported at that week
            out.append((key, week, "spread", x, unit))
            if key.endswith("_weeks_to_baseline"):
                out.append((f"{var}_not_back_within_followup", tw, "fraction", ~np.isfinite(x), "1"))
    return out


def summarise(name: str, time_day: np.ndarray, values: Mapping[str, np.ndarray], report_weeks: Sequence[float],
              ratio_target: float, n_patients: int, n_failed: int, exposure: Mapping[str, np.ndarray] | None = None,
              doses: Mapping[str, float] | None = None, t_treat_end: float | None = None,
              outcome_weeks: Sequence[float] = (), median_bands: Mapping[tuple, tuple] | None = None,
              median_band_name: str = BAND_MEDIAN):
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
    t_treat_end : end of the regimen's treatment window, days (adds the outcomes over time of
        :func:`treatment_outcomes`, reported at week ``t_treat_end / 7``); None: not reported
    outcome_weeks : further weeks at which Treg and ratio are reported (linear between output points)
    median_bands : optional mapping ``(metric, week) -> (lower, upper)``: the uncertainty of the median
        (:func:`median_band_table`), added as statistics "median_lower"/"median_upper"
    median_band_name : the ``band`` label of those rows

    Returns
    -------
    pandas.DataFrame with columns scenario, metric, week, statistic, value, unit, band. ``band`` names the
    interval a row belongs to: "between_patients_5_95" for the p05/p95 rows (5-95 % of virtual patients),
    the median band's name for median_lower/median_upper, "" otherwise.
    """
    import pandas as pd
    t = np.asarray(time_day, dtype=float)
    rows: list[tuple] = []
    bands = {"p05": BAND_PATIENTS, "p95": BAND_PATIENTS}

    def add(metric, week, stats: Mapping[str, float], unit):
        for stat, val in stats.items():
            rows.append((name, metric, float(week), stat, float(val), unit, bands.get(stat, "")))

    end_week = float(t[-1] / 7.0)
    add("n_patients", end_week, {"count": n_patients}, "patients")
    add("n_failed", end_week, {"count": n_failed}, "patients")
    n_ok = values["treg"].shape[0]
    for metric, week, kind, x, unit in patient_metrics(t, values, report_weeks, ratio_target, t_treat_end,
                                                       outcome_weeks):
        if kind == "fraction":
            add(metric, week, {"fraction": x.mean() if n_ok else float("nan")}, unit)
        else:
            add(metric, week, percentile_stats_inf(x), unit)
        if median_bands is not None and (metric, float(week)) in median_bands:
            lo, hi = median_bands[(metric, float(week))]
            for stat, val in (("median_lower", lo), ("median_upper", hi)):
                rows.append((name, metric, float(week), stat, float(val), unit, median_band_name))
    rows.append((name, "ratio_target", end_week, "value", float(ratio_target), "1", ""))
    if t_treat_end is not None:
        rows.append((name, "treatment_end_week", end_week, "value", float(t_treat_end) / 7.0, "week", ""))
    units = {"il2_peak": "pM", "selectivity_margin": "1", "rapa_trough": "ng/mL", "rapa_peak": "ng/mL"}
    for key, arr in (exposure or {}).items():
        add(key, end_week, percentile_stats(arr), units[key])
    for key, val in (doses or {}).items():
        add(key, end_week, {"value": val}, "MIU" if key.startswith("il2") else "mg")
    return pd.DataFrame(rows, columns=["scenario", "metric", "week", "statistic", "value", "unit", "band"])


def population_statistics(time_day: np.ndarray, values: Mapping[str, np.ndarray], report_weeks: Sequence[float],
                          ratio_target: float, t_treat_end: float | None = None,
                          outcome_weeks: Sequence[float] = ()) -> dict:
    """The population statistic of every summary metric, ``(metric, week) -> value``: the median across
    patients for "spread" metrics, the fraction for "fraction" metrics (see :func:`patient_metrics`). One call
    per parameter draw gives the draws' spread of each statistic (:func:`median_band_table`)."""
    out = {}
    for metric, week, kind, x, _ in patient_metrics(time_day, values, report_weeks, ratio_target, t_treat_end,
                                                    outcome_weeks):
        out[(metric, float(week))] = float(np.mean(x)) if kind == "fraction" else percentile_stats_inf(x)["median"]
    return out


def median_band_table(draw_statistics: Sequence[Mapping[tuple, float]], extra: Sequence[Mapping[tuple, float]] = (),
                      q: tuple[float, float] = (5.0, 95.0)) -> dict:
    """Uncertainty of the population statistics: ``(metric, week) -> (lower, upper)``.

    ``lower``/``upper`` are the ``q`` percentiles across parameter draws (one mapping per draw, from
    :func:`population_statistics`), widened to include every mapping of ``extra`` (e.g. the statistics under
    each regimen hypothesis's refitted parameters). ``inf`` values (not back within follow-up) are kept as
    order statistics (:func:`percentile_stats_inf`).
    """
    keys = set().union(*[set(d) for d in draw_statistics]) if draw_statistics else set()
    out = {}
    for key in keys:
        x = np.array([d.get(key, np.nan) for d in draw_statistics], dtype=float)
        x = x[~np.isnan(x)]
        if x.size == 0:
            continue
        lo, hi = _order_percentiles(x, q)
        for d in extra:
            v = d.get(key, np.nan)
            if not np.isnan(v):
                lo, hi = min(lo, v), max(hi, v)
        out[key] = (lo, hi)
    return out


def shift_band(band: tuple[float, float], reference: float, point: float, fraction: bool = False):
    """Place a band computed on a small population onto the full one: ``point + (band - reference)``.

    With common random numbers the small population's statistic at the point estimate (``reference``)
    differs from the full population's (``point``) by sampling noise only; the parameter draws move the
    statistic around ``reference``, so the shift keeps that movement and removes the noise. Fractions are
    kept in [0, 1]. An infinite end or reference (not back within follow-up) is returned unshifted.
    """
    lo, hi = band
    if not (np.isfinite(reference) and np.isfinite(point) and np.isfinite(lo) and np.isfinite(hi)):
        return float(lo), float(hi)
    lo, hi = point + lo - reference, point + hi - reference
    if fraction:
        lo, hi = min(max(lo, 0.0), 1.0), min(max(hi, 0.0), 1.0)
    return float(lo), float(hi)


def _order_percentiles(x: np.ndarray, q: tuple[float, float]) -> tuple[float, float]:
    finite = np.isfinite(x)
    if finite.all():
        lo, hi = np.percentile(x, q)
        return float(lo), float(hi)
    big = np.max(np.abs(x[finite]), initial=0.0) * 4 + 1e12
    y = np.percentile(np.where(finite, x, np.sign(x) * big), q, method="inverted_cdf")
    return tuple(float(np.sign(v) * np.inf) if abs(v) > big / 2 else float(v) for v in y)


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



# ------------------------------------------------------------------------------------- outcomes over time


def _grid_2d(time_day, values):
    t = np.asarray(time_day, dtype=float)
    v = np.atleast_2d(np.asarray(values, dtype=float))
    if t.ndim != 1 or v.shape[-1] != t.size:
        raise ValueError(f"values of shape {v.shape} do not match {t.size} output times")
    return t, v


def value_at(time_day: np.ndarray, values: np.ndarray, t_query: float) -> np.ndarray:
    """Per-patient value at ``t_query`` (days), the trajectory linear between output points.

    Parameters
    ----------
    time_day : (n_times,) increasing, days
    values : (n_patients, n_times)
    t_query : day inside ``[time_day[0], time_day[-1]]``

    Returns
    -------
    (n_patients,)
    """
    t, v = _grid_2d(time_day, values)
    if not (t[0] - 1e-9 <= t_query <= t[-1] + 1e-9):
        raise ValueError(f"day {t_query:g} is outside the simulated period [{t[0]:g}, {t[-1]:g}]")
    return np.array([np.interp(t_query, t, row) for row in v])


def _window(t: np.ndarray, v: np.ndarray, t0: float, t1: float):
    """The trajectory restricted to ``[t0, t1]``, with interpolated end points added (piecewise linear)."""
    if not t1 > t0:
        raise ValueError(f"empty window [{t0:g}, {t1:g}] days")
    inner = (t > t0) & (t < t1)
    tw = np.concatenate([[t0], t[inner], [t1]])
    vw = np.concatenate([value_at(t, v, t0)[:, None], v[:, inner], value_at(t, v, t1)[:, None]], axis=1)
    return tw, vw


def peak_in_window(time_day: np.ndarray, values: np.ndarray, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-patient maximum over ``[t0, t1]`` and the day it is reached (first time, if repeated).

    The trajectory is piecewise linear between output points, so its maximum is at an output point or a window
    end. Returns ((n_patients,) peak value, (n_patients,) day of the peak).
    """
    t, v = _grid_2d(time_day, values)
    tw, vw = _window(t, v, t0, t1)
    k = np.argmax(vw, axis=1)
    return vw[np.arange(vw.shape[0]), k], tw[k]


def time_average(time_day: np.ndarray, values: np.ndarray, t0: float, t1: float) -> np.ndarray:
    """Per-patient mean over ``[t0, t1]``: the trapezoid integral of the piecewise-linear trajectory divided by
    ``t1 - t0`` (exact for a trajectory linear between output points). Returns (n_patients,)."""
    t, v = _grid_2d(time_day, values)
    tw, vw = _window(t, v, t0, t1)
    return (0.5 * (vw[:, 1:] + vw[:, :-1]) * np.diff(tw)[None, :]).sum(axis=1) / (t1 - t0)


def return_time(time_day: np.ndarray, values: np.ndarray, baseline: np.ndarray, t_stop: float,
                tolerance: float = RETURN_TOLERANCE) -> np.ndarray:
    """Durability after stopping: per patient, days from ``t_stop`` until the trajectory is first back within
    ``tolerance`` (relative) of the patient's baseline, ``|x(t) - x0| <= tolerance |x0|``.

    The trajectory is linear between output points, so the re-entry is located exactly on that line. 0 when
    already within the tolerance at ``t_stop``; ``inf`` when not back within the follow-up (``time_day[-1]``).

    Parameters
    ----------
    time_day : (n_times,) days
    values : (n_patients, n_times)
    baseline : (n_patients,) the baseline value of each patient
    t_stop : day treatment stopped (end of the treatment window)
    tolerance : relative distance counted as "back" (default 0.10)

    Returns
    -------
    (n_patients,) days after ``t_stop`` (``inf``: not within follow-up)
    """
    t, v = _grid_2d(time_day, values)
    x0 = np.asarray(baseline, dtype=float).reshape(-1)
    if x0.size != v.shape[0]:
        raise ValueError(f"{x0.size} baselines for {v.shape[0]} patients")
    if t_stop >= t[-1]:
        return np.full(v.shape[0], np.inf)
    tw, vw = _window(t, v, t_stop, t[-1])
    d = np.abs(vw - x0[:, None]) - tolerance * np.abs(x0)[:, None]     # <= 0: within the tolerance
    out = np.full(v.shape[0], np.inf)
    for i in range(v.shape[0]):
        hit = np.flatnonzero(d[i] <= 0)
        if hit.size == 0:
            continue
        k = int(hit[0])
        if k == 0:
            out[i] = 0.0
            continue
        # |x - x0| is piecewise linear between output points unless x crosses x0 inside the interval; the
        # distance crosses the tolerance where x crosses x0 +- tol |x0| (the side x comes from)
        a, b = vw[i, k - 1], vw[i, k]
        edge = x0[i] + np.sign(a - x0[i]) * tolerance * abs(x0[i])
        frac = (edge - a) / (b - a) if b != a else 1.0
        out[i] = tw[k - 1] + float(np.clip(frac, 0.0, 1.0)) * (tw[k] - tw[k - 1]) - t_stop
    return out


def percentile_stats_inf(x: np.ndarray) -> dict[str, float]:
    """:func:`percentile_stats` for data that may hold ``inf`` ("not within follow-up"). Finite data: as
    :func:`percentile_stats`. With infinite values: order statistics (numpy's "inverted_cdf", no interpolation
    between a finite value and ``inf``), ``inf`` where the statistic falls among the infinite values."""
    x = np.asarray(x, dtype=float)
    if x.size == 0:
        return {k: float("nan") for k, _ in PERCENTILES}
    finite = np.isfinite(x)
    if finite.all():
        return percentile_stats(x)
    big = np.nanmax(np.where(finite, np.abs(x), 0.0)) * 4 + 1e12
    y = np.where(finite, x, big)
    q = {k: float(np.percentile(y, p, method="inverted_cdf")) for k, p in PERCENTILES}
    return {k: (float("inf") if v > big / 2 else v) for k, v in q.items()}


def treatment_outcomes(time_day: np.ndarray, values: Mapping[str, np.ndarray], t_treat_end: float,
                       weeks: Sequence[float] = (), tolerance: float = RETURN_TOLERANCE) -> dict:
    """Per-patient outcomes over time of one regimen (pure numpy; the summary turns them into statistics).

    For ``var`` in "treg" and "ratio" (those present in ``values``), with the treatment window
    ``[0, t_treat_end]`` (each regimen's own: last dose + its interval, see
    :meth:`tregpd.scenarios.schema.Scenario.treatment_end_day`):

    * ``{var}_peak_on_treatment`` and ``{var}_time_to_peak`` (weeks): the maximum over the window and when
      (for the ratio the *minimum*, the best value, in ``ratio_nadir_on_treatment`` / ``ratio_time_to_nadir``);
    * ``{var}_mean_on_treatment``: time average over the window;
    * ``{var}_end_of_treatment``: the value at ``t_treat_end``;
    * ``{var}_weeks_to_baseline``: durability, weeks from ``t_treat_end`` until back within ``tolerance`` of
      baseline (:func:`return_time`; ``inf`` = not within follow-up); only when treatment stops before the
      end of the follow-up;
    * ``{var}_at_week_{w:g}``: the value at each of ``weeks``.

    Parameters
    ----------
    time_day : (n_times,) days, from 0
    values : mapping variable -> (n_patients, n_times)
    t_treat_end : day the treatment window ends (0 = untreated: no on-treatment outcome)
    weeks : weeks at which values are wanted
    tolerance : relative tolerance of "back to baseline"

    Returns
    -------
    dict name -> (n_patients,) array
    """
    out: dict[str, np.ndarray] = {}
    t_end = float(np.asarray(time_day)[-1])
    for var in ("treg", "ratio"):
        if var not in values:
            continue
        t, v = _grid_2d(time_day, values[var])
        if t_treat_end > t[0]:
            if var == "ratio":
                neg, when = peak_in_window(t, -v, t[0], t_treat_end)
                out["ratio_nadir_on_treatment"], out["ratio_time_to_nadir"] = -neg, when / 7.0
            else:
                out[f"{var}_peak_on_treatment"], when = peak_in_window(t, v, t[0], t_treat_end)
                out[f"{var}_time_to_peak"] = when / 7.0
            out[f"{var}_mean_on_treatment"] = time_average(t, v, t[0], t_treat_end)
            out[f"{var}_end_of_treatment"] = value_at(t, v, t_treat_end)
            if t_treat_end < t_end - 1e-9:
                out[f"{var}_weeks_to_baseline"] = return_time(t, v, v[:, 0], t_treat_end, tolerance) / 7.0
        for w in weeks:
            out[f"{var}_at_week_{w:g}"] = value_at(t, v, w * 7.0)
    return out
