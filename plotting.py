"""Plots of simulation results. matplotlib is imported lazily; every function accepts ``ax=None`` or ``axes=None``
and returns the figure, never shows it.

Figures are plain :class:`matplotlib.figure.Figure` objects, not managed by pyplot (:func:`subplots`): tregpd only
saves them, and importing ``matplotlib.pyplot`` alone costs 0.3-0.5 s, a fifth of a small ``tregpd simulate``.
They need no closing (:func:`close` is harmless); ``fig.savefig`` renders them with Agg.

:class:`FigureWriter` draws figures in worker processes when asked (``tregpd scenarios run`` does for larger
runs): drawing is the largest cost of a small run (about 0.3 s per figure, against milliseconds of simulation).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: environment variable: number of figure worker processes (0 = draw in the calling process)
WORKERS_ENV = "TREGPD_FIGURE_WORKERS"

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


# ------------------------------------------------------------------------------------------ figure writer
@dataclass
class Curves:
    """Time grid and per-patient arrays (successful patients) of some variables: what the trajectory figures read
    of a :class:`~tregpd.model.SimulationResult` (``time_day``, ``get(variable)``); cheap to send to a worker."""

    time_day: np.ndarray
    values: dict

    def get(self, variable: str) -> np.ndarray:
        return self.values[variable]

    @classmethod
    def of(cls, result, variables=("treg", "th17", "ratio")) -> "Curves":
        return cls(np.asarray(result.time_day), {v: np.asarray(result.get(v)) for v in variables})


def figure_workers(n_figures: int, requested: int | None = None) -> int:
    """Worker processes for drawing ``n_figures`` figures: ``requested`` if given, else $TREGPD_FIGURE_WORKERS if
    set, else 2 when there are at least 6 figures (enough to repay starting the workers, about 1 s of imports
    each) and at least one CPU is idle (2 or more CPUs, 1-minute load average at most CPUs - 1: on a busy
    machine workers only add their start-up), else 0 (draw in this process)."""
    if requested is None:
        env = os.environ.get(WORKERS_ENV, "").strip()
        if env:
            try:
                requested = int(env)
            except ValueError:
                requested = None
    if requested is not None:
        return max(0, min(int(requested), max(n_figures, 0)))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return 2 if cpus >= 2 and n_figures >= 6 and load <= cpus - 1 else 0


def _worker_init(modules) -> None:
    import importlib
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C: the parent stops and cancels what is queued
    for name in ("matplotlib.figure", "matplotlib.backends.backend_agg", *modules):
        importlib.import_module(name)


def _noop() -> None:
    return None


def _render(make, args, kwargs, path, save):
    from tregpd.io import atomic_save_figure
    fig = make(*args, **kwargs)
    if fig is None:
        return None
    try:
        return atomic_save_figure(path, fig, **save)
    finally:
        close(fig)


class FigureWriter:
    """Draws figures and saves them (atomically), in this process or in worker processes.

    ``submit(make, path, *args, save=None, **kwargs)`` saves ``make(*args, **kwargs)`` (a module-level function
    returning a figure, or None for no file) to ``path`` with savefig options ``save``, and returns ``path``.
    Without workers the figure is drawn at once. With workers (a spawned process pool, started at construction
    so that their imports overlap with the caller's work) figures are drawn while the caller goes on;
    :meth:`close` (or leaving the ``with`` block) waits for all of them and raises the first error. Arguments
    must pickle: pass :class:`Curves` rather than results.

    Workers are spawned, so the program's main module must be importable without side effects (true of the
    ``tregpd`` command, ``python -m`` and pytest); library functions use none unless asked to.
    """

    def __init__(self, workers: int = 0, warm: tuple[str, ...] = ()):
        self._pool = None
        self._jobs: list = []
        if workers > 0:
            try:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor
                self._pool = ProcessPoolExecutor(max_workers=workers,
                                                 mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_worker_init, initargs=(tuple(warm),))
                for _ in range(workers):                  # start them now
                    self._jobs.append((self._pool.submit(_noop), None))
            except (OSError, ImportError, NotImplementedError, ValueError, RuntimeError):
                self._pool = None

    def submit(self, make, path, *args, save=None, **kwargs) -> Path:
        save = {} if save is None else dict(save)
        if self._pool is None:
            _render(make, args, kwargs, path, save)
        else:
            job = (make, args, kwargs, path, save)
            self._jobs.append((self._pool.submit(_render, *job), job))
        return Path(path)

    def close(self) -> None:
        """Wait for every figure; a figure whose worker died is drawn here instead; other errors propagate."""
        if self._pool is None:
            return
        from concurrent.futures.process import BrokenProcessPool
        try:
            for future, job in self._jobs:
                try:
                    future.result()
                except BrokenProcessPool:
                    if job is not None:
                        _render(*job)
        finally:
            self.abort()

    def abort(self) -> None:
        """Stop the workers; figures not yet drawn are dropped."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._jobs = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False
