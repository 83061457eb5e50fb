"""Fit figures: observed statistics against the model, and profile likelihoods. matplotlib is imported lazily;
functions accept ``axes=None``/``ax=None`` and return the figure, never show it."""
from __future__ import annotations

import numpy as np

_PANELS = {"treg": "Treg (cells/µL)", "th17": "Th17 (cells/µL)", "ratio": "Th17/Treg", "naive": "naive CD4 (cells/µL)"}


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def plot_fit(cohort, typical, population=None, *, seed=None, n_patients=500, band=(5, 95), axes=None):
    """Observed medians (IQR bars where given) against the fitted typical patient and the virtual population
    (median and ``band`` percentile ribbon), weeks 0 to the cohort's last week (at least 24).

    Parameters
    ----------
    cohort : Cohort
    typical : TypicalFit
    population : PopulationFit, optional (without it the population is drawn around the typical fit)
    n_patients : int, size of the plotted population (drawn with the population fit's seed)
    """
    plt = _plt()
    frame = cohort.frame
    observables = [o for o in ("treg", "th17", "ratio", "naive") if o in set(frame["observable"]) or
                   o in ("treg", "th17", "ratio")]
    if axes is None:
        fig, axes = plt.subplots(1, len(observables), figsize=(4.2 * len(observables), 3.6),
                                 constrained_layout=True)
    axes = np.atleast_1d(axes)
    fig = axes[0].figure
    prob = typical.problem
    t_end = 7.0 * max(24.0, cohort.max_week)
    t = np.arange(0.0, t_end + 1e-9, 0.5)
    typ = prob.simulate(typical.values, t_out=t, mode="typical")
    pop_source = population if population is not None else None
    pop_prob = pop_source.problem if pop_source is not None else None
    pop = None
    if pop_prob is not None:
        pop = pop_prob.simulate(pop_source.values, t_out=np.arange(0.0, t_end + 1e-9, 1.0), n_patients=n_patients)
    weeks = t / 7.0
    for ax, obs in zip(axes, observables):
        if pop is not None:
            arr = pop.get(obs)
            lo, med, hi = np.percentile(arr, [band[0], 50, band[1]], axis=0)
            pw = pop.time_day / 7.0
            ax.fill_between(pw, lo, hi, color="tab:blue", alpha=0.18, lw=0,
                            label=f"population {band[0]}-{band[1]}%")
            ax.plot(pw, med, color="tab:blue", lw=1.5, label="population median")
        ax.plot(weeks, typ.get(obs)[0], color="tab:orange", lw=1.0, label="typical patient")
        rows = frame[frame["observable"] == obs]
        med_rows = rows[rows["statistic"] == "median"]
        for r in med_rows.itertuples():
            q25 = cohort.value(r.week, obs, "q25")
            q75 = cohort.value(r.week, obs, "q75")
            if q25 is not None and q75 is not None:
                ax.errorbar([r.week], [r.value], yerr=[[r.value - q25], [q75 - r.value]], fmt="none",
                            ecolor="k", capsize=3)
        if len(med_rows):
            ax.plot(med_rows["week"], med_rows["value"], "ko", ms=6, label="observed median", zorder=5)
        for r in rows[rows["statistic"] == "median_fold_change"].itertuples():
            base = prob.parameters[f"{obs}_baseline"].value if f"{obs}_baseline" in prob.parameters.parameters \
                else typ.get(obs)[0, 0]
            centre = base * r.value
            s = r.rel_se if np.isfinite(r.rel_se) else 0.25
            ax.errorbar([r.week], [centre], yerr=[[centre - centre * np.exp(-2 * s)],
                                                  [centre * np.exp(2 * s) - centre]],
                        fmt="s", mfc="white", mec="k", ecolor="0.4", capsize=3, zorder=5,
                        label=f"soft: x{r.value:g} of week 0 (±2 rel_se)")
        ax.set_xlabel("week")
        ax.set_ylabel(_PANELS[obs])
        ax.set_xlim(-0.5, t_end / 7.0 + 0.8)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=7)
    fig.suptitle(f"Fit to {cohort.origin.split('/')[-1]} (regimen: {prob.regimen.name}, ASSUMED)", fontsize=9)
    return fig


def plot_profiles(profiles, axes=None):
    """Profile likelihood (delta chi-square) of each parameter with the 68 %/95 % thresholds and the prior."""
    from .optimise import DELTA_CHI2_68, DELTA_CHI2_95
    plt = _plt()
    names = list(profiles)
    if axes is None:
        ncol = min(3, max(1, len(names)))
        nrow = int(np.ceil(len(names) / ncol)) or 1
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.3 * nrow), constrained_layout=True,
                                 squeeze=False)
        axes = axes.ravel()
        for ax in axes[len(names):]:
            ax.set_visible(False)
    axes = np.atleast_1d(axes)
    fig = axes[0].figure
    for ax, name in zip(axes, names):
        prof = profiles[name]
        ax.plot(prof.values, prof.delta, "o-", ms=3, color="tab:blue")
        ax.axhline(DELTA_CHI2_95, color="tab:red", ls="--", lw=1, label="95 % (3.84)")
        ax.axhline(DELTA_CHI2_68, color="tab:orange", ls=":", lw=1, label="68 % (1.0)")
        ax.axvline(prof.prior, color="0.4", ls="-.", lw=1, label="prior")
        if prof.log_grid:
            ax.set_xscale("log")
        ax.set_ylim(bottom=-0.2, top=max(2 * DELTA_CHI2_95, min(float(np.max(prof.delta)), 20.0)) * 1.05)
        ax.set_xlabel(name)
        ax.set_ylabel("Δχ² (profile)")
        ax.set_title(prof.classification, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=7)
    return fig
