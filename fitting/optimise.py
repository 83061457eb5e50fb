"""Optimiser and uncertainty layer: lmfit Parameters/Minimizer, profile likelihood, confidence intervals, emcee.

The objective's residuals are in units of their standard errors (:mod:`tregpd.fitting.objective`), so the fit
uses ``scale_covar=False`` and likelihood-ratio statistics with known variance: a parameter value is inside
the 95 % profile-likelihood interval when ``chi2_profile - chi2_best <= 3.84`` (chi-square, 1 degree of
freedom). lmfit's :func:`lmfit.conf_interval` is called with the same likelihood-ratio test as ``prob_func``
(its default F-test divides by the best chi-square, which is ~0 for an exactly determined fit).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import stats

from tregpd.errors import TregpdError

from .problem import FitProblem

#: chi-square thresholds for profile intervals (1 degree of freedom)
DELTA_CHI2_95 = float(stats.chi2.ppf(0.95, 1))   # 3.84
DELTA_CHI2_68 = float(stats.chi2.ppf(0.6827, 1))  # 1.00

DEFAULT_METHOD = "least_squares"


class FitError(TregpdError):
    """The optimiser failed (message says why)."""


def build_parameters(problem: FitProblem, start: dict | None = None, extra: Sequence[str] = ()):
    """lmfit Parameters from the problem's parameter file: value, bounds and ``vary`` (True for the free ones).

    ``extra`` names are added with ``vary=False`` (e.g. for profiles of parameters that the fit keeps fixed).
    ``start`` overrides starting values (clipped to the bounds).
    """
    import lmfit
    params = lmfit.Parameters()
    start = start or {}
    for name in list(problem.free) + [n for n in extra if n not in problem.free]:
        p = problem.parameters[name]
        v = float(np.clip(start.get(name, p.value), p.lower, p.upper))
        params.add(name, value=v, min=p.lower, max=p.upper, vary=name in problem.free)
    return params


def _values(params) -> dict:
    return {n: par.value for n, par in params.items()}


def make_minimizer(problem: FitProblem, params):
    """An :class:`lmfit.Minimizer` over the problem's residual vector (residuals in SE units)."""
    import lmfit

    def residual(p):
        return problem.residuals(_values(p))

    return lmfit.Minimizer(residual, params, scale_covar=False, nan_policy="raise")


def _fit_kws(method: str, problem: FitProblem) -> dict:
    if method == "least_squares":
        # relative finite-difference step: larger than the solver noise (rtol) and, in population mode, than
        # the kinks of the sample median
        step = 1e-3 if problem.mode == "population" else 1e-5
        return {"diff_step": step, "x_scale": "jac", "xtol": 1e-9, "ftol": 1e-9, "gtol": 1e-9}
    if method == "leastsq":
        return {"epsfcn": 1e-8 if problem.mode == "typical" else 1e-5}
    return {}


def minimize(problem: FitProblem, params=None, method: str = DEFAULT_METHOD, max_nfev: int | None = None):
    """Run lmfit's Minimizer; returns ``(minimizer, result)``.

    ``max_nfev`` caps the objective evaluations (default ``100 (n_varying + 1)``); a capped fit is reported in
    ``result.message`` and ``result.aborted``, never silently passed off as converged.
    """
    params = build_parameters(problem) if params is None else params
    nvary = sum(p.vary for p in params.values())
    if not nvary:
        raise FitError("no parameter varies")
    mini = make_minimizer(problem, params)
    max_nfev = max_nfev or 100 * (nvary + 1)
    try:
        with warnings.catch_warnings():
            # lmfit warns (sqrt of a negative variance) when the Hessian is singular, i.e. for sloppy or
            # bound-hitting parameters; the profile likelihood reports those properly
            warnings.simplefilter("ignore", RuntimeWarning)
            result = mini.minimize(method=method, max_nfev=max_nfev, **_fit_kws(method, problem))
    except TregpdError:
        raise
    except Exception as exc:  # lmfit/scipy failure: report, never return garbage
        raise FitError(f"{method} failed: {type(exc).__name__}: {exc}") from None
    if result.residual is None or not np.all(np.isfinite(result.residual)):
        raise FitError(f"{method} returned a non-finite residual")
    return mini, result


# -------------------------------------------------------------------------------------------- profiles
@dataclass
class Profile:
    """Profile likelihood of one parameter.

    Attributes
    ----------
    name : str
    values : (n,) grid values (file units), sorted
    chisqr : (n,) minimum chi-square with the parameter fixed at each value and the free ones refitted
    best_value, best_chisqr : of the unconstrained fit
    prior : prior value from the parameter file
    lower, upper : bounds of the parameter
    ci95 : (low, high); ``None`` on a side where the profile stays below the threshold up to the bound
    """

    name: str
    values: np.ndarray
    chisqr: np.ndarray
    best_value: float
    best_chisqr: float
    prior: float
    lower: float
    upper: float
    log_grid: bool
    ci95: tuple = (None, None)
    ci68: tuple = (None, None)
    refitted: tuple = ()
    others: dict = field(default_factory=dict)

    @property
    def delta(self) -> np.ndarray:
        return self.chisqr - self.best_chisqr

    @property
    def delta_at_prior(self) -> float:
        return float(np.interp(self._x(self.prior), self._x(self.values), self.delta))

    def _x(self, v):
        return np.log(np.maximum(v, 1e-300)) if self.log_grid else np.asarray(v, dtype=float)

    @property
    def classification(self) -> str:
        lo, hi = self.ci95
        if lo is not None and hi is not None:
            return "identifiable"
        if lo is None and hi is None:
            return "not identifiable"
        return "one-sided"

    @property
    def disconnected(self) -> list:
        """Grid values outside the 95 % interval where the profile dips below the threshold again (the
        95 % region is then not one interval)."""
        lo, hi = self.ci95
        below = self.values[self.delta <= DELTA_CHI2_95]
        return [float(v) for v in below if (lo is not None and v < lo) or (hi is not None and v > hi)]

    def compensation(self, min_slope: float = 0.3) -> list[str]:
        """Refitted parameters that compensate this one along the profile (|log-log slope| >= ``min_slope``):
        the data then determine a combination of them, not each one."""
        out = []
        v = np.asarray(self.values, dtype=float)
        for n, q in self.others.items():
            q = np.asarray(q, dtype=float)
            ok = (v > 0) & (q > 0) & np.isfinite(q)
            if ok.sum() < 3 or np.ptp(np.log(v[ok])) < 1e-6:
                continue
            if q[ok].max() < 1e-6 or q[ok].max() / q[ok].min() < 1.2:   # stays put (or pinned at zero)
                continue
            slope = np.polyfit(np.log(v[ok]), np.log(q[ok]), 1)[0]
            if abs(slope) >= min_slope:
                out.append(f"{n} compensates along the profile (refitted from {q[ok].min():.4g} to "
                           f"{q[ok].max():.4g}, log-log slope {slope:+.2f}), so only a combination of the two "
                           f"is determined")
        return out

    def describe(self) -> str:
        text = self._describe()
        if self.classification != "identifiable":
            for c in self.compensation():
                text += f"; {c}"
        if self.disconnected:
            d = self.disconnected
            where = f"{min(d):.4g}" if min(d) == max(d) else f"{min(d):.4g}-{max(d):.4g}"
            text += (f"; NOTE the 95 % region is not connected: the profile is below the threshold again at "
                     f"{where}")
        return text

    def _describe(self) -> str:
        lo, hi = self.ci95
        f = lambda v: f"{v:.4g}"
        if self.classification == "identifiable":
            return f"identifiable: 95% profile interval [{f(lo)}, {f(hi)}]"
        if self.classification == "one-sided":
            if lo is None:
                return (f"one-sided: data give only an upper limit {f(hi)} (profile flat down to the bound "
                        f"{f(self.lower)})")
            return (f"one-sided: data give only a lower limit {f(lo)} (profile flat up to the bound "
                    f"{f(self.upper)})")
        return (f"not identifiable: profile stays within {DELTA_CHI2_95:.2f} of the minimum over the whole "
                f"range [{f(self.lower)}, {f(self.upper)}] (max delta chi2 {np.max(self.delta):.3g})")


def _grid(p_lower, p_upper, best, prior, n_points):
    """Profile grid: ``n_points`` across the bounds (log-spaced when they span >= 20x) plus a denser
    geometric set best x 4**(-1..1) around the best fit, the best fit and the prior."""
    log_grid = p_lower > 0 and p_upper / p_lower >= 20
    if log_grid:
        g = np.geomspace(p_lower, p_upper, n_points)
    else:
        g = np.linspace(p_lower, p_upper, n_points)
    near = best * np.geomspace(0.25, 4.0, 9) if best > 0 else np.array([])
    g = np.concatenate([g, near[(near >= p_lower) & (near <= p_upper)], [best, prior]])
    return np.unique(np.round(g, 12)), log_grid


def _crossing(x, d, threshold, side):
    """Parameter value where the profile ``d`` crosses ``threshold`` left (side=-1) or right (+1) of its minimum."""
    i0 = int(np.argmin(d))
    idx = range(i0, -1, -1) if side < 0 else range(i0, len(d))
    prev = None
    for i in idx:
        if d[i] > threshold:
            if prev is None:
                return x[i]
            # linear interpolation between prev and i
            xa, xb, da, db = x[prev], x[i], d[prev], d[i]
            return xa + (threshold - da) * (xb - xa) / (db - da)
        prev = i
    return None


def profile_likelihood(problem: FitProblem, result, name: str, n_points: int = 9,
                       method: str = DEFAULT_METHOD, stop_delta: float = 4 * DELTA_CHI2_95,
                       refine: int = 5) -> Profile:
    """Profile likelihood of ``name``: fix it on a grid spanning its bounds, refit the free parameters.

    The sweep starts at the best fit and walks outwards in both directions, warm-starting each refit from the
    previous grid point (and, as a second start, from the best fit); a direction stops once
    ``delta chi2 > stop_delta`` (well past the 95 % threshold). Each threshold crossing (68 % and 95 %) is then
    located by ``refine`` bisection steps between the bracketing grid points. ``name`` may also be a
    parameter the fit keeps fixed (e.g. ``il2_ec50_treg``): the profile then shows whether the data could
    have determined it jointly with the free ones.
    """
    p = problem.parameters[name]
    prior = problem.priors[name].value
    best_params = result.params
    best_value = best_params[name].value if name in best_params else p.value
    best_chi = float(result.chisqr)
    grid, log_grid = _grid(p.lower, p.upper, best_value, prior, n_points)
    refit = tuple(n for n in problem.free if n != name)
    best_start = {n: best_params[n].value for n in refit}
    max_nfev = 50 * (len(refit) + 1)
    points: dict[float, tuple[float, dict]] = {}

    def evaluate(value: float, start: dict, second_start: bool = True) -> tuple[float, dict]:
        if refit:
            # two starts (warm start and the best fit) guard against a refit stuck on a ridge
            best_r = None
            for st in ([start] if (start == best_start or not second_start) else [start, best_start]):
                params = build_parameters(problem, start=st, extra=(name,))
                params[name].set(value=float(value), vary=False)
                _, r = minimize(problem, params, method=method, max_nfev=max_nfev)
                if best_r is None or r.chisqr < best_r.chisqr:
                    best_r = r
            out = (float(best_r.chisqr), {n: best_r.params[n].value for n in refit})
        else:
            params = build_parameters(problem, start=start, extra=(name,))
            params[name].set(value=float(value), vary=False)
            out = (float(np.sum(problem.residuals(_values(params)) ** 2)), {})
        points[float(value)] = out
        return out

    start_idx = int(np.argmin(np.abs(grid - best_value)))
    for direction in (-1, +1):
        start = dict(best_start)
        rng = range(start_idx, -1, -1) if direction < 0 else range(start_idx, grid.size)
        for i in rng:
            v = float(grid[i])
            chi, start = points[v] if v in points else evaluate(v, start)
            if chi - best_chi > stop_delta:
                break

    def arrays():
        vals = np.array(sorted(points))
        return vals, np.array([points[v][0] for v in vals])

    # refine each crossing by bisection (in log space on a log grid)
    to_x = (lambda v: math.log(v)) if log_grid else (lambda v: v)
    from_x = (lambda x: math.exp(x)) if log_grid else (lambda x: x)
    for thr in (DELTA_CHI2_68, DELTA_CHI2_95):
        for side in (-1, +1):
            for _ in range(refine):
                vals, chis = arrays()
                ref = min(best_chi, float(np.min(chis)))
                d = chis - ref
                i0 = int(np.argmin(d))
                idx = list(range(i0, -1, -1)) if side < 0 else list(range(i0, vals.size))
                bracket = None
                for a, b in zip(idx, idx[1:]):
                    if d[a] <= thr < d[b]:
                        bracket = (a, b)
                        break
                if bracket is None:
                    break
                a, b = bracket
                xa, xb = to_x(vals[a]), to_x(vals[b])
                if abs(xb - xa) <= 1e-3 * max(abs(xa), abs(xb), 1e-12):
                    break
                evaluate(from_x(0.5 * (xa + xb)), points[float(vals[a])][1], second_start=False)

    grid, chis = arrays()
    others = {n: np.array([points[float(v)][1].get(n, np.nan) for v in grid]) for n in refit}
    # a refit can find a lower minimum than the reported best fit (e.g. a fit stuck at a bound)
    best_chi = min(best_chi, float(np.min(chis)))
    prof = Profile(name=name, values=grid, chisqr=chis, best_value=float(best_value), best_chisqr=best_chi,
                   prior=float(prior), lower=p.lower, upper=p.upper, log_grid=log_grid, refitted=refit,
                   others=others)
    x = prof._x(grid)
    d = prof.delta
    for attr, thr in (("ci95", DELTA_CHI2_95), ("ci68", DELTA_CHI2_68)):
        lo = _crossing(x, d, thr, -1)
        hi = _crossing(x, d, thr, +1)
        conv = (lambda v: None if v is None else float(np.exp(v))) if log_grid else \
            (lambda v: None if v is None else float(v))
        setattr(prof, attr, (conv(lo), conv(hi)))
    return prof


@dataclass
class _BestFit:
    """What a profile needs of an lmfit result (picklable: parameter values and chi-square)."""

    params: object
    chisqr: float


def _profile_job(job):
    problem, best, name, n_points, method = job
    problem.parallel = False   # a forked worker must not start OpenMP threads (the parent may have)
    prof = profile_likelihood(problem, best, name, n_points=n_points, method=method)
    return prof, problem.n_evaluations


def profile_likelihoods(problem: FitProblem, result, names: Sequence[str], n_points: int = 9,
                        method: str = DEFAULT_METHOD, workers: int | None = None) -> dict:
    """:func:`profile_likelihood` of each of ``names``, in parallel processes.

    Each profile is independent of the others (its own refits from the best fit), so they run in a process pool
    of ``workers`` processes (default: one per available core, at most one per profile); the numbers are those
    of the serial loop (``workers=1``), each process simulating with its own copy of the problem. Processes
    are forked where the platform allows it (the compiled kernels are inherited, nothing is recompiled or
    reloaded), otherwise spawned. The longest profiles are started first: a parameter the profile cannot bound
    is swept across its whole range.

    Returns
    -------
    dict name -> Profile, in the order of ``names``; ``problem.n_evaluations`` is increased by the simulations
    the workers ran.
    """
    names = list(dict.fromkeys(names))
    from tregpd.scenarios.backends import available_cpus, process_pool
    workers = available_cpus() if workers is None else int(workers)
    if workers < 1:
        raise FitError(f"workers must be >= 1, got {workers}")
    workers = min(workers, len(names))
    best = _BestFit(result.params.copy(), float(result.chisqr))
    if workers <= 1:
        return {n: profile_likelihood(problem, best, n, n_points=n_points, method=method) for n in names}
    import multiprocessing as mp
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    # parameters the fit keeps fixed are usually the unidentifiable ones: swept end to end, so slowest
    order = sorted(names, key=lambda n: n in problem.free)
    jobs = [(problem, best, n, n_points, method) for n in order]
    # cancelled, terminated and reaped at once on an error, Ctrl-C or SIGTERM
    with process_pool(max_workers=workers, mp_context=ctx) as pool:
        done = dict(zip(order, pool.map(_profile_job, jobs)))
    problem.n_evaluations += sum(n for _, n in done.values())
    return {n: done[n][0] for n in names}


# ------------------------------------------------------------------------------- lmfit conf_interval
def likelihood_ratio_prob(best_fit, new_fit) -> float:
    """``prob_func`` for :func:`lmfit.conf_interval`: chi-square likelihood-ratio test with known variances."""
    nfix = max(best_fit.nvarys - new_fit.nvarys, 1)
    dchi = max(new_fit.chisqr - best_fit.chisqr, 0.0)
    return float(stats.chi2.cdf(dchi, nfix))


def confidence_intervals(minimizer, result, names: Sequence[str] | None = None, sigmas=(1, 2)):
    """lmfit's :func:`conf_interval` with the likelihood-ratio test.

    Returns ``(ci, message)``: ``ci`` as returned by lmfit (or None) and a message saying why it failed, if it
    did (lmfit needs >= 2 varying parameters with finite standard errors, i.e. an invertible Hessian).
    """
    import lmfit
    names = [n for n in (names or [n for n, p in result.params.items() if p.vary])]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ci = lmfit.conf_interval(minimizer, result, p_names=names, sigmas=list(sigmas),
                                     prob_func=likelihood_ratio_prob)
        except Exception as exc:  # lmfit raises MinimizerException and others; report honestly
            return None, f"lmfit.conf_interval failed: {type(exc).__name__}: {exc}"
    notes = sorted({str(w.message) for w in caught if issubclass(w.category, UserWarning)})
    return ci, ("lmfit warnings: " + "; ".join(notes)) if notes else ""


def sample_posterior(problem: FitProblem, result, steps: int = 1000, walkers: int = 16, burn: int | None = None,
                     thin: int | None = None, seed: int = 1):
    """Posterior sample with lmfit's emcee interface (uniform priors within the bounds).

    The residuals are already divided by their standard errors, hence ``is_weighted=True``. Walkers start in
    a small ball around the fit, reflected into the bounds (parameters pinned at a bound would otherwise start
    half the walkers outside the prior). ``burn`` defaults to a quarter of ``steps``; ``thin`` to 1.
    Returns the lmfit MinimizerResult (``.flatchain`` is a pandas DataFrame of draws).
    """
    try:
        import emcee  # noqa: F401
    except ImportError:  # pragma: no cover
        raise TregpdError("posterior sampling needs the optional dependency 'emcee' (pip install tregpd[mcmc])")
    steps = int(steps)
    if steps < 8:
        raise TregpdError(f"posterior sampling needs at least 8 steps, got {steps}")
    burn = steps // 4 if burn is None else min(int(burn), steps - 4)
    thin = 1 if thin is None else max(1, int(thin))
    params = result.params.copy()
    names = [n for n, p in params.items() if p.vary]
    rng = np.random.default_rng(seed)
    pos = np.empty((walkers, len(names)))
    for k, n in enumerate(names):
        p = params[n]
        width = 1e-3 * (p.max - p.min) if np.isfinite(p.max - p.min) else 1e-3 * max(abs(p.value), 1.0)
        x = p.value + width * rng.standard_normal(walkers)
        x = np.where(x < p.min, 2 * p.min - x, x)
        x = np.where(x > p.max, 2 * p.max - x, x)
        pos[:, k] = np.clip(x, p.min, p.max)
    mini = make_minimizer(problem, params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return mini.minimize(method="emcee", steps=steps, nwalkers=walkers, burn=burn, thin=thin, pos=pos,
                             is_weighted=True, seed=seed, progress=False)
