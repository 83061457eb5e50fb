"""Plots of simulation results. matplotlib is imported lazily; every function accepts ``ax=None`` or ``axes=None``
and returns the figure, never shows it.

Figures are plain :class:`matplotlib.figure.Figure` objects, not managed by pyplot (:func:`subplots`): tregpd only
saves them, and importing ``matplotlib.pyplot`` alone costs 0.3-0.5 s, a fifth of a small ``tregpd simulate``.
They need no closing (:func:`close` is harmless); ``fig.savefig`` renders them with Agg.
"""
from __future__ import annotations

import numpy as np

_PANELS = (("treg", "Treg (cells/µL)"), ("th17", "Th17 (cells/µL)"), ("ratio", "Th17/Treg"))


def new_figure(**kwargs):
    """A Figure not managed by pyplot (``kwargs`` as for :class:`matplotlib.figure.Figure`)."""
    from matplotlib.figure import Figure
    return Figure(**kwargs)


def subplots(nrows: int = 1, ncols: int = 1, figsize=None, layout="constrained", **kwargs):
    """Like ``pyplot.subplots(..., constrained_layout=True)`` without pyplot: returns (figure, axes)."""
    fig = new_figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def colormap(name: str):
    import matplotlib
    return matplotlib.colormaps[name]


def close(fig) -> None:
    """Release a figure: needed only for pyplot-managed figures (those made here are freed with the object)."""
    import sys
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close(fig)


def plot_trajectory(result, variables=_PANELS, axes=None, label=None, color=None, band=(5, 95),
                    observed=None):
    """Treg, Th17 and ratio against time in weeks.

    Parameters
    ----------
    result : SimulationResult
        One patient: a line. Several: median line and a ``band`` percentile ribbon.
    axes : sequence of matplotlib Axes, optional (one per variable)
    observed : pandas.DataFrame, optional
        Tidy cohort data (week, observable, statistic, value) drawn as points where statistic == "median".
    Returns
    -------
    matplotlib.figure.Figure
    """
    if axes is None:
        fig, axes = subplots(1, len(variables), figsize=(4.2 * len(variables), 3.4))
        axes = np.atleast_1d(axes)
    else:
        axes = np.atleast_1d(axes)
        fig = axes[0].figure
    weeks = result.time_day / 7.0
    for ax, (var, ylabel) in zip(axes, variables):
        arr = result.get(var)
        if arr.shape[0] == 1:
            ax.plot(weeks, arr[0], color=color, label=label, lw=1.5)
        else:
            lo, med, hi = np.percentile(arr, [band[0], 50, band[1]], axis=0)
            line, = ax.plot(weeks, med, color=color, label=label, lw=1.5)
            ax.fill_between(weeks, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
        if observed is not None:
            obs = observed[(observed["observable"] == var) & (observed["statistic"] == "median")]
            if len(obs):
                ax.plot(obs["week"], obs["value"], "ko", ms=5, label="observed median")
        ax.set_xlabel("week")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if label is not None or observed is not None:
        axes[0].legend(frameon=False, fontsize=8)
    return fig


def plot_concentrations(result, axes=None, t_max_day=None):
    """IL-2 (pM) and sirolimus (ng/mL) concentrations of a single patient against time in days."""
    if axes is None:
        fig, axes = subplots(1, 2, figsize=(8.4, 3.2))
    else:
        fig = axes[0].figure
    t = result.time_day
    m = slice(None) if t_max_day is None else t <= t_max_day
    for ax, (var, ylabel) in zip(axes, (("c_il2", "IL-2 (pM)"), ("c_rapa", "sirolimus (ng/mL)"))):
        ax.plot(t[m], result.get(var)[0][m], lw=1.2)
        ax.set_xlabel("day")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    return fig
