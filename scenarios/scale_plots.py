"""Plots for sensitivity analyses and virtual trials (matplotlib imported lazily; figures returned, never shown).

* :func:`plot_sensitivity_panel` - ranked horizontal bars for one output (Sobol S1/ST with confidence bars,
  Morris mu* with sigma, or local elasticities).
* :func:`plot_sensitivity` - one panel per output.
* :func:`plot_trial_summary` - median and 5-95 % band over the output weeks, one line per regimen.
"""
from __future__ import annotations

import numpy as np

from tregpd.errors import TregpdError


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def plot_sensitivity_panel(table, output: str, top: int = 12, ax=None):
    """Bars of the ``top`` most influential parameters for ``output`` (a :class:`SensitivityResult` table).

    Returns the figure.
    """
    plt = _plt()
    df = table[table["output"] == output].sort_values("rank").head(top)
    if df.empty:
        raise TregpdError(f"no sensitivity results for output {output!r}; have {sorted(set(table['output']))}")
    method = df["method"].iloc[0]
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 0.32 * len(df) + 1.2))
    fig = ax.figure
    y = np.arange(len(df))[::-1]
    names = list(df["parameter"])
    if method == "sobol":
        ax.barh(y + 0.2, df["ST"], height=0.4, xerr=df["ST_conf"], label="total (ST)", color="tab:blue",
                error_kw={"lw": 0.8})
        ax.barh(y - 0.2, df["S1"], height=0.4, xerr=df["S1_conf"], label="first order (S1)", color="tab:orange",
                error_kw={"lw": 0.8})
        ax.set_xlabel("Sobol index" + (" of ln(output)" if df["transform"].iloc[0] == "ln" else ""))
        ax.set_xlim(left=min(0.0, float(df["S1"].min()) - 0.02))
        ax.legend(loc="lower right", fontsize=8)
    elif method == "morris":
        ax.barh(y + 0.2, df["mu_star"], height=0.4, xerr=df["mu_star_conf"], label="mu*", color="tab:blue",
                error_kw={"lw": 0.8})
        ax.barh(y - 0.2, df["sigma"], height=0.4, label="sigma", color="tab:gray")
        ax.set_xlabel("Morris elementary effect" + (" on ln(output)" if df["transform"].iloc[0] == "ln" else ""))
        ax.legend(loc="lower right", fontsize=8)
    else:
        el = df["elasticity"].to_numpy()
        ax.barh(y, el, height=0.6, color=np.where(el >= 0, "tab:red", "tab:blue"))
        ax.axvline(0, color="k", lw=0.6)
        ax.set_xlabel("d ln(output) / d ln(parameter)")
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_title(f"{output} ({method})", fontsize=10)
    return fig


def plot_sensitivity(table, outputs=None, top: int = 12, axes=None):
    """One :func:`plot_sensitivity_panel` per output (default: every output in ``table``). Returns the figure."""
    plt = _plt()
    outputs = list(dict.fromkeys(table["output"])) if outputs is None else list(outputs)
    if axes is None:
        ncol = min(2, len(outputs))
        nrow = -(-len(outputs) // ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(6.5 * ncol, (0.3 * top + 1.4) * nrow), squeeze=False)
        axes = axes.ravel()
        for ax in axes[len(outputs):]:
            ax.set_visible(False)
    else:
        axes = np.atleast_1d(axes).ravel()
        if len(axes) < len(outputs):
            raise TregpdError(f"need {len(outputs)} axes, got {len(axes)}")
    for ax, output in zip(axes, outputs):
        plot_sensitivity_panel(table, output, top=top, ax=ax)
    fig = axes[0].figure
    fig.tight_layout()
    return fig


def plot_trial_summary(summary, variables=("treg", "th17", "ratio"), axes=None):
    """Median (line) and 5-95 % range (band) against week for each regimen of a trial summary. Returns the
    figure."""
    plt = _plt()
    variables = list(variables)
    if axes is None:
        fig, axes = plt.subplots(1, len(variables), figsize=(4.2 * len(variables), 3.4), squeeze=False)
        axes = axes.ravel()
    else:
        axes = np.atleast_1d(axes).ravel()
    for ax, var in zip(axes, variables):
        d = summary[summary["variable"] == var]
        if d.empty:
            raise TregpdError(f"trial summary has no variable {var!r}")
        for reg, g in d.groupby("regimen", sort=False):
            w = g.pivot_table(index="week", columns="statistic", values="value")
            line, = ax.plot(w.index, w["median"], marker="o", label=reg)
            ax.fill_between(w.index, w["q05"], w["q95"], color=line.get_color(), alpha=0.2)
        ax.set_xlabel("week")
        unit = d.loc[d["statistic"] == "median", "unit"].iloc[0]
        ax.set_ylabel(f"{var} ({unit})")
        if var == "ratio":
            ax.set_yscale("log")
        ax.set_title(var)
    axes[0].legend(fontsize=8)
    fig = axes[0].figure
    fig.tight_layout()
    return fig
