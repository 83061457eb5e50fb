"""The uncertainty of the population median: parameter draws and regimen hypotheses.

The between-patient range (5-95 % of virtual patients) says how different patients are *at the point
estimate*. It says nothing about how sure the point estimate is. This module gives the second band:

* **Parameter draws** (a parametric bootstrap): the parameters whose ``role`` is ``calibrated`` in the
  parameter file (identified by the joint calibration's profile likelihood; ``model/data/parameters.toml``)
  are drawn from a multivariate normal with the covariance lmfit estimates for them at the file's values
  (:func:`calibration_covariance`: :class:`tregpd.fitting.joint.JointProblem` with only those parameters free,
  ``scale_covar=False`` because the residuals are in units of the studies' SEs). Draws outside the parameter
  bounds are redrawn. Parameters with role ``bounded`` (the profile only bounds them on one side) and
  ``prior`` are held at their values: ASSUMPTION, the band is therefore a lower bound on the parameter
  uncertainty.
* **Regimen hypotheses** (:mod:`tregpd.fitting.regimen_hypotheses`): when the parameters refitted under each
  SAT0261 regimen hypothesis are given (``hypotheses.csv`` of ``tregpd hypotheses`` / ``tregpd all``), the
  population median under each hypothesis's parameters is computed too and the band is widened to include
  all of them.

Every draw simulates the **same** ``uncertainty_population`` virtual patients (common random numbers: the
same seed gives the same between-patient scores, multiplied onto each draw's typical values), so the band is
the spread due to the parameters, not Monte-Carlo noise between populations. The band of each statistic is the
5th-95th percentile across draws of the population statistic (median across patients, or the fraction of
patients), widened to the hypotheses' values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from tregpd.errors import ScenarioError
from tregpd.model.parameters import ParameterSet

from . import metrics as M

_COV_CACHE: dict = {}


@dataclass
class ParameterCovariance:
    """lmfit covariance of the calibrated parameters at a parameter file's values.

    Attributes
    ----------
    names : tuple of str, the parameters drawn
    mean : (k,) their values in the file (model units as in the file)
    covariance : (k, k)
    chi2 : objective at the file's values (SE units)
    """

    names: tuple
    mean: np.ndarray
    covariance: np.ndarray
    chi2: float

    @property
    def stderr(self) -> np.ndarray:
        return np.sqrt(np.diag(self.covariance))


def calibrated_names(params: ParameterSet, model: str) -> tuple[str, ...]:
    """The parameters the median band draws: role ``calibrated`` and read by ``model``."""
    from tregpd.model.structures import get_model
    known = set(get_model(model).parameter_names)
    return tuple(n for n, p in params.parameters.items() if p.role == "calibrated" and n in known)


def calibration_covariance(params: ParameterSet, model: str, max_nfev: int = 40) -> ParameterCovariance:
    """Covariance of the ``calibrated`` parameters from lmfit on the joint calibration objective.

    The joint problem of :mod:`tregpd.fitting.joint` is set up with ``params`` as the base and only the
    calibrated parameters free, started at the file's values; lmfit's least-squares returns the covariance
    ``(J^T J)^-1`` (``scale_covar=False``: residuals are in SE units). The file's values are the calibration's
    optimum, so the fit moves them little; the covariance is taken at the refit optimum and centred on the
    file's values. Cached per (model, parameter values).

    Raises
    ------
    ScenarioError
        No parameter has role "calibrated", or lmfit could not estimate the covariance.
    """
    names = calibrated_names(params, model)
    if not names:
        raise ScenarioError(f"the 'median' band needs a calibrated parameter file (entries with role = "
                            f"\"calibrated\", as written by `tregpd calibrate`, that model {model!r} reads); "
                            f"{params.name!r} has none: use bands = [\"patients\"] (--bands patients) or pass "
                            "--params with a calibrated file")
    key = (model, tuple(sorted((n, float(p.value)) for n, p in params.parameters.items())))
    if key in _COV_CACHE:
        return _COV_CACHE[key]
    import lmfit
    from tregpd.fitting.joint import JointProblem
    prob = JointProblem(model, base=params, free=names)
    start = {n: params.value(n) for n in prob.parameter_names}
    lp = prob.lmfit_parameters(start)

    def resid(p):
        return prob.residuals(p.valuesdict())

    res = lmfit.Minimizer(resid, lp, scale_covar=False).minimize(method="least_squares", max_nfev=max_nfev,
                                                                 x_scale="jac", diff_step=1e-3)
    order = list(res.var_names)
    if res.covar is None or not np.all(np.isfinite(res.covar)):
        raise ScenarioError(f"the 'median' band: lmfit could not estimate the covariance of {', '.join(names)} "
                            f"for model {model!r} (singular Jacobian)")
    idx = [order.index(n) for n in names]
    cov = np.asarray(res.covar)[np.ix_(idx, idx)]
    out = ParameterCovariance(names, np.array([params.value(n) for n in names]), cov,
                              float(np.sum(resid(lp) ** 2)))
    _COV_CACHE[key] = out
    return out


def parameter_draws(params: ParameterSet, cov: ParameterCovariance, n: int, seed: int) -> list[ParameterSet]:
    """``n`` parameter sets with the calibrated parameters drawn from N(mean, covariance), inside the bounds
    (a draw outside is redrawn; after 1000 tries per draw an error)."""
    rng = np.random.default_rng(seed)
    lo = np.array([params.parameters[k].lower for k in cov.names])
    hi = np.array([params.parameters[k].upper for k in cov.names])
    out = []
    for _ in range(n):
        for _try in range(1000):
            x = rng.multivariate_normal(cov.mean, cov.covariance)
            if np.all(x >= lo) and np.all(x <= hi):
                break
        else:
            raise ScenarioError(f"the 'median' band: 1000 draws of {', '.join(cov.names)} fell outside their "
                                "bounds; the covariance is too wide to draw from")
        out.append(params.with_values(**dict(zip(cov.names, map(float, x)))))
    return out


def hypothesis_parameter_sets(table, params: ParameterSet) -> list[tuple[str, ParameterSet]]:
    """The parameter sets refitted under each SAT0261 regimen hypothesis.

    Parameters
    ----------
    table : DataFrame or path of ``hypotheses.csv`` (:func:`tregpd.fitting.regimen_hypotheses.fit_under_hypotheses`;
        columns ``hypothesis`` and ``param_<name>``)
    params : the parameter set whose other values are kept

    Returns
    -------
    list of (hypothesis name, ParameterSet)
    """
    import pandas as pd
    if isinstance(table, (str, Path)):
        path = Path(table)
        if not path.is_file():
            raise ScenarioError(f"regimen hypotheses: {path} does not exist (run `tregpd hypotheses` first)")
        table = pd.read_csv(path)
    cols = [c for c in table.columns if c.startswith("param_") and c[6:] in params.parameters]
    if "hypothesis" not in table.columns or not cols:
        raise ScenarioError("regimen hypotheses: the table needs a 'hypothesis' column and param_<name> columns "
                            f"of known parameters; got columns {list(table.columns)[:12]}")
    out = []
    for row in table.to_dict("records"):
        values = {c[6:]: float(row[c]) for c in cols if row[c] == row[c]}
        out.append((str(row["hypothesis"]), params.with_values(**values)))
    return out


@dataclass
class MedianBand:
    """The uncertainty of a scenario's population statistics.

    Attributes
    ----------
    name : the band's label in tables ("median_uncertainty_90")
    description : what it is, in words
    time_day : (n_times,)
    trajectories : variable -> (lower, upper), each (n_times,): the band of the median trajectory
    statistics : (metric, week) -> (lower, upper): the band of each summary statistic
    n_draws, population : draws and virtual patients per draw
    hypotheses : names of the regimen hypotheses included
    parameters : names of the parameters drawn
    n_failed : patients that failed to integrate, summed over draws (excluded draw by draw)
    """

    name: str
    description: str
    time_day: np.ndarray
    trajectories: dict
    statistics: dict
    n_draws: int
    population: int
    parameters: tuple
    hypotheses: tuple = ()
    n_failed: int = 0
    draw_statistics: list = field(default_factory=list, repr=False)

    def provenance(self) -> dict:
        return {"band": self.name, "description": self.description, "n_draws": self.n_draws,
                "population_per_draw": self.population, "parameters_drawn": list(self.parameters),
                "regimen_hypotheses": list(self.hypotheses), "n_failed": self.n_failed}


def median_uncertainty(scenario, params: ParameterSet, result, hypotheses=None,
                       parallel: bool = True) -> MedianBand:
    """Band of the population median of ``scenario`` (see the module docstring).

    Parameters
    ----------
    scenario : Scenario (its ``uncertainty_draws``, ``uncertainty_population`` (capped at ``population``),
        ``seed``, ``iiv`` and ``model`` are used)
    params : the point-estimate parameter set (calibrated)
    result : SimulationResult of the scenario's full population at ``params`` (the point estimate; its grid
        is used)
    hypotheses : list of (name, ParameterSet) from :func:`hypothesis_parameter_sets`, optional
    parallel : prange kernel

    Returns
    -------
    MedianBand
    """
    from tregpd.model.population import sample_population
    from tregpd.model.simulate import simulate_population
    t_out = np.asarray(result.time_day, dtype=float)
    cov = calibration_covariance(params, scenario.model)
    n_pop = int(min(scenario.uncertainty_population, scenario.population))
    draws = parameter_draws(params, cov, scenario.uncertainty_draws, seed=scenario.seed + 1)
    hyps = list(hypotheses or [])
    sets = [params] + draws + [p for _, p in hyps]
    theta = np.concatenate([sample_population(p, n_pop, iiv=scenario.iiv, seed=scenario.seed,
                                              model=scenario.model) for p in sets])
    if getattr(scenario, "tdm", None) is not None:
        # trough titration: every draw's patients titrated on their own PK, with the same assay errors in every
        # draw (patient ids repeat), so that the draws differ by the parameters only
        from .tdm import simulate_titrated, titrate
        ids = np.tile(np.arange(n_pop), len(sets))
        titration = titrate(theta, scenario.regimen, scenario.tdm, scenario.t_end_day, seed=scenario.seed,
                            patient_ids=ids, model=scenario.model)
        res = simulate_titrated(theta, titration, t_out, parallel=parallel, model=scenario.model)
    else:
        res = simulate_population(theta, scenario.regimen, t_out=t_out, parallel=parallel, on_failure="keep",
                                  model=scenario.model)
    t_end = scenario.treatment_end_day()
    t_treat_end = t_end if t_end > 0 else None
    status = res.status.reshape(len(sets), n_pop)
    full = {v: res.get(v, only_ok=False).reshape(len(sets), n_pop, -1) for v in ("treg", "th17", "ratio")}
    med = {v: [] for v in full}
    stats = []
    for i in range(len(sets)):
        ok = status[i] == 0
        if not ok.any():
            continue
        values = {v: full[v][i][ok] for v in full}
        for v in med:
            med[v].append(np.median(values[v], axis=0))
        stats.append(M.population_statistics(res.time_day, values, scenario.report_weeks(),
                                             scenario.ratio_target, t_treat_end))
    if not np.any(status[0] == 0):
        raise ScenarioError(f"scenario {scenario.name!r}: the 'median' band: every patient of the draw "
                            "population failed at the point estimate")
    n_ok_draws = sum(1 for i in range(1, len(draws) + 1) if np.any(status[i] == 0))
    if n_ok_draws < 2:
        raise ScenarioError(f"scenario {scenario.name!r}: the 'median' band needs at least 2 integrated draws, "
                            f"got {n_ok_draws}")
    k_d = n_ok_draws + 1
    # shift to the full population: the draw population's statistic at the point estimate (row 0) is the
    # reference, the band is point + (draw band - reference)
    traj = {}
    for v, rows in med.items():
        arr = np.array(rows)
        lo, hi = np.percentile(arr[1:k_d], [5, 95], axis=0)
        if arr.shape[0] > k_d:
            lo, hi = np.minimum(lo, arr[k_d:].min(axis=0)), np.maximum(hi, arr[k_d:].max(axis=0))
        point = np.median(result.get(v), axis=0)
        traj[v] = (point + lo - arr[0], point + hi - arr[0])
    raw = M.median_band_table(stats[1:k_d], stats[k_d:])
    t_full = {v: result.get(v) for v in ("treg", "th17", "ratio")}
    point = M.population_statistics(t_out, t_full, scenario.report_weeks(), scenario.ratio_target, t_treat_end)
    band = {key: M.shift_band(lohi, stats[0].get(key, np.nan), point.get(key, np.nan),
                              fraction=key[0].startswith("fraction") or key[0].endswith("within_followup"))
            for key, lohi in raw.items()}
    desc = (f"5-95 % of the population median over {len(draws)} parameter draws of the calibrated "
            f"parameters ({', '.join(cov.names)}; lmfit covariance of the joint calibration; {n_pop} virtual "
            "patients per draw, the same in every draw; placed on the full population as point estimate + "
            "(draw percentile - the draw population's value at the point estimate))")
    if hyps:
        desc += f", widened to the median under each of {len(hyps)} SAT0261 regimen hypotheses' refits"
    return MedianBand(M.BAND_MEDIAN, desc, np.asarray(t_out, dtype=float), traj, band, len(draws), n_pop,
                      cov.names, tuple(n for n, _ in hyps), int(np.sum(status != 0)), stats)
