"""Validation figures: per study, each observed number (error bar = the +-2 SE tolerance on the log scale) or
qualitative check window against the model's population median trajectory, between-patient 5-95 % band and
typical patient, on the row's mapping (fold change of the patient's own day 0, or absolute). matplotlib is
imported lazily; functions accept ``ax=None``/``axes=None`` and return the figure, never show it."""
from __future__ import annotations

import math

import numpy as np

_UNITS = {"treg": "Treg (cells/µL)", "th17": "Th17 (cells/µL)", "ratio": "Th17/Treg", "c_il2": "IL-2 (pM)",
          "auc_il2": "IL-2 AUC (pM·day)", "naive": "naive CD4 (cells/µL)", "c_rapa": "sirolimus (ng/mL)"}


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _trajectory(sim, observable: str, mapping: str, band=(5, 95)):
    typ, pop = sim.values(observable)
    if mapping != "absolute":
        typ = typ / typ[:, :1]
        pop = pop / pop[:, :1] if pop.shape[0] else pop
    if pop.shape[0]:
        lo, med, hi = np.percentile(pop, [band[0], 50, band[1]], axis=0)
    else:
        lo = med = hi = np.full(sim.time_day.size, np.nan)
    return typ[0], lo, med, hi


def plot_panel(sim, observable: str, mapping: str, numbers=None, qualitative=None, *, ax=None, band=(5, 95)):
    """One panel: model median, band and typical patient of ``observable`` on ``mapping``'s scale for one
    simulated regimen, with the observed numbers (rows of validation.csv) and qualitative windows
    (rows of qualitative.csv) of that regimen and observable."""
    plt = _plt()
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.6, 3.4), constrained_layout=True)
    t = sim.time_day
    typ, lo, med, hi = _trajectory(sim, observable, mapping, band)
    ax.fill_between(t, lo, hi, color="tab:blue", alpha=0.18, lw=0, label=f"between-patient {band[0]}-{band[1]} %")
    ax.plot(t, med, color="tab:blue", lw=1.4, label="model median")
    ax.plot(t, typ, color="tab:orange", lw=0.9, label="typical patient")
    if numbers is not None and len(numbers):
        for r in numbers.itertuples():
            x = r.day if r.time_summary == "point" else 0.5 * (r.day + r.day_end)
            xerr = None if r.time_summary == "point" else [[x - r.day], [r.day_end - x]]
            colour = "k" if r.in_tolerance else "tab:red"
            ax.errorbar([x], [r.observed], yerr=[[r.observed - r.tolerance_low], [r.tolerance_high - r.observed]],
                        xerr=xerr, fmt="o" if r.weight_class == "calibration" else "s",
                        mfc=colour if r.weight_class == "calibration" else "white", mec=colour, ecolor=colour,
                        capsize=3, zorder=5)
        ax.plot([], [], "ko", label="observed ±2 SE (calibration)")
        ax.plot([], [], "ks", mfc="white", label="observed ±2 SE (loose check)")
    if qualitative is not None and len(qualitative):
        for r in qualitative.itertuples():
            a, b = (r.day, r.day_end) if r.time_summary != "point" and math.isfinite(r.day_end) else \
                (r.day - 0.01 * t[-1], r.day + 0.01 * t[-1])
            ax.axvspan(a, b, color="tab:green" if r.pass_ else "tab:red", alpha=0.12, lw=0)
            ax.annotate(("pass: " if r.pass_ else "FAIL: ") + r.criterion, xy=(0.02, 0.97), xycoords="axes fraction",
                        va="top", fontsize=6, wrap=True)
    if mapping != "absolute":
        ax.axhline(1.0, color="0.5", lw=0.6, ls=":")
    ax.set_xlabel("day since first dose")
    ax.set_ylabel(("fold change of day 0: " if mapping != "absolute" else "") + _UNITS.get(observable, observable))
    ax.set_title(f"{sim.regimen_id}: {observable} ({mapping})", fontsize=8)
    ax.grid(alpha=0.3)
    return ax.figure


def plot_study(rows, outcome, simulations, *, axes=None, band=(5, 95)):
    """One figure for one study: a panel per (regimen, observable, mapping) among the study's calibration
    ``rows``; observed numbers from ``outcome.numbers``, check windows from ``outcome.qualitative``."""
    plt = _plt()
    keys = list(dict.fromkeys((r.regimen_id, r.observable, "absolute" if r.mapping == "absolute" else "fold")
                              for r in rows.itertuples()))
    if axes is None:
        ncol = min(3, len(keys))
        nrow = int(math.ceil(len(keys) / ncol))
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.4 * nrow), constrained_layout=True,
                                 squeeze=False)
    axes = np.atleast_1d(axes).ravel()
    fig = axes[0].figure
    ids = set(rows["id"])
    num = outcome.numbers[outcome.numbers["id"].isin(ids)] if len(outcome.numbers) else outcome.numbers
    qual = outcome.qualitative[outcome.qualitative["id"].isin(ids)] if len(outcome.qualitative) else \
        outcome.qualitative
    qual = qual.rename(columns={"pass": "pass_"})
    for ax, (rid, obs, scale) in zip(axes, keys):
        def sel(f):
            if not len(f):
                return f
            m = (f["regimen_id"] == rid) & (f["observable"] == obs)
            m &= (f["mapping"] == "absolute") if scale == "absolute" else (f["mapping"] != "absolute")
            return f[m]
        plot_panel(simulations[rid], obs, "absolute" if scale == "absolute" else "fold_change", sel(num), sel(qual),
                   ax=ax, band=band)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    axes[0].legend(frameon=False, fontsize=6, loc="lower right")
    fig.suptitle(f"{rows['study'].iloc[0]}: observed vs model (population median, between-patient band, "
                 "typical patient)", fontsize=9)
    return fig
