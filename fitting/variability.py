"""Residual error, between-patient variability (IIV) estimated from reported spreads, responder fractions.

Residual error model
--------------------
Every measured value is ``y_obs = y_model * exp(sigma_f * eps)``, ``eps ~ N(0, 1)`` independent per patient,
per visit and per observable: a *proportional* error (constant CV), additive on the log scale, with one
``sigma`` per assay family (:data:`RESIDUAL_SIGMA`). It lumps the assay's analytical error and the
within-patient (visit-to-visit) biological variation that the ODE model does not describe. Neither
``../shared/literature.md`` nor the evidence file reports an assay CV, so every sigma is an **ASSUMPTION**:

* ``flow_count`` (Treg, Th17, naive CD4 cells/uL, flow cytometry with counting beads): sigma 0.25 (about 25 %
  CV: ~10 % analytical for bead counts of rare subsets plus ~20 % visit-to-visit biological variation);
* ``flow_percent`` (a subset as % of CD4, one tube, no bead count): sigma 0.15;
* ``immunoassay`` (plasma IL-2, sirolimus blood levels): sigma 0.20;
* the Th17/Treg ratio is formed from two counts of the same sample: sigma = sqrt(2) x 0.25.

The residual sigmas are *not* estimated: the reported spreads are marginal between-patient SDs that cannot
separate residual error from IIV (it would take repeated baseline visits); they are subtracted (as variance)
from the observed SDs before the IIV is fitted.

Between-patient variability estimated from the data
---------------------------------------------------
Targets (log scale; :func:`iiv_targets`):

* **Feng 2019** (n = 35, one Shanxi course, mean +- SD): Treg 8.1 +- 7.59 at baseline and 20.71 +- 14.47
  after the course. A log-normal with coefficient of variation CV has SD of the log ``sqrt(ln(1 + CV^2))``:
  0.794 at baseline and 0.631 on day 7 (the day is ASSUMED). The paired SD of the fold change is not
  reported, so the model is matched on the two marginal SDs (the model supplies the correlation between
  baseline and response).
* **SAT0261** (n = 82, paired test week 24 vs week 0). **Rule:** a two-sided paired P value gives
  ``z = Phi^-1(1 - P/2)``; with mean per-patient log change m, ``z = |m| sqrt(n) / SD``, hence
  ``SD = |m| sqrt(n) / z``. m is taken as the log ratio of the reported medians (ASSUMPTION: the ratio of
  medians stands in for the mean log change; the study's test is likely a Wilcoxon test, whose efficiency
  relative to the t test is 0.955 under normality: the rule treats it as a z test). Treg: m = ln(22.1/12.98),
  P = 0.002 -> SD 1.56; Th17/Treg: m = ln(0.29/0.44), P = 0.029 -> SD 1.73.
  SE of the log of a derived SD: ``sqrt(1/z^2 + 1/(2(n-1)))`` (m is uncertain by SE m/z, the SD itself by
  1/sqrt(2(n-1))); of a sample SD: ``1/sqrt(2(n-1))``.

Each target is the *observed* SD, model variance plus residual variance (one visit: sigma^2; a fold change
between two visits: 2 sigma^2). :func:`fit_iiv` fits the omegas (SD of the log-parameter) of ``treg_baseline``
and ``il2_emax_treg`` with lmfit by matching the simulated between-patient SDs (virtual populations of 200
with fixed draws: common random numbers, so the objective is smooth) to the targets; the residuals are
``(ln SD_sim - ln SD_target) / SE``. Standard errors from lmfit's covariance (and a profile on request). All
other omegas of :data:`tregpd.model.population.DEFAULT_IIV` (PK clearances, Th17 and naive baselines, Treg
proliferation) are not estimable from these numbers and stay at their priors.

Responder
---------
A responder is a patient whose *measured* Treg fold change (value at the study's time point divided by the
same patient's day-0 value, both with residual error when ``residual=True``) is at least ``threshold``
(default 1.5). :func:`responder_fraction` computes it on any population result.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

#: residual SD on the log scale per assay family (ASSUMPTIONS, see module docstring)
RESIDUAL_SIGMA: Mapping[str, float] = {"flow_count": 0.25, "flow_percent": 0.15, "immunoassay": 0.20}
#: observable -> assay family (ratio: two flow counts of one sample)
OBSERVABLE_FAMILY: Mapping[str, str] = {"treg": "flow_count", "th17": "flow_count", "naive": "flow_count",
                                        "c_il2": "immunoassay", "c_rapa": "immunoassay",
                                        "il2": "immunoassay", "rapa": "immunoassay"}
RESIDUAL_ASSUMPTION = ("ASSUMPTION: proportional residual error (log-normal) per assay family, sigma (log SD) "
                       "flow counts 0.25, flow % of CD4 0.15, immunoassays 0.20, Th17/Treg ratio sqrt(2) x 0.25; "
                       "no assay CV is reported in the literature notes or the evidence file")
DEFAULT_THRESHOLD = 1.5
DEFAULT_SEED = 20170614
#: omegas fitted by :func:`fit_iiv` and their bounds
FITTED_OMEGAS = ("treg_baseline", "il2_emax_treg")
OMEGA_BOUNDS = (0.0, 3.0)


def residual_sigma(observable: str, sigma: Mapping[str, float] | None = None) -> float:
    """Log-scale residual SD of an observable (``ratio``: sqrt(sigma_treg^2 + sigma_th17^2))."""
    s = dict(RESIDUAL_SIGMA if sigma is None else {**RESIDUAL_SIGMA, **sigma})
    if observable == "ratio":
        return math.hypot(s[OBSERVABLE_FAMILY["th17"]], s[OBSERVABLE_FAMILY["treg"]])
    fam = OBSERVABLE_FAMILY.get(observable)
    if fam is None:
        raise KeyError(f"no assay family for observable {observable!r}; known: "
                       f"{', '.join(sorted(OBSERVABLE_FAMILY))}, ratio")
    return float(s[fam])


def add_residual_error(values, observable: str = "treg", *, seed: int | None = DEFAULT_SEED, rng=None,
                       sigma: float | None = None) -> np.ndarray:
    """Measured values: ``values * exp(sigma * eps)``, eps independent N(0, 1) per element.

    ``values`` is any array of model values (e.g. (patients, times)); ``rng`` (a numpy Generator) overrides
    ``seed``; ``sigma`` overrides the observable's family sigma. Same seed, same output.
    """
    x = np.asarray(values, dtype=np.float64)
    s = residual_sigma(observable) if sigma is None else float(sigma)
    g = rng if rng is not None else np.random.default_rng(seed)
    return x * np.exp(s * g.standard_normal(x.shape))


# ------------------------------------------------------------------------------------- P value -> SD
def sd_from_p_value(p: float, mean_log_change: float, n: int) -> float:
    """SD of the per-patient log change implied by a two-sided paired P value: |m| sqrt(n) / z(1 - P/2)."""
    from scipy.stats import norm
    if not (0 < p < 1) or n < 2:
        raise ValueError(f"need 0 < P < 1 and n >= 2, got P={p}, n={n}")
    return abs(mean_log_change) * math.sqrt(n) / float(norm.isf(p / 2.0))


def se_log_sd_from_p(p: float, n: int) -> float:
    """SE of ln(SD) for an SD derived by :func:`sd_from_p_value`: sqrt(1/z^2 + 1/(2(n-1)))."""
    from scipy.stats import norm
    z = float(norm.isf(p / 2.0))
    return math.sqrt(1.0 / z ** 2 + 1.0 / (2.0 * (n - 1)))


def sd_log_from_mean_sd(mean: float, sd: float) -> float:
    """SD of the log of a log-normal with the given mean and SD: sqrt(ln(1 + CV^2))."""
    return math.sqrt(math.log1p((sd / mean) ** 2))


@dataclass(frozen=True)
class IIVTarget:
    """One reported between-patient spread on the log scale."""

    name: str
    regimen_id: str
    observable: str
    day: float
    kind: str            # "level" (SD of ln value at day) or "fold" (SD of ln(value at day / value at day 0))
    sd_observed: float   # observed SD (model + residual)
    se_log: float        # SE of ln(sd_observed)
    n: int
    rule: str

    def residual_var(self, sigma: Mapping[str, float] | None = None) -> float:
        s = residual_sigma(self.observable, sigma)
        return (2.0 if self.kind == "fold" else 1.0) * s * s


def iiv_targets() -> list[IIVTarget]:
    """The reported spreads that constrain IIV (see module docstring)."""
    se35 = 1.0 / math.sqrt(2 * 34)
    m_treg, m_ratio = math.log(22.1 / 12.98), math.log(0.29 / 0.44)
    return [
        IIVTarget("feng_treg_day0", "feng2019", "treg", 0.0, "level", sd_log_from_mean_sd(8.1, 7.59), se35, 35,
                  "Feng 2019 Treg 8.1 +- 7.59 (mean +- SD): sqrt(ln(1 + CV^2))"),
        IIVTarget("feng_treg_day7", "feng2019", "treg", 7.0, "level", sd_log_from_mean_sd(20.71, 14.47), se35, 35,
                  "Feng 2019 Treg 20.71 +- 14.47 after one course (day 7 ASSUMED): sqrt(ln(1 + CV^2))"),
        IIVTarget("sat0261_treg_fold_w24", "sat0261", "treg", 168.0, "fold", sd_from_p_value(0.002, m_treg, 82),
                  se_log_sd_from_p(0.002, 82), 82,
                  "SAT0261 P = 0.002, n = 82, m = ln(22.1/12.98): SD = |m| sqrt(n) / z"),
        IIVTarget("sat0261_ratio_fold_w24", "sat0261", "ratio", 168.0, "fold", sd_from_p_value(0.029, m_ratio, 82),
                  se_log_sd_from_p(0.029, 82), 82,
                  "SAT0261 P = 0.029, n = 82, m = ln(0.29/0.44): SD = |m| sqrt(n) / z (check only: Th17-side "
                  "omegas are not fitted)"),
    ]


# ------------------------------------------------------------------------------------- simulated spreads
def _day_index(t: np.ndarray, day: float) -> int:
    idx = np.flatnonzero(np.isclose(t, day, rtol=0, atol=1e-9))
    if idx.size == 0:
        raise ValueError(f"day {day} not on the output grid")
    return int(idx[0])


def simulated_sd(result, target: IIVTarget, sigma: Mapping[str, float] | None = None,
                 residual: bool = True) -> float:
    """Between-patient SD (log scale) of a population result for a target; with ``residual`` the residual
    variance is added analytically (model variance + sigma^2, or + 2 sigma^2 for a fold change)."""
    x = result.get(target.observable)
    t = np.asarray(result.time_day)
    v = x[:, _day_index(t, target.day)]
    q = np.log(v / x[:, _day_index(t, 0.0)]) if target.kind == "fold" else np.log(v)
    var = float(np.var(q, ddof=1)) + (target.residual_var(sigma) if residual else 0.0)
    return math.sqrt(var)


class IIVProblem:
    """Omegas -> simulated SDs for the targets, with fixed draws (common random numbers).

    ``simulator(regimen_id, iiv)`` may be given (tests: a synthetic model); by default each regimen of the
    calibration dataset is simulated with :func:`tregpd.fitting.validate.simulate_study`.
    """

    def __init__(self, targets: Sequence[IIVTarget] | None = None, parameters=None, *, fitted=FITTED_OMEGAS,
                 base_iiv: Mapping[str, float] | None = None, n_population: int = 200, seed: int = DEFAULT_SEED,
                 sigma: Mapping[str, float] | None = None, simulator=None, model=None,
                 use: Sequence[str] | None = None):
        from tregpd.model.population import DEFAULT_IIV
        self.targets = list(iiv_targets() if targets is None else targets)
        self.use = [t.name for t in self.targets if "ratio" not in t.name] if use is None else list(use)
        self.fitted = tuple(fitted)
        self.base_iiv = dict(DEFAULT_IIV if base_iiv is None else base_iiv)
        self.n_population, self.seed, self.sigma, self.model = n_population, seed, sigma, model
        self.parameters = parameters
        self._simulator = simulator
        self._regs = None

    def simulate(self, regimen_id: str, iiv: Mapping[str, float]):
        if self._simulator is not None:
            return self._simulator(regimen_id, iiv)
        from tregpd.model import default_parameters
        from .calibration import load_regimens
        from .validate import simulate_study
        if self._regs is None:
            self._regs = load_regimens()
            if self.parameters is None:
                self.parameters = default_parameters()
        days = [t.day for t in self.targets if t.regimen_id == regimen_id] + [0.0]
        return simulate_study(self._regs[regimen_id], self.parameters, population=self.n_population,
                              seed=self.seed, extra_days=days, model=self.model, iiv=iiv).population

    def iiv(self, omegas: Mapping[str, float]) -> dict:
        out = dict(self.base_iiv)
        out.update({k: float(v) for k, v in omegas.items()})
        return out

    def sds(self, omegas: Mapping[str, float]) -> dict:
        iiv = self.iiv(omegas)
        res = {rid: self.simulate(rid, iiv) for rid in dict.fromkeys(t.regimen_id for t in self.targets)}
        return {t.name: simulated_sd(res[t.regimen_id], t, self.sigma) for t in self.targets}

    def residuals(self, omegas: Mapping[str, float]) -> np.ndarray:
        sd = self.sds(omegas)
        return np.array([(math.log(sd[t.name]) - math.log(t.sd_observed)) / t.se_log
                         for t in self.targets if t.name in self.use])


@dataclass
class IIVFit:
    problem: IIVProblem
    result: object
    estimates: dict
    stderr: dict
    sds: dict
    chi2: float

    def table(self) -> "pd.DataFrame":  # noqa: F821
        import pandas as pd
        rows = []
        for t in self.problem.targets:
            sd = self.sds[t.name]
            rows.append({"kind": "target", "name": t.name, "regimen_id": t.regimen_id, "observable": t.observable,
                         "day": t.day, "statistic": f"SD of ln {'fold change' if t.kind == 'fold' else 'value'}",
                         "observed": t.sd_observed, "se_log": t.se_log,
                         "residual_sd_part": math.sqrt(t.residual_var(self.problem.sigma)),
                         "predicted": sd, "z": (math.log(sd) - math.log(t.sd_observed)) / t.se_log,
                         "used_in_fit": t.name in self.problem.use, "rule": t.rule})
        for name, om in self.problem.iiv(self.estimates).items():
            fitted = name in self.problem.fitted
            se = self.stderr.get(name, math.nan) if fitted else math.nan
            om = 0.0 if om < 1e-9 else om
            rows.append({"kind": "omega", "name": name, "predicted": om, "stderr": se,
                         "status": ("ESTIMATED" if fitted and math.isfinite(se) and
                                    OMEGA_BOUNDS[0] + 1e-3 < om < OMEGA_BOUNDS[1] - 1e-3
                                    else "AT BOUND (profile gives a limit only)" if fitted else "PRIOR (not estimable)"),
                         "rule": "lmfit least squares on ln SD" if fitted else "DEFAULT_IIV prior"})
        return pd.DataFrame(rows)


def fit_iiv(problem: IIVProblem | None = None, start: Mapping[str, float] | None = None,
            max_nfev: int = 200) -> IIVFit:
    """Fit the omegas of ``problem.fitted`` with lmfit (bounded least squares on ln SD)."""
    import lmfit
    problem = problem or IIVProblem()
    params = lmfit.Parameters()
    for n in problem.fitted:
        v = float((start or {}).get(n, problem.base_iiv.get(n, 0.3)))
        params.add(n, value=min(max(v, 0.01), OMEGA_BOUNDS[1] - 0.01), min=OMEGA_BOUNDS[0], max=OMEGA_BOUNDS[1])
    mini = lmfit.Minimizer(lambda p: problem.residuals(p.valuesdict()), params, scale_covar=False)
    res = mini.minimize(method="least_squares", max_nfev=max_nfev, x_scale="jac", diff_step=1e-3)
    est = {n: float(p.value) for n, p in res.params.items()}
    se = {n: (float(p.stderr) if p.stderr is not None else math.nan) for n, p in res.params.items()}
    at_bound = [n for n, v in est.items() if v <= OMEGA_BOUNDS[0] + 1e-3 or v >= OMEGA_BOUNDS[1] - 1e-3]
    if at_bound and len(at_bound) < len(est):
        # a parameter on its bound makes the covariance singular: SEs of the others with it held there
        p2 = res.params.copy()
        for n in at_bound:
            p2[n].set(vary=False)
        res2 = lmfit.Minimizer(lambda p: problem.residuals(p.valuesdict()), p2,
                               scale_covar=False).minimize(method="least_squares", max_nfev=max_nfev,
                                                           x_scale="jac", diff_step=1e-3)
        est = {n: float(p.value) for n, p in res2.params.items()}
        se = {n: (float(p.stderr) if (p.stderr is not None and n not in at_bound) else math.nan)
              for n, p in res2.params.items()}
    r = problem.residuals(est)
    return IIVFit(problem, res, est, se, problem.sds(est), float(np.sum(r ** 2)))


def profile_omega(fit: IIVFit, name: str, grid: Sequence[float]) -> "pd.DataFrame":  # noqa: F821
    """Profile of one omega: refit the others (if any) at each grid value; delta chi-square vs the best fit."""
    import pandas as pd
    rows = []
    others = [n for n in fit.problem.fitted if n != name]
    for v in grid:
        p = fit.problem
        sub = IIVProblem(p.targets, p.parameters, fitted=others, base_iiv={**p.base_iiv, name: float(v)},
                         n_population=p.n_population, seed=p.seed, sigma=p.sigma, simulator=p._simulator,
                         model=p.model, use=p.use)
        sub._regs = p._regs
        if others:
            f = fit_iiv(sub, start={k: fit.estimates[k] for k in others}, max_nfev=60)
            chi2 = f.chi2
        else:
            chi2 = float(np.sum(sub.residuals({}) ** 2))
        rows.append({"omega": name, "value": float(v), "chi2": chi2, "delta_chi2": chi2 - fit.chi2})
    return pd.DataFrame(rows)


def profile_interval(prof, level: float = 3.84) -> tuple[float, float]:
    """Range of values with delta chi-square <= ``level``, linearly interpolated between grid points where the
    profile crosses ``level`` (a grid end where it does not: the interval is then open at that end)."""
    p = prof.sort_values("value")
    v, d = p["value"].to_numpy(float), p["delta_chi2"].to_numpy(float)
    ok = np.flatnonzero(d <= level)
    if not ok.size:
        return (math.nan, math.nan)
    i, j = ok[0], ok[-1]
    lo = v[i] if i == 0 else v[i - 1] + (level - d[i - 1]) * (v[i] - v[i - 1]) / (d[i] - d[i - 1])
    hi = v[j] if j == len(v) - 1 else v[j] + (level - d[j]) * (v[j + 1] - v[j]) / (d[j + 1] - d[j])
    return (float(lo), float(hi))


# ------------------------------------------------------------------------------------- responders
def responder_mask(result, day: float, threshold: float = DEFAULT_THRESHOLD, residual: bool = True,
                   seed: int | None = DEFAULT_SEED, observable: str = "treg", sigma: float | None = None,
                   rng=None, day_end: float | None = None, summary: str = "point") -> np.ndarray:
    """Per-patient bool: measured fold change of ``observable`` (value at ``day`` / value at day 0) >= threshold.

    ``result`` is a population :class:`~tregpd.model.SimulationResult` (or anything with ``time_day`` and
    ``get(observable)`` -> (patients, times)). ``summary`` "max"/"mean" over ``[day, day_end]`` takes the
    per-patient max/mean of the model fold over the window (the visit that the study summarised). With
    ``residual`` the two visits (day 0 and the visit) each get an independent residual error (seeded):
    measured fold = model fold x exp(sigma (eps_1 - eps_0)).
    """
    x = np.asarray(result.get(observable), dtype=np.float64)
    t = np.asarray(result.time_day)
    fold = x / x[:, [_day_index(t, 0.0)]]
    if summary == "point":
        q = fold[:, _day_index(t, day)]
    else:
        m = (t >= day - 1e-9) & (t <= (day if day_end is None else day_end) + 1e-9)
        q = fold[:, m].max(axis=1) if summary == "max" else fold[:, m].mean(axis=1)
    if residual:
        s = residual_sigma(observable) if sigma is None else float(sigma)
        g = rng if rng is not None else np.random.default_rng(seed)
        e = g.standard_normal((q.shape[0], 2))
        q = q * np.exp(s * (e[:, 1] - e[:, 0]))
    return q >= threshold


def responder_fraction(result, day: float, threshold: float = DEFAULT_THRESHOLD, residual: bool = True,
                       seed: int | None = DEFAULT_SEED, **kw) -> float:
    """Fraction of patients whose measured Treg fold change at ``day`` is >= ``threshold`` (see
    :func:`responder_mask`)."""
    m = responder_mask(result, day, threshold, residual, seed, **kw)
    return float(m.mean()) if m.size else math.nan


# ------------------------------------------------------------------------------------- virtual trials
def virtual_trials(iiv: Mapping[str, float], parameters=None, *, n_trials: int = 200, n_patients: int = 82,
                   regimen_id: str = "sat0261", day: float = 168.0, alpha: float = 0.05,
                   seed: int = DEFAULT_SEED, sigma: Mapping[str, float] | None = None, model=None,
                   threshold: float = DEFAULT_THRESHOLD) -> "pd.DataFrame":  # noqa: F821
    """Simulate ``n_trials`` cohorts of ``n_patients`` (one population drawn at once, split into cohorts),
    add residual error to the day-0 and day-``day`` visits, and test week ``day`` vs day 0 per cohort with a
    two-sided Wilcoxon signed-rank test for Treg, Th17 and the Th17/Treg ratio (ratio from the measured counts).

    Returns one row per cohort: P values, significance, median folds, responder fraction.
    """
    import pandas as pd
    from scipy.stats import wilcoxon
    from tregpd.model import default_parameters
    from .calibration import load_regimens
    from .validate import simulate_study
    params = parameters if parameters is not None else default_parameters()
    reg = load_regimens()[regimen_id]
    n = n_trials * n_patients
    sim = simulate_study(reg, params, population=n, seed=seed, extra_days=[0.0, day], model=model, iiv=iiv)
    pop = sim.population
    t = np.asarray(pop.time_day)
    i0, i1 = _day_index(t, 0.0), _day_index(t, day)
    rng = np.random.default_rng(seed + 1)
    s = dict(RESIDUAL_SIGMA if sigma is None else {**RESIDUAL_SIGMA, **sigma})
    meas = {}
    for obs in ("treg", "th17"):
        x = pop.get(obs)[:, [i0, i1]]
        meas[obs] = x * np.exp(s[OBSERVABLE_FAMILY[obs]] * rng.standard_normal(x.shape))
    meas["ratio"] = meas["th17"] / meas["treg"]
    n_ok = meas["treg"].shape[0] // n_patients * n_patients
    rows = []
    for k in range(n_ok // n_patients):
        sl = slice(k * n_patients, (k + 1) * n_patients)
        row = {"trial": k}
        for obs in ("treg", "th17", "ratio"):
            a, b = meas[obs][sl, 0], meas[obs][sl, 1]
            p = float(wilcoxon(b, a).pvalue)
            row[f"p_{obs}"] = p
            row[f"significant_{obs}"] = p < alpha
            row[f"median_fold_{obs}"] = float(np.median(b / a))
            row[f"ratio_of_medians_{obs}"] = float(np.median(b) / np.median(a))
        row["responder_fraction"] = float(np.mean(meas["treg"][sl, 1] / meas["treg"][sl, 0] >= threshold))
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------- the report
def sigma_matching(target: IIVTarget, model_sd: float) -> float:
    """Residual sigma (per visit) that would make model SD + residual equal a fold-change target's SD:
    sqrt((SD_obs^2 - SD_model^2) / 2) (0 when the model alone already exceeds it)."""
    k = 2.0 if target.kind == "fold" else 1.0
    return math.sqrt(max(0.0, target.sd_observed ** 2 - model_sd ** 2) / k)


def run_variability(parameters=None, *, n_population: int = 200, n_trials: int = 200, n_patients: int = 82,
                    seed: int = DEFAULT_SEED, threshold: float = DEFAULT_THRESHOLD,
                    profile_grid: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 2.0, 3.0),
                    progress=None) -> dict:
    """Everything ``tregpd variability`` reports: the IIV fit, profiles, responder fractions, virtual trials."""
    import pandas as pd
    from tregpd.model import default_parameters
    say = progress or (lambda msg: None)
    params = parameters if parameters is not None else default_parameters()
    prob = IIVProblem(parameters=params, n_population=n_population, seed=seed)
    say("fitting omegas")
    fit = fit_iiv(prob)
    profiles = {}
    for name in prob.fitted:
        say(f"profiling {name}")
        e = fit.estimates[name]
        grid = sorted(set(float(g) for g in profile_grid) | {round(e * f, 4) for f in (0.75, 0.9, 1.0, 1.1, 1.25)})
        profiles[name] = profile_omega(fit, name, grid)
    iiv = prob.iiv(fit.estimates)
    # model-only SD of the SAT0261 Treg fold at the estimates, and the residual sigma that would explain P=0.002
    sat = next(t for t in prob.targets if t.name == "sat0261_treg_fold_w24")
    res_sat = prob.simulate("sat0261", iiv)
    model_sd = simulated_sd(res_sat, sat, residual=False)
    sigma_sat = sigma_matching(sat, model_sd)
    # responder fractions with the estimated IIV
    resp = []
    for rid, day in (("feng2019", 7.0), ("sat0261", 168.0)):
        r = prob.simulate(rid, iiv)
        for residual in (True, False):
            resp.append({"regimen_id": rid, "day": day, "threshold": threshold, "residual": residual,
                         "responder_fraction": responder_fraction(r, day, threshold, residual, seed=seed),
                         "n_patients": int(r.get("treg").shape[0])})
    say("virtual trials (estimated IIV, prior residual error)")
    trials = {"prior_sigma": virtual_trials(iiv, params, n_trials=n_trials, n_patients=n_patients, seed=seed,
                                            threshold=threshold)}
    say("virtual trials (residual sigma matched to the SAT0261 Treg P value)")
    trials["sat0261_sigma"] = virtual_trials(iiv, params, n_trials=n_trials, n_patients=n_patients, seed=seed,
                                             sigma={"flow_count": sigma_sat}, threshold=threshold)
    summary = []
    for key, tr in trials.items():
        summary.append({"scenario": key,
                        "sigma_flow_count": RESIDUAL_SIGMA["flow_count"] if key == "prior_sigma" else sigma_sat,
                        "n_trials": len(tr), "n_patients": n_patients,
                        "frac_significant_treg": float(tr["significant_treg"].mean()),
                        "frac_significant_th17": float(tr["significant_th17"].mean()),
                        "frac_significant_ratio": float(tr["significant_ratio"].mean()),
                        "median_ratio_of_medians_treg": float(tr["ratio_of_medians_treg"].median()),
                        "median_ratio_of_medians_th17": float(tr["ratio_of_medians_th17"].median()),
                        "median_responder_fraction": float(tr["responder_fraction"].median())})
    table = fit.table()
    intervals = {n: profile_interval(p) for n, p in profiles.items()}
    table["profile_95_low"] = [intervals.get(n, (math.nan,))[0] if k == "omega" else math.nan
                               for k, n in zip(table["kind"], table["name"])]
    table["profile_95_high"] = [intervals.get(n, (math.nan, math.nan))[1] if k == "omega" else math.nan
                                for k, n in zip(table["kind"], table["name"])]
    return {"fit": fit, "table": table, "profiles": pd.concat(profiles.values(), ignore_index=True),
            "intervals": intervals, "iiv": iiv, "model_sd_sat0261": model_sd, "sigma_sat0261": sigma_sat,
            "responders": pd.DataFrame(resp), "trials": trials, "trial_summary": pd.DataFrame(summary),
            "seed": seed, "n_population": n_population, "threshold": threshold}


def _f(v, nd=3) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return "" if not math.isfinite(v) else f"{v:.{nd}g}"
    return str(v)


def _md(frame, cols) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in frame[cols].itertuples(index=False):
        lines.append("| " + " | ".join(_f(v).replace("|", "/") for v in r) + " |")
    return "\n".join(lines)


def markdown_report(rep: dict) -> str:
    fit, tab = rep["fit"], rep["table"]
    tg = tab[tab["kind"] == "target"]
    om = tab[tab["kind"] == "omega"]
    ts = rep["trial_summary"]
    est = fit.estimates
    lo, hi = rep["intervals"].get("il2_emax_treg", (math.nan, math.nan))
    blo, bhi = rep["intervals"].get("treg_baseline", (math.nan, math.nan))
    p = ["# Between-patient variability, residual error, responders, virtual SAT0261 trials", "",
         "## Residual error (ASSUMPTION)", "",
         "Proportional (log-normal) error per measured value, independent per patient, visit and observable: "
         "y_obs = y_model exp(sigma eps). sigma (log SD): flow-cytometry counts (Treg, Th17, naive) "
         f"{RESIDUAL_SIGMA['flow_count']}, flow % of CD4 {RESIDUAL_SIGMA['flow_percent']}, immunoassays "
         f"{RESIDUAL_SIGMA['immunoassay']}; Th17/Treg ratio sqrt(2) x {RESIDUAL_SIGMA['flow_count']}. No assay "
         "CV is reported in the literature notes or the evidence: these are assumptions (analytical ~10 % plus "
         "within-patient visit-to-visit ~20 %), not estimates.", "",
         "## Targets (reported spreads, log scale)", "",
         "Rule for a paired P value: z = Phi^-1(1 - P/2), SD of the per-patient log change = |m| sqrt(n) / z, "
         "m = log ratio of the reported medians (stands in for the mean log change); SE of ln SD = "
         "sqrt(1/z^2 + 1/(2(n-1))). Feng 2019 mean +- SD -> SD of ln = sqrt(ln(1 + CV^2)), SE 1/sqrt(2(n-1)). "
         "*predicted* = simulated between-patient SD (population of "
         f"{rep['n_population']}, seed {rep['seed']}, common random numbers) with the residual variance added.", "",
         _md(tg, ["name", "statistic", "day", "observed", "se_log", "residual_sd_part", "predicted", "z",
                  "used_in_fit"]), "",
         "## Omegas (SD of the log-parameter)", "",
         f"Fitted with lmfit (least squares on ln SD, {len(fit.problem.use)} targets): chi-square {fit.chi2:.2f}. "
         "Profile 95 % interval: omega values with delta chi-square <= 3.84 (other omega refitted).", "",
         _md(om, ["name", "predicted", "stderr", "profile_95_low", "profile_95_high", "status"]), "",
         f"* **il2_emax_treg**: estimate {est['il2_emax_treg']:.2f}, profile 95 % interval [{lo:.3g}, {hi:.3g}] "
         "(interpolated on the grid). Feng 2019's spread *shrinks* after the course (SD of ln 0.79 -> 0.63) while the model "
         "only adds spread as the response varies, so the Feng rows push the omega to 0; SAT0261's P value asks "
         f"for a week-24 fold SD of {tg.loc[tg['name'] == 'sat0261_treg_fold_w24', 'observed'].iloc[0]:.2f}, but "
         "the model's week-24 (trough) Treg fold hardly depends on the IL-2 response: even omega 3 gives about "
         "0.5. The omega is not identified beyond its upper limit; with the data it is small.",
         f"* **treg_baseline**: estimate {est['treg_baseline']:.3g} (SE {fit.stderr.get('treg_baseline', math.nan):.2g}), "
         f"profile 95 % interval [{blo:.3g}, {bhi:.3g}] (prior 0.35).",
         "* Not estimable, kept at their priors (DEFAULT_IIV): " +
         ", ".join(f"{n} {v:g}" for n, v in rep["iiv"].items() if n not in fit.problem.fitted) +
         ". No reported spread informs PK clearances, naive or Th17 baselines or Treg proliferation; the "
         "SAT0261 Th17/Treg P value is shown as a check only.",
         f"* The SAT0261 Treg P value (0.002) would need a residual sigma of {rep['sigma_sat0261']:.2f} per visit "
         f"for flow counts (model-only week-24 fold SD {rep['model_sd_sat0261']:.2f}): the study's per-patient "
         "changes are far more dispersed than the model's between-patient variability explains.", "",
         "## Responder fraction", "",
         f"Responder: measured Treg fold change (value at the study's day / the same patient's day 0, both with "
         f"residual error when 'residual') >= {rep['threshold']:g}. Estimated IIV.", "",
         _md(rep["responders"], ["regimen_id", "day", "threshold", "residual", "responder_fraction", "n_patients"]),
         "", "## Virtual SAT0261 trials", "",
         f"{int(ts['n_trials'].iloc[0])} cohorts of {int(ts['n_patients'].iloc[0])} patients (regimen `sat0261`, "
         "estimated IIV), residual error on the week-0 and week-24 visits, two-sided Wilcoxon signed-rank test "
         "week 24 vs week 0 at alpha 0.05. The study saw Treg P = 0.002 (significant), Th17 'no significant "
         "change', Th17/Treg P = 0.029.", "",
         _md(ts, ["scenario", "sigma_flow_count", "frac_significant_treg", "frac_significant_th17",
                  "frac_significant_ratio", "median_ratio_of_medians_treg", "median_ratio_of_medians_th17",
                  "median_responder_fraction"]), "",
         "*prior_sigma*: the assumed residual error; *sat0261_sigma*: residual sigma raised until the simulated "
         "week-24 Treg fold SD equals the one implied by P = 0.002 (a sensitivity, not an estimate)."]
    return "\n".join(p) + "\n"


def write_report(rep: dict, out, parameters=None, runtime_s: float | None = None) -> dict:
    """variability.csv (targets + omegas + trial summary + responders), variability.md, provenance.json."""
    import pandas as pd
    from pathlib import Path
    from tregpd.io import atomic_write_frame, atomic_write_json, atomic_write_text, provenance
    out = Path(out)
    ts = rep["trial_summary"].assign(kind="virtual_trials", name=rep["trial_summary"]["scenario"])
    rs = rep["responders"].assign(kind="responder_fraction",
                                  name=[f"{a}_day{d:g}_{'measured' if r else 'model'}" for a, d, r in
                                        zip(rep["responders"]["regimen_id"], rep["responders"]["day"],
                                            rep["responders"]["residual"])])
    pr = rep["profiles"].assign(kind="profile", name=rep["profiles"]["omega"]).drop(columns="omega")
    frame = pd.concat([rep["table"], pr, ts, rs], ignore_index=True)
    prov = provenance(parameters, None, rep["seed"], n_population=rep["n_population"],
                      residual_error=RESIDUAL_ASSUMPTION, iiv=rep["iiv"], threshold=rep["threshold"],
                      runtime_s=None if runtime_s is None else round(runtime_s, 1))
    files = {"variability.csv": atomic_write_frame(out / "variability.csv", frame, prov),
             "variability.md": atomic_write_text(out / "variability.md", markdown_report(rep))}
    files["provenance.json"] = atomic_write_json(out / "provenance.json", {**prov, "files": sorted(files)})
    return files
