"""Fit problem: model + cohort data + regimen + which parameters vary (the pints "problem" layer).

A :class:`FitProblem` turns parameter values into the model's version of every fitted cohort statistic:

* ``mode="typical"``: one typical patient (all parameters at their typical values); its trajectory stands in
  for the cohort's median of every observable (the Th17/Treg ratio is the typical patient's own ratio).
  ``median`` and ``median_fold_change`` rows are fitted; q25/q75/mean need a population and are not used.
* ``mode="population"``: ``n_patients`` virtual patients with log-normal inter-individual variability (IIV) on
  the parameters named in ``iiv`` (:func:`tregpd.model.sample_population`, seeded); the statistic of each
  observable is computed over patients at each observed week, the ratio per patient first. The same seed is
  used at every evaluation (common random numbers), so the objective is a smooth function of the typical
  values. The numba population driver (``prange`` over patients) does the work.

Baselines (Treg, Th17, naive) are set from the cohort's week-0 medians (:func:`baseline_values`) and are not
fitted; the rows used for them are matched by construction and excluded from the objective.

Sampling phase (ASSUMPTION): a week-``w`` sample is taken at day ``7 w``. With the reference regimen's 28-day
IL-2 cycles, week 24 = day 168 is the last day of the 6th cycle, 24 days after the last dose: the trough of
the cycle's Treg oscillation, i.e. blood drawn before a next course would start.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from tregpd.model import (DEFAULT_IIV, ParameterSet, Regimen, SolverOptions, default_parameters,
                          reference_regimen, sample_population, simulate, simulate_population)
from tregpd.errors import IntegrationError, ParameterError, TregpdError
from tregpd.model.parameters import _PER_DAY
from tregpd.model.simulate import simulate_checked, theta_matrix, variables_for

from .cohort import Cohort, baseline_values
from .objective import DEFAULT_LOG_SD, log_residuals, standard_errors

MODES = ("typical", "population")
#: statistics each mode can fit
FITTED_STATISTICS = {"typical": ("median", "median_fold_change"),
                     "population": ("median", "q25", "q75", "mean", "median_fold_change")}
_PERCENTILE = {"median": 50.0, "q25": 25.0, "q75": 75.0}
#: residual vectors remembered per problem (see :meth:`FitProblem.residuals`)
CACHE_SIZE = 16
#: largest fraction of failed virtual patients tolerated in one objective evaluation
MAX_FAILED_FRACTION = 0.02


def cohort_regimen(cohort: Cohort) -> Regimen:
    """The assumed reference regimen, long enough to cover the cohort's last week (at least 24 weeks)."""
    return reference_regimen(weeks=max(24.0, math.ceil(cohort.max_week)))


@dataclass
class FitProblem:
    """Model + data + regimen + free parameters.

    Parameters
    ----------
    cohort : Cohort
    parameters : ParameterSet, optional
        Priors (default: the bundled file). Baselines are replaced by the cohort's week-0 values.
    free : sequence of str, optional
        Names of the parameters that vary; default: those flagged ``fitted = true`` in the parameter file.
    regimen : Regimen, optional
        Default: :func:`cohort_regimen` (the ASSUMED Shanxi reference regimen).
    mode : {"typical", "population"}
    n_patients, iiv, seed : population mode only (IIV as SD of the log; default ``DEFAULT_IIV``).
    rtol, atol : solver tolerances (tight enough for finite-difference Jacobians).
    default_log_sd : between-patient log-SD used for weights when no IQR is given.
    model : str or ModelStructure, optional
        The model structure simulated (default: the default structure); after construction, its name. Free
        parameters must be parameters it reads: a parameter flagged ``fitted = true`` in the parameter file that
        the structure does not read is left out (listed in ``dropped_free`` and noted in the fit report); one
        named in ``free`` is an error.
    """

    cohort: Cohort
    parameters: ParameterSet | None = None
    free: Sequence[str] | None = None
    regimen: Regimen | None = None
    mode: str = "typical"
    n_patients: int = 300
    iiv: Mapping[str, float] | None = None
    seed: int = 20170614
    rtol: float = 1e-8
    atol: float = 1e-10
    default_log_sd: float = DEFAULT_LOG_SD
    model: str | None = None
    n_evaluations: int = field(default=0, init=False)
    #: population mode: run patients on the prange kernel (False: its serial twin, same numbers; set in
    #: forked profile workers, which must not start OpenMP threads)
    parallel: bool = field(default=True, init=False)

    def __post_init__(self):
        if self.mode not in MODES:
            raise TregpdError(f"fit mode must be one of {MODES}, got {self.mode!r}")
        from tregpd.model.structures import get_model
        self.structure = get_model(self.model)
        self.model = self.structure.name
        reads = set(self.structure.parameter_names)
        priors = self.parameters if self.parameters is not None else default_parameters()
        self.priors = priors
        base, base_src, self.baseline_lines = baseline_values(self.cohort)
        self.baseline_sources = base_src
        try:
            self.parameters = priors.with_values(**base)
        except ParameterError as exc:
            raise TregpdError(f"{self.cohort.origin}: week-0 baseline outside the parameter bounds: {exc}") from None
        requested = tuple(priors.fitted_names if self.free is None else self.free)
        for n in requested:
            self.parameters[n]  # raises ParameterError for unknown names
        #: requested free parameters (flagged fitted in the parameter file, or named in ``free``) that the
        #: structure does not read: left out of the fit (they cannot move the model), noted in the report
        self.dropped_free: tuple[str, ...] = tuple(n for n in requested if n not in reads)
        free = tuple(n for n in requested if n in reads)
        for n in free:
            if n in base:
                raise TregpdError(f"parameter {n!r} is set from the cohort's week-0 data and cannot be fitted")
        if not free:
            why = (f" (flagged fitted but not read by model {self.model!r}: {', '.join(self.dropped_free)})"
                   if self.dropped_free else "")
            raise TregpdError("no free parameters: flag some as fitted in the parameter file or pass "
                              f"free=...{why}")
        self.free = free
        self.regimen = self.regimen if self.regimen is not None else cohort_regimen(self.cohort)
        self.iiv = dict(DEFAULT_IIV if self.iiv is None else self.iiv)
        if self.mode == "population" and (isinstance(self.n_patients, bool) or self.n_patients < 10):
            raise TregpdError(f"population mode needs at least 10 virtual patients, got {self.n_patients!r}")
        self.options = SolverOptions(rtol=self.rtol, atol=self.atol)
        self._build_targets()
        self._prepare_objective()

    # ------------------------------------------------------------------------------------------ targets
    def _build_targets(self) -> None:
        f = self.cohort.frame.copy()
        sigma, rules = standard_errors(self.cohort, self.default_log_sd)
        f["sigma_log"] = sigma
        f["weight_rule"] = rules
        roles = []
        for r in f.itertuples():
            if int(r.line) in self.baseline_lines:
                roles.append("baseline (set from data, not fitted)")
            elif r.statistic == "sd":
                roles.append("weight only")
            elif r.statistic not in FITTED_STATISTICS[self.mode]:
                roles.append("population fit only" if r.statistic in FITTED_STATISTICS["population"]
                             else f"not fitted in {self.mode} mode")
            else:
                roles.append("fitted")
        f["role"] = roles
        self.table = f
        fit = f[f["role"] == "fitted"]
        self._fit_idx = fit.index.to_numpy()
        self.observed = fit["value"].to_numpy(dtype=float)
        self.sigma = fit["sigma_log"].to_numpy(dtype=float)
        weeks = sorted(set(f["week"].astype(float)) | {0.0})
        self.t_out = np.array([7.0 * w for w in weeks])

    @property
    def n_targets(self) -> int:
        return int(self.observed.size)

    # ----------------------------------------------------------------------------------------- model
    def parameter_set(self, values: Mapping[str, float] | None = None) -> ParameterSet:
        """The full ParameterSet with ``values`` (name -> value, file units) substituted."""
        if not values:
            return self.parameters
        return self.parameters.with_values(**{k: float(v) for k, v in values.items()})

    def simulate(self, values: Mapping[str, float] | None = None, t_out=None, n_patients: int | None = None,
                 mode: str | None = None):
        """Simulate the typical patient or the virtual population at ``t_out`` (default: observed days)."""
        pset = self.parameter_set(values)
        t_out = self.t_out if t_out is None else t_out
        mode = self.mode if mode is None else mode
        if mode == "typical":
            return simulate(pset, self.regimen, t_out=t_out, options=self.options, model=self.structure)
        theta = sample_population(pset, int(n_patients or self.n_patients), iiv=self.iiv, seed=self.seed,
                                  model=self.structure)
        res = simulate_population(theta, self.regimen, t_out=t_out, options=self.options, parallel=True,
                                  on_failure="keep", parameters=pset, seed=self.seed, model=self.structure)
        if res.n_failed > MAX_FAILED_FRACTION * res.n_patients:
            res.raise_on_failure()
        return res

    def statistics(self, result, rows=None) -> np.ndarray:
        """Model value of each cohort row in ``rows`` (default: the fitted rows), shape (n_rows,)."""
        if rows is None and np.array_equal(result.time_day, self.t_out):
            plan = self._plan
        else:
            rows = self.table.loc[self._fit_idx] if rows is None else rows
            plan = _statistics_plan(rows, result.time_day, result.variables)
        return _apply_plan(plan, result.values[result.ok])

    # ------------------------------------------------------------------------------ objective (hot path)
    def __reduce__(self):
        """Pickle as the constructor arguments (ParameterSet and ModelStructure objects do not pickle), so that a
        profile likelihood can run in another process (:func:`~tregpd.fitting.optimise.profile_likelihoods`).
        The copy has the same targets and parameters, an empty residual cache and ``n_evaluations`` 0."""
        return (_rebuild_problem, (self.cohort, _parameter_state(self.priors), tuple(self.free), self.regimen,
                                   self.mode, self.n_patients, dict(self.iiv), self.seed, self.rtol, self.atol,
                                   self.default_log_sd, self.model, self.parallel))

    def _prepare_objective(self) -> None:
        """Everything the residual function needs that does not change between evaluations: the kernel-unit
        parameter vector, the event table, the statistics plan of the fitted rows (indices into the output
        array) and, in population mode, the random scores of the virtual patients (common random numbers)."""
        m = self.structure
        self._events = self.regimen.events()
        self._columns = {n: j for j, n in enumerate(m.parameter_names)}
        self._theta0 = theta_matrix(self.parameters, m)[0]
        # the kernel's constraints (> 0, <= 1, ...) are intervals: a parameter whose file bounds satisfy them is
        # valid at any value within its bounds, which _theta_row checks; the others are checked value by value
        self._check = set()
        for name in m.parameter_names:
            p = self.parameters[name]
            for v in (p.lower, p.upper):
                th = self._theta0.copy()
                th[self._columns[name]] = v * _PER_DAY.get(p.unit, 1.0)
                try:
                    theta_matrix(th[None, :], m)
                except ParameterError:
                    self._check.add(name)
        self._plan = _statistics_plan(self.table.loc[self._fit_idx], self.t_out, variables_for(m))
        self._draws: dict[int, list] = {}
        self._cache: OrderedDict = OrderedDict()

    def _theta_row(self, values: Mapping[str, float] | None) -> tuple[np.ndarray, dict]:
        """Kernel-unit parameter vector with ``values`` (file units) substituted, and the substituted values.

        Same numbers as ``self.parameter_set(values).to_theta(model)`` (value x unit factor), without building a
        ParameterSet; values are checked against the parameter's bounds like :meth:`ParameterSet.with_values`."""
        th = self._theta0.copy()
        used = {}
        for name, v in (values or {}).items():
            p = self.parameters[name]                     # ParameterError for unknown names
            v = float(v)
            if not (math.isfinite(v) and p.lower <= v <= p.upper):
                raise ParameterError(f"parameter {name!r}: value {v!r} is outside its bounds "
                                     f"[{p.lower}, {p.upper}]")
            used[name] = v
            j = self._columns.get(name)
            if j is not None:                             # parameters the structure does not read are ignored
                th[j] = v * _PER_DAY.get(p.unit, 1.0)
                if name in self._check:
                    theta_matrix(th[None, :], self.structure)
        return th, used

    def _population_draw(self, n: int) -> list:
        """Per IIV parameter read by the structure: (column, name, exp(omega z) (n,), lower, upper, unit factor).

        The scores ``z`` are those of :func:`tregpd.model.sample_population` for this seed (same generator, same
        draw order); :meth:`_population_theta` checks once per size that it reproduces ``sample_population``
        exactly, so the common random numbers are those of every other population in the project."""
        if n in self._draws:
            return self._draws[n]
        from tregpd.model.parameters import EXPECTED_UNITS
        names = [nm for nm in EXPECTED_UNITS if nm in self.iiv]
        z = np.random.default_rng(self.seed).standard_normal((n, len(names)))
        draw = []
        for k, name in enumerate(names):
            j = self._columns.get(name)
            if j is None:
                continue
            p = self.parameters[name]
            draw.append((j, name, np.exp(self.iiv[name] * z[:, k]), p.lower, p.upper, _PER_DAY.get(p.unit, 1.0)))
        self._draws[n] = draw
        reference = sample_population(self.parameters, n, iiv=self.iiv, seed=self.seed, model=self.structure)
        if not np.array_equal(self._population_theta({}, n), reference):  # pragma: no cover - guards a drift
            raise TregpdError("internal: the fit's virtual population differs from sample_population's "
                              "(common random numbers broken)")
        return draw

    def _population_theta(self, values: Mapping[str, float], n: int) -> np.ndarray:
        """(n, n_parameters) kernel-unit virtual patients around the typical ``values`` (common random numbers)."""
        th0, used = self._theta_row(values)
        th = np.tile(th0, (n, 1))
        for j, name, e, lo, hi, f in self._population_draw(n):
            typical = used.get(name, self.parameters[name].value)
            th[:, j] = np.clip(typical * e, lo, hi) * f
        return th

    def _simulate_fast(self, values: Mapping[str, float]) -> np.ndarray:
        """The objective's simulation at the fitted observation days, no ParameterSet built: the outputs of the
        patients that succeeded, shape (n_ok, n_times, n_outputs). Validation happened once (construction and
        :meth:`_theta_row`), so the kernel is called without :func:`simulate_population`'s per-call checks; a
        failure is re-run through :func:`simulate_population`, whose error names it."""
        if self.mode == "typical":
            th = self._theta_row(values)[0][None, :]
            tolerated, parallel = 0, False
        else:
            th = self._population_theta(values, int(self.n_patients))
            tolerated, parallel = MAX_FAILED_FRACTION * th.shape[0], self.parallel
        out, status = simulate_checked(th, self._events, self.t_out, self.options, self.structure, parallel)
        ok = status == 0
        if (~ok).sum() > tolerated:
            res = simulate_population(th, events=self._events, t_out=self.t_out, options=self.options,
                                      parallel=parallel, on_failure="keep", model=self.structure)
            res.raise_on_failure()
        return out if ok.all() else out[ok]

    def residuals(self, values: Mapping[str, float]) -> np.ndarray:
        """Weighted residual vector (see :mod:`tregpd.fitting.objective`), shape (n_targets,).

        The last :data:`CACHE_SIZE` parameter vectors and their residuals are kept: an optimiser that asks again
        for a point it has seen (lmfit re-evaluates the final point; a profile's refits start where the previous
        one ended) gets the stored vector instead of a second simulation. ``n_evaluations`` counts simulations.
        """
        key = tuple(sorted((k, float(v)) for k, v in values.items()))
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit.copy()
        self.n_evaluations += 1
        r = log_residuals(_apply_plan(self._plan, self._simulate_fast(values)), self.observed, self.sigma)
        self._cache[key] = r
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return r.copy()

    def residual_table(self, values: Mapping[str, float], population_values: Mapping[str, float] | None = None,
                       population_problem: "FitProblem | None" = None):
        """Every cohort row with the typical (and, if given, population) model value and residual in SE units.

        ``population_values`` are simulated with ``population_problem`` (its size, IIV and seed; default: this
        problem's population settings)."""
        import pandas as pd
        t = self.table.copy()
        typ = self.simulate(values, mode="typical")
        model_typ = self.statistics(typ, rows=t)
        ok_typ = t["statistic"].isin(["median", "median_fold_change"]).to_numpy()
        t["model_typical"] = np.where(ok_typ, model_typ, np.nan)
        t["residual_typical_se"] = (np.log(t["model_typical"]) - np.log(t["value"])) / t["sigma_log"]
        if population_values is not None:
            pp = population_problem if population_problem is not None else self
            pop = pp.simulate(population_values, mode="population")
            t["model_population"] = self.statistics(pop, rows=t)
            t["residual_population_se"] = (np.log(t["model_population"]) - np.log(t["value"])) / t["sigma_log"]
        t["relative_error"] = t["model_typical"] / t["value"] - 1.0
        if population_values is not None:
            t["relative_error_population"] = t["model_population"] / t["value"] - 1.0
        return pd.DataFrame(t).drop(columns=["rel_se"])


def _parameter_state(ps: ParameterSet) -> tuple:
    return dict(ps.parameters), ps.name, ps.description, ps.origin


def _rebuild_problem(cohort, pstate, free, regimen, mode, n_patients, iiv, seed, rtol, atol, default_log_sd, model,
                     parallel) -> "FitProblem":
    params, name, description, origin = pstate
    problem = FitProblem(cohort, parameters=ParameterSet(params, name=name, description=description, origin=origin),
                         free=free, regimen=regimen, mode=mode, n_patients=n_patients, iiv=iiv, seed=seed,
                         rtol=rtol, atol=atol, default_log_sd=default_log_sd, model=model)
    problem.parallel = parallel
    return problem


def _statistics_plan(rows, time_day, variables) -> list[tuple]:
    """For each cohort row: (statistic, time index, column spec, week-0 index) into an output array.

    The column spec is an output column, or ``("ratio", th17 column, treg column)`` for the per-patient ratio."""
    t = np.asarray(time_day, dtype=float)
    plan = []
    for r in rows.itertuples():
        j = int(np.flatnonzero(np.isclose(t, 7.0 * r.week))[0])
        if r.observable not in variables:
            raise TregpdError(f"unknown variable {r.observable!r}; known: {', '.join(variables)}")
        col = variables[r.observable][0]
        if col is None:
            col = ("ratio", variables["th17"][0], variables["treg"][0])
        j0 = int(np.flatnonzero(np.isclose(t, 0.0))[0]) if r.statistic == "median_fold_change" else -1
        if r.statistic not in _PERCENTILE and r.statistic not in ("median_fold_change", "mean", "sd"):
            raise TregpdError(f"unknown statistic {r.statistic!r}")  # pragma: no cover - validated on load
        plan.append((r.statistic, j, col, j0))
    return plan


def _apply_plan(plan, values: np.ndarray) -> np.ndarray:
    """Statistics over patients of ``values`` (n_ok_patients, n_times, n_outputs) for each planned row."""
    out = np.empty(len(plan))
    if values.shape[0] == 1:
        # one patient (typical mode): every quantile, the median and the mean are its value (what numpy returns
        # for one element, without its per-call overhead); the SD of one value is 0 by the convention below
        v = values[0]
        for k, (stat, j, col, j0) in enumerate(plan):
            x = v[:, col[1]] / v[:, col[2]] if isinstance(col, tuple) else v[:, col]
            out[k] = x[j] / x[j0] if stat == "median_fold_change" else (0.0 if stat == "sd" else x[j])
        return out
    for k, (stat, j, col, j0) in enumerate(plan):
        if isinstance(col, tuple):
            arr = values[:, :, col[1]] / values[:, :, col[2]]
        else:
            arr = values[:, :, col]
        if stat == "median_fold_change":
            out[k] = np.median(arr[:, j]) / np.median(arr[:, j0])
        elif stat in _PERCENTILE:
            out[k] = np.percentile(arr[:, j], _PERCENTILE[stat])
        elif stat == "mean":
            out[k] = arr[:, j].mean()
        else:  # sd
            out[k] = arr[:, j].std(ddof=1) if arr.shape[0] > 1 else 0.0
    return out
