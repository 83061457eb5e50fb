"""Global (Sobol, Morris) and local sensitivity of the week-24 outcomes to every model parameter.

Outputs (:data:`OUTPUTS`), per virtual patient on a regimen (default: the assumed Shanxi reference regimen):

* ``treg_w24``, ``th17_w24`` (cells/uL) and ``ratio_w24`` (Th17/Treg) at week 24;
* ``selectivity_margin`` = peak C_IL2 / il2_ec50_effector, the peak taken over a grid of
  :data:`MARGIN_STEP_DAY` (0.01 d = 14.4 min) across the first IL-2 course (days 0-5 by default). Below 1 the
  IL-2 peak stays under the intermediate-affinity receptor's EC50 (low-dose selectivity for Treg); the grid
  maximum underestimates the true peak by less than ~0.3 % for the default PK (it is exact for any parameter
  that only scales the concentration curve, such as bioavailability);
* ``treg_fold_w24``, ``th17_fold_w24``, ``ratio_fold_w24``: week-24 value / week-0 value. Across the parameter
  box the absolute week-24 values are dominated by the baseline parameters (which span 10-500x); the fold
  changes isolate what the treatment does.

Input space (:class:`ParameterSpace`): every parameter of the parameter file within its ``[lower, upper]``
bounds, independent, uniform on a **log scale when upper/lower >= 10** (and lower > 0), uniform otherwise;
the parameters that set the baseline steady state (naive/treg/th17_baseline) are included. The samplers
work on the unit hypercube; :meth:`ParameterSpace.to_values` maps it to parameter values. Sobol indices are
properties of the input distribution, so this is exactly Sobol analysis of the log-uniform/uniform inputs.

The global methods analyse **ln y** for this model (all outputs are positive and span orders of magnitude over
the parameter box, so raw-scale variance is dominated by a few extreme samples; on the log scale the indices
apportion the variance of the fold-change). Pass ``log_outputs=False`` for raw-scale indices.

Methods (SALib): Sobol/Saltelli (``sobol`` sampler, Jansen/Saltelli estimators, bootstrap confidence
intervals; ``N (D + 2)`` model runs without second-order indices, ``N (2D + 2)`` with), Morris elementary
effects (``r (D + 1)`` runs; mu* in output units per full parameter range), and local normalised
derivatives ``d ln y / d ln theta`` at the typical patient by central differences (``2 D`` runs).

All model runs go through a :class:`~tregpd.scenarios.backends.Backend` in chunks (:func:`evaluate`), so a
Dask cluster runs the same code; runs are combined in chunk order, so the indices do not depend on the
backend or the chunk size.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from tregpd.model.dosing import EventTable, Regimen, reference_regimen
from tregpd.errors import IntegrationError, TregpdError
from tregpd.model.parameters import ParameterSet, _PER_DAY, default_parameters
from tregpd.model.simulate import SolverOptions, simulate_population, variables_for
from tregpd.model.structures import get_model

from .backends import Backend, InProcessBackend


class SensitivityError(TregpdError):
    """Bad sensitivity-analysis settings."""


def _salib(kind: str):
    """SALib's sample and analyze modules for ``kind`` ("sobol" or "morris"), with a clear error if absent."""
    try:
        import importlib
        return (importlib.import_module(f"SALib.sample.{kind}"), importlib.import_module(f"SALib.analyze.{kind}"))
    except ImportError:
        raise SensitivityError("global sensitivity needs SALib; install it with pip install 'tregpd[sensitivity]'") \
            from None


#: Outputs of :class:`TregpdModel` (name -> unit).
OUTPUTS: dict[str, str] = {"treg_w24": "cells/uL", "th17_w24": "cells/uL", "ratio_w24": "1",
                           "selectivity_margin": "1", "treg_fold_w24": "1", "th17_fold_w24": "1",
                           "ratio_fold_w24": "1"}
MARGIN_STEP_DAY = 0.01
MARGIN_WINDOW_DAY = (0.0, 5.0)
LOG_SCALE_RATIO = 10.0
METHODS = ("sobol", "morris", "local")


# ======================================================================================= input space
@dataclass(frozen=True)
class ParameterSpace:
    """Independent inputs on boxes: ``names``, ``lower``, ``upper`` (D,), ``log`` (D,) bool.

    ``to_values(u)`` maps unit-hypercube points ``u`` (n, D) to values: ``lower * (upper/lower)**u`` for
    log-scaled inputs, ``lower + u (upper - lower)`` otherwise.
    """

    names: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    log: np.ndarray

    def __post_init__(self):
        lo = np.asarray(self.lower, float)
        hi = np.asarray(self.upper, float)
        lg = np.asarray(self.log, bool)
        d = len(self.names)
        if d == 0 or lo.shape != (d,) or hi.shape != (d,) or lg.shape != (d,):
            raise SensitivityError("parameter space: names, lower, upper and log must have one entry per input")
        for i, nm in enumerate(self.names):
            if not (math.isfinite(lo[i]) and math.isfinite(hi[i]) and lo[i] < hi[i]):
                raise SensitivityError(f"parameter space: {nm!r} needs finite bounds lower < upper, "
                                       f"got [{lo[i]}, {hi[i]}]")
            if lg[i] and lo[i] <= 0:
                raise SensitivityError(f"parameter space: {nm!r} is log-scaled but its lower bound is {lo[i]}")
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "lower", lo)
        object.__setattr__(self, "upper", hi)
        object.__setattr__(self, "log", lg)

    @property
    def dimension(self) -> int:
        return len(self.names)

    @classmethod
    def from_parameters(cls, parameters: ParameterSet, names: Sequence[str] | None = None,
                        log_ratio: float = LOG_SCALE_RATIO, model=None) -> "ParameterSpace":
        """All parameters of model structure ``model`` (default: the default structure), or the named ones,
        within their file bounds; log scale if upper/lower >= log_ratio."""
        names = tuple(get_model(model).parameter_names if names is None else names)
        for nm in names:
            parameters[nm]  # raises ParameterError for unknown names
        lo = np.array([parameters[nm].lower for nm in names])
        hi = np.array([parameters[nm].upper for nm in names])
        fixed = [nm for nm, a, b in zip(names, lo, hi) if not a < b]
        if fixed:
            raise SensitivityError(f"parameters with lower == upper cannot be varied: {fixed}")
        log = (lo > 0) & (hi / np.where(lo > 0, lo, 1.0) >= log_ratio)
        return cls(names, lo, hi, log)

    def salib_problem(self) -> dict:
        """SALib problem on the unit hypercube (values come from :meth:`to_values`)."""
        return {"num_vars": self.dimension, "names": list(self.names), "bounds": [[0.0, 1.0]] * self.dimension}

    def to_values(self, u: np.ndarray) -> np.ndarray:
        u = np.atleast_2d(np.asarray(u, float))
        lin = self.lower + u * (self.upper - self.lower)
        with np.errstate(divide="ignore", invalid="ignore"):
            logv = self.lower * (self.upper / np.where(self.log, self.lower, 1.0)) ** u
        v = np.where(self.log, logv, lin)
        return np.clip(v, self.lower, self.upper)   # guard against rounding just outside a bound

    def to_frame(self):
        import pandas as pd
        return pd.DataFrame({"parameter": self.names, "lower": self.lower, "upper": self.upper,
                             "scale": np.where(self.log, "log", "linear")})


# ============================================================================================ models
class SensitivityModel:
    """A vectorised model evaluated in chunks: ``chunk_function(task) -> (n, n_outputs)``.

    Subclasses define ``output_names``, ``units``, the module-level ``chunk_function`` and
    ``make_task(values, parallel_kernel, first_row)`` (``values`` = input values, shape (n, D) in the order
    of the :class:`ParameterSpace`).
    """

    output_names: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    chunk_function = None
    #: analyse ln(y) instead of y in the global methods (outputs must be > 0)
    log_outputs: bool = False

    def make_task(self, values: np.ndarray, parallel_kernel: bool, first_row: int):  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> dict:
        return {"model": type(self).__name__}


def ishigami_chunk(task) -> np.ndarray:
    """Ishigami function ``sin x1 + a sin^2 x2 + b x3^4 sin x1`` of rows of ``x`` (chunk function)."""
    x, a, b = task
    y = np.sin(x[:, 0]) + a * np.sin(x[:, 1]) ** 2 + b * x[:, 2] ** 4 * np.sin(x[:, 0])
    return y[:, None]


class IshigamiModel(SensitivityModel):
    """Ishigami & Homma (1990) test function on [-pi, pi]^3, with analytic Sobol indices
    (:meth:`analytic_indices`)."""

    output_names = ("y",)
    units = ("1",)
    chunk_function = staticmethod(ishigami_chunk)

    def __init__(self, a: float = 7.0, b: float = 0.1):
        self.a, self.b = float(a), float(b)

    @staticmethod
    def space() -> ParameterSpace:
        return ParameterSpace(("x1", "x2", "x3"), np.full(3, -math.pi), np.full(3, math.pi), np.zeros(3, bool))

    def make_task(self, values, parallel_kernel, first_row):
        return (values, self.a, self.b)

    def analytic_indices(self) -> dict[str, np.ndarray]:
        """First-order ``S1`` and total ``ST`` indices (Sobol' & Levitan 1999; Saltelli et al. 2008 p. 179)."""
        a, b, pi = self.a, self.b, math.pi
        v1 = 0.5 * (1 + b * pi ** 4 / 5) ** 2
        v2 = a ** 2 / 8
        v13 = b ** 2 * pi ** 8 / 18 - b ** 2 * pi ** 8 / 50
        var = v1 + v2 + v13
        return {"S1": np.array([v1, v2, 0.0]) / var, "ST": np.array([v1 + v13, v2, v13]) / var}

    def describe(self):
        return {"model": "ishigami", "a": self.a, "b": self.b}


def tregpd_chunk(task) -> np.ndarray:
    """Simulate rows of ``theta`` and return the :data:`OUTPUTS` (chunk function; picklable).

    ``task = (theta, events, t_out, i_w24, margin_cols, options, parallel, first_row, model)`` (``theta`` in
    the parameter order of model structure ``model``, a name). Patients whose
    integration fails with the default method are retried with rosenbrock23; if that fails too an
    :class:`IntegrationError` names the sample row.
    """
    theta, events, t_out, i_w24, margin_cols, options, parallel, first_row, model = task
    names = get_model(model).parameter_names
    col = {v: c for v, (c, _) in variables_for(model).items()}
    res = simulate_population(theta, events=events, t_out=t_out, options=options, parallel=parallel,
                              on_failure="keep", model=model)
    values = res.values
    if res.n_failed:
        bad = np.flatnonzero(~res.ok)
        stiff = SolverOptions(method="rosenbrock23", pk=options.pk, rtol=options.rtol, atol=options.atol,
                              max_steps=options.max_steps)
        retry = simulate_population(theta[bad], events=events, t_out=t_out, options=stiff, parallel=parallel,
                                    on_failure="keep", model=model)
        if retry.n_failed:
            i = bad[np.flatnonzero(~retry.ok)[0]]
            msg = retry.failures()[0][1]
            vals = ", ".join(f"{nm}={theta[i, j]:.4g}" for j, nm in enumerate(names))
            raise IntegrationError(f"sample row {first_row + i}: integration failed with dopri5 and "
                                   f"rosenbrock23 ({msg}); kernel-unit parameters: {vals}")
        values = values.copy()
        values[bad] = retry.values
    treg = values[:, i_w24, col["treg"]]
    th17 = values[:, i_w24, col["th17"]]
    peak = values[:, margin_cols, col["c_il2"]].max(axis=1)
    margin = peak / theta[:, names.index("il2_ec50_effector")]
    treg0 = values[:, 0, col["treg"]]     # t_out[0] = 0: the baseline
    th170 = values[:, 0, col["th17"]]
    return np.column_stack([treg, th17, th17 / treg, margin, treg / treg0, th17 / th170,
                            (th17 / treg) / (th170 / treg0)])


class TregpdModel(SensitivityModel):
    """The tregpd model as a function of (some of) its parameters: outputs :data:`OUTPUTS`.

    Parameters
    ----------
    parameters : ParameterSet
        Values of the parameters not in ``space`` (default: literature priors).
    space : ParameterSpace
        The varied parameters (names must be model parameters).
    regimen : Regimen
        Default: the assumed reference regimen over ``weeks``.
    weeks : float
        Time of the Treg/Th17/ratio outputs (default 24).
    margin_window_day : (float, float)
        Window of the C_IL2 peak for the selectivity margin (default days 0-5: the first course).
    options : SolverOptions
    model : str, optional
        Model structure (default: the default structure); ``space`` must name parameters it reads.
    """

    output_names = tuple(OUTPUTS)
    units = tuple(OUTPUTS.values())
    chunk_function = staticmethod(tregpd_chunk)
    log_outputs = True

    def __init__(self, parameters: ParameterSet | None = None, space: ParameterSpace | None = None,
                 regimen: Regimen | None = None, weeks: float = 24.0,
                 margin_window_day: tuple[float, float] = MARGIN_WINDOW_DAY, options: SolverOptions | None = None,
                 model=None):
        self.structure = get_model(model)
        self.model = self.structure.name
        names = self.structure.parameter_names
        self.parameters = parameters if parameters is not None else default_parameters()
        self.space = space if space is not None else ParameterSpace.from_parameters(self.parameters,
                                                                                     model=self.model)
        unknown = [nm for nm in self.space.names if nm not in names]
        if unknown:
            raise SensitivityError(f"not parameters of model {self.model!r}: {unknown}")
        if not (isinstance(weeks, (int, float)) and math.isfinite(weeks) and weeks > 0):
            raise SensitivityError(f"weeks must be a positive number, got {weeks!r}")
        self.weeks = float(weeks)
        self.regimen = regimen if regimen is not None else reference_regimen(weeks=self.weeks)
        self.events: EventTable = self.regimen.events()
        w0, w1 = (float(v) for v in margin_window_day)
        if not (0 <= w0 < w1):
            raise SensitivityError(f"margin window must satisfy 0 <= start < end, got {margin_window_day}")
        t_end = self.weeks * 7.0
        grid = np.arange(w0, w1 + 1e-9, MARGIN_STEP_DAY)
        # dose times inside the window are on the grid too (post-dose values, so a bolus peak is caught)
        doses = self.events.time_day[(self.events.time_day >= w0) & (self.events.time_day <= w1)]
        self.t_out = np.unique(np.round(np.concatenate([[0.0], grid, doses, [t_end]]), 12))
        self.i_w24 = int(np.flatnonzero(np.isclose(self.t_out, t_end))[0])
        self.margin_cols = np.flatnonzero((self.t_out >= w0 - 1e-12) & (self.t_out <= w1 + 1e-12))
        self.options = options if options is not None else SolverOptions()
        self.typical_theta = self.parameters.to_theta(self.model)
        self._cols = np.array([names.index(nm) for nm in self.space.names])
        self._factors = np.array([_PER_DAY.get(self.parameters[nm].unit, 1.0) for nm in self.space.names])

    def theta(self, values: np.ndarray) -> np.ndarray:
        """Kernel-unit parameter matrix with the ``space`` columns set from ``values`` (file units)."""
        values = np.atleast_2d(values)
        th = np.tile(self.typical_theta, (values.shape[0], 1))
        th[:, self._cols] = values * self._factors
        return th

    def make_task(self, values, parallel_kernel, first_row):
        return (self.theta(values), self.events, self.t_out, self.i_w24, self.margin_cols, self.options,
                parallel_kernel, first_row, self.model)

    def typical_values(self) -> np.ndarray:
        return np.array([self.parameters[nm].value for nm in self.space.names])

    def describe(self):
        return {"model": "tregpd", "structure": self.model, "declaration": self.structure.content_hash,
                "regimen": self.regimen.to_dict(), "weeks": self.weeks,
                "margin_step_day": MARGIN_STEP_DAY, "n_output_times": int(self.t_out.size),
                "solver": {"method": self.options.method, "rtol": self.options.rtol, "atol": self.options.atol}}


# ======================================================================================== evaluation
def evaluate(model: SensitivityModel, values: np.ndarray, backend: Backend | None = None, chunk: int = 2000,
             progress: bool = False) -> np.ndarray:
    """Model outputs for every row of ``values`` (n, D): array (n, n_outputs), computed in chunks of
    ``chunk`` rows on ``backend`` and concatenated in row order."""
    values = np.atleast_2d(np.asarray(values, float))
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise SensitivityError(f"chunk size must be a positive integer, got {chunk!r}")
    backend = backend if backend is not None else InProcessBackend()
    starts = range(0, values.shape[0], chunk)
    tasks = (model.make_task(values[s:s + chunk], backend.parallel_kernel, s) for s in starts)
    results = backend.map(model.chunk_function, tasks)
    if progress:
        from tqdm.auto import tqdm
        results = tqdm(results, total=len(starts), desc="model runs", unit="chunk")
    out = [np.asarray(r, float) for r in results]
    y = np.concatenate(out) if out else np.zeros((0, len(model.output_names)))
    if not np.all(np.isfinite(y)):
        i = int(np.flatnonzero(~np.isfinite(y).all(axis=1))[0])
        raise IntegrationError(f"sample row {i}: non-finite model output {y[i].tolist()}")
    return y


@dataclass
class SensitivityResult:
    """Ranked sensitivity table and what produced it.

    ``table`` (pandas, one row per output x parameter): method, output, rank (1 = most influential),
    parameter, scale, lower, upper and the method's indices (sobol: S1, S1_conf, ST, ST_conf; morris: mu_star,
    mu_star_conf, mu, sigma; local: elasticity, value).
    """

    method: str
    table: object
    n_evaluations: int
    elapsed_s: float
    settings: dict = field(default_factory=dict)

    def top(self, output: str, k: int = 5) -> list[str]:
        t = self.table[self.table["output"] == output].sort_values("rank")
        return list(t["parameter"][:k])


def _transform(model: SensitivityModel, y: np.ndarray, log_outputs: bool | None):
    log_outputs = model.log_outputs if log_outputs is None else bool(log_outputs)
    if not log_outputs:
        return y, "none"
    bad = np.argwhere(y <= 0)
    if bad.size:
        i, k = bad[0]
        raise SensitivityError(f"sample row {i}: output {model.output_names[k]!r} = {y[i, k]!r} is not > 0, "
                               "so its logarithm cannot be analysed (use log_outputs=False)")
    return np.log(y), "ln"


def _rank_frame(method, model, space, per_output: dict[str, dict[str, np.ndarray]], key: str,
                transform: str = "none"):
    import pandas as pd
    frames = []
    for output, cols in per_output.items():
        df = pd.DataFrame({"method": method, "output": output, "transform": transform,
                           "parameter": list(space.names),
                           "scale": np.where(space.log, "log", "linear"), "lower": space.lower,
                           "upper": space.upper, **cols})
        order = np.argsort(-np.abs(df[key].to_numpy()), kind="stable")
        df = df.iloc[order].reset_index(drop=True)
        df.insert(3, "rank", np.arange(1, len(df) + 1))
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def sobol_analysis(model: SensitivityModel, space: ParameterSpace, n: int = 256, *, seed: int = 1,
                   calc_second_order: bool = False, num_resamples: int = 200, backend: Backend | None = None,
                   chunk: int = 2000, progress: bool = False, log_outputs: bool | None = None) -> SensitivityResult:
    """Sobol first-order (S1) and total (ST) indices with SALib (sobol sampler + sobol analyser).

    ``n`` base samples (a power of 2) give ``n (D + 2)`` model runs (``n (2D + 2)`` with second order).
    Ranked by ST. Confidence intervals are SALib's bootstrap 95 % intervals (seeded). ``log_outputs``
    (default: the model's ``log_outputs``) analyses ln(y).
    """
    sobol_sample, sobol_analyze = _salib("sobol")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2 or (n & (n - 1)):
        raise SensitivityError(f"Sobol base sample size must be a power of 2 (>= 2), got {n!r}")
    problem = space.salib_problem()
    t0 = time.perf_counter()
    u = sobol_sample.sample(problem, int(n), calc_second_order=calc_second_order, scramble=True, seed=seed)
    y = evaluate(model, space.to_values(u), backend, chunk, progress)
    y, transform = _transform(model, y, log_outputs)
    per_output = {}
    for k, output in enumerate(model.output_names):
        si = sobol_analyze.analyze(problem, y[:, k], calc_second_order=calc_second_order,
                                   num_resamples=num_resamples, seed=seed)
        per_output[output] = {"S1": si["S1"], "S1_conf": si["S1_conf"], "ST": si["ST"], "ST_conf": si["ST_conf"]}
    elapsed = time.perf_counter() - t0
    table = _rank_frame("sobol", model, space, per_output, "ST", transform)
    return SensitivityResult("sobol", table, int(u.shape[0]), elapsed,
                             {"n": int(n), "seed": seed, "calc_second_order": calc_second_order,
                              "num_resamples": num_resamples, "sampler": "SALib sobol (scrambled Sobol')"})


def morris_analysis(model: SensitivityModel, space: ParameterSpace, n: int = 64, *, num_levels: int = 4,
                    seed: int = 1, num_resamples: int = 200, backend: Backend | None = None, chunk: int = 2000,
                    progress: bool = False, log_outputs: bool | None = None) -> SensitivityResult:
    """Morris elementary effects with SALib: ``n`` trajectories, ``n (D + 1)`` runs. Ranked by mu*.

    Inputs are on the unit hypercube, so mu* is the mean absolute change of the output for a step of
    2/3 of each parameter's (log-)range (4 levels), in output units (of ln y with ``log_outputs``).
    """
    morris_sample, morris_analyze = _salib("morris")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise SensitivityError(f"number of Morris trajectories must be an integer >= 2, got {n!r}")
    problem = space.salib_problem()
    t0 = time.perf_counter()
    u = morris_sample.sample(problem, int(n), num_levels=num_levels, seed=seed)
    y = evaluate(model, space.to_values(u), backend, chunk, progress)
    y, transform = _transform(model, y, log_outputs)
    per_output = {}
    for k, output in enumerate(model.output_names):
        si = morris_analyze.analyze(problem, u, y[:, k], num_resamples=num_resamples, num_levels=num_levels,
                                    seed=seed)
        per_output[output] = {"mu_star": np.asarray(si["mu_star"]), "mu_star_conf": np.asarray(si["mu_star_conf"]),
                              "mu": np.asarray(si["mu"]), "sigma": np.asarray(si["sigma"])}
    elapsed = time.perf_counter() - t0
    table = _rank_frame("morris", model, space, per_output, "mu_star", transform)
    return SensitivityResult("morris", table, int(u.shape[0]), elapsed,
                             {"n_trajectories": int(n), "num_levels": num_levels, "seed": seed,
                              "num_resamples": num_resamples})


def local_sensitivity(model: SensitivityModel, space: ParameterSpace, at: np.ndarray | None = None, *,
                      rel_step: float = 1e-2, backend: Backend | None = None,
                      chunk: int = 2000) -> SensitivityResult:
    """Normalised local derivatives (elasticities) ``d ln y / d ln theta`` at ``at`` (default: the typical
    values of a :class:`TregpdModel`), by central differences in ``ln theta``:

        (ln y(theta e^h) - ln y(theta e^-h)) / (2 h),   h = rel_step,

    exact for power laws; O(h^2) otherwise (h = 0.01: truncation ~1e-4 relative; solve at tight tolerance,
    e.g. rtol 1e-8, so that solver error / h stays below that). Where a step would leave the bounds the
    difference is one-sided.
    Parameters whose value is 0 have no log-derivative (reported as 0 with ``value`` 0) and outputs that are
    not positive fall back to ``(dy/dtheta) theta / y`` on the same points.
    """
    if at is None:
        if not hasattr(model, "typical_values"):
            raise SensitivityError("local sensitivity needs 'at' (the point) for this model")
        at = model.typical_values()
    at = np.asarray(at, float)
    d = space.dimension
    if at.shape != (d,):
        raise SensitivityError(f"'at' must have {d} values, got shape {at.shape}")
    if not (isinstance(rel_step, float) and 0 < rel_step < 0.5):
        raise SensitivityError(f"rel_step must be a float in (0, 0.5), got {rel_step!r}")
    t0 = time.perf_counter()
    plus = np.tile(at, (d, 1))
    minus = np.tile(at, (d, 1))
    for j in range(d):
        up, dn = at[j] * math.exp(rel_step), at[j] * math.exp(-rel_step)
        if up > space.upper[j]:
            up = at[j]
        if dn < space.lower[j]:
            dn = at[j]
        plus[j, j], minus[j, j] = up, dn
    y = evaluate(model, np.vstack([at[None, :], plus, minus]), backend, chunk)
    y0, yp, ym = y[0], y[1:d + 1], y[d + 1:]
    per_output = {}
    for k, output in enumerate(model.output_names):
        el = np.zeros(d)
        for j in range(d):
            if at[j] <= 0 or plus[j, j] == minus[j, j]:
                continue
            dlnth = math.log(plus[j, j]) - math.log(minus[j, j])
            if yp[j, k] > 0 and ym[j, k] > 0:
                el[j] = (math.log(yp[j, k]) - math.log(ym[j, k])) / dlnth
            elif y0[k] != 0:
                el[j] = (yp[j, k] - ym[j, k]) / (plus[j, j] - minus[j, j]) * at[j] / y0[k]
        per_output[output] = {"elasticity": el, "value": at, "output_value": np.full(d, y0[k])}
    elapsed = time.perf_counter() - t0
    table = _rank_frame("local", model, space, per_output, "elasticity", "elasticity")
    return SensitivityResult("local", table, int(y.shape[0]), elapsed, {"rel_step": rel_step})


def run_sensitivity(method: str, model: SensitivityModel, space: ParameterSpace, n: int | None = None, *,
                    seed: int = 1, backend: Backend | None = None, chunk: int = 2000,
                    progress: bool = False) -> SensitivityResult:
    """Dispatch to :func:`sobol_analysis` (n default 512), :func:`morris_analysis` (n = trajectories,
    default 64) or :func:`local_sensitivity`."""
    if method == "sobol":
        return sobol_analysis(model, space, 512 if n is None else n, seed=seed, backend=backend, chunk=chunk,
                              progress=progress)
    if method == "morris":
        return morris_analysis(model, space, 64 if n is None else n, seed=seed, backend=backend, chunk=chunk,
                               progress=progress)
    if method == "local":
        return local_sensitivity(model, space, backend=backend, chunk=chunk)
    raise SensitivityError(f"method must be one of {list(METHODS)}, got {method!r}")
