"""Fitting workflows: typical-patient fit with profile likelihoods and identifiability, virtual-population fit,
and :func:`run_fit` which writes the fitted parameter file, the report, the figures and the residual table.

>>> from tregpd.fitting import run_fit
>>> outcome = run_fit(out_dir="out/fit")                      # doctest: +SKIP
>>> outcome.parameters["il2_emax_treg"].value                 # doctest: +SKIP

Identifiability rule (applied to every free parameter after the first fit, from its profile likelihood):

* the 95 % profile interval is closed on both sides within the bounds -> **identifiable**, stays fitted;
* the profile is flat on one or both sides *and* the prior value is inside the 95 % region
  (``delta chi2(prior) <= 3.84``) -> **not identifiable from these data**: fixed at its sourced prior and the fit
  is repeated without it;
* the profile is open on a side but the data reject the prior (``delta chi2(prior) > 3.84``) -> the data give
  only a bound; the parameter keeps its fitted value (often at a bound of its range) and the report says so;
* if fixing all the "not identifiable" parameters at their priors *together* raises chi2 by more than 3.84
  over the first fit (each prior acceptable alone, not jointly), the joint fixing is rejected and they too keep
  their fitted values, reported as limits.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from tregpd.model import ParameterSet
from tregpd.errors import TregpdError

from .cohort import Cohort, load_cohort
from .optimise import (DEFAULT_METHOD, DELTA_CHI2_95, Profile, build_parameters, confidence_intervals,
                       minimize, profile_likelihoods, sample_posterior)
from .problem import FitProblem

#: parameters profiled in addition to the free ones, to show what the data cannot separate
DEFAULT_PROFILE_EXTRA = ("il2_ec50_treg",)
DEFAULT_SEED = 20170614
DEFAULT_POPULATION_SIZE = 300
MODES = ("typical", "population", "both")


@dataclass
class TypicalFit:
    """Result of :func:`fit_typical`.

    Attributes
    ----------
    problem : FitProblem (typical mode)
    initial : lmfit MinimizerResult of the fit with all flagged parameters free
    profiles : dict name -> Profile (free parameters and ``profile_extra``)
    decisions : dict name -> text (identifiability decision for each initially free parameter)
    minimizer, result : the final fit (non-identifiable parameters fixed at their priors)
    ci, ci_message : lmfit.conf_interval output (or None) and why it failed
    parameters : fitted ParameterSet
    """

    problem: FitProblem
    initial: object
    profiles: dict
    decisions: dict
    minimizer: object
    result: object
    ci: dict | None
    ci_message: str
    parameters: ParameterSet
    fixed_at_prior: tuple = ()

    @property
    def values(self) -> dict:
        return {n: p.value for n, p in self.result.params.items()}


@dataclass
class PopulationFit:
    problem: FitProblem
    minimizer: object
    result: object
    parameters: ParameterSet

    @property
    def values(self) -> dict:
        return {n: p.value for n, p in self.result.params.items()}


def _ensure_cohort(cohort) -> Cohort:
    if cohort is None or isinstance(cohort, (str, Path)):
        return load_cohort(cohort)
    if not isinstance(cohort, Cohort):
        raise TregpdError(f"cohort must be a Cohort or a path, got {type(cohort).__name__}")
    return cohort


def fitted_parameter_set(problem: FitProblem, values: Mapping[str, float], mode: str,
                         intervals: Mapping[str, tuple] | None = None, notes: Mapping[str, str] | None = None,
                         varied: Sequence[str] = ()) -> ParameterSet:
    """The problem's ParameterSet with fitted values written in (status FITTED, source naming the cohort)."""
    intervals = intervals or {}
    notes = notes or {}
    pset = problem.parameter_set(values)
    params = {}
    for p in pset:
        prior = problem.priors[p.name]
        if p.name in varied:
            ci = intervals.get(p.name)
            ci_txt = ""
            if ci is not None:
                lo = "bound" if ci[0] is None else f"{ci[0]:.4g}"
                hi = "bound" if ci[1] is None else f"{ci[1]:.4g}"
                ci_txt = f"; 95% profile interval (typical-patient fit) [{lo}, {hi}]"
            src = (f"fitted to {problem.cohort.origin} ({mode} mode){ci_txt}; prior {prior.value:g} "
                   f"({prior.status}: {prior.source})")
            params[p.name] = replace(p, status="FITTED", fitted=True, source=src, note=notes.get(p.name, ""))
        elif p.name in problem.baseline_sources:
            same = math.isclose(p.value, prior.value, rel_tol=1e-9)
            params[p.name] = replace(p, fitted=False, status=prior.status if same else "DERIVED",
                                     source=problem.baseline_sources[p.name] + ("" if same else
                                                                                f"; prior {prior.value:g}"))
        else:
            params[p.name] = replace(p, fitted=False, note=notes.get(p.name, p.note))
    return ParameterSet(params, name=f"tregpd fitted ({mode}) to {Path(problem.cohort.origin).name}",
                        description=f"Fitted by tregpd fit ({mode} mode) to {problem.cohort.origin}; "
                                    f"regimen {problem.regimen.name} (ASSUMPTION, see fit_report.txt)",
                        origin=problem.cohort.origin)


def fit_typical(cohort=None, parameters: ParameterSet | None = None, free: Sequence[str] | None = None,
                regimen=None, *, profile: bool = True, profile_extra: Sequence[str] = DEFAULT_PROFILE_EXTRA,
                fix_unidentifiable: bool = True, n_profile_points: int = 9, method: str = DEFAULT_METHOD,
                confidence: bool = True, model=None, workers: int | None = None) -> TypicalFit:
    """Typical-patient fit: lmfit fit, profile likelihood of every free parameter, identifiability decisions,
    refit with the non-identifiable parameters fixed at their priors, and lmfit confidence intervals.

    Parameters
    ----------
    cohort : Cohort or path or None (the bundled SAT0261 seed cohort)
    parameters : priors (default: the bundled parameter file); ``free`` defaults to its ``fitted`` flags
    profile : compute profiles (needed for the identifiability decisions)
    profile_extra : parameters that are not free but are profiled to show (non-)identifiability
    fix_unidentifiable : apply the rule in the module docstring
    model : model structure (default: the default structure); parameters it does not read are neither fitted
        nor profiled
    workers : processes for the profiles (default: one per available core; 1 = in this process); the profiles
        are the same whatever the number (:func:`~tregpd.fitting.optimise.profile_likelihoods`)
    """
    cohort = _ensure_cohort(cohort)
    problem = FitProblem(cohort, parameters=parameters, free=free, regimen=regimen, mode="typical", model=model)
    reads = set(problem.structure.parameter_names)
    profile_extra = tuple(n for n in profile_extra if n in reads)
    _, initial = minimize(problem, method=method)
    profiles: dict[str, Profile] = {}
    decisions: dict[str, str] = {}
    fixed: list[str] = []
    if profile:
        names = list(problem.free) + [n for n in profile_extra if n not in problem.free]
        profiles = profile_likelihoods(problem, initial, names, n_points=n_profile_points, method=method,
                                       workers=workers)
        for name in problem.free:
            prof = profiles[name]
            cls = prof.classification
            dprior = prof.delta_at_prior
            if cls == "identifiable":
                decisions[name] = f"IDENTIFIABLE - {prof.describe()}; kept free"
            elif dprior <= DELTA_CHI2_95 and fix_unidentifiable:
                decisions[name] = (f"NOT IDENTIFIABLE - {prof.describe()}; the prior {prof.prior:g} is inside the "
                                   f"95% region (delta chi2 {dprior:.2f} <= {DELTA_CHI2_95:.2f}), so it is fixed "
                                   f"at its sourced prior")
                fixed.append(name)
            else:
                decisions[name] = (f"BOUNDED ONLY - {prof.describe()}; the data reject the prior {prof.prior:g} "
                                   f"(delta chi2 {dprior:.2f} > {DELTA_CHI2_95:.2f}), so it keeps its fitted "
                                   f"value, which is a limit rather than an estimate")
    final_free = tuple(n for n in problem.free if n not in fixed)
    if fixed and final_free:
        final_problem = FitProblem(cohort, parameters=problem.priors, free=final_free, regimen=problem.regimen,
                                   mode="typical", model=problem.model)
        final_problem.dropped_free = problem.dropped_free
        start = {n: initial.params[n].value for n in final_free}
        minimizer, result = minimize(final_problem, build_parameters(final_problem, start=start), method=method)
    elif fixed:  # everything fixed at priors: evaluate, nothing to fit
        final_problem = problem
        minimizer, result = minimize(problem, method=method)
    else:
        final_problem = problem
        minimizer, result = minimize(problem, build_parameters(problem, start={
            n: initial.params[n].value for n in problem.free}), method=method)
    joint = result.chisqr - initial.chisqr
    if fixed and joint > DELTA_CHI2_95:
        # Each prior is acceptable alone, but not all of them together: the joint fixing is rejected, so
        # these parameters keep their fitted values (reported as limits, not estimates).
        for name in fixed:
            decisions[name] = (f"BOUNDED ONLY - {profiles[name].describe()}; its prior {profiles[name].prior:g} "
                               f"is acceptable alone, but fixing {', '.join(fixed)} at their priors together "
                               f"raises chi2 by {joint:.2f} > {DELTA_CHI2_95:.2f}, so it keeps its fitted value, "
                               f"which is a limit rather than an estimate")
        fixed = []
        final_free = tuple(problem.free)
        final_problem = problem
        minimizer, result = minimize(problem, build_parameters(problem, start={
            n: initial.params[n].value for n in problem.free}), method=method)
    ci, ci_message = (None, "not requested")
    if confidence:
        # lmfit's intervals for the identifiable parameters; bounded ones have one-sided profile intervals
        names = [n for n in final_free if not profiles or profiles[n].classification == "identifiable"]
        if names:
            ci, ci_message = confidence_intervals(minimizer, result, names=names)
        else:
            ci_message = "no identifiable free parameter"
    values = {n: p.value for n, p in result.params.items()}
    intervals = {n: profiles[n].ci95 for n in final_free if n in profiles}
    notes = {n: f"not identifiable from {cohort.origin}; fixed at prior. {profiles[n].describe()}"
             for n in fixed}
    pset = fitted_parameter_set(final_problem, values, "typical", intervals, notes, varied=final_free)
    return TypicalFit(problem=final_problem, initial=initial, profiles=profiles, decisions=decisions,
                      minimizer=minimizer, result=result, ci=ci, ci_message=ci_message, parameters=pset,
                      fixed_at_prior=tuple(fixed))


def fit_population(cohort=None, parameters: ParameterSet | None = None, free: Sequence[str] | None = None,
                   regimen=None, *, start: Mapping[str, float] | None = None,
                   n_patients: int = DEFAULT_POPULATION_SIZE, iiv: Mapping[str, float] | None = None,
                   seed: int = DEFAULT_SEED, method: str = DEFAULT_METHOD, rtol: float = 1e-6,
                   intervals: Mapping[str, tuple] | None = None, model=None) -> PopulationFit:
    """Virtual-population fit: typical values such that the simulated cohort's statistics (median over patients,
    ratio per patient) match the observed ones. IIV (log-normal, seeded, common random numbers) is held fixed
    at ``iiv`` (default ``DEFAULT_IIV``): medians alone do not inform the spread."""
    cohort = _ensure_cohort(cohort)
    problem = FitProblem(cohort, parameters=parameters, free=free, regimen=regimen, mode="population",
                         n_patients=n_patients, iiv=iiv, seed=seed, rtol=rtol, atol=rtol * 1e-2, model=model)
    params = build_parameters(problem, start=dict(start or {}))
    minimizer, result = minimize(problem, params, method=method)
    values = {n: p.value for n, p in result.params.items()}
    pset = fitted_parameter_set(problem, values, "population", intervals, varied=problem.free)
    return PopulationFit(problem=problem, minimizer=minimizer, result=result, parameters=pset)


@dataclass
class FitOutcome:
    """What :func:`run_fit` produced.

    Attributes
    ----------
    parameters : ParameterSet
        The parameter set to use downstream (population fit if run, else typical), same format as
        ``model/data/parameters.toml``.
    typical, population : TypicalFit / PopulationFit (None if not run)
    residuals : pandas.DataFrame, the residual table (also written to residuals.csv)
    report : str, the text of fit_report.txt
    files : dict label -> Path of everything written
    runtime_s : wall-clock seconds
    """

    parameters: ParameterSet
    typical: TypicalFit | None
    population: PopulationFit | None
    residuals: object
    report: str
    files: dict = field(default_factory=dict)
    runtime_s: float = 0.0
    posterior: object = None
    verdict: object = None


class PoorFitError(TregpdError):
    """The fit does not describe the data (see :class:`~tregpd.fitting.report.FitVerdict`); the report, the
    residual table and the figures were written, the fitted parameter files were not.

    Attributes
    ----------
    outcome : FitOutcome
    """

    def __init__(self, message: str, outcome=None):
        super().__init__(message)
        self.outcome = outcome


def run_fit(cohort_path=None, out_dir="out/fit", mode: str = "both", seed: int = DEFAULT_SEED,
            parameters: ParameterSet | str | Path | None = None, free: Sequence[str] | None = None,
            n_patients: int = DEFAULT_POPULATION_SIZE, emcee_steps: int = 0, write: bool = True,
            plots: bool = True, profile_extra: Sequence[str] = DEFAULT_PROFILE_EXTRA,
            accept_poor_fit: bool = False, model=None, workers: int | None = None) -> FitOutcome:
    """Fit a cohort and write ``fitted_parameters.toml``, ``fit_report.txt``, ``fit.png``, ``profiles.png``,
    ``residuals.csv`` and ``provenance.json`` into ``out_dir`` (atomically, with provenance).

    Parameters
    ----------
    cohort_path : path or None
        Tidy cohort CSV (see :mod:`tregpd.fitting.cohort`); None = the bundled SAT0261 seed cohort.
    mode : "typical", "population" or "both"
        The profiles and identifiability analysis always use the typical-patient fit (cheap and smooth); the
        population fit starts from it and varies the same parameters. ``fitted_parameters.toml`` holds the
        population fit when one is run (its typical values are what a virtual population should be drawn
        around), otherwise the typical fit; "both" also writes ``fitted_parameters_typical.toml``.
    seed : int, seed of the virtual population (common random numbers)
    parameters : priors (ParameterSet or path; default: the bundled file); ``free`` overrides its fitted flags
    emcee_steps : if > 0, also sample the typical-fit posterior with lmfit's emcee interface
    accept_poor_fit : write the fitted parameter files even when the goodness-of-fit check fails (see
        :func:`~tregpd.fitting.report.assess_fit`); otherwise a poor fit writes the report, residuals and
        figures (so the failure can be read), no fitted parameter file, and raises :class:`PoorFitError`
    model : model structure (name; default: the default structure), named in the report and the provenance.
        A parameter flagged ``fitted = true`` that the structure does not read is left out, with a note in the
        report
    workers : processes for the profile likelihoods (default: one per available core; 1 = serial)
    """
    from tregpd.model import load_parameters
    from tregpd.io import (atomic_save_figure, atomic_write_frame, atomic_write_json,
                                 atomic_write_text, model_record, provenance)
    from .report import assess_fit, build_report

    if mode not in MODES:
        raise TregpdError(f"fit mode must be one of {MODES}, got {mode!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TregpdError(f"seed must be a non-negative integer, got {seed!r}")
    t0 = time.perf_counter()
    cohort = load_cohort(cohort_path)
    priors = parameters if isinstance(parameters, ParameterSet) else load_parameters(parameters)
    typ = fit_typical(cohort, priors, free=free, profile_extra=profile_extra, model=model, workers=workers)
    pop = None
    if mode in ("population", "both"):
        free_pop = tuple(n for n, p in typ.result.params.items() if p.vary)
        pop = fit_population(cohort, priors, free=free_pop, regimen=typ.problem.regimen,
                             start=typ.values, n_patients=n_patients, seed=seed,
                             intervals={n: typ.profiles[n].ci95 for n in free_pop if n in typ.profiles},
                             model=typ.problem.model)
    posterior = None
    if emcee_steps and emcee_steps > 0:
        posterior = sample_posterior(typ.problem, typ.result, steps=int(emcee_steps), seed=seed)
    residuals = typ.problem.residual_table(typ.values, pop.values if pop is not None else None,
                                           population_problem=pop.problem if pop is not None else None)
    chosen = pop.parameters if (pop is not None and mode != "typical") else typ.parameters
    runtime = time.perf_counter() - t0
    verdict = assess_fit(typ, pop, residuals)
    report = build_report(cohort, typ, pop, residuals, mode=mode, seed=seed, posterior=posterior,
                          runtime_s=runtime, verdict=verdict)
    outcome = FitOutcome(parameters=chosen, typical=typ, population=pop, residuals=residuals, report=report,
                         runtime_s=runtime, posterior=posterior, verdict=verdict)
    refuse = not verdict.ok and not accept_poor_fit
    if not write:
        if refuse:
            raise PoorFitError(_poor_fit_message(verdict, None), outcome)
        return outcome
    out = Path(out_dir)
    prov = provenance(chosen, typ.problem.regimen, seed, command="tregpd fit", cohort=cohort.origin, mode=mode,
                      model=model_record(typ.problem.structure),
                      not_fitted_not_read=list(typ.problem.dropped_free),
                      n_patients=n_patients if pop is not None else None,
                      iiv=pop.problem.iiv if pop is not None else None,
                      verdict={"ok": verdict.ok, "reasons": list(verdict.reasons), "notes": list(verdict.notes),
                               "accepted_poor_fit": bool(accept_poor_fit and not verdict.ok)})
    files = {}
    if refuse:
        # a fitted parameter file left from an earlier run would be taken for this run's result
        for name in ("fitted_parameters.toml", "fitted_parameters_typical.toml"):
            if (out / name).is_file() and not (out / name).is_symlink():
                (out / name).unlink()
    else:
        files["parameters"] = atomic_write_text(out / "fitted_parameters.toml",
                                                _toml_header(prov) + chosen.to_toml())
        if mode == "both":
            files["parameters_typical"] = atomic_write_text(out / "fitted_parameters_typical.toml",
                                                            _toml_header(prov) + typ.parameters.to_toml())
    files["report"] = atomic_write_text(out / "fit_report.txt", report)
    files["residuals"] = atomic_write_frame(out / "residuals.csv", residuals, prov)
    if plots:
        from . import plots as fplots
        fig = fplots.plot_fit(cohort, typ, pop, seed=seed)
        files["figure"] = atomic_save_figure(out / "fit.png", fig)
        fig2 = fplots.plot_profiles(typ.profiles)
        files["profiles"] = atomic_save_figure(out / "profiles.png", fig2)
        import matplotlib.pyplot as plt
        plt.close(fig)
        plt.close(fig2)
    outcome.runtime_s = time.perf_counter() - t0
    prov["runtime_s"] = round(outcome.runtime_s, 2)
    files["provenance"] = atomic_write_json(out / "provenance.json", prov)
    outcome.files = files
    if refuse:
        raise PoorFitError(_poor_fit_message(verdict, files.get("report")), outcome)
    return outcome


def _poor_fit_message(verdict, report_path) -> str:
    where = f"; see {report_path}" if report_path is not None else ""
    return (f"the model does not fit the cohort, so no fitted parameter file was written: "
            f"{'; '.join(verdict.reasons)}{where}; pass --accept-poor-fit (run_fit(accept_poor_fit=True)) to "
            f"write the fitted parameters anyway")


def _toml_header(prov: dict) -> str:
    keys = ("tregpd_version", "created_utc", "command", "cohort", "mode", "seed")
    return "".join(f"# {k}: {prov.get(k)}\n" for k in keys) + "\n"
