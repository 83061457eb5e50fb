"""Scenario figures. matplotlib is imported lazily, pyplot not at all (see :mod:`tregpd.plotting`); every function
accepts ``ax``/``axes=None`` and returns the figure, never shows it.

Two bands, each labelled as what it is: the **between-patient range** (5-95 % of virtual patients at the point
estimate, light ribbon / thin error bar) and the **uncertainty of the median** (5-95 % of the population median
over parameter draws, :mod:`tregpd.scenarios.uncertainty`; darker ribbon / thick error bar).

* :func:`plot_scenario`: one scenario's Treg, Th17 and ratio, median and both bands, healthy ranges shaded.
* :func:`plot_bands`: Treg and ratio of two or three scenarios, each with both bands (the README figure).
* :func:`plot_comparison`: several scenarios' medians (with bands) on shared axes, plus a bar chart of the ratio
  at the comparison week.
* :func:`plot_dose_response`: median Treg and ratio at the comparison week (5-95 % of patients) against IL-2
  dose per injection and sirolimus mg/day, from a comparison table.
* :func:`plot_dosefind`: the dose-finding grid (week-24 ratio against selectivity margin, feasible points).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .metrics import HEALTHY_RANGE

LABEL_PATIENTS = "between patients (5–95 %)"
LABEL_MEDIAN = "uncertainty of the median (90 %)"
_PANELS = (("treg", "Treg (cells/µL)"), ("th17", "Th17 (cells/µL)"), ("ratio", "Th17/Treg"))


def close(fig) -> None:
    """Release a figure's memory (figures are returned, never shown)."""
    from tregpd.plotting import close as _close
    _close(fig)


def _axes(axes, n, figsize):
    from tregpd.plotting import subplots
    if axes is None:
        fig, axes = subplots(1, n, figsize=figsize)
        return fig, np.atleast_1d(axes)
    axes = np.atleast_1d(axes)
    return axes[0].figure, axes


def _shade_healthy(ax, var):
    if var in HEALTHY_RANGE:
        lo, hi = HEALTHY_RANGE[var]
        ax.axhspan(lo, hi, color="tab:green", alpha=0.07, lw=0, label="healthy range (Niu)")


def plot_scenario(result, axes=None, title=None, ratio_target=None, band=(5, 95), color=None, label=None,
                  shade=True, median_band=None, patients_band=True):
    """Median of Treg, Th17 and Th17/Treg against weeks with the between-patient ``band`` percentile ribbon
    and, when given, the uncertainty of the median.

    Parameters
    ----------
    result : SimulationResult (one or more patients; failed patients excluded)
    axes : three matplotlib Axes, optional
    ratio_target : draw this Th17/Treg target as a dashed line
    median_band : mapping variable -> (lower, upper) arrays on ``result.time_day``
        (:attr:`tregpd.scenarios.uncertainty.MedianBand.trajectories`), optional
    patients_band : draw the between-patient ribbon
    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, axes = _axes(axes, 3, (12.6, 3.5))
    weeks = result.time_day / 7.0
    for ax, (var, ylabel) in zip(axes, _PANELS):
        arr = result.get(var)
        if shade:
            _shade_healthy(ax, var)
        if arr.shape[0] == 1:
            ax.plot(weeks, arr[0], color=color, lw=1.5, label=label)
        else:
            lo, med, hi = np.percentile(arr, [band[0], 50, band[1]], axis=0)
            line, = ax.plot(weeks, med, color=color, lw=1.5, label=label or "median")
            if patients_band:
                ax.fill_between(weeks, lo, hi, color=line.get_color(), alpha=0.15, lw=0,
                                label=None if label else f"between patients ({band[0]}–{band[1]} %)")
        if median_band is not None and var in median_band:
            mlo, mhi = median_band[var]
            ax.fill_between(weeks, mlo, mhi, color=color or "tab:blue", alpha=0.45, lw=0,
                            label=None if label else LABEL_MEDIAN)
        if var == "ratio" and ratio_target is not None:
            ax.axhline(ratio_target, color="k", ls="--", lw=0.8, label=f"target {ratio_target:g}")
        ax.set_xlabel("week")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[-1].legend(frameon=False, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _week24(o):
    """The comparison week of an outcome (its scenario's ``compare_week``; default 24 or the end)."""
    w = getattr(o.scenario, "compare_week", None)
    if callable(getattr(o.scenario, "comparison_week", None)):
        return o.scenario.comparison_week()
    return float(w) if w is not None else (24.0 if o.scenario.weeks >= 24 else float(o.scenario.weeks))


def _end_of_treatment(o, var):
    """(metric, week) of ``var`` at the end of the outcome's own treatment window; untreated: the comparison
    week."""
    t_end = o.value("treatment_end_week", None, "value")
    if np.isfinite(t_end) and t_end > 0:
        return f"{var}_end_of_treatment", float(t_end)
    return var, _week24(o)


def plot_bands(outcomes, axes=None, variables=(("treg", "Treg (cells/µL)"), ("ratio", "Th17/Treg"))):
    """Treg and ratio of a few scenarios (2-3 read well), each with both bands: the between-patient range
    (5-95 % of virtual patients, light) and the uncertainty of the median (5-95 % over parameter draws, dark).

    Parameters
    ----------
    outcomes : ScenarioOutcome or :class:`OutcomeView` objects (``result`` and ``band``/``median_band``)
    axes : one Axes per variable, optional
    """
    from tregpd.plotting import colormap
    outcomes = list(outcomes)
    fig, axes = _axes(axes, len(variables), (5.2 * len(variables), 3.9))
    cmap = colormap("tab10")
    palette = ("tab:blue", "tab:orange", "tab:purple", "tab:red", "tab:brown")   # not the healthy range's green
    for k, o in enumerate(outcomes):
        color = palette[k] if k < len(palette) else cmap(k % 10)
        res = o.result
        weeks = res.time_day / 7.0
        mb = getattr(o, "median_band", None)
        if mb is None and getattr(o, "band", None) is not None:
            mb = o.band.trajectories
        for ax, (var, ylabel) in zip(axes, variables):
            lo, med, hi = np.percentile(res.get(var), [5, 50, 95], axis=0)
            ax.fill_between(weeks, lo, hi, color=color, alpha=0.12, lw=0)
            if mb is not None and var in mb:
                ax.fill_between(weeks, mb[var][0], mb[var][1], color=color, alpha=0.45, lw=0)
            ax.plot(weeks, med, color=color, lw=1.4, label=o.scenario.name)
    from matplotlib.patches import Patch
    for ax, (var, ylabel) in zip(axes, variables):
        _shade_healthy(ax, var)
        ax.set_xlabel("week")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    handles += [Patch(color="grey", alpha=0.15, label=LABEL_PATIENTS + ", at the point estimate"),
                Patch(color="grey", alpha=0.5, label=LABEL_MEDIAN + ", parameter draws")]
    axes[-1].legend(handles=handles, frameon=False, fontsize=7)
    return fig


def plot_comparison(outcomes, axes=None, max_trajectories: int = 8, max_bands: int = 4):
    """Compare scenarios.

    With at most ``max_trajectories`` scenarios: median trajectories of Treg, Th17 and ratio (with both bands,
    between patients and uncertainty of the median, when there are at most ``max_bands``),
    and a bar chart of the median ratio at the end of each regimen's own treatment window (untreated: the
    comparison week) with both bands (thin bar: between patients 5-95 %; thick: uncertainty of the median).
    With more: bar charts of
    Treg and ratio at the end of treatment only (one bar per scenario, coloured by study question), since dozens of
    overlaid trajectories cannot be read; use per-question figures for trajectories.

    Parameters
    ----------
    outcomes : sequence of ScenarioOutcome
    axes : Axes to draw into (4 for the trajectory layout, 2 for the bar layout), optional
    """
    from tregpd.plotting import colormap, new_figure, subplots
    outcomes = list(outcomes)
    few = len(outcomes) <= max_trajectories
    if axes is None:
        if few:
            fig = new_figure(figsize=(14, 7.5), layout="constrained")
            gs = fig.add_gridspec(2, 3, height_ratios=[1, 0.9])
            axes = [fig.add_subplot(gs[0, i]) for i in range(3)] + [fig.add_subplot(gs[1, :])]
        else:
            fig, axes = subplots(2, 1, figsize=(max(10, 0.42 * len(outcomes) + 3), 8.5), sharex=True)
            axes = list(axes)
    else:
        axes = list(np.atleast_1d(axes))
        fig = axes[0].figure
    if few:
        cmap = colormap("tab10")
        colors = [cmap(i % 10) for i in range(len(outcomes))]
        for o, color in zip(outcomes, colors):
            res = o.result
            weeks = res.time_day / 7.0
            mb = getattr(o, "median_band", None)
            for ax, (var, ylabel) in zip(axes[:3], _PANELS):
                lo, med, hi = np.percentile(res.get(var), [5, 50, 95], axis=0)
                ax.plot(weeks, med, color=color, lw=1.3, label=o.scenario.name)
                if len(outcomes) <= max_bands:
                    ax.fill_between(weeks, lo, hi, color=color, alpha=0.10, lw=0)
                    if mb is not None and var in mb:
                        ax.fill_between(weeks, mb[var][0], mb[var][1], color=color, alpha=0.35, lw=0)
        for ax, (var, ylabel) in zip(axes[:3], _PANELS):
            _shade_healthy(ax, var)
            ax.set_xlabel("week")
            ax.set_ylabel(f"{ylabel}\nmedian" + (", bands: light = between patients 5–95 %,\ndark = "
                                                  "uncertainty of the median" if len(outcomes) <= max_bands else ""))
            ax.grid(alpha=0.3)
        axes[2].legend(frameon=False, fontsize=7)
        bar_axes = [(axes[3], "ratio", "Th17/Treg")]
    else:
        from .schema import QUESTIONS
        qcmap = colormap("tab10")
        qs = list(QUESTIONS)
        colors = [qcmap(qs.index(o.scenario.question) % 10) if o.scenario.question in qs else "grey"
                  for o in outcomes]
        bar_axes = [(axes[0], "treg", "Treg (cells/µL)"), (axes[1], "ratio", "Th17/Treg")]
    names = [o.scenario.name + f" (wk{_end_of_treatment(o, 'ratio')[1]:.3g})" for o in outcomes]
    x = np.arange(len(outcomes))
    for ax, var, ylabel in bar_axes:
        at = [_end_of_treatment(o, var) for o in outcomes]
        med = np.array([o.value(m, w, "median") for o, (m, w) in zip(outcomes, at)])
        lo = np.array([o.value(m, w, "p05") for o, (m, w) in zip(outcomes, at)])
        hi = np.array([o.value(m, w, "p95") for o, (m, w) in zip(outcomes, at)])
        mlo = np.array([o.value(m, w, "median_lower") for o, (m, w) in zip(outcomes, at)])
        mhi = np.array([o.value(m, w, "median_upper") for o, (m, w) in zip(outcomes, at)])
        _shade_healthy(ax, var)
        ax.bar(x, med, color=colors, alpha=0.85)
        ax.errorbar(x, med, yerr=[med - lo, hi - med], fmt="none", ecolor="k", lw=0.8, capsize=2,
                    label=LABEL_PATIENTS)
        if np.isfinite(mlo).any():
            ok = np.isfinite(mlo)
            ax.errorbar(x[ok], med[ok], yerr=[np.maximum(med - mlo, 0)[ok], np.maximum(mhi - med, 0)[ok]],
                        fmt="none", ecolor="tab:red", lw=3.0, capsize=0, label=LABEL_MEDIAN)
        if var == "ratio" and outcomes:
            target = outcomes[0].value("ratio_target", None, "value")
            if np.isfinite(target):
                ax.axhline(target, color="k", ls="--", lw=0.8, label=f"target {target:g}")
        ax.set_ylabel(f"{ylabel} at the end of treatment\nmedian, thin bar: between patients 5–95 %,\n"
                      "thick: uncertainty of the median", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    if not few:
        from matplotlib.patches import Patch
        present = [q for q in QUESTIONS if any(o.scenario.question == q for o in outcomes)]
        handles = [Patch(color=qcmap(qs.index(q) % 10), label=q) for q in present]
        axes[0].legend(handles=handles, frameon=False, fontsize=7, ncol=4, title="study question",
                       title_fontsize=7)
        axes[1].legend(frameon=False, fontsize=7)
        axes[0].tick_params(labelbottom=False)
    else:
        axes[3].legend(frameon=False, fontsize=7)
    return fig


def plot_dose_response(table, axes=None):
    """Median Treg and Th17/Treg at the comparison week (ribbon: between patients, 5-95 %) against IL-2 dose per injection (scenarios tagged
    ``il2_dose``) and against sirolimus mg/day (tagged ``sirolimus_dose``); the scenario tagged ``reference``
    is a point of both series.

    Parameters
    ----------
    table : comparison DataFrame of :func:`tregpd.scenarios.runner.comparison_table`
    Returns
    -------
    Figure, or None when the table holds no dose series.
    """
    series = dose_response_series(table)
    if not series:
        return None
    member = lambda q: (table["question"] == q) | (table["question"] == "reference")
    from tregpd.plotting import subplots
    if axes is None:
        fig, axes = subplots(len(series), 2, figsize=(9, 3.4 * len(series)), squeeze=False)
    else:
        axes = np.atleast_2d(axes)
        fig = axes[0, 0].figure
    for row, (q, col, xlabel) in enumerate(series):
        sub = table[member(q)].sort_values(col)
        x = sub[col].to_numpy(dtype=float)
        for ax, var, ylabel in ((axes[row, 0], "treg", "Treg (cells/µL)"), (axes[row, 1], "ratio", "Th17/Treg")):
            med = sub[f"{var}_median_cmp"].to_numpy(dtype=float)
            lo = sub[f"{var}_p05_cmp"].to_numpy(dtype=float)
            hi = sub[f"{var}_p95_cmp"].to_numpy(dtype=float)
            _shade_healthy(ax, var)
            ax.plot(x, med, "o-", color="tab:blue", label="median")
            ax.fill_between(x, lo, hi, color="tab:blue", alpha=0.15, lw=0, label=LABEL_PATIENTS)
            if f"{var}_median_cmp_lower" in sub and np.isfinite(sub[f"{var}_median_cmp_lower"]).any():
                ax.fill_between(x, sub[f"{var}_median_cmp_lower"].to_numpy(dtype=float),
                                sub[f"{var}_median_cmp_upper"].to_numpy(dtype=float), color="tab:blue",
                                alpha=0.4, lw=0, label=LABEL_MEDIAN)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{ylabel} at the comparison week")
            ax.grid(alpha=0.3)
        axes[row, 1].legend(frameon=False, fontsize=7)
    return fig


def dose_response_series(table) -> list:
    """The dose series of a comparison table that :func:`plot_dose_response` draws (question, column, label);
    empty = no figure."""
    series = [("il2_dose", "il2_dose_miu", "IL-2 dose per injection (MIU)"),
              ("sirolimus_dose", "sirolimus_mg_per_day", "sirolimus (mg/day, mean)")]
    # the reference regimen is a point of both series (0.5 MIU; 0.5 mg every other day)
    member = lambda q: (table["question"] == q) | (table["question"] == "reference")
    return [s for s in series if (table["question"] == s[0]).any() and member(s[0]).sum() >= 2]


def plot_dosefind(grid, best=None, reference=None, max_selectivity=None, ax=None):
    """Dose-finding grid: week-24 median ratio against the selectivity margin, feasible points filled.

    Parameters
    ----------
    grid : DataFrame from :func:`tregpd.scenarios.dosefind.dose_find` (columns selectivity_margin_p95,
        ratio_median_cmp, feasible, dose_miu)
    best, reference : dict rows to highlight
    """
    from tregpd.plotting import subplots
    if ax is None:
        fig, ax = subplots(figsize=(6.4, 4.4))
    else:
        fig = ax.figure
    feas = grid["feasible"].to_numpy(dtype=bool)
    sc = ax.scatter(grid["selectivity_margin_p95"][feas], grid["ratio_median_cmp"][feas],
                    c=grid["dose_miu"][feas], cmap="viridis", s=18, label="feasible")
    ax.scatter(grid["selectivity_margin_p95"][~feas], grid["ratio_median_cmp"][~feas], facecolors="none",
               edgecolors="grey", s=18, label="violates a limit")
    fig.colorbar(sc, ax=ax, label="IL-2 dose (MIU)")
    if max_selectivity is not None:
        ax.axvline(max_selectivity, color="k", ls="--", lw=0.8, label=f"limit {max_selectivity:g}")
    if reference is not None:
        ax.plot(reference["selectivity_margin_p95"], reference["ratio_median_cmp"], "s", color="tab:red",
                ms=8, label="reference")
    if best is not None:
        ax.plot(best["selectivity_margin_p95"], best["ratio_median_cmp"], "*", color="tab:orange", ms=14,
                label="best feasible")
    ax.set_xscale("log")
    ax.set_xlabel("peak IL-2 / EC50_E (95th percentile)")
    ax.set_ylabel("Th17/Treg at week 24 (median)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=7)
    return fig


# ------------------------------------------------------------------------- for drawing in worker processes
@dataclass
class ScenarioTag:
    """The scenario fields the comparison figures read."""

    name: str
    question: str
    weeks: float
    compare_week: float | None = None

    def comparison_week(self) -> float:
        w = self.compare_week if self.compare_week is not None else 24.0
        return float(min(w, self.weeks))


@dataclass
class OutcomeView:
    """What the comparison figures read of a :class:`~tregpd.scenarios.runner.ScenarioOutcome` (scenario tag,
    Treg/Th17/ratio trajectories, indexed summary); cheap to send to a figure worker."""

    scenario: ScenarioTag
    result: object
    index: dict
    median_band: dict | None = None

    def value(self, metric: str, week: float | None = None, statistic: str = "median") -> float:
        from .metrics import lookup_index
        return lookup_index(self.index, metric, week, statistic)

    @classmethod
    def of(cls, outcome) -> "OutcomeView":
        from tregpd.plotting import Curves
        sc = outcome.scenario
        band = getattr(outcome, "band", None)
        return cls(ScenarioTag(sc.name, sc.question, float(sc.weeks), sc.compare_week), Curves.of(outcome.result),
                   outcome._index(), None if band is None else band.trajectories)


def comparison_figure(outcomes, title: str | None = None, **kwargs):
    """:func:`plot_comparison` with an optional figure title."""
    fig = plot_comparison(outcomes, **kwargs)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
