"""The text report of a fit: lmfit fit_report, residual table, profile intervals, identifiability, assumptions."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .objective import DEFAULT_LOG_SD
from .optimise import DELTA_CHI2_95
from .problem import FitProblem

SAMPLING_ASSUMPTION = (
    "ASSUMPTION (sampling phase): a week-w sample is taken at day 7w. With the reference regimen's 28-day IL-2 "
    "cycles, week 24 = day 168 is the last day of the 6th cycle, 24 days after the last IL-2 dose, i.e. the "
    "trough of the cycle's Treg oscillation (blood drawn before a next course would start).")


def _fmt(v, nd=4):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:.{nd}g}"


def _table(frame, cols) -> str:
    sub = frame[cols].copy()
    for c in sub.columns:
        if sub[c].dtype.kind == "f":
            sub[c] = [_fmt(v) for v in sub[c]]
    return sub.to_string(index=False)


def _phase_note(typ) -> str:
    """How much the week-24 Treg depends on the sampling phase, from the fitted typical trajectory."""
    prob: FitProblem = typ.problem
    try:
        res = prob.simulate(typ.values, t_out=np.arange(140.0, 168.0 + 1e-9, 1.0), mode="typical")
    except Exception as exc:  # pragma: no cover - reported, not hidden
        return f"(phase check failed: {exc})"
    treg = res.get("treg")[0]
    i_max = int(np.argmax(treg))
    return (f"Fitted typical Treg over the last cycle (days 140-168): {treg.min():.3g}-{treg.max():.3g} cells/uL, "
            f"peak on day {140 + i_max}, {treg[-1]:.3g} on day 168; sampling at the end of a course instead of "
            f"the trough would change the simulated week-24 Treg by a factor {treg.max() / treg[-1]:.2f}.")


#: a fitted statistic further than this from the model, in SE units, means the model does not follow the data
RESIDUAL_LIMIT_SE = 3.0


@dataclass(frozen=True)
class FitVerdict:
    """Goodness of fit of a :func:`~tregpd.fitting.run_fit` run.

    Attributes
    ----------
    ok : bool
        False when any fitted statistic is more than :data:`RESIDUAL_LIMIT_SE` SEs from the model, lmfit
        reports no success, or a free parameter sits at a bound without the profile likelihood having reported
        it as a limit ("BOUNDED ONLY").
    reasons : tuple of str, why it is not ok (empty when ok)
    notes : tuple of str, things worth knowing that do not fail the fit (limits at bounds)
    """

    ok: bool
    reasons: tuple = ()
    notes: tuple = ()

    def summary(self) -> str:
        if self.ok:
            return (f"GOOD FIT: every fitted statistic within {RESIDUAL_LIMIT_SE:g} SE of the model, lmfit "
                    f"converged, no free parameter pinned at a bound unexplained")
        return "POOR FIT: " + "; ".join(self.reasons)


def _at_bound(par) -> str | None:
    lo, hi = par.min, par.max
    span = hi - lo if np.isfinite(hi - lo) and hi > lo else max(abs(par.value), 1.0)
    tol = 1e-6 * span
    if np.isfinite(lo) and par.value - lo <= tol:
        return f"lower bound {lo:g}"
    if np.isfinite(hi) and hi - par.value <= tol:
        return f"upper bound {hi:g}"
    return None


def assess_fit(typ, pop, residuals, residual_limit: float = RESIDUAL_LIMIT_SE) -> FitVerdict:
    """The goodness-of-fit verdict (see :class:`FitVerdict`) from the fits and the residual table."""
    reasons, notes = [], []
    fitted = residuals[residuals["role"] == "fitted"]
    for col, label in (("residual_typical_se", "typical"), ("residual_population_se", "population")):
        if col not in fitted:
            continue
        r = fitted[col].to_numpy(dtype=float)
        bad = ~np.isfinite(r) | (np.abs(r) > residual_limit)
        if bad.any():
            rows = [f"week {w:g} {o} {st} {v:+.1f} SE" for w, o, st, v, b in
                    zip(fitted["week"], fitted["observable"], fitted["statistic"], r, bad) if b]
            reasons.append(f"{int(bad.sum())} of {len(r)} fitted statistics are more than {residual_limit:g} SE "
                           f"from the {label} model ({', '.join(rows[:4])}{', ...' if len(rows) > 4 else ''})")
    fits = [("typical", typ.result)] + ([("population", pop.result)] if pop is not None else [])
    for label, res in fits:
        if not getattr(res, "success", True):
            msg = " ".join(str(getattr(res, "message", "")).split())[:200]
            reasons.append(f"the {label} fit did not converge (lmfit: {msg or 'no success'})")
        for name, par in res.params.items():
            if not par.vary:
                continue
            where = _at_bound(par)
            if where is None:
                continue
            decision = typ.decisions.get(name, "")
            text = f"{name} = {par.value:.4g} is at its {where} in the {label} fit"
            if decision.startswith("BOUNDED ONLY"):
                notes.append(text + " (reported as a limit by its profile likelihood)")
            else:
                reasons.append(text + " (the data push it beyond its range)")
    return FitVerdict(ok=not reasons, reasons=tuple(reasons), notes=tuple(dict.fromkeys(notes)))


def build_report(cohort, typ, pop, residuals, *, mode, seed, posterior=None, runtime_s=None,
                 verdict: FitVerdict | None = None) -> str:
    import lmfit
    from tregpd import __version__
    prob: FitProblem = typ.problem
    lines = []
    add = lines.append
    add("tregpd fit report")
    add("=================")
    add(f"tregpd {__version__}; cohort: {cohort.origin}; mode: {mode}; population seed: {seed}")
    if runtime_s is not None:
        add(f"fitting time (without files/figures): {runtime_s:.1f} s")
    add("")
    verdict = verdict if verdict is not None else assess_fit(typ, pop, residuals)
    add("Verdict")
    add("-------")
    add(verdict.summary())
    for note in verdict.notes:
        add(f"Note: {note}")
    if not verdict.ok:
        add("The fitted values below are NOT a description of these data: the model cannot follow them with "
            "its parameters inside their ranges. Check the cohort file (units, weeks, rel_se), the regimen, "
            "or the parameter bounds before using them.")
    add("")
    add("Regimen and assumptions")
    add("-----------------------")
    add(f"Model structure: {prob.model} (declaration {prob.structure.content_hash[:12]})")
    if prob.dropped_free:
        add(f"Note: requested free (flagged fitted in the parameter file or named in --free) but not read by "
            f"model {prob.model}, so left out of the fit (kept at their file values): "
            f"{', '.join(prob.dropped_free)}")
    add(f"Regimen: {prob.regimen.name}: {prob.regimen.description}")
    if prob.regimen.assumption:
        add(prob.regimen.assumption)
    add(SAMPLING_ASSUMPTION)
    add(_phase_note(typ))
    add("Baselines are set from the week-0 data, not fitted: " +
        "; ".join(f"{n} = {prob.parameters[n].value:.4g} ({s})" for n, s in prob.baseline_sources.items()))
    soft = cohort.frame[~cohort.frame["rel_se"].isna()]
    for r in soft.itertuples():
        add(f"Row on line {r.line} (week {r.week:g}, {r.observable} {r.statistic} = {r.value:g}, rel_se "
            f"{r.rel_se:g}) is weighted by its rel_se column; source: {r.source}")
    add(f"Weights: residual = (ln model - ln observed) / s, s = log-scale SE of the statistic; medians without "
        f"IQR use a default between-patient log-SD of {DEFAULT_LOG_SD} (ASSUMPTION): s = 1.2533 x "
        f"{DEFAULT_LOG_SD} / sqrt(n). Residuals below are in SE units; chi-square uses known SEs "
        f"(scale_covar=False).")
    if pop is not None:
        add(f"Population: {pop.problem.n_patients} virtual patients, log-normal IIV (SD of log) "
            + ", ".join(f"{k} {v:g}" for k, v in pop.problem.iiv.items())
            + f", seed {pop.problem.seed} (same draws at every evaluation); IIV is not fitted (medians do not "
              f"inform it). The ratio is computed per patient, then its median taken.")
    add("")
    add("Observed vs model (residuals in SE units; relative error = model/observed - 1)")
    add("-----------------------------------------------------------------------------")
    cols = ["week", "observable", "statistic", "value", "model_typical", "relative_error",
            "residual_typical_se"]
    if "model_population" in residuals:
        cols += ["model_population", "relative_error_population", "residual_population_se"]
    cols += ["sigma_log", "role"]
    add(_table(residuals, cols))
    add(_implied_th17(cohort, typ))
    add("")
    add("Typical-patient fit, all flagged parameters free (lmfit)")
    add("-------------------------------------------------------")
    add(lmfit.fit_report(typ.initial))
    add("")
    if typ.profiles:
        add(f"Profile likelihood (parameter fixed on a grid, the other free parameters refitted; 95 % interval: "
            f"delta chi2 <= {DELTA_CHI2_95:.2f}, 68 %: <= 1)")
        add("-" * 100)
        for name, prof in typ.profiles.items():
            lo68, hi68 = prof.ci68
            lo, hi = prof.ci95
            add(f"{name}: best {_fmt(prof.best_value)}, prior {_fmt(prof.prior)} (delta chi2 at prior "
                f"{prof.delta_at_prior:.2f}); 68% [{_fmt(lo68)}, {_fmt(hi68)}], 95% [{_fmt(lo)}, {_fmt(hi)}] "
                f"('-' = open up to the bound [{_fmt(prof.lower)}, {_fmt(prof.upper)}]); refitted: "
                f"{', '.join(prof.refitted) or 'none'}")
            add(f"    -> {prof.describe()}")
        add("")
    add("Identifiability statement")
    add("-------------------------")
    data_rows = int((residuals['role'] == 'fitted').sum())
    add(f"The objective has {data_rows} fitted statistics ({', '.join(_row_names(residuals))}); week-0 rows "
        f"only set the baselines. At most {data_rows} parameter combinations can be determined, and a soft "
        f"constraint (rel_se column) carries little information.")
    for name, text in typ.decisions.items():
        add(f"* {name}: {text}")
    extra = [n for n in typ.profiles if n not in typ.decisions]
    for name in extra:
        prof = typ.profiles[name]
        add(f"* {name} (kept fixed at its sourced prior; profiled as a check): {prof.describe()}. "
            + ("The free parameters absorb any change in it, so it cannot be estimated jointly with them."
               if prof.classification != "identifiable" else "The data would determine it."))
    ident = [n for n, t in typ.decisions.items() if t.startswith("IDENTIFIABLE")]
    bounded = [n for n, t in typ.decisions.items() if t.startswith("BOUNDED")]
    add(f"Identifiable from these data: {', '.join(ident) if ident else 'none'}. "
        f"Only bounded (limits, not estimates): {', '.join(bounded) if bounded else 'none'}. "
        f"Fixed at sourced priors: {', '.join(typ.fixed_at_prior) if typ.fixed_at_prior else 'none'}.")
    add("")
    add("Final typical-patient fit (lmfit)")
    add("---------------------------------")
    add(lmfit.fit_report(typ.result))
    add("")
    add("Note: lmfit's '+/-' values are Wald errors from the Jacobian at the optimum; with parameters pinned at "
        "bounds or on ridges they are not meaningful. Quote the profile-likelihood intervals and the lmfit "
        "conf_interval below (same likelihood-ratio test), computed for the identifiable parameters.")
    add("")
    add("lmfit conf_interval (likelihood-ratio test with known SEs; rows: sigma levels)")
    if typ.ci is not None:
        add(lmfit.ci_report(typ.ci, with_offset=False, ndigits=4))
        if typ.ci_message:
            add(f"  ({typ.ci_message}; where lmfit hit a bound, the profile-likelihood interval above applies)")
    else:
        add(f"  not available: {typ.ci_message}. The profile-likelihood intervals above are the reported "
            f"uncertainty.")
    if pop is not None:
        add("")
        add("Virtual-population fit (lmfit)")
        add("------------------------------")
        add(lmfit.fit_report(pop.result))
    if posterior is not None:
        add("")
        add("Posterior sample (lmfit emcee interface, uniform priors within bounds)")
        add("----------------------------------------------------------------------")
        fc = posterior.flatchain
        for c in fc.columns:
            q = np.percentile(fc[c], [2.5, 50, 97.5])
            add(f"{c}: median {q[1]:.4g}, 95% credible [{q[0]:.4g}, {q[2]:.4g}]")
        add(f"acceptance fraction {np.mean(posterior.acceptance_fraction):.2f}; {len(fc)} draws after burn-in")
        acor = getattr(posterior, "acor", None)
        if acor is not None:
            add("integrated autocorrelation time (steps): " + ", ".join(
                f"{c} {a:.1f}" for c, a in zip(fc.columns, np.atleast_1d(acor))) +
                ". A chain shorter than ~50 autocorrelation times is not converged; treat the intervals as "
                "indicative only.")
        else:
            add("autocorrelation time not available (chain too short for emcee to estimate it): the chain is "
                "not converged; treat the intervals as indicative only.")
    add("")
    return "\n".join(lines)


def _implied_th17(cohort, typ) -> str:
    """Th17 implied by the Treg and ratio medians (ratio of medians stands in for the median ratio) against
    the fitted typical patient: shows whether the model can move Th17 the way the data need."""
    r0, q0 = cohort.value(0, "treg", "median"), cohort.value(0, "ratio", "median")
    if r0 is None or q0 is None:
        return ""
    out = []
    weeks = [w for w in cohort.weeks if w > 0 and cohort.value(w, "treg", "median") is not None
             and cohort.value(w, "ratio", "median") is not None]
    if not weeks:
        return ""
    res = typ.problem.simulate(typ.values, t_out=[0.0] + [7.0 * w for w in weeks], mode="typical")
    th17 = res.get("th17")[0]
    for k, w in enumerate(weeks):
        implied = cohort.value(w, "ratio", "median") * cohort.value(w, "treg", "median") / (q0 * r0)
        out.append(f"week {w:g}: implied Th17 fold change {implied:.3g}, fitted typical patient "
                   f"{th17[k + 1] / th17[0]:.3g}")
    # structural check: every Th17-lowering effect at its no-effect bound, IL-2 on Th17 at its upper bound
    prob = typ.problem
    extreme = dict(typ.values)
    for name, side in NO_TH17_LOWERING.items():
        par = prob.parameters[name]
        extreme[name] = par.upper if side == "upper" else par.lower
    if "gc_imax_th17" in prob.parameters.parameters:   # the prednisone taper is what can raise Th17
        extreme["gc_imax_th17"] = prob.parameters["gc_imax_th17"].upper
    follows = None
    try:
        ext = prob.simulate(extreme, t_out=[0.0] + [7.0 * w for w in weeks], mode="typical").get("th17")[0]
        ceiling = "; ".join(f"week {w:g}: {ext[k + 1] / ext[0]:.3g}" for k, w in enumerate(weeks))
        follows = all(
            cohort.value(w, "ratio", "median") * cohort.value(w, "treg", "median") / (q0 * r0)
            <= ext[k + 1] / ext[0] for k, w in enumerate(weeks))
        lowering = [n for n in NO_TH17_LOWERING if n != "il2_emax_th17"]
        ceiling_txt = (f" Largest Th17 fold change the model allows at the fitted Treg response (Th17-lowering "
                       f"effects {', '.join(lowering)} switched off at their bounds, il2_emax_th17 and "
                       f"gc_imax_th17 at their upper bounds): {ceiling}.")
    except Exception as exc:  # pragma: no cover - a diagnostic, reported rather than hidden
        ceiling_txt = f" (structural Th17 check failed: {exc})"
    tail = (" The model can follow the implied change: in it only the background prednisone taper (regimen "
            "taper, gc_imax_th17; a fitted hypothesis) can raise Th17, every drug effect lowers it."
            if follows else
            " The model cannot follow the implied rise (drug effects only lower Th17, and the regimen's "
            "prednisone taper, if any, is not enough); the residuals above then split the difference between "
            "Treg and the ratio.")
    return ("Th17 implied by the medians (ratio x Treg, relative to week 0; the ratio of medians stands in for "
            "the median ratio): " + "; ".join(out) + "." + ceiling_txt + tail)


#: parameters whose bound switches off a Th17-lowering effect (value: which bound) - structural check only
NO_TH17_LOWERING = {"treg_suppression": "upper", "rapa_imax_th17_prolif": "lower", "rapa_imax_th17_diff": "lower",
                    "il2_imax_th17_diff": "lower", "rapa_emax_treg_induction": "lower", "il2_emax_th17": "upper"}


def _row_names(residuals):
    fit = residuals[residuals["role"] == "fitted"]
    return [f"wk{r.week:g} {r.observable} {r.statistic}" for r in fit.itertuples()]
