"""Single-patient and population simulation: validation, kernel call, status handling, results.

>>> from tregpd.model import simulate, reference_regimen
>>> res = simulate(regimen=reference_regimen())
>>> res.to_frame().query("variable == 'treg'").tail(1)       # doctest: +SKIP

Results are arrays of shape ``(n_patients, n_times, n_variables)`` with a tidy pandas view
(``patient, time_day, variable, value, unit``). A failed integration raises :class:`IntegrationError` (single
patient) or is reported per patient in ``status`` (population; ``on_failure="raise"`` by default, or ``"keep"``
to keep the successful patients: failed rows are then masked out of every summary and never contain NaN
passed off as numbers).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from . import kernels as K
from .dosing import EventTable, Regimen, no_treatment
from tregpd.errors import IntegrationError, ParameterError, TregpdError
from .parameters import N_THETA, PARAMETER_NAMES, ParameterSet, default_parameters
from .structures import DEFAULT_MODEL, ModelStructure, get_model

#: output variables: name -> (kernel column or None for derived, unit)
VARIABLES = {
    "naive": (K.OUT_NAIVE, "cells/uL"),
    "treg": (K.OUT_TREG, "cells/uL"),
    "th17": (K.OUT_TH17, "cells/uL"),
    "ratio": (None, "1"),               # Th17/Treg, computed per patient
    "c_il2": (K.OUT_C_IL2, "pM"),
    "c_rapa": (K.OUT_C_RAPA, "ng/mL"),
    "auc_il2": (K.OUT_AUC_IL2, "pM*day"),
    "auc_rapa": (K.OUT_AUC_RAPA, "ng/mL*day"),
}



def variables_for(model=None) -> dict[str, tuple[int | None, str]]:
    """Output variables of a model structure: name -> (kernel column or None for derived, unit)."""
    m = get_model(model)
    out: dict[str, tuple[int | None, str]] = {}
    for i, (name, unit) in enumerate(zip(m.output_names, m.output_units)):
        out[name] = (i, unit)
        if name == "th17":
            out["ratio"] = (None, "1")
    return out


METHODS = {"dopri5": K.METHOD_DOPRI5, "rosenbrock23": K.METHOD_ROSENBROCK23}
#: populations smaller than this run on the serial twin (same numbers, no thread start-up)
PARALLEL_MIN_PATIENTS = 4
PK_MODES = {"closed_form": K.MODE_CLOSED_FORM, "ode": K.MODE_PK_ODE}
STATUS_MESSAGES = {
    K.STATUS_OK: "ok",
    K.STATUS_MAX_STEPS: "maximum number of steps reached (raise max_steps or loosen rtol)",
    K.STATUS_STEP_TOO_SMALL: "step size became too small (stiff or exploding dynamics; with dopri5 try "
                             "method='rosenbrock23')",
    K.STATUS_NONFINITE: "a state became NaN or infinite (parameters outside the model's valid range?)",
    K.STATUS_NEGATIVE: "a cell count became negative beyond the tolerance",
}


@dataclass(frozen=True)
class SolverOptions:
    """Validated solver settings.

    method : "dopri5" (adaptive explicit, default) or "rosenbrock23" (L-stable, for stiff extensions)
    pk : "closed_form" (default; PK evaluated analytically) or "ode" (PK as ODE states)
    rtol, atol : tolerances (atol in the states' units: cells/uL, and IU/mg for PK states in "ode" mode)
    max_steps : per patient
    """

    method: str = "dopri5"
    pk: str = "closed_form"
    rtol: float = 1e-6
    atol: float = 1e-8
    max_steps: int = 200_000

    def __post_init__(self):
        if self.method not in METHODS:
            raise TregpdError(f"solver option 'method' must be one of {sorted(METHODS)}, got {self.method!r}")
        if self.pk not in PK_MODES:
            raise TregpdError(f"solver option 'pk' must be one of {sorted(PK_MODES)}, got {self.pk!r}")
        for name in ("rtol", "atol"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v < 1:
                raise TregpdError(f"solver option {name!r} must be a number in (0, 1), got {v!r}")
        if self.rtol < 1e-13:
            raise TregpdError(f"solver option 'rtol' must be >= 1e-13, got {self.rtol!r}")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, (int, np.integer)) \
                or self.max_steps < 1:
            raise TregpdError(f"solver option 'max_steps' must be a positive integer, got {self.max_steps!r}")


#: most points an output grid may have (each patient stores N_OUT float64 values per point)
MAX_OUTPUT_TIMES = 10_000_000


def output_times(t_end_day: float, step_day: float = 1.0, extra: Iterable[float] = ()) -> np.ndarray:
    """Regular output grid 0, step, ..., t_end (t_end always included) plus ``extra`` times, sorted, unique."""
    for name, v in (("t_end_day", t_end_day), ("output_step_day", step_day)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) \
                or not math.isfinite(v) or v <= 0:
            raise TregpdError(f"{name} must be a positive number, got {v!r}")
    n_steps = t_end_day / step_day
    if n_steps > MAX_OUTPUT_TIMES:
        raise TregpdError(f"output grid of {t_end_day:g} days every {step_day:g} days has {n_steps:.3g} points; "
                          f"at most {MAX_OUTPUT_TIMES} are allowed (use a coarser output_step_day)")
    n = int(math.floor(n_steps + 1e-9))
    grid = np.arange(n + 1) * float(step_day)
    return validate_times(np.concatenate([grid, [float(t_end_day)], np.asarray(list(extra), float)]))


def validate_times(t_out) -> np.ndarray:
    t = np.asarray(t_out, dtype=np.float64).ravel()
    if t.size == 0:
        raise TregpdError("output times: at least one time is required")
    bad = np.flatnonzero(~np.isfinite(t) | (t < 0))
    if bad.size:
        raise TregpdError(f"output times: entry {bad[0]} must be finite and >= 0, got {float(t[bad[0]])!r}")
    return np.unique(t)


def _as_events(regimen, events, t_end):
    if events is not None and regimen is not None:
        raise TregpdError("give either 'regimen' or 'events', not both")
    if events is None:
        regimen = regimen if regimen is not None else no_treatment()
        if not isinstance(regimen, Regimen):
            raise TregpdError(f"'regimen' must be a Regimen, got {type(regimen).__name__}")
        events = regimen.events()
    if not isinstance(events, EventTable):
        raise TregpdError(f"'events' must be an EventTable, got {type(events).__name__}")
    return regimen, events


def _prepare(options, solver_kwargs, regimen, events, t_end_day, output_step_day, t_out):
    """Validate the solver options, the regimen/events and the output grid shared by both entry points."""
    options = options if options is not None else SolverOptions(**solver_kwargs)
    regimen, events = _as_events(regimen, events, t_end_day)
    if t_out is None:
        t_out = output_times(t_end_day if t_end_day is not None else 168.0, output_step_day)
    else:
        t_out = validate_times(t_out)
    return options, regimen, events, t_out


#: parameters that may be 0 (effect sizes, optional fluxes); every other parameter must be > 0
_MAY_BE_ZERO_PREFIXES = ("il2_emax", "il2_imax", "rapa_emax", "rapa_imax", "gc_imax")
_MAY_BE_ZERO = {"naive_to_treg", "naive_to_th17", "gc_baseline_dose", "il2_rmc_fraction", "treg_desens_gain"}


def theta_matrix(parameters: ParameterSet | np.ndarray | Sequence[ParameterSet], model=None) -> np.ndarray:
    """Kernel parameter matrix of shape (n_patients, n_parameters of ``model``), validated finite and > 0
    where required."""
    m = get_model(model)
    names = m.parameter_names
    if isinstance(parameters, ParameterSet):
        th = parameters.to_theta(m)[None, :]
    elif isinstance(parameters, np.ndarray):
        th = np.atleast_2d(np.asarray(parameters, dtype=np.float64))
    else:
        th = np.stack([p.to_theta(m) for p in parameters])
    if th.ndim != 2 or th.shape[1] != len(names):
        raise ParameterError(f"theta must have shape (n_patients, {len(names)}) for model {m.name!r}, "
                             f"got {th.shape}")
    bad = np.argwhere(~np.isfinite(th) | (th < 0))
    if bad.size:
        i, j = bad[0]
        raise ParameterError(f"patient {i}: parameter {names[j]!r} must be finite and >= 0, "
                             f"got {float(th[i, j])!r}")
    for j, n in enumerate(names):
        if n.startswith(_MAY_BE_ZERO_PREFIXES) or n in _MAY_BE_ZERO:
            continue
        bad = np.flatnonzero(th[:, j] <= 0)
        if bad.size:
            raise ParameterError(f"patient {bad[0]}: parameter {n!r} must be > 0, got {float(th[bad[0], j])!r}")
    for j, n in enumerate(names):
        if "_imax_" in n and not n.startswith("gc_"):
            bad = np.flatnonzero(th[:, j] > 1)
            if bad.size:
                raise ParameterError(f"patient {bad[0]}: parameter {n!r} is a fractional inhibition and must "
                                     f"be <= 1, got {float(th[bad[0], j])!r}")
        if n.startswith("gc_imax"):
            bad = np.flatnonzero(th[:, j] >= 1)
            if bad.size:
                raise ParameterError(f"patient {bad[0]}: parameter {n!r} must be < 1 (it divides the "
                                     f"glucocorticoid factor), got {float(th[bad[0], j])!r}")
    return np.ascontiguousarray(th)


@dataclass
class SimulationResult:
    """Trajectories of one or more patients.

    Attributes
    ----------
    time_day : (n_times,)
    values : (n_patients, n_times, N_OUT) kernel outputs (see kernels.OUT_*)
    status : (n_patients,) int; 0 = ok
    t_reached_day : (n_patients,)
    steps : (n_patients,) solver steps taken
    patient_ids : (n_patients,) int
    regimen, parameters, seed, options : provenance
    """

    time_day: np.ndarray
    values: np.ndarray
    status: np.ndarray
    t_reached_day: np.ndarray
    steps: np.ndarray
    patient_ids: np.ndarray
    regimen: Regimen | None = None
    parameters: ParameterSet | None = None
    seed: int | None = None
    options: SolverOptions = field(default_factory=SolverOptions)
    theta: np.ndarray | None = None
    model: str = DEFAULT_MODEL

    @property
    def variables(self) -> dict[str, tuple[int | None, str]]:
        """Output variables of this result's model structure (name -> (column, unit))."""
        return variables_for(self.model)

    @property
    def n_patients(self) -> int:
        return self.values.shape[0]

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of patients whose integration succeeded."""
        return self.status == K.STATUS_OK

    @property
    def n_failed(self) -> int:
        return int((~self.ok).sum())

    def failures(self) -> list[tuple[int, str, float]]:
        """(patient id, message, time reached in days) of each failed patient."""
        return [(int(self.patient_ids[i]), STATUS_MESSAGES.get(int(self.status[i]), "unknown"),
                 float(self.t_reached_day[i])) for i in np.flatnonzero(~self.ok)]

    def get(self, variable: str, only_ok: bool = True) -> np.ndarray:
        """Array (n_patients, n_times) of one variable (see :data:`VARIABLES`); failed patients dropped."""
        variables = self.variables
        if variable not in variables:
            raise TregpdError(f"unknown variable {variable!r}; known: {', '.join(variables)}")
        col = variables[variable][0]
        vals = self.values[self.ok] if only_ok else self.values
        if col is None:
            return vals[:, :, variables["th17"][0]] / vals[:, :, variables["treg"][0]]
        return vals[:, :, col]

    def at(self, variable: str, time_day: float) -> np.ndarray:
        """Values of ``variable`` at an output time (must be on the grid), shape (n_ok_patients,)."""
        idx = np.flatnonzero(np.isclose(self.time_day, time_day, rtol=0, atol=1e-9))
        if idx.size == 0:
            raise TregpdError(f"time {time_day} d is not on the output grid")
        return self.get(variable)[:, idx[0]]

    def to_frame(self, variables: Sequence[str] | None = None):
        """Tidy (long) DataFrame: patient, time_day, variable, value, unit (successful patients only)."""
        import pandas as pd
        variables = list(variables) if variables is not None else list(self.variables)
        ids = self.patient_ids[self.ok]
        frames = []
        nt = self.time_day.size
        for v in variables:
            arr = self.get(v)
            frames.append(pd.DataFrame({
                "patient": np.repeat(ids, nt), "time_day": np.tile(self.time_day, ids.size),
                "variable": v, "value": arr.ravel(), "unit": self.variables[v][1]}))
        return pd.concat(frames, ignore_index=True)

    def provenance(self, **extra) -> dict:
        from tregpd.io import provenance
        return provenance(self.parameters, self.regimen, self.seed,
                          solver={"method": self.options.method, "pk": self.options.pk,
                                  "rtol": self.options.rtol, "atol": self.options.atol},
                          n_patients=int(self.n_patients), n_failed=self.n_failed,
                          model={"name": self.model, "declaration": get_model(self.model).content_hash}, **extra)

    def raise_on_failure(self) -> None:
        if self.n_failed:
            f = self.failures()
            head = "; ".join(f"patient {pid}: {msg} at t = {t:.4g} d" for pid, msg, t in f[:5])
            more = f" (and {len(f) - 5} more)" if len(f) > 5 else ""
            raise IntegrationError(f"integration failed for {len(f)} of {self.n_patients} patients: "
                                   f"{head}{more}", failures=f)


def _check_events(events: EventTable, model) -> None:
    m = get_model(model)
    known = {d.cmt for d in m.doses} | {c.cmt for c in m.covariates}
    bad = sorted(set(np.unique(events.cmt).tolist()) - known)
    if bad:
        raise TregpdError(f"events use compartment(s) {bad} that model {m.name!r} does not declare "
                          f"(known CMT: {sorted(known)})")


def _run(theta, events, t_out, options, parallel, model=None):
    kern = K.for_model(model)
    n = theta.shape[0]
    out = np.zeros((n, t_out.size, kern.N_OUT))
    status = np.zeros(n, dtype=np.int64)
    t_reached = np.zeros(n)
    steps = np.zeros(n, dtype=np.int64)
    # the serial twin gives identical numbers; below a few patients it also avoids ~8 ms of thread start-up
    fn = kern.simulate_population_parallel if (parallel and n >= PARALLEL_MIN_PATIENTS) else \
        kern.simulate_population_serial
    fn(theta, events.time_day, events.cmt, events.amount, t_out, float(options.rtol), float(options.atol),
       METHODS[options.method], PK_MODES[options.pk], int(options.max_steps), out, status, t_reached, steps)
    # Never let a non-finite number out as a value: mark such patients failed.
    bad = ~np.isfinite(out).all(axis=(1, 2)) & (status == K.STATUS_OK)
    status[bad] = K.STATUS_NONFINITE
    return out, status, t_reached, steps


def simulate_checked(theta: np.ndarray, events: EventTable, t_out: np.ndarray, options: SolverOptions,
                     model: ModelStructure, parallel: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The kernel call of :func:`simulate_population` without its per-call checks, for optimisers that simulate
    the same regimen and output grid thousands of times (:mod:`tregpd.fitting.problem`).

    The caller guarantees what :func:`simulate_population` would check: ``theta`` a C-contiguous float64 array
    that passes :func:`theta_matrix` for ``model`` (a ModelStructure), ``events`` a compiled
    :class:`EventTable` of compartments the model declares, ``t_out`` from :func:`validate_times`, ``options``
    a :class:`SolverOptions`. Returns ``(values (n_patients, n_times, n_outputs), status (n_patients,))``;
    status 0 = ok, any other value is a failure described by :data:`STATUS_MESSAGES` (non-finite outputs are
    reported as failures, never returned as values).
    """
    out, status, _, _ = _run(theta, events, t_out, options, parallel, model)
    return out, status


def simulate(parameters: ParameterSet | None = None, regimen: Regimen | None = None, *,
             events: EventTable | None = None, t_end_day: float | None = None, output_step_day: float = 1.0,
             t_out=None, options: SolverOptions | None = None, model: str | ModelStructure | None = None,
             **solver_kwargs) -> SimulationResult:
    """Simulate one patient.

    Parameters
    ----------
    parameters : ParameterSet, optional
        Defaults to the bundled literature priors.
    regimen : Regimen, optional
        Defaults to no treatment (baseline steady state). Alternatively pass ``events``.
    t_end_day : float, optional
        Simulated duration in days (default 168 = 24 weeks, or ``max(t_out)``).
    output_step_day : float
        Output grid spacing, days (ignored if ``t_out`` is given).
    t_out : array_like, optional
        Explicit output times in days (sorted and de-duplicated).
    options : SolverOptions, or keyword arguments ``method``, ``pk``, ``rtol``, ``atol``, ``max_steps``.
    model : str or ModelStructure, optional
        Model structure (``tregpd models`` lists them); default ``sat0261_v1``.

    Raises
    ------
    IntegrationError
        If the solver fails (message names the status and the time reached).
    """
    parameters = parameters if parameters is not None else default_parameters()
    options, regimen, events, t_out = _prepare(options, solver_kwargs, regimen, events, t_end_day,
                                               output_step_day, t_out)
    m = get_model(model)
    _check_events(events, m)
    theta = theta_matrix(parameters, m)
    out, status, t_reached, steps = _run(theta, events, t_out, options, parallel=False, model=m)
    res = SimulationResult(t_out, out, status, t_reached, steps, np.array([0]), regimen,
                           parameters if isinstance(parameters, ParameterSet) else None, None, options, theta,
                           m.name)
    res.raise_on_failure()
    return res


def simulate_population(theta: np.ndarray, regimen: Regimen | None = None, *, events: EventTable | None = None,
                        t_end_day: float | None = None, output_step_day: float = 7.0, t_out=None,
                        options: SolverOptions | None = None, parallel: bool = True,
                        on_failure: str = "raise", patient_ids=None, parameters: ParameterSet | None = None,
                        seed: int | None = None, chunk_size: int | None = None, progress: bool = False,
                        model: str | ModelStructure | None = None, **solver_kwargs) -> SimulationResult:
    """Simulate many virtual patients (one row of ``theta`` each) on one regimen.

    Parameters
    ----------
    theta : (n_patients, n_parameters) array in kernel units, in the model structure's parameter order (see
        :func:`tregpd.model.population.sample_population`)
    model : str or ModelStructure, optional
        Model structure; default ``sat0261_v1``.
    parallel : bool
        Use the prange kernel (True) or its serial twin (False); both give identical numbers.
    on_failure : {"raise", "keep"}
        "raise": any failed patient raises IntegrationError. "keep": failures are recorded in ``status``
        and excluded from :meth:`SimulationResult.get` and :meth:`SimulationResult.to_frame`.
    chunk_size : int, optional
        Run patients in chunks of this size (bounded working memory for the kernel call; output still held).
    progress : bool
        Show a tqdm progress bar over chunks.
    parameters, seed : provenance only.
    """
    if on_failure not in ("raise", "keep"):
        raise TregpdError(f"on_failure must be 'raise' or 'keep', got {on_failure!r}")
    options, regimen, events, t_out = _prepare(options, solver_kwargs, regimen, events, t_end_day,
                                               output_step_day, t_out)
    m = get_model(model)
    _check_events(events, m)
    theta = theta_matrix(theta, m)
    n = theta.shape[0]
    ids = np.arange(n) if patient_ids is None else np.asarray(patient_ids)
    if ids.shape != (n,):
        raise TregpdError(f"patient_ids must have length {n}, got shape {ids.shape}")
    if chunk_size is None:
        chunk_size = n
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise TregpdError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    parts = []
    bounds = list(range(0, n, chunk_size))
    it = bounds
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(bounds, desc="patients", unit="chunk", leave=False)
    for s in it:
        parts.append(_run(theta[s:s + chunk_size], events, t_out, options, parallel, m))
    out = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, t_out.size, len(m.output_names)))
    status = np.concatenate([p[1] for p in parts])
    t_reached = np.concatenate([p[2] for p in parts])
    steps = np.concatenate([p[3] for p in parts])
    res = SimulationResult(t_out, out, status, t_reached, steps, ids, regimen, parameters, seed, options, theta,
                           m.name)
    if on_failure == "raise":
        res.raise_on_failure()
    return res
