"""SAT0261 regimen uncertainty: fit and predict under a stated set of regimen hypotheses.

The SAT0261 abstract (Jing et al., EULAR 2017) gives neither the IL-2 course spacing nor where in a course the
week-24 blood sample was taken. The regimen table (``calibration_regimens.toml``, entry ``sat0261``) fixes one
ASSUMPTION: 0.5 MIU rhIL-2 s.c. daily x5 every 28 days from day 0, week-24 sample on day 168 = the day the 7th
course would start (before its first dose, i.e. at the trough). :data:`HYPOTHESES` states alternatives for

* **course spacing**: 5-day courses every 4 weeks (reference), every 2 weeks, every 8 weeks; or the Peking
  schedule (1 MIU every other day for 2 weeks, 2 weeks off);
* **sampling phase**: day 168 at the start of a course (reference) vs on day 3 (mid-course) or day 6 (the day
  after the 5th dose) of a course, obtained by shifting the courses (``start_day``).

Each hypothesis replaces only the IL-2 schedule(s) of the ``sat0261`` entry (sirolimus, prednisone taper,
baseline and every other study unchanged). Day ``k`` of a course is ``k - 1`` days after the course's first
dose. Doses at or after day 168 are dropped (``stop_day``): the week-24 sample is taken before that day's
injection.

:func:`fit_under_hypotheses` refits a model structure to the whole calibration dataset under each hypothesis
(:class:`~tregpd.fitting.joint.JointProblem` with a modified regimen table; :func:`fit_structure`) and records
the fit (chi-square of numbers and of facts), the fitted values, the SAT0261 week-24 predictions, and the
*conclusions*: week-24 Treg fold change and Th17/Treg fold change of the reference scenario regimen
(:func:`tregpd.model.reference_regimen`) and of IL-2 alone, simulated with that hypothesis' fitted parameters.
:func:`summary_markdown` reports how much the conclusions move (min-max across hypotheses) and which hypothesis
fits best. Every hypothesis has the same free parameters, so Δchi2 between hypotheses equals ΔAIC.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import numpy as np

from tregpd.model import reference_regimen, simulate
from tregpd.model.dosing import Regimen

from .calibration import StudyRegimen, load_regimens
from .joint import JointProblem, fit_structure

#: the regimen entry the hypotheses modify
REGIMEN_ID = "sat0261"
#: the week-24 visit, days after the first dose (= the study's day 168)
VISIT_DAY = 168.0
#: output columns of the conclusion quantities (week-24 fold changes of the scenario regimens)
CONCLUSIONS = ("combo_treg_fold", "combo_ratio_fold", "il2_alone_treg_fold", "il2_alone_ratio_fold")
CONCLUSION_LABELS = {
    "combo_treg_fold": "reference scenario (IL-2 + sirolimus + taper): week-24 Treg fold change",
    "combo_ratio_fold": "reference scenario (IL-2 + sirolimus + taper): week-24 Th17/Treg fold change",
    "il2_alone_treg_fold": "IL-2 alone (+ taper, no sirolimus): week-24 Treg fold change",
    "il2_alone_ratio_fold": "IL-2 alone (+ taper, no sirolimus): week-24 Th17/Treg fold change",
    "sat0261_treg_fold_pred": "SAT0261 fit (its own hypothesised regimen): predicted week-24 Treg fold change",
    "sat0261_ratio_fold_pred": "SAT0261 fit (its own hypothesised regimen): predicted week-24 Th17/Treg fold change",
}


def _il2(amount=0.5, interval_day=1.0, doses_per_course=5, n_courses=6, course_interval_day=28.0,
         start_day=0.0, stop_day=None) -> dict:
    """One IL-2 schedule table in the regimen-table format (product taken from the entry)."""
    s = {"drug": "il2", "amount": float(amount), "unit": "MIU", "route": "sc", "interval_day": float(interval_day),
         "doses_per_course": int(doses_per_course), "n_courses": int(n_courses), "start_day": float(start_day)}
    if n_courses > 1:
        s["course_interval_day"] = float(course_interval_day)
    if stop_day is not None:
        s["stop_day"] = float(stop_day)
    return s


@dataclass(frozen=True)
class RegimenHypothesis:
    """One ASSUMPTION about the SAT0261 IL-2 regimen and the phase of the week-24 sample.

    Attributes
    ----------
    name : str
    description : str
        The hypothesis in words (what is assumed).
    changes : str
        How it changes the ``sat0261`` regimen entry.
    spacing, phase : str
        The two axes (``q4w``/``q2w``/``q8w``/``peking``; ``trough``/``day3``/``day6``/``day7``).
    il2_schedules : tuple of dict or None
        Replacement IL-2 schedule table(s) (regimen-table format); ``None`` keeps the entry unchanged.
    reference : bool
        The regimen table's own assumption.
    """

    name: str
    description: str
    changes: str
    spacing: str
    phase: str
    il2_schedules: tuple | None = None
    reference: bool = False

    def apply(self, entry: StudyRegimen) -> StudyRegimen:
        """The ``sat0261`` entry with this hypothesis' IL-2 schedule(s); other schedules, taper, baseline kept."""
        if self.il2_schedules is None:
            return entry
        data = dict(entry.data)
        others = [dict(s) for s in data.get("schedules", []) if s.get("drug") != "il2"]
        data["schedules"] = [dict(s) for s in self.il2_schedules] + others
        assumption = (f"{entry.assumption} REGIMEN HYPOTHESIS {self.name} (ASSUMPTION): {self.description} "
                      f"[{self.changes}]")
        new = replace(entry, data=data, assumption=assumption,
                      description=f"{entry.description} | hypothesis {self.name}")
        new.regimen()  # compiles, or raises naming the regimen
        return new

    def regimens(self, base: Mapping[str, StudyRegimen] | None = None) -> dict[str, StudyRegimen]:
        """The whole regimen table with the ``sat0261`` entry replaced (default base: the bundled table)."""
        base = dict(base) if base is not None else load_regimens()
        base[REGIMEN_ID] = self.apply(base[REGIMEN_ID])
        return base

    def regimen(self, base: Mapping[str, StudyRegimen] | None = None) -> Regimen:
        """The compiled ``sat0261`` :class:`Regimen` under this hypothesis."""
        return self.regimens(base)[REGIMEN_ID].regimen()

    def il2_dose_days(self, base: Mapping[str, StudyRegimen] | None = None) -> np.ndarray:
        """IL-2 dose days of the compiled regimen, within the simulated 168 days."""
        reg = self.regimen(base)
        ev = reg.events(until_day=VISIT_DAY)
        il2_cmts = {s.cmt for s in reg.schedules if s.drug == "il2"}
        return ev.time_day[np.isin(ev.cmt, list(il2_cmts))]


HYPOTHESES: tuple[RegimenHypothesis, ...] = (
    RegimenHypothesis(
        "q4w_trough", "ASSUMPTION (reference, as the regimen table): 0.5 MIU daily x5 every 4 weeks from day 0; "
        "the week-24 sample on day 168 = the start of the 7th course, before its first dose (trough).",
        "none (the regimen table's entry)", "q4w", "trough", None, True),
    RegimenHypothesis(
        "q2w_trough", "ASSUMPTION: 0.5 MIU daily x5 every 2 weeks from day 0 (12 courses); day 168 = start of "
        "the 13th course, before its first dose.",
        "IL-2 course_interval_day 28 -> 14, n_courses 6 -> 12", "q2w", "trough",
        (_il2(n_courses=12, course_interval_day=14),)),
    RegimenHypothesis(
        "q8w_trough", "ASSUMPTION: 0.5 MIU daily x5 every 8 weeks from day 0 (courses on days 0, 56, 112); day "
        "168 = start of the 4th course, before its first dose.",
        "IL-2 course_interval_day 28 -> 56, n_courses 6 -> 3", "q8w", "trough",
        (_il2(n_courses=3, course_interval_day=56),)),
    RegimenHypothesis(
        "peking_trough", "ASSUMPTION: the Peking schedule instead of 5-day courses: 1 MIU every other day for 2 "
        "weeks (7 doses, days 0-12 of each 28-day cycle), 2 weeks off, 6 cycles; day 168 = start of the 7th "
        "cycle, before its first dose.",
        "IL-2 amount 0.5 -> 1 MIU, interval_day 1 -> 2, doses_per_course 5 -> 7 (28-day cycles, 6 cycles)",
        "peking", "trough", (_il2(amount=1.0, interval_day=2, doses_per_course=7),)),
    RegimenHypothesis(
        "q4w_day3", "ASSUMPTION: 0.5 MIU daily x5 every 4 weeks, the week-24 sample mid-course: day 168 is day "
        "3 of a course (2 days after its first dose, before that day's dose); courses shifted to start on days "
        "26, 54, ..., 166 (first IL-2 26 days after the week-0 sample; sirolimus and taper from day 0).",
        "IL-2 start_day 0 -> 26, stop_day 168 (last course: doses on days 166, 167)", "q4w", "day3",
        (_il2(start_day=26, stop_day=VISIT_DAY),)),
    RegimenHypothesis(
        "q4w_day6", "ASSUMPTION: 0.5 MIU daily x5 every 4 weeks, the week-24 sample at the end of a course: day "
        "168 is day 6 of a course (the day after its 5th dose); courses on days 23, 51, ..., 163 (first IL-2 23 "
        "days after the week-0 sample).",
        "IL-2 start_day 0 -> 23, stop_day 168 (last course: days 163-167)", "q4w", "day6",
        (_il2(start_day=23, stop_day=VISIT_DAY),)),
    RegimenHypothesis(
        "q4w_day3_from0", "ASSUMPTION: as q4w_day3 (day 168 is day 3 of a course; courses from day 26 every 4 "
        "weeks) but with a first course on days 0-4 as well, i.e. IL-2 starts at the week-0 visit and the "
        "second course follows 26 days after the first (7 courses).",
        "IL-2: one course at day 0 + courses from start_day 26 every 28 days, stop_day 168", "q4w", "day3",
        (_il2(n_courses=1), _il2(start_day=26, stop_day=VISIT_DAY))),
    RegimenHypothesis(
        "peking_day7", "ASSUMPTION: the Peking schedule (1 MIU every other day x2 weeks, 2 weeks off) with day "
        "168 on day 7 of a 2-week block (6 days after its first dose, before that day's dose); blocks start on "
        "days 22, 50, ..., 162.",
        "IL-2 amount 1 MIU, interval_day 2, doses_per_course 7, start_day 22, stop_day 168 (last block: days "
        "162, 164, 166)", "peking", "day7",
        (_il2(amount=1.0, interval_day=2, doses_per_course=7, start_day=22, stop_day=VISIT_DAY),)),
)


def get_hypotheses(names: Sequence[str] | None = None) -> tuple[RegimenHypothesis, ...]:
    """The bundled hypotheses, or those named (in the order given)."""
    if names is None:
        return HYPOTHESES
    by = {h.name: h for h in HYPOTHESES}
    unknown = [n for n in names if n not in by]
    if unknown:
        from .joint import JointFitError
        raise JointFitError(f"unknown regimen hypothesis {unknown}; known: {', '.join(by)}")
    return tuple(by[n] for n in names)


# ------------------------------------------------------------------------------------------ fitting
def il2_alone(regimen: Regimen) -> Regimen:
    """The same regimen without its sirolimus schedules (taper kept)."""
    return replace(regimen, name=f"{regimen.name}_il2_alone",
                   description=f"{regimen.description} -- without sirolimus",
                   schedules=tuple(s for s in regimen.schedules if s.drug != "sirolimus"))


def _fold(sim, variable: str) -> float:
    v = sim.get(variable)[0]
    return float(v[-1] / v[0])


def conclusions(params, model: str, weeks: float = 24) -> dict:
    """Week-``weeks`` Treg and Th17/Treg fold changes of the reference scenario regimen and of IL-2 alone."""
    ref = reference_regimen(weeks)
    t_out = [0.0, weeks * 7.0]
    out = {}
    for key, reg in (("combo", ref), ("il2_alone", il2_alone(ref))):
        sim = simulate(params, reg, model=model, t_out=t_out)
        sim.raise_on_failure()
        out[f"{key}_treg_fold"] = _fold(sim, "treg")
        out[f"{key}_ratio_fold"] = _fold(sim, "ratio")
    return out


def _sat0261_rows(problem: JointProblem):
    rows = problem.rows
    sel = {}
    for obs in ("treg", "ratio"):
        m = ((rows["regimen_id"] == REGIMEN_ID) & (rows["observable"] == obs) & (rows["mapping"] == "fold_change")
             & np.isclose(rows["day"].to_numpy(float), VISIT_DAY))
        idx = np.flatnonzero(m.to_numpy())
        if idx.size != 1:
            raise ValueError(f"expected one SAT0261 week-24 {obs} fold-change row, found {idx.size}")
        sel[obs] = int(idx[0])
    return sel


def fit_one(hypothesis: RegimenHypothesis, model: str = "v2_lean", max_nfev: int = 400,
            free: Sequence[str] | None = None, start: Mapping[str, float] | None = None) -> dict:
    """Fit ``model`` under one hypothesis; one result row (see :func:`fit_under_hypotheses`)."""
    t0 = time.perf_counter()
    problem = JointProblem(model, free=free, regimens=hypothesis.regimens())
    fit = fit_structure(problem, start=start, max_nfev=max_nfev)
    values = fit.values
    pred, _ = problem.predictions(values)
    r = problem.residuals(values)
    sel = _sat0261_rows(problem)
    sat_mask = np.r_[(problem.rows["regimen_id"] == REGIMEN_ID).to_numpy(),
                     (problem.checks["regimen_id"] == REGIMEN_ID).to_numpy()]
    row = {"hypothesis": hypothesis.name, "reference": hypothesis.reference, "spacing": hypothesis.spacing,
           "phase": hypothesis.phase, "model": problem.model, "n_free": fit.n_free, "n_data": problem.n_data,
           "chi2_numbers": fit.chi2_gauss, "chi2_facts": fit.chi2_hinge, "chi2": fit.chi2,
           "chi2_sat0261": float(np.sum(r[sat_mask] ** 2)), "aic": fit.aic,
           "evaluations": int(fit.result.nfev), "success": bool(fit.result.success),
           "sat0261_treg_fold_obs": float(problem.rows["value"].iloc[sel["treg"]]),
           "sat0261_treg_fold_pred": float(pred[sel["treg"]]),
           "sat0261_ratio_fold_obs": float(problem.rows["value"].iloc[sel["ratio"]]),
           "sat0261_ratio_fold_pred": float(pred[sel["ratio"]])}
    row.update(conclusions(fit.parameter_set(), problem.model))
    row.update({f"param_{k}": v for k, v in values.items()})
    row["seconds"] = time.perf_counter() - t0
    row["description"] = hypothesis.description
    row["changes"] = hypothesis.changes
    return row


def _job(args):
    return fit_one(*args)


def fit_under_hypotheses(model: str = "v2_lean", hypotheses: Sequence[RegimenHypothesis] | None = None,
                         max_nfev: int = 400, free: Sequence[str] | None = None, workers: int = 1,
                         progress=None):
    """Refit ``model`` to the calibration dataset under each regimen hypothesis.

    Parameters
    ----------
    model : str
        Model structure (default ``v2_lean``, the joint fit's choice).
    hypotheses : sequence of RegimenHypothesis, optional
        Default :data:`HYPOTHESES`.
    max_nfev : int
        Evaluation budget per fit (lmfit ``least_squares``).
    free : sequence of str, optional
        Free parameters (default: the structure's, :func:`tregpd.fitting.joint.default_free`).
    workers : int
        Processes (> 1 fits hypotheses in parallel).
    progress : callable(row dict), optional

    Returns
    -------
    pandas.DataFrame
        One row per hypothesis: chi-square of the numbers, of the facts, their sum and the SAT0261 part,
        Δchi2 to the best hypothesis, SAT0261 week-24 observed/predicted Treg and ratio fold, the conclusion
        quantities (:data:`CONCLUSIONS`), the fitted values (``param_*``), evaluations and seconds.
    """
    import pandas as pd
    hyps = tuple(hypotheses) if hypotheses is not None else HYPOTHESES
    if not hyps:
        raise ValueError("no hypotheses to fit")
    jobs = [(h, model, max_nfev, tuple(free) if free is not None else None) for h in hyps]
    rows = []
    if workers > 1 and len(jobs) > 1:
        from tregpd.scenarios.backends import process_pool
        with process_pool(max_workers=min(workers, len(jobs))) as ex:  # workers reaped on error/interrupt
            for row in ex.map(_job, jobs):
                rows.append(row)
                if progress:
                    progress(row)
    else:
        for j in jobs:
            row = _job(j)
            rows.append(row)
            if progress:
                progress(row)
    table = pd.DataFrame(rows)
    best = table["chi2"].min()
    table.insert(table.columns.get_loc("chi2") + 1, "delta_chi2", table["chi2"] - best)
    return table


# ------------------------------------------------------------------------------------------ summary
def conclusion_ranges(table):
    """Tidy table: per conclusion quantity (and SAT0261 prediction) its min, max, max/min and the hypotheses
    at each end, and the value under the reference and under the best-fitting hypothesis."""
    import pandas as pd
    best = table.loc[table["chi2"].idxmin()]
    ref = table[table["reference"]]
    rows = []
    for q in CONCLUSIONS + ("sat0261_treg_fold_pred", "sat0261_ratio_fold_pred"):
        v = table[q].astype(float)
        rows.append({"quantity": q, "min": float(v.min()), "max": float(v.max()),
                     "max_over_min": float(v.max() / v.min()) if v.min() > 0 else math.nan,
                     "argmin": table["hypothesis"][v.idxmin()], "argmax": table["hypothesis"][v.idxmax()],
                     "reference": float(ref[q].iloc[0]) if len(ref) else math.nan,
                     "best_fit": float(best[q])})
    return pd.DataFrame(rows)


def summary_markdown(table, model: str | None = None, seconds: float | None = None) -> str:
    """Markdown report: the hypotheses, the fit and conclusions per hypothesis, and how much conclusions move."""
    model = model or str(table["model"].iloc[0])
    best = table.loc[table["chi2"].idxmin()]
    rng = conclusion_ranges(table)
    md = ["# SAT0261 regimen uncertainty", "",
          f"Model structure `{model}` refitted to the whole calibration dataset under each regimen hypothesis "
          f"(only the `sat0261` IL-2 schedule changes; {int(table['n_free'].iloc[0])} free parameters, "
          f"{int(table['n_data'].iloc[0])} data rows + facts). Every hypothesis is an ASSUMPTION: the SAT0261 "
          "abstract reports neither the course spacing nor where in a course the week-24 sample was taken. "
          "All hypotheses have the same free parameters, so Δchi2 = ΔAIC.", "",
          "## Hypotheses", ""]
    for r in table.itertuples(index=False):
        md.append(f"* **{r.hypothesis}**{' (reference)' if r.reference else ''}: {r.description} "
                  f"Change to the entry: {r.changes}.")
    md += ["", "## Fit and conclusions per hypothesis", "",
           "Fold changes are week 24 / week 0. SAT0261 observed: Treg "
           f"{table['sat0261_treg_fold_obs'].iloc[0]:.3g}x, Th17/Treg {table['sat0261_ratio_fold_obs'].iloc[0]:.3g}x. "
           "Scenario columns: the reference scenario regimen (`reference_regimen(24)`: 0.5 MIU x5 q4w + "
           "sirolimus 0.5 mg q2d + taper) and IL-2 alone (same without sirolimus), simulated with the "
           "hypothesis' fitted parameters.", "",
           "| hypothesis | chi2 numbers | chi2 facts | chi2 | Δchi2 | chi2 SAT0261 | SAT0261 Treg pred | "
           "SAT0261 ratio pred | combo Treg | combo ratio | IL-2 alone Treg | IL-2 alone ratio | s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        md.append(f"| {r.hypothesis}{' (ref)' if r.reference else ''} | {r.chi2_numbers:.2f} | {r.chi2_facts:.2f} "
                  f"| {r.chi2:.2f} | {r.delta_chi2:.2f} | {r.chi2_sat0261:.2f} | {r.sat0261_treg_fold_pred:.3g} | "
                  f"{r.sat0261_ratio_fold_pred:.3g} | {r.combo_treg_fold:.3g} | {r.combo_ratio_fold:.3g} | "
                  f"{r.il2_alone_treg_fold:.3g} | {r.il2_alone_ratio_fold:.3g} | {r.seconds:.0f} |")
    md += ["", "## How much conclusions move", "",
           "| quantity | min | max | max/min | lowest under | highest under | reference | best fit |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rng.itertuples(index=False):
        label = CONCLUSION_LABELS.get(r.quantity, r.quantity.replace("_", " "))
        md.append(f"| {label} | {r.min:.3g} | {r.max:.3g} | {r.max_over_min:.3g} | {r.argmin} | {r.argmax} | "
                  f"{r.reference:.3g} | {r.best_fit:.3g} |")
    close = table[table["delta_chi2"] < 2.0]["hypothesis"].tolist()
    md += ["", f"Best fit: **{best['hypothesis']}** (chi2 {best['chi2']:.2f}). Within Δchi2 < 2 of it: "
               f"{', '.join(close)}. Hypotheses within Δchi2 2 are not distinguished by the data; the conclusion "
               "ranges over those are the honest uncertainty from the unknown regimen.", ""]
    sub = table[table["delta_chi2"] < 2.0]
    if len(sub) > 1:
        md.append("Ranges over the hypotheses within Δchi2 < 2: " + "; ".join(
            f"{q} {sub[q].min():.3g}-{sub[q].max():.3g}" for q in CONCLUSIONS) + ".")
        md.append("")
    not_ok = table[~table["success"]]["hypothesis"].tolist()
    if not_ok:
        md += [f"WARNING: the optimiser reported no convergence for {', '.join(not_ok)} (evaluation budget); "
               "their chi2 is an upper bound.", ""]
    if seconds is not None:
        md += [f"Total time: {seconds:.0f} s for {len(table)} fits.", ""]
    return "\n".join(md)
