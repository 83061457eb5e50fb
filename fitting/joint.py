"""Joint calibration across studies, per model structure, and model comparison.

Layers (as in pints): the *problem* (:class:`JointProblem`: a model structure, the calibration dataset, which
parameters are free) turns parameter values into residuals; the *optimiser* is lmfit's ``Minimizer``
(:func:`fit_structure`); :func:`compare_structures` fits several structures to the same data and ranks them by
AIC/BIC (and likelihood ratio where nested); :func:`profile` gives profile likelihoods.

Objective
---------
Every quantitative row of ``fitting/data/calibration.csv`` (weight classes ``calibration`` and
``loose_check``) gives one residual ``z = (ln predicted - ln observed) / se`` on the log scale, with the SE the
dataset states (from the study's spread, n or P value; loose defaults for RECALLED numbers; see
``fitting/data/CALIBRATION.md``). Each study is simulated with its own regimen (doses, BSA, product),
baseline and duration (``calibration_regimens.toml``).

Qualitative facts (a direction, a non-significant change, a lower bound, a peak window, a decline under
continued dosing) enter as *soft constraints*: a hinge residual that is 0 when the fact holds and grows with
the violation, on a stated scale (:data:`HINGE_SCALE_LOG` on the log scale, :data:`HINGE_SCALE_DAYS` for
peak timing). They are pseudo-observations, not data with a likelihood: AIC/BIC below count them as
observations, and the comparison tables show the Gaussian part and the hinge part separately.

Product potency
---------------
The labelled IU of the Chinese rhIL-2 and of ILT-101 may not act like aldesleukin IU (evidence README: "treat
product potency as a parameter per product"). The model parameter ``il2_potency_chinese_rhil2`` multiplies
the IU doses of every schedule with that product (its own dosing compartments, CMT 10/11) and is calibrated
here; ILT-101's potency is fixed at 1 (two RECALLED rows only cannot identify it). The older dose-multiplier
``fit_potency`` (not a model parameter) remains for comparison.

Modes
-----
``typical``: every study is one typical patient (the model passes through the summary statistics).
``population``: each study is a virtual population of ``n_population`` patients drawn once with a fixed seed
(common random numbers, so the objective is smooth in the parameters), and the prediction of a row is the
statistic the study reports (median of per-patient fold changes, ratio of medians, ...).
"""
from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from tregpd.model import default_parameters, output_times, simulate, simulate_population
from tregpd.errors import TregpdError
from tregpd.model.parameters import ParameterSet
from tregpd.model.population import DEFAULT_IIV, sample_population
from tregpd.model.structures import get_model

from .calibration import StudyRegimen, load_calibration, load_regimens, parse_check
from .validate import StudySimulation, evaluate_check, row_quantity

#: hinge scales of the soft constraints: a violation of this size (log units) counts as one SE
HINGE_SCALE_LOG = 0.1
#: ... and of this many days for a peak outside its window
HINGE_SCALE_DAYS = 7.0
#: margin a "direction" fact asks for (log units: a 5 % change)
DIRECTION_MARGIN = 0.05
POTENCY_BOUNDS = (0.2, 5.0)
#: a structure with fewer free parameters within this ΔAIC of the best is preferred (calibrate.choose)
DELTA_AIC_SIMPLER = 2.0

#: candidate free parameters, in order; a structure frees those it declares
CANDIDATES = (
    "il2_emax_treg", "il2_ec50_treg", "treg_crowding", "il2_emax_th17", "treg_suppression",
    "rapa_imax_th17_prolif", "rapa_emax_treg_induction", "gc_imax_th17", "il2_rmc_fraction",
    "treg_desens_gain", "treg_desens_halflife", "il2_potency_chinese_rhil2",
)


class JointFitError(TregpdError):
    """The joint fit could not run or did not converge."""


def default_free(model) -> tuple[str, ...]:
    """The free parameters of a structure: the :data:`CANDIDATES` it declares."""
    names = set(get_model(model).parameter_names)
    return tuple(n for n in CANDIDATES if n in names)


@dataclass
class JointProblem:
    """Model structure + calibration data + free parameters -> residuals.

    Parameters
    ----------
    model : str
    base : ParameterSet
        Values of everything not free.
    free : sequence of str
        Model parameters the fit varies (default :func:`default_free`).
    fit_potency : bool
        Also fit ``potency_chinese_rhil2``.
    mode : {"typical", "population"}
    n_population, seed : population mode only
    use_checks : bool
        Include the qualitative facts as soft constraints.
    regimens : mapping regimen id -> StudyRegimen, optional
        The regimen table (default: the bundled one, :func:`load_regimens`); pass a modified copy to fit under
        another regimen hypothesis (:mod:`tregpd.fitting.regimen_hypotheses`).
    """

    model: str
    base: ParameterSet = field(default_factory=default_parameters)
    free: Sequence[str] | None = None
    fit_potency: bool = False
    mode: str = "typical"
    n_population: int = 40
    seed: int = 20170614
    use_checks: bool = True
    iiv: Mapping[str, float] | None = None
    regimens: Mapping[str, StudyRegimen] | None = field(default=None, repr=False)

    def __post_init__(self):
        self.structure = get_model(self.model)
        self.model = self.structure.name
        self.free = tuple(self.free) if self.free is not None else default_free(self.model)
        unknown = [n for n in self.free if n not in self.structure.parameter_names]
        if unknown:
            raise JointFitError(f"model {self.model!r} does not read the free parameter(s) {unknown}")
        if self.mode not in ("typical", "population"):
            raise JointFitError(f"mode must be 'typical' or 'population', got {self.mode!r}")
        self.regimens = dict(self.regimens) if self.regimens is not None else load_regimens()
        cal = load_calibration(regimens=self.regimens)
        self.rows = cal[cal["weight_class"].isin(["calibration", "loose_check"])].reset_index(drop=True)
        self.checks = cal[cal["weight_class"] == "qualitative"].reset_index(drop=True) if self.use_checks \
            else cal.iloc[0:0]
        self.check_specs = [parse_check(c, i) for c, i in zip(self.checks["check"], self.checks["id"])]
        needed = list(dict.fromkeys(self.rows["regimen_id"]))
        for spec, rid in zip(self.check_specs, self.checks["regimen_id"]):
            for r in [rid] + list(spec.get("regimens", [])):
                if r not in needed:
                    needed.append(r)
        self.needed = needed
        self._t_out = {}
        for rid in needed:
            days = [float(d) for col in ("day", "day_end")
                    for frame in (self.rows, self.checks)
                    for d in frame.loc[frame["regimen_id"] == rid, col].dropna()]
            reg = self.regimens[rid]
            self._t_out[rid] = output_times(reg.duration_day, reg.output_step_day,
                                            extra=[d for d in days if d <= reg.duration_day])
        self.n_evaluations = 0
        self._event_cache: dict = {}
        self._residual_cache: OrderedDict = OrderedDict()

    # ------------------------------------------------------------------------------------ parameters
    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(self.free) + (("potency_chinese_rhil2",) if self.fit_potency else ())

    def lmfit_parameters(self, start: Mapping[str, float] | None = None):
        import lmfit
        params = lmfit.Parameters()
        start = dict(start or {})
        for n in self.free:
            p = self.base[n]
            lo, hi = p.lower, p.upper
            if n.startswith("gc_imax"):
                hi = min(hi, 0.95)
            v = float(np.clip(start.get(n, p.value), lo, hi))
            params.add(n, value=v, min=lo, max=hi, vary=True)
        if self.fit_potency:
            params.add("potency_chinese_rhil2", value=float(start.get("potency_chinese_rhil2", 1.0)),
                       min=POTENCY_BOUNDS[0], max=POTENCY_BOUNDS[1], vary=True)
        return params

    def parameter_set(self, values: Mapping[str, float]) -> ParameterSet:
        return self.base.with_values(**{n: float(values[n]) for n in self.free if n in values})

    def potency(self, values: Mapping[str, float]) -> dict:
        return {"chinese_rhil2": float(values.get("potency_chinese_rhil2", 1.0))}

    # ------------------------------------------------------------------------------------ simulation
    def _events(self, rid: str, pot: dict):
        """The dose events of regimen ``rid`` at product potencies ``pot`` (compiled once per potency)."""
        key = (rid, tuple(sorted(pot.items())))
        ev = self._event_cache.get(key)
        if ev is None:
            if len(self._event_cache) > 4 * len(self.needed):
                self._event_cache.clear()
            ev = self._event_cache[key] = self.regimens[rid].regimen(pot).events()
        return ev

    def simulate_all(self, values: Mapping[str, float]) -> dict[str, StudySimulation]:
        params = self.parameter_set(values)
        pot = self.potency(values)
        sims = {}
        for rid in self.needed:
            reg = self.regimens[rid]
            p = params.with_values(**reg.baseline) if reg.baseline else params
            events = self._events(rid, pot)
            t_out = self._t_out[rid]
            typ = simulate(p, events=events, t_out=t_out, model=self.structure)
            if self.mode == "population":
                theta = sample_population(p, n=self.n_population, iiv=self.iiv or DEFAULT_IIV, seed=self.seed,
                                          model=self.structure)
                pop = simulate_population(theta, events=events, t_out=t_out, on_failure="keep", parameters=p,
                                          model=self.structure, parallel=self.n_population >= 8)
            else:
                pop = typ
            sims[rid] = StudySimulation(rid, typ.time_day, typ, pop, p)
        self.n_evaluations += 1
        return sims

    def predictions(self, values: Mapping[str, float], sims=None):
        """(quantitative predictions (n_rows,), qualitative outcomes list of dicts)."""
        sims = sims if sims is not None else self.simulate_all(values)
        rows, checks = self._tuples()
        pred = np.empty(len(rows))
        for i, r in enumerate(rows):
            q = row_quantity(sims[r.regimen_id], r.observable, r.mapping, r.day, r.day_end, r.time_summary,
                             r.statistic)
            pred[i] = q["predicted"]
        quals = [evaluate_check(spec, r, sims) for spec, r in zip(self.check_specs, checks)]
        return pred, quals

    def _tuples(self) -> tuple[list, list]:
        """The rows and checks as lists of named tuples (read once per table, not at every evaluation)."""
        src = getattr(self, "_tuple_source", None)
        if src is None or src[0] is not self.rows or src[1] is not self.checks:
            self._tuple_source = (self.rows, self.checks, list(self.rows.itertuples(index=False)),
                                  list(self.checks.itertuples(index=False)))
        return self._tuple_source[2], self._tuple_source[3]

    # ------------------------------------------------------------------------------------ residuals
    def hinge(self, spec: dict, predicted) -> float:
        """Soft-constraint residual of one qualitative fact (0 when it holds)."""
        t = spec["type"]
        if t == "dose_order":
            vals = [float(x) for x in str(predicted).split(" < ")]
            return float(math.sqrt(sum(max(0.0, math.log(a) - math.log(b) + DIRECTION_MARGIN) ** 2
                                       for a, b in zip(vals, vals[1:]))) / HINGE_SCALE_LOG)
        v = float(predicted)
        if not math.isfinite(v):
            return 1e3
        if t == "peak_window":
            return max(0.0, spec["lo"] - v, v - spec["hi"]) / HINGE_SCALE_DAYS
        if v <= 0:
            return 1e3
        lv = math.log(v)
        if t == "direction":
            sign = 1.0 if spec.get("sign") == "up" else -1.0
            return max(0.0, DIRECTION_MARGIN - sign * lv) / HINGE_SCALE_LOG
        if t == "not_significant":
            return max(0.0, abs(lv) - spec.get("threshold", 0.0)) / HINGE_SCALE_LOG
        if t == "lower_bound":
            return max(0.0, math.log(spec["bound"]) - lv) / HINGE_SCALE_LOG
        if t == "decline":
            return max(0.0, lv - math.log(spec["threshold"])) / HINGE_SCALE_LOG
        if t == "greater_than":
            return max(0.0, -lv) / HINGE_SCALE_LOG
        raise JointFitError(f"no soft constraint for check type {t!r}")  # pragma: no cover

    def residuals(self, values: Mapping[str, float]) -> np.ndarray:
        """z of every quantitative row, then the hinge residual of every qualitative fact.

        The last few parameter vectors and their residuals are remembered, so a point asked for again (lmfit's
        final evaluation, :func:`fit_structure`'s chi-square split) is not simulated twice."""
        key = tuple(sorted((k, float(v)) for k, v in values.items()))
        hit = self._residual_cache.get(key)
        if hit is not None and hit[0] is self.base and hit[1] == self.potency:   # same base values, same potency
            self._residual_cache.move_to_end(key)
            return hit[2].copy()
        r = self._residuals(values)
        self._residual_cache[key] = (self.base, self.potency, r)
        if len(self._residual_cache) > 8:
            self._residual_cache.popitem(last=False)
        return r.copy()

    def _residuals(self, values: Mapping[str, float]) -> np.ndarray:
        try:
            pred, quals = self.predictions(values)
        except TregpdError:
            return np.full(len(self.rows) + len(self.checks), 1e3)
        obs = self.rows["value"].to_numpy(float)
        se = self.rows["se"].to_numpy(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (np.log(pred) - np.log(obs)) / se
        z = np.where(np.isfinite(z), z, 1e3)
        h = np.array([self.hinge(s, q["predicted"]) for s, q in zip(self.check_specs, quals)])
        return np.concatenate([z, h])

    @property
    def n_data(self) -> int:
        return len(self.rows) + len(self.checks)


@dataclass
class StructureFit:
    """The outcome of fitting one structure (lmfit's MinimizerResult inside)."""

    problem: JointProblem
    result: object
    seconds: float
    chi2_gauss: float
    chi2_hinge: float

    @property
    def values(self) -> dict:
        return {n: float(p.value) for n, p in self.result.params.items()}

    @property
    def n_free(self) -> int:
        return len(self.problem.parameter_names)

    @property
    def chi2(self) -> float:
        return self.chi2_gauss + self.chi2_hinge

    @property
    def aic(self) -> float:
        return self.chi2 + 2 * self.n_free

    @property
    def bic(self) -> float:
        return self.chi2 + self.n_free * math.log(self.problem.n_data)

    def parameter_set(self) -> ParameterSet:
        ps = self.problem.parameter_set(self.values)
        from dataclasses import replace
        params = dict(ps.parameters)
        for n in self.problem.free:
            params[n] = replace(params[n], fitted=True, status="FITTED",
                                source=params[n].source + f" | FITTED jointly ({self.problem.model}, "
                                                          f"{self.problem.mode} mode) to the calibration dataset")
        return replace(ps, parameters=params, name=f"joint fit {self.problem.model}")


def fit_structure(problem: JointProblem, start: Mapping[str, float] | None = None, max_nfev: int = 400,
                  method: str = "least_squares") -> StructureFit:
    """Minimise the problem's residuals with lmfit (``scale_covar=False``: residuals are in SE units)."""
    import lmfit
    t0 = time.perf_counter()
    params = problem.lmfit_parameters(start)

    def resid(p):
        return problem.residuals(p.valuesdict())

    mini = lmfit.Minimizer(resid, params, scale_covar=False)
    kws = {"x_scale": "jac", "diff_step": 1e-3} if method == "least_squares" else {}
    res = mini.minimize(method=method, max_nfev=max_nfev, **kws)
    r = problem.residuals(res.params.valuesdict())
    nq = len(problem.rows)
    return StructureFit(problem, res, time.perf_counter() - t0, float(np.sum(r[:nq] ** 2)),
                        float(np.sum(r[nq:] ** 2)))


def compare_structures(models: Sequence[str], base: ParameterSet | None = None, mode: str = "typical",
                       max_nfev: int = 300, progress=None) -> tuple[list[StructureFit], "pd.DataFrame"]:  # noqa: F821
    """Fit each structure to the same data; a table ranked by AIC with BIC, chi-square parts and ΔAIC."""
    import pandas as pd
    fits = []
    for name in models:
        prob = JointProblem(name, base=base or default_parameters(), mode=mode)
        f = fit_structure(prob, max_nfev=max_nfev)
        fits.append(f)
        if progress:
            progress(f)
    rows = []
    best = min(f.aic for f in fits)
    for f in fits:
        m = f.problem.structure
        rows.append({"model": m.name, "free_parameters": f.n_free, "n_data": f.problem.n_data,
                     "chi2_numbers": round(f.chi2_gauss, 2), "chi2_facts": round(f.chi2_hinge, 2),
                     "AIC": round(f.aic, 2), "BIC": round(f.bic, 2), "delta_AIC": round(f.aic - best, 2),
                     "hypotheses": "; ".join(m.hypotheses), "seconds": round(f.seconds, 1),
                     "evaluations": f.result.nfev})
    table = pd.DataFrame(rows).sort_values("AIC").reset_index(drop=True)
    return fits, table


def profile(fit: StructureFit, name: str, n_points: int = 7, max_nfev: int = 150) -> "pd.DataFrame":  # noqa: F821
    """Profile likelihood of one free parameter: refit the others on a grid; Δchi2 against the best fit.

    The grid spans the parameter's bounds on a log scale where the lower bound is > 0 (linear otherwise),
    with the best value included. A flat profile (Δchi2 < 3.84 at both bounds) means the data do not
    identify the parameter.
    """
    import pandas as pd
    prob = fit.problem
    best = fit.values
    bounds = prob.lmfit_parameters()[name]
    lo, hi = bounds.min, bounds.max
    grid = np.geomspace(lo, hi, n_points) if lo > 0 else np.linspace(lo, hi, n_points)
    grid = np.unique(np.r_[grid, best[name]])
    rows = []
    others = [n for n in prob.parameter_names if n != name]
    # one sub-problem for the whole grid (reading and validating the dataset takes ~0.2 s); each grid point sets
    # its base (and potency), which also keys the residual cache
    sub = JointProblem(prob.model, base=prob.base, free=[n for n in prob.free if n != name],
                       fit_potency=prob.fit_potency and name != "potency_chinese_rhil2", mode=prob.mode,
                       n_population=prob.n_population, seed=prob.seed, use_checks=prob.use_checks,
                       iiv=prob.iiv, regimens=prob.regimens)
    for v in grid:
        fixed = dict(best)
        fixed[name] = v
        if name == "potency_chinese_rhil2":
            sub.base = prob.base
            pot = v

            def potency(values, pot=pot):
                return {"chinese_rhil2": pot}
            sub.potency = potency
        else:
            sub.base = prob.base.with_values(**{name: v})
        if others:
            f = fit_structure(sub, start={k: best[k] for k in others}, max_nfev=max_nfev)
            chi2 = f.chi2
        else:
            r = sub.residuals(fixed)
            chi2 = float(np.sum(r ** 2))
        rows.append({"parameter": name, "value": float(v), "chi2": chi2, "delta_chi2": chi2 - fit.chi2})
    return pd.DataFrame(rows)


def fit_summary(fit: StructureFit) -> str:
    """lmfit's own report of a structure fit, headed by what was fitted."""
    import lmfit
    head = ("lmfit's own AIC/BIC below assume an estimated error scale; the model comparison uses "
            "chi2 + 2k and chi2 + k ln n with the studies' stated SEs (known variance).\n"
            f"model {fit.problem.model} ({fit.problem.mode} mode): {fit.n_free} free parameters, "
            f"{len(fit.problem.rows)} numbers + {len(fit.problem.checks)} soft facts; chi2 numbers "
            f"{fit.chi2_gauss:.2f}, facts {fit.chi2_hinge:.2f}; {fit.seconds:.1f} s, {fit.result.nfev} "
            "evaluations\n")
    return head + lmfit.fit_report(fit.result)


def residual_table(fit: StructureFit) -> "pd.DataFrame":  # noqa: F821
    """Every calibration row and fact at the fitted values: observed, predicted, z / hinge."""
    import pandas as pd
    prob = fit.problem
    pred, quals = prob.predictions(fit.values)
    r = prob.residuals(fit.values)
    nq = len(prob.rows)
    a = prob.rows[["id", "study", "observable", "mapping", "day", "value", "se", "weight_class"]].copy()
    a["predicted"] = pred
    a["z"] = r[:nq]
    b = prob.checks[["id", "study", "observable", "criterion"]].copy()
    b["predicted"] = [q["predicted"] for q in quals]
    b["holds"] = [q["pass"] for q in quals]
    b["hinge"] = r[nq:]
    return pd.concat([a, b], ignore_index=True)
