"""Figure of a sirolimus trough titration (matplotlib imported lazily; the figure is returned, never shown).

:func:`plot_titration` draws, from the tidy tables of :class:`tregpd.scenarios.tdm.Titration`
(``summary_frame`` and ``final_dose_frame``): the true trough (median and 5-95 % of patients) at each sampling
day against the target window, the fraction of measured and true troughs in the window, the median dose with its
5-95 % range, and the distribution of the final dose.
"""
from __future__ import annotations

import numpy as np


def plot_titration(summary, final_doses, window_ng_ml, title: str = "", axes=None):
    """Four panels of a titration.

    Parameters
    ----------
    summary : pandas.DataFrame
        :meth:`Titration.summary_frame` (day, quantity, statistic, value, unit; one scenario).
    final_doses : pandas.DataFrame
        :meth:`Titration.final_dose_frame` (dose_mg, patients, fraction).
    window_ng_ml : (low, high)
        Target trough window, ng/mL, shaded on the trough panel.
    title : str
    axes : sequence of 4 matplotlib Axes, optional (default: a new 1 x 4 figure)

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    if axes is None:
        fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    axes = list(np.ravel(axes))
    fig = axes[0].figure
    wide = summary.pivot_table(index="day", columns=["quantity", "statistic"], values="value").sort_index()
    day = wide.index.to_numpy(dtype=float)

    ax = axes[0]
    lo, hi = window_ng_ml
    ax.axhspan(lo, hi, color="tab:green", alpha=0.12, label=f"window {lo:g}-{hi:g} ng/mL")
    ax.fill_between(day, wide[("trough", "p05")], wide[("trough", "p95")], color="tab:blue", alpha=0.25,
                    label="5-95 % of patients")
    ax.plot(day, wide[("trough", "median")], "o-", color="tab:blue", ms=3, label="median (true)")
    ax.set(xlabel="sampling day", ylabel="trough before the dose, ng/mL", title="sirolimus trough")
    ax.legend(fontsize=7)

    ax = axes[1]
    ax.plot(day, 100 * wide[("in_window", "fraction")], "o-", ms=3, label="measured")
    ax.plot(day, 100 * wide[("in_window_true", "fraction")], "s--", ms=3, label="true")
    ax.set(xlabel="sampling day", ylabel="% of patients", title="troughs in the window", ylim=(0, 102))
    ax.legend(fontsize=7)

    ax = axes[2]
    ax.fill_between(day, wide[("dose_after", "p05")], wide[("dose_after", "p95")], step="post", color="tab:orange",
                    alpha=0.25, label="5-95 % of patients")
    ax.step(day, wide[("dose_after", "median")], where="post", color="tab:orange", label="median")
    ax.set(xlabel="sampling day", ylabel="dose after the sample, mg", title="titrated dose")
    ax.legend(fontsize=7)

    ax = axes[3]
    d = final_doses.sort_values("dose_mg")
    width = float(np.min(np.diff(d["dose_mg"]))) * 0.8 if len(d) > 1 else 0.4
    ax.bar(d["dose_mg"], 100 * d["fraction"], width=width, color="tab:gray")
    ax.set(xlabel="final dose, mg", ylabel="% of patients", title="final dose")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
