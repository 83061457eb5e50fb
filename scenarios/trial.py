"""Virtual trials at scale: millions of patients in chunks, reduced to summaries in O(chunk) memory.

A trial draws ``n_patients`` virtual patients (log-normal inter-individual variability, as
:func:`tregpd.model.population.sample_population`), simulates each on one or more regimens with the numba
population kernel, and keeps only summaries of the Treg, Th17, Th17/Treg ratio and naive counts at the
output weeks (default 0, 6, 12, 24). No trajectory is held beyond the chunk being reduced.

Reproducibility whatever the chunking or backend
------------------------------------------------
* Patients come in fixed **blocks** of ``block`` patients (default 1024). The standard-normal scores of block
  ``b`` are ``numpy.random.default_rng([seed, b]).standard_normal((block, k))`` (k = number of IIV
  parameters, in the model structure's parameter order), so patient ``i`` is the same patient
  whatever chunk computes it. The population is a function of ``(seed, block, iiv, parameters)`` only.
  (It is *not* the population of ``sample_population(seed)``, which draws all patients from one stream.)
* Chunks are whole blocks (the chunk size is rounded up to a multiple of ``block``).
* Exact integer quantities (counts, histogram bins, fractions) are summed, which is order-independent.
  Means and variances are computed per block with numpy and merged with Chan's parallel update in
  **block-index order**, so the floating-point operations are the same for any chunk size, backend or
  number of workers: the summaries are bit-identical.
* The serial and parallel kernels give identical numbers per patient (the model's contract), so Dask
  workers (serial kernel) and the in-process run (prange kernel) agree.

Quantiles
---------
Each observable at each output week is counted into a fixed histogram of :data:`HIST_BINS` log-spaced bins
on [:data:`HIST_LOW`, :data:`HIST_HIGH`] (plus an under- and an overflow bin bounded by the exact minimum and
maximum). A reported quantile ``q`` lies in the same bin as the exact inverted-CDF sample quantile
(``numpy.quantile(x, q, method="inverted_cdf")``, the ``ceil(q n)``-th smallest value), so its relative error
is below :data:`QUANTILE_RELATIVE_ERROR` (= 10**(9/4096) - 1 = 0.51 %) for values inside the histogram range.

Healthy ranges are the Shanxi 95 % reference ranges (Niu et al., literature.md a1/d): Treg 13.47-64.58,
Th17 1.10-19.54 cells/uL, Th17/Treg 0.04-0.76.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from tregpd.model import kernels as K
from tregpd.model.dosing import EventTable, Regimen
from tregpd.errors import TregpdError
from tregpd.model.parameters import ParameterSet, parse_parameters
from tregpd.model.structures import DEFAULT_MODEL, get_model
from tregpd.model.population import DEFAULT_IIV, theta_from_z
from tregpd.model.simulate import SolverOptions, simulate_population

from .backends import Backend, InProcessBackend


class TrialError(TregpdError):
    """Bad trial settings."""


#: Summarised observables and their units.
OBSERVABLES: dict[str, str] = {"treg": "cells/uL", "th17": "cells/uL", "ratio": "1", "naive": "cells/uL"}
#: Shanxi healthy 95 % reference ranges (Niu et al.; literature.md a1 and d), same units as OBSERVABLES.
HEALTHY_RANGE: dict[str, tuple[float, float]] = {"treg": (13.47, 64.58), "th17": (1.10, 19.54),
                                                 "ratio": (0.04, 0.76)}
#: Default output weeks (the SAT0261 sampling weeks).
DEFAULT_WEEKS = (0.0, 6.0, 12.0, 24.0)
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
DEFAULT_BLOCK = 1024
#: Week-24 SAT0261 median Th17/Treg; the trial reports the fraction of patients below it.
DEFAULT_RATIO_TARGET = 0.29

HIST_LOW, HIST_HIGH, HIST_BINS = 1e-4, 1e5, 4096
HIST_EDGES = np.logspace(math.log10(HIST_LOW), math.log10(HIST_HIGH), HIST_BINS + 1)
#: Upper bound of the relative error of a histogram quantile (one bin width, log-spaced).
QUANTILE_RELATIVE_ERROR = (HIST_HIGH / HIST_LOW) ** (1.0 / HIST_BINS) - 1.0


# ============================================================================================ the plan
@dataclass(frozen=True)
class TrialPlan:
    """Everything a worker needs to simulate any chunk of a trial (small and picklable).

    Attributes
    ----------
    parameters_toml : str
        The typical-value parameter set, serialised (:meth:`ParameterSet.to_toml`).
    iiv : tuple of (name, omega)
        Log-normal IIV, in the model structure's parameter order.
    seed, block, n_patients : int
    regimen_names : tuple of str
    events : tuple of EventTable, one per regimen
    t_out : (n_times,) output times in days
    options : SolverOptions
    ratio_target : float
    model : str
        Name of the model structure simulated.
    tdm : tuple of (TdmRule or None), one per regimen, or () for none
        Trough titration of a regimen's sirolimus schedule (:mod:`tregpd.scenarios.tdm`): each patient is
        titrated on his own PK, and the summary gains the trough and dose at each sampling day.
    """

    parameters_toml: str
    iiv: tuple[tuple[str, float], ...]
    seed: int
    block: int
    n_patients: int
    regimen_names: tuple[str, ...]
    events: tuple[EventTable, ...]
    t_out: np.ndarray
    options: SolverOptions
    ratio_target: float = DEFAULT_RATIO_TARGET
    model: str = DEFAULT_MODEL
    tdm: tuple = ()
    regimens: tuple = ()          # the Regimen objects, kept only when a regimen is titrated

    def tdm_rule(self, r: int):
        """The titration rule of regimen ``r``, or None."""
        return self.tdm[r] if self.tdm else None


@functools.lru_cache(maxsize=4)
def _parameters_from_toml(text: str) -> ParameterSet:
    return parse_parameters(text, origin="<trial plan>")


def block_scores(seed: int, block: int, first_block: int, n_blocks: int, k: int) -> np.ndarray:
    """Standard-normal scores of blocks ``first_block .. first_block + n_blocks - 1``, shape
    ``(n_blocks * block, k)``; block ``b`` comes from ``default_rng([seed, b])``."""
    if n_blocks == 0:
        return np.zeros((0, k))
    return np.concatenate([np.random.default_rng([seed, b]).standard_normal((block, k))
                           for b in range(first_block, first_block + n_blocks)])


def trial_theta(plan: TrialPlan, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Kernel-unit parameters of patients ``start .. stop-1`` and the (n, k) clipped mask."""
    params = _parameters_from_toml(plan.parameters_toml)
    b0, b1 = start // plan.block, (stop - 1) // plan.block + 1
    z = block_scores(plan.seed, plan.block, b0, b1 - b0, len(plan.iiv))
    z = z[start - b0 * plan.block: stop - b0 * plan.block]
    return theta_from_z(params, z, dict(plan.iiv), plan.model)


# ====================================================================================== chunk results
@dataclass
class ChunkSummary:
    """Mergeable summary of patients ``start .. stop-1`` (arrays indexed [regimen, observable, time]).

    ``block_n``, ``block_mean``, ``block_m2`` hold one entry per block (first axis) and are merged in block
    order; everything else is an exact integer count or an order-free min/max.
    """

    start: int
    stop: int
    n_failed: np.ndarray          # (R,) patients whose integration failed (excluded from everything else)
    failure_status: np.ndarray    # (R, n_status) counts per kernel status code
    n_clipped: np.ndarray         # (k,) draws clipped to bounds, per IIV parameter
    block_n: np.ndarray           # (n_blocks, R) successful patients per block
    block_mean: np.ndarray        # (n_blocks, R, O, T)
    block_m2: np.ndarray          # (n_blocks, R, O, T) sum of squared deviations from the block mean
    minimum: np.ndarray           # (R, O, T)
    maximum: np.ndarray           # (R, O, T)
    hist: np.ndarray              # (R, O, T, HIST_BINS + 2) int64
    in_healthy: np.ndarray        # (R, O, T) int64 (0 for observables without a range)
    below_week0: np.ndarray       # (R, O, T) value < the patient's own first-output value
    above_week0: np.ndarray       # (R, O, T)
    below_ratio_target: np.ndarray  # (R, T)
    elapsed_s: float = 0.0        # wall-clock time of this chunk in the process that ran it
    cpu_s: float = 0.0            # CPU time of that process (all its threads) for this chunk
    tdm: dict | None = None       # regimen index -> exact counts of a titrated regimen (see _tdm_counts)


N_STATUS = 5


def _tdm_counts(tit, ok) -> dict:
    """Exact, mergeable counts of a titration over the successful patients ``ok``: per sampling day the number
    of patients, measured/true troughs in the window, below and above it, a log histogram of the true trough
    (:data:`HIST_EDGES`) and the number of patients on each dose level (multiples of the tablet) after it."""
    lo, hi = tit.rule.low, tit.rule.high
    tr, me = tit.trough_true[ok], tit.trough_measured[ok]
    n_levels = int(round(tit.rule.max_dose_mg / tit.rule.tablet_mg)) + 1
    level = np.rint(tit.dose_after[ok] / tit.rule.tablet_mg).astype(np.int64)
    S = tit.sample_day.size
    idx = np.searchsorted(HIST_EDGES, tr, side="right")
    return {"n": np.full(S, tr.shape[0], np.int64),
            "in_window": ((me >= lo) & (me <= hi)).sum(axis=0).astype(np.int64),
            "in_window_true": ((tr >= lo) & (tr <= hi)).sum(axis=0).astype(np.int64),
            "below_window": (me < lo).sum(axis=0).astype(np.int64),
            "above_window": (me > hi).sum(axis=0).astype(np.int64),
            "trough_hist": np.stack([np.bincount(idx[:, k], minlength=HIST_BINS + 2) for k in range(S)])
            if S else np.zeros((0, HIST_BINS + 2), np.int64),
            "dose_levels": np.stack([np.bincount(level[:, k], minlength=n_levels) for k in range(S)])
            if S else np.zeros((0, n_levels), np.int64),
            "sample_day": tit.sample_day.copy()}


def _hist_quantile(h: np.ndarray, q: float) -> float:
    """Quantile ``q`` of a :data:`HIST_EDGES` histogram (log-interpolated within the bin; the under/overflow
    bins are reported at the range's edge)."""
    n = int(h.sum())
    rank = max(1, math.ceil(q * n - 1e-9))
    cum = np.cumsum(h)
    j = int(np.searchsorted(cum, rank, side="left"))
    if j == 0 or j > HIST_BINS:
        return float(HIST_EDGES[0] if j == 0 else HIST_EDGES[-1])
    before = int(cum[j - 1])
    lo, hi = HIST_EDGES[j - 1], HIST_EDGES[j]
    return float(lo * (hi / lo) ** ((rank - before - 0.5) / h[j]))


def run_trial_chunk(task) -> ChunkSummary:
    """Simulate and summarise one chunk. ``task = (plan, start, stop, parallel_kernel)``; module-level so
    that Dask can pickle it."""
    plan, start, stop, parallel = task
    t0 = time.perf_counter()
    c0 = time.process_time()
    theta, clipped = trial_theta(plan, start, stop)
    n = stop - start
    n_reg, n_obs, n_t = len(plan.events), len(OBSERVABLES), plan.t_out.size
    first_block = start // plan.block
    n_blocks = (stop - 1) // plan.block - first_block + 1
    shape = (n_reg, n_obs, n_t)
    s = ChunkSummary(
        start=start, stop=stop, n_failed=np.zeros(n_reg, np.int64),
        failure_status=np.zeros((n_reg, N_STATUS), np.int64), n_clipped=clipped.sum(axis=0).astype(np.int64),
        block_n=np.zeros((n_blocks, n_reg), np.int64), block_mean=np.zeros((n_blocks,) + shape),
        block_m2=np.zeros((n_blocks,) + shape), minimum=np.full(shape, np.inf), maximum=np.full(shape, -np.inf),
        hist=np.zeros(shape + (HIST_BINS + 2,), np.int64), in_healthy=np.zeros(shape, np.int64),
        below_week0=np.zeros(shape, np.int64), above_week0=np.zeros(shape, np.int64),
        below_ratio_target=np.zeros((n_reg, n_t), np.int64))
    block_of = (np.arange(start, stop) // plan.block) - first_block
    s.tdm = {}
    for r, events in enumerate(plan.events):
        rule = plan.tdm_rule(r)
        if rule is None:
            res = simulate_population(theta, events=events, t_out=plan.t_out, options=plan.options,
                                      parallel=parallel, on_failure="keep", model=plan.model)
        else:   # each patient titrated on his own PK (assay errors keyed by the global patient index)
            from .tdm import simulate_titrated, titrate
            tit = titrate(theta, plan.regimens[r], rule, float(plan.t_out[-1]), seed=plan.seed,
                          patient_ids=np.arange(start, stop), model=plan.model)
            res = simulate_titrated(theta, tit, plan.t_out, parallel=parallel, model=plan.model,
                                    options=plan.options)
            s.tdm[r] = _tdm_counts(tit, res.ok)
        ok = res.ok
        s.n_failed[r] = n - int(ok.sum())
        s.failure_status[r] = np.bincount(res.status, minlength=N_STATUS)[:N_STATUS]
        s.failure_status[r, K.STATUS_OK] = 0
        blocks_ok = block_of[ok]
        s.block_n[:, r] = np.bincount(blocks_ok, minlength=n_blocks)
        for o, name in enumerate(OBSERVABLES):
            vals = res.get(name)                       # (n_ok, n_t), successful patients only
            if vals.shape[0] == 0:
                continue
            s.minimum[r, o] = vals.min(axis=0)
            s.maximum[r, o] = vals.max(axis=0)
            for b in range(n_blocks):
                vb = vals[blocks_ok == b]
                if vb.shape[0]:
                    mean = vb.mean(axis=0)
                    s.block_mean[b, r, o] = mean
                    s.block_m2[b, r, o] = ((vb - mean) ** 2).sum(axis=0)
            idx = np.searchsorted(HIST_EDGES, vals, side="right")     # 0 underflow .. HIST_BINS+1 overflow
            for t in range(n_t):
                s.hist[r, o, t] = np.bincount(idx[:, t], minlength=HIST_BINS + 2)
            if name in HEALTHY_RANGE:
                lo, hi = HEALTHY_RANGE[name]
                s.in_healthy[r, o] = ((vals >= lo) & (vals <= hi)).sum(axis=0)
            s.below_week0[r, o] = (vals < vals[:, :1]).sum(axis=0)
            s.above_week0[r, o] = (vals > vals[:, :1]).sum(axis=0)
            if name == "ratio":
                s.below_ratio_target[r] = (vals < plan.ratio_target).sum(axis=0)
    s.elapsed_s = time.perf_counter() - t0
    s.cpu_s = time.process_time() - c0
    return s


class TrialAccumulator:
    """Merge :class:`ChunkSummary` objects, which must arrive in chunk order (contiguous, from patient 0)."""

    def __init__(self, plan: TrialPlan):
        self.plan = plan
        self.next_start = 0
        self.total: ChunkSummary | None = None
        self.n = None            # (R,) successful patients so far
        self.mean = None         # (R, O, T)
        self.m2 = None
        self.compute_s = 0.0
        self.cpu_s = 0.0

    def add(self, c: ChunkSummary) -> None:
        if c.start != self.next_start:
            raise TrialError(f"internal: chunk starting at patient {c.start} arrived out of order "
                             f"(expected {self.next_start})")
        self.next_start = c.stop
        self.compute_s += c.elapsed_s
        self.cpu_s += c.cpu_s
        if self.total is None:
            self.total = ChunkSummary(**{k: (np.copy(v) if isinstance(v, np.ndarray) else
                                             {r: dict(d) for r, d in v.items()} if isinstance(v, dict) else v)
                                         for k, v in c.__dict__.items()})
            R = c.block_n.shape[1]
            self.n = np.zeros(R, np.int64)
            self.mean = np.zeros(c.block_mean.shape[1:])
            self.m2 = np.zeros(c.block_mean.shape[1:])
        else:
            t = self.total
            t.stop = c.stop
            for name in ("n_failed", "failure_status", "n_clipped", "hist", "in_healthy", "below_week0",
                         "above_week0", "below_ratio_target"):
                getattr(t, name).__iadd__(getattr(c, name))
            np.minimum(t.minimum, c.minimum, out=t.minimum)
            np.maximum(t.maximum, c.maximum, out=t.maximum)
            for r, counts in (c.tdm or {}).items():
                for key, arr in counts.items():
                    if key != "sample_day":
                        t.tdm[r][key] = t.tdm[r][key] + arr
        # Chan et al. (1979) pairwise update, one block at a time in block order
        for b in range(c.block_n.shape[0]):
            for r in range(c.block_n.shape[1]):
                nb = int(c.block_n[b, r])
                if nb == 0:
                    continue
                na = int(self.n[r])
                n = na + nb
                delta = c.block_mean[b, r] - self.mean[r]
                self.mean[r] = self.mean[r] + delta * (nb / n)
                self.m2[r] = self.m2[r] + c.block_m2[b, r] + delta * delta * (na * nb / n)
                self.n[r] = n

    # ------------------------------------------------------------------------------------- results
    def quantile(self, r: int, o: int, t: int, q: float) -> float:
        """Histogram quantile (see module docstring for the error bound)."""
        h = self.total.hist[r, o, t]
        n = int(h.sum())
        rank = max(1, math.ceil(q * n - 1e-9))
        cum = np.cumsum(h)
        j = int(np.searchsorted(cum, rank, side="left"))
        before = int(cum[j - 1]) if j > 0 else 0
        lo = HIST_EDGES[j - 1] if j > 0 else self.total.minimum[r, o, t]
        hi = HIST_EDGES[j] if j <= HIST_BINS else self.total.maximum[r, o, t]
        lo, hi = min(lo, hi), max(lo, hi)
        frac = (rank - before - 0.5) / h[j]
        if lo > 0:
            return float(lo * (hi / lo) ** frac)
        return float(lo + (hi - lo) * frac)

    def summary_frame(self):
        """Tidy summary: regimen, week, variable, unit, statistic, value (statistics of successful patients)."""
        import pandas as pd
        plan, tot = self.plan, self.total
        rows = []
        weeks = plan.t_out / 7.0
        for r, reg in enumerate(plan.regimen_names):
            n_ok = int(self.n[r])
            for o, (var, unit) in enumerate(OBSERVABLES.items()):
                for t, week in enumerate(weeks):
                    def add(stat, value, u=unit):
                        rows.append({"regimen": reg, "week": float(week), "variable": var, "unit": u,
                                     "statistic": stat, "value": float(value)})
                    add("n", n_ok, "patients")
                    if n_ok == 0:
                        continue
                    add("mean", self.mean[r, o, t])
                    if n_ok > 1:
                        add("sd", math.sqrt(self.m2[r, o, t] / (n_ok - 1)))
                    add("min", tot.minimum[r, o, t])
                    for q in QUANTILES:
                        add("median" if q == 0.5 else f"q{round(q * 100):02d}", self.quantile(r, o, t, q))
                    add("max", tot.maximum[r, o, t])
                    if var in HEALTHY_RANGE:
                        add("frac_in_healthy_range", tot.in_healthy[r, o, t] / n_ok, "1")
                    if t > 0:
                        add("frac_below_week0", tot.below_week0[r, o, t] / n_ok, "1")
                        add("frac_above_week0", tot.above_week0[r, o, t] / n_ok, "1")
                    if var == "ratio":
                        add("frac_below_target", tot.below_ratio_target[r, t] / n_ok, "1")
            counts = (tot.tdm or {}).get(r)
            rule = plan.tdm_rule(r)
            if counts is None or rule is None:
                continue
            for k, day in enumerate(counts["sample_day"]):     # titration: trough and dose at each sampling day
                n_k = int(counts["n"][k])
                def add_t(var, stat, value, u):
                    rows.append({"regimen": reg, "week": float(day) / 7.0, "variable": var, "unit": u,
                                 "statistic": stat, "value": float(value)})
                add_t("sirolimus_trough", "n", n_k, "patients")
                if n_k == 0:
                    continue
                for q in (0.05, 0.5, 0.95):
                    add_t("sirolimus_trough", "median" if q == 0.5 else f"q{round(q * 100):02d}",
                          _hist_quantile(counts["trough_hist"][k], q), "ng/mL")
                for key in ("in_window", "in_window_true", "below_window", "above_window"):
                    add_t("sirolimus_trough", f"frac_{key}", counts[key][k] / n_k, "1")
                lv = counts["dose_levels"][k]
                doses = np.arange(lv.size) * rule.tablet_mg
                add_t("sirolimus_dose", "mean", float((lv * doses).sum()) / n_k, "mg")
                cum = np.cumsum(lv)
                for q in (0.05, 0.5, 0.95):
                    j = int(np.searchsorted(cum, max(1, math.ceil(q * n_k - 1e-9)), side="left"))
                    add_t("sirolimus_dose", "median" if q == 0.5 else f"q{round(q * 100):02d}", doses[j], "mg")
                for j in np.flatnonzero(lv):
                    add_t("sirolimus_dose", f"frac_at_{doses[j]:g}mg", lv[j] / n_k, "1")
        return pd.DataFrame(rows)


# ============================================================================================ driver
@dataclass
class TrialResult:
    """Summaries of a virtual trial.

    Attributes
    ----------
    summary : pandas.DataFrame
        Tidy: regimen, week, variable, unit, statistic, value.
    n_patients : int
    n_failed : dict regimen -> failed patients (excluded from the summary)
    clipped_fraction : dict IIV parameter -> fraction of draws clipped to the bounds
    elapsed_s : float
        Wall-clock time of the simulation and reduction.
    backend : dict
    plan : TrialPlan
    chunk_patients : int
    """

    summary: object
    n_patients: int
    n_failed: dict
    failure_counts: dict
    clipped_fraction: dict
    elapsed_s: float
    compute_s: float
    cpu_s: float
    backend: dict
    plan: TrialPlan
    chunk_patients: int
    n_chunks: int

    @property
    def patients_per_cpu_second(self) -> float:
        """Patient-regimen simulations per CPU-second spent in the chunk functions (all workers and threads):
        a measure of the work per patient that other load on the machine does not change."""
        return self.n_patients * len(self.plan.regimen_names) / self.cpu_s if self.cpu_s > 0 else math.inf

    @property
    def patients_per_second(self) -> float:
        """Patient-regimen simulations per second of wall-clock time."""
        return self.n_patients * len(self.plan.regimen_names) / self.elapsed_s if self.elapsed_s > 0 else math.inf

    def provenance_extra(self) -> dict:
        return {"n_patients": self.n_patients, "block": self.plan.block,
                "iiv": dict(self.plan.iiv), "weeks": (self.plan.t_out / 7.0).tolist(),
                "ratio_target": self.plan.ratio_target, "chunk_patients": self.chunk_patients,
                "n_chunks": self.n_chunks, "backend": self.backend, "n_failed": self.n_failed,
                "failure_counts": self.failure_counts, "clipped_fraction": self.clipped_fraction,
                "elapsed_s": round(self.elapsed_s, 3), "patients_per_second": round(self.patients_per_second, 1),
                "cpu_s": round(self.cpu_s, 3),
                "healthy_range": HEALTHY_RANGE, "quantile_relative_error": QUANTILE_RELATIVE_ERROR,
                **({"tdm": {reg: rule.to_dict() for reg, rule in zip(self.plan.regimen_names, self.plan.tdm)
                            if rule is not None}} if self.plan.tdm else {}),
                "model": {"name": self.plan.model, "declaration": get_model(self.plan.model).content_hash},
                "solver": {"method": self.plan.options.method, "pk": self.plan.options.pk,
                           "rtol": self.plan.options.rtol, "atol": self.plan.options.atol}}


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise TrialError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def make_plan(parameters: ParameterSet, regimens: Sequence[Regimen], n_patients: int, *, seed: int = 0,
              iiv: Mapping[str, float] | None = None, weeks: Sequence[float] = DEFAULT_WEEKS,
              block: int = DEFAULT_BLOCK, options: SolverOptions | None = None,
              ratio_target: float = DEFAULT_RATIO_TARGET, model: str | None = None,
              tdm: Sequence | None = None) -> TrialPlan:
    """Validate the trial settings and build a :class:`TrialPlan` (``model``: the model structure, default the
    default structure; ``tdm``: one :class:`tregpd.scenarios.tdm.TdmRule` or None per regimen)."""
    structure = get_model(model)
    names_m = structure.parameter_names
    n_patients = _positive_int(n_patients, "number of patients")
    block = _positive_int(block, "block size")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TrialError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(parameters, ParameterSet):
        raise TrialError(f"parameters must be a ParameterSet, got {type(parameters).__name__}")
    regimens = list(regimens)
    if not regimens:
        raise TrialError("at least one regimen is required")
    for reg in regimens:
        if not isinstance(reg, Regimen):
            raise TrialError(f"regimens must be Regimen objects, got {type(reg).__name__}")
    names = [reg.name for reg in regimens]
    if len(set(names)) != len(names):
        raise TrialError(f"regimen names must be unique, got {names}")
    iiv = dict(DEFAULT_IIV if iiv is None else iiv)
    for name, om in iiv.items():
        # a DEFAULT_IIV entry the structure does not read is dropped (as sample_population does)
        if name not in names_m and name not in DEFAULT_IIV:
            raise TrialError(f"IIV: unknown parameter {name!r} for model {structure.name!r}; known: "
                             f"{', '.join(names_m)}")
        if isinstance(om, bool) or not isinstance(om, (int, float)) or not math.isfinite(om) or om < 0:
            raise TrialError(f"IIV: omega of {name!r} must be a finite number >= 0, got {om!r}")
    iiv_items = tuple((nm, float(iiv[nm])) for nm in names_m if nm in iiv)
    w = np.asarray(list(weeks), dtype=np.float64)
    if w.size == 0 or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise TrialError(f"weeks must be finite and >= 0, got {list(weeks)}")
    w = np.unique(w)
    if w[0] != 0.0:
        w = np.concatenate([[0.0], w])   # week 0 is needed for the change-from-baseline counts
    if isinstance(ratio_target, bool) or not isinstance(ratio_target, (int, float)) \
            or not math.isfinite(ratio_target) or ratio_target <= 0:
        raise TrialError(f"ratio target must be a positive number, got {ratio_target!r}")
    t_out = w * 7.0
    events = tuple(reg.events() for reg in regimens)
    rules = ()
    if tdm is not None and any(r is not None for r in tdm):
        from .tdm import TdmRule, check_rule_for_regimen
        rules = tuple(tdm)
        if len(rules) != len(regimens):
            raise TrialError(f"tdm: one rule (or None) per regimen is needed, got {len(rules)} for "
                             f"{len(regimens)} regimens")
        for reg, rule in zip(regimens, rules):
            if rule is not None:
                if not isinstance(rule, TdmRule):
                    raise TrialError(f"tdm: rules must be TdmRule objects, got {type(rule).__name__}")
                check_rule_for_regimen(rule, reg, float(t_out[-1]), f"trial regimen {reg.name!r}")
    return TrialPlan(parameters_toml=parameters.to_toml(), iiv=iiv_items, seed=int(seed), block=block,
                     n_patients=n_patients, regimen_names=tuple(names), events=events, t_out=t_out,
                     options=options if options is not None else SolverOptions(),
                     ratio_target=float(ratio_target), model=structure.name, tdm=rules,
                     regimens=tuple(regimens) if rules else ())


def chunk_bounds(n_patients: int, chunk_patients: int, block: int) -> list[tuple[int, int]]:
    """[start, stop) of each chunk; ``chunk_patients`` must be a multiple of ``block``."""
    if chunk_patients % block:
        raise TrialError(f"chunk size {chunk_patients} is not a multiple of the block size {block}")
    return [(s, min(s + chunk_patients, n_patients)) for s in range(0, n_patients, chunk_patients)]


def check_trial_memory(plan: TrialPlan, chunk_patients: int) -> float:
    """Refuse a trial whose chunk (patients x output weeks x outputs, plus the histograms of the summaries)
    would not fit in memory, before anything is simulated; returns the estimate in bytes."""
    from tregpd.safeio import check_memory
    chunk = _positive_int(chunk_patients, "chunk size")
    chunk = min(-(-chunk // plan.block) * plan.block, -(-plan.n_patients // plan.block) * plan.block)
    n_t, n_reg, n_obs = plan.t_out.size, len(plan.events), len(OBSERVABLES)
    n_blocks = chunk // plan.block
    structure = get_model(plan.model)
    n_out, n_theta = len(structure.output_names), len(structure.parameter_names)
    # per chunk and in the accumulator: histograms, block means and M2, counters
    summaries = 2.0 * n_reg * n_obs * n_t * (HIST_BINS + 2 + 6 + 2 * n_blocks) * 8.0
    return check_memory(f"trial: chunk of {chunk} patients x {n_t} output weeks x {n_reg} regimen(s)", chunk,
                        n_t * n_out + 3 * n_theta, "lower --chunk (the results do not depend on it) or give "
                        "fewer --weeks", error=TrialError, extra_bytes=summaries,
                        detail=f"{n_t} output times x {n_out} outputs and the parameters, plus "
                               f"{n_reg * n_obs * n_t} histograms of {HIST_BINS} bins")


def run_trial(plan: TrialPlan, chunk_patients: int = 20_000, backend: Backend | None = None,
              progress: bool = False) -> TrialResult:
    """Run a virtual trial in chunks on ``backend`` (default in-process) and reduce it to summaries.

    ``chunk_patients`` is rounded up to a multiple of ``plan.block``; the results do not depend on it, nor on
    the backend (see the module docstring).
    """
    chunk_patients = _positive_int(chunk_patients, "chunk size")
    check_trial_memory(plan, chunk_patients)
    chunk_patients = -(-chunk_patients // plan.block) * plan.block
    backend = backend if backend is not None else InProcessBackend()
    bounds = chunk_bounds(plan.n_patients, chunk_patients, plan.block)
    tasks = ((plan, a, b, backend.parallel_kernel) for a, b in bounds)
    acc = TrialAccumulator(plan)
    t0 = time.perf_counter()
    results = backend.map(run_trial_chunk, tasks)
    if progress:
        from tqdm.auto import tqdm
        results = tqdm(results, total=len(bounds), desc="chunks", unit="chunk")
    for chunk in results:
        acc.add(chunk)
    elapsed = time.perf_counter() - t0
    if acc.next_start != plan.n_patients:
        raise TrialError(f"internal: reduced {acc.next_start} of {plan.n_patients} patients")
    tot = acc.total
    from tregpd.model.simulate import STATUS_MESSAGES
    failure_counts = {reg: {STATUS_MESSAGES[c]: int(tot.failure_status[r, c])
                            for c in range(1, N_STATUS) if tot.failure_status[r, c]}
                      for r, reg in enumerate(plan.regimen_names)}
    return TrialResult(
        summary=acc.summary_frame(), n_patients=plan.n_patients,
        n_failed={reg: int(tot.n_failed[r]) for r, reg in enumerate(plan.regimen_names)},
        failure_counts=failure_counts,
        clipped_fraction={nm: float(tot.n_clipped[k]) / plan.n_patients for k, (nm, _) in enumerate(plan.iiv)},
        elapsed_s=elapsed, compute_s=acc.compute_s, cpu_s=acc.cpu_s, backend=backend.describe(), plan=plan,
        chunk_patients=chunk_patients, n_chunks=len(bounds))


def summary_table(summary, regimen: str | None = None):
    """A compact wide table for printing: rows (regimen, week), columns like ``treg median [q05, q95]``."""
    import pandas as pd
    df = summary if regimen is None else summary[summary["regimen"] == regimen]
    df = df[df["variable"].isin(list(OBSERVABLES))]     # titration rows: see tdm_table
    rows = []
    for (reg, week), g in df.groupby(["regimen", "week"], sort=False):
        st = {(v, s): val for v, s, val in zip(g["variable"], g["statistic"], g["value"])}
        row = {"regimen": reg, "week": f"{week:g}", "n": int(st.get(("treg", "n"), 0))}
        for var in ("treg", "th17", "ratio"):
            if (var, "median") in st:
                fmt = "{:.3g}"
                row[f"{var} median [q05-q95]"] = (f"{fmt.format(st[(var, 'median')])} "
                                                  f"[{fmt.format(st[(var, 'q05')])}-{fmt.format(st[(var, 'q95')])}]")
        for var, label in (("treg", "Treg healthy"), ("ratio", "ratio healthy")):
            if (var, "frac_in_healthy_range") in st:
                row[label] = f"{100 * st[(var, 'frac_in_healthy_range')]:.1f}%"
        if ("ratio", "frac_below_target") in st:
            row["ratio<target"] = f"{100 * st[('ratio', 'frac_below_target')]:.1f}%"
        rows.append(row)
    return pd.DataFrame(rows)


def tdm_table(summary):
    """A compact table of the titrated regimens for printing: rows (regimen, sampling day), the median [q05-q95]
    true trough, the fraction of measured (and true) troughs in the window, and the median [q05-q95] dose after
    the sample. Empty when no regimen is titrated."""
    import pandas as pd
    df = summary[summary["variable"].isin(["sirolimus_trough", "sirolimus_dose"])]
    rows = []
    for (reg, week), g in df.groupby(["regimen", "week"], sort=False):
        st = {(v, s): val for v, s, val in zip(g["variable"], g["statistic"], g["value"])}
        if ("sirolimus_trough", "median") not in st:
            continue
        tr = [st[("sirolimus_trough", k)] for k in ("median", "q05", "q95")]
        do = [st[("sirolimus_dose", k)] for k in ("median", "q05", "q95")]
        rows.append({"regimen": reg, "day": f"{7 * week:g}",
                     "trough ng/mL median [q05-q95]": f"{tr[0]:.3g} [{tr[1]:.3g}-{tr[2]:.3g}]",
                     "in window (measured)": f"{100 * st[('sirolimus_trough', 'frac_in_window')]:.1f}%",
                     "in window (true)": f"{100 * st[('sirolimus_trough', 'frac_in_window_true')]:.1f}%",
                     "dose after, mg median [q05-q95]": f"{do[0]:g} [{do[1]:g}-{do[2]:g}]"})
    return pd.DataFrame(rows)
