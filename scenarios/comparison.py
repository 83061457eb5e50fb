"""Comparison of simulated scenarios: the cross-scenario table (CSV / Markdown), :class:`LibraryRun`, and the
written answer to each study question.

Shared by :mod:`tregpd.scenarios.runner` (which writes the comparison after a library run) and
:mod:`tregpd.scenarios.questions` (which runs one question); it imports neither, so the two do not import each
other. The outcomes compared are :class:`tregpd.scenarios.runner.ScenarioOutcome` objects (only their
``scenario``, ``result``, ``value()`` and ``_index()`` are used).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from . import metrics as M
from .schema import QUESTIONS, Scenario


def mean_daily_dose(scenario: Scenario, drug: str) -> float:
    """Average daily amount of ``drug`` over its dosing period (first dose to last dose + one interval), in
    MIU/day (IL-2) or mg/day (sirolimus); 0 if the drug is not given."""
    total, first, last = 0.0, math.inf, -math.inf
    for s in scenario.regimen.schedules:
        if s.drug != drug:
            continue
        t = s.dose_times()
        t = t[t < scenario.t_end_day]
        if t.size:
            total += t.size * s.amount_model_units / (1e6 if drug == "il2" else 1.0)
            first = min(first, float(t[0]))
            last = max(last, float(t[-1]) + s.interval_day)
    return total / (last - first) if total > 0 else 0.0


#: ranking: a regimen is flagged when this fraction of patients (or more) has Treg above the healthy maximum
OVER_EXPANSION_FRACTION = 0.25
#: ranking: 95th-percentile selectivity margin above which a regimen is flagged; None in the scenario
#: comparison (the margin is a ranking criterion there); ``tregpd dosefind`` sets its ``--max-selectivity``
MAX_SELECTIVITY = None
#: ranking: fractions of patients in the healthy range closer than this count as equal (so the next criteria
#: decide between regimens that differ by a few virtual patients)
HEALTHY_STEP = 0.05


def ranking_rule(max_treg: float | None = M.HEALTHY_RANGE["treg"][1], max_selectivity: float | None = MAX_SELECTIVITY,
                 over_fraction: float = OVER_EXPANSION_FRACTION, max_cumulative_miu: float | None = None) -> str:
    """The ranking rule of :func:`rank_regimens`, in words (printed with every ranking)."""
    flags = []
    if max_treg is not None:
        flags.append(f"the median Treg is above {max_treg:g} cells/uL (healthy maximum, Niu) at the end of "
                     "treatment, at its on-treatment peak or at the comparison week (`median_treg_above_healthy`)")
        flags.append(f"at least {100 * over_fraction:g} % of patients have Treg above it at the end of treatment "
                     "(`patients_treg_above_healthy`)")
    if max_selectivity is not None:
        flags.append(f"95th-percentile selectivity margin (peak IL-2 / EC50_E) above {max_selectivity:g} "
                     "(`selectivity`)")
    if max_cumulative_miu is not None:
        flags.append(f"cumulative IL-2 above {max_cumulative_miu:g} MIU (`cumulative_dose`)")
    return ("Ranking rule: each regimen over its own treatment window (first dose to last dose + one interval). "
            "Regimens are FLAGGED when " + "; or ".join(flags) + ". Flagged regimens are ranked after every "
            f"unflagged one, whatever their other numbers. Within each group: (1) more patients with both Treg and "
            f"Th17/Treg in the healthy range at the end of treatment (in steps of {100 * HEALTHY_STEP:g} %); "
            "(2) lower time-averaged median Th17/Treg on treatment; (3) lower median selectivity margin; (4) less "
            "cumulative IL-2. Untreated regimens are read at the comparison week.")


def ranking_flags(frame, max_treg: float | None = M.HEALTHY_RANGE["treg"][1],
                  max_selectivity: float | None = MAX_SELECTIVITY, over_fraction: float = OVER_EXPANSION_FRACTION,
                  max_cumulative_miu: float | None = None):
    """Flags of each regimen (a string per row, "" = none; several joined by ","). Columns read:
    ``treg_median_eot``, ``treg_peak_on_treatment``, ``treg_median_cmp``, ``fraction_treg_above_healthy_eot``,
    ``selectivity_margin_p95``, ``il2_miu_total`` (missing or NaN: that test does not flag)."""
    import pandas as pd
    n = len(frame)
    col = lambda c: (frame[c].to_numpy(dtype=float) if c in frame else np.full(n, np.nan))
    out = [[] for _ in range(n)]
    if max_treg is not None:
        over = np.zeros(n, dtype=bool)
        for c in ("treg_median_eot", "treg_peak_on_treatment", "treg_median_cmp"):
            over |= np.nan_to_num(col(c), nan=-np.inf) > max_treg
        for i in np.flatnonzero(over):
            out[i].append("median_treg_above_healthy")
        many = np.nan_to_num(col("fraction_treg_above_healthy_eot"), nan=0.0) >= over_fraction
        for i in np.flatnonzero(many):
            out[i].append("patients_treg_above_healthy")
    if max_selectivity is not None:
        for i in np.flatnonzero(np.nan_to_num(col("selectivity_margin_p95"), nan=0.0) > max_selectivity):
            out[i].append("selectivity")
    if max_cumulative_miu is not None:
        for i in np.flatnonzero(np.nan_to_num(col("il2_miu_total"), nan=0.0) > max_cumulative_miu + 1e-9):
            out[i].append("cumulative_dose")
    return pd.Series([",".join(f) for f in out], index=frame.index, name="flags")


def rank_regimens(frame, max_treg: float | None = M.HEALTHY_RANGE["treg"][1],
                  max_selectivity: float | None = MAX_SELECTIVITY, over_fraction: float = OVER_EXPANSION_FRACTION,
                  max_cumulative_miu: float | None = None):
    """The multi-criteria ranking (one implementation, used by the scenario comparison and ``tregpd dosefind``).

    Parameters
    ----------
    frame : DataFrame with the columns of :func:`ranking_flags` and ``fraction_healthy_eot``,
        ``ratio_mean_on_treatment``, ``selectivity_margin``, ``il2_miu_total``
    max_treg, max_selectivity, over_fraction, max_cumulative_miu : flag limits (None: no such flag)

    Returns
    -------
    A copy sorted best first, with columns ``flags`` (see :func:`ranking_flags`), ``flagged`` (bool) and
    ``rank`` (1 = best); the rule in words is :func:`ranking_rule`.
    """
    t = frame.copy()
    t["flags"] = ranking_flags(t, max_treg, max_selectivity, over_fraction, max_cumulative_miu).to_numpy()
    t["flagged"] = t["flags"] != ""
    col = lambda c, fill: (t[c].astype(float).fillna(fill) if c in t else np.full(len(t), fill))
    key = {"_f": t["flagged"].astype(int),
           "_h": -np.floor(col("fraction_healthy_eot", -1.0) / HEALTHY_STEP + 1e-9),
           "_r": col("ratio_mean_on_treatment", np.inf),
           "_s": col("selectivity_margin", 0.0),
           "_d": col("il2_miu_total", 0.0)}
    t = t.assign(**key).sort_values(list(key), kind="stable").drop(columns=list(key)).reset_index(drop=True)
    t["rank"] = np.arange(1, len(t) + 1)
    return t


def _titrated_daily_dose(outcome, total_mg: float) -> float:
    """Mean daily sirolimus dose (mg/day) under trough titration: ``total_mg`` (the summary's median over the
    successful patients of their own titrated totals, see :func:`tregpd.scenarios.runner.summarise_result`)
    over the dosing period (first dose to last dose + one interval, as :func:`mean_daily_dose`)."""
    tit = outcome.titration
    s = outcome.scenario.regimen.schedules[tit.schedule_index]
    t = tit.dose_times
    return total_mg / (float(t[-1]) + s.interval_day - float(t[0]))


def comparison_row(outcome) -> dict:
    """One row of the cross-scenario comparison (numbers, unformatted).

    ``*_cmp`` columns are at the comparison week (``compare_week``: the scenario's ``compare_week``, default
    24 or the end); ``*_eot`` at the end of the regimen's own treatment window (``treatment_end_week``;
    untreated: the comparison week); ``*_on_treatment`` over that window. ``p05``/``p95`` are the
    between-patient range (5-95 % of virtual patients); ``*_median_lower``/``*_median_upper`` the uncertainty
    of the median (NaN when the scenario did not ask for that band).
    """
    sc = outcome.scenario
    w = sc.comparison_week()
    end = float(sc.weeks)
    s = outcome._index()
    L = M.lookup_index
    t_eot = L(s, "treatment_end_week", statistic="value")
    treated = math.isfinite(t_eot) and t_eot > 0
    eot = t_eot if treated else w
    row = {
        "scenario": sc.name, "question": sc.question, "weeks": sc.weeks, "compare_week": w,
        "treatment_end_week": t_eot if treated else 0.0,
        "n_patients": int(L(s, "n_patients", statistic="count")), "n_failed": int(L(s, "n_failed", statistic="count")),
        "il2_miu_total": L(s, "il2_cumulative_dose", statistic="value"),
        "sirolimus_mg_total": L(s, "sirolimus_cumulative_dose", statistic="value"),
        "il2_dose_miu": max([x.amount_model_units / 1e6 for x in sc.regimen.schedules if x.drug == "il2"],
                            default=0.0),
    }
    row["sirolimus_mg_per_day"] = (_titrated_daily_dose(outcome, row["sirolimus_mg_total"])
                                   if getattr(outcome, "titration", None) is not None
                                   else mean_daily_dose(sc, "sirolimus"))
    for v in ("treg", "th17", "ratio"):
        for stat in ("median", "p05", "p95", "median_lower", "median_upper"):
            col = f"{v}_{stat}_cmp" if stat in ("median", "p05", "p95") else f"{v}_median_cmp_{stat[7:]}"
            row[col] = L(s, v, w, stat)
    row.update({
        "treg_change_pct_cmp": L(s, "treg_change_pct", w), "ratio_change_pct_cmp": L(s, "ratio_change_pct", w),
        "fraction_healthy_cmp": L(s, "fraction_healthy", w, "fraction"),
        "fraction_treg_above_healthy_cmp": L(s, "fraction_treg_above_healthy", w, "fraction"),
        "time_below_target_weeks": L(s, "time_ratio_below_target", w),
        "ratio_target": L(s, "ratio_target", statistic="value"),
        "selectivity_margin": L(s, "selectivity_margin", statistic="median"),
        "selectivity_margin_p95": L(s, "selectivity_margin", statistic="p95"),
        "auc_il2": L(s, "auc_il2", end), "auc_rapa": L(s, "auc_rapa", end),
        "rapa_trough": L(s, "rapa_trough"),
        "treg_median_end": L(s, "treg", end), "ratio_median_end": L(s, "ratio", end),
    })
    # outcomes over the regimen's own treatment window
    for m in ("treg_peak_on_treatment", "treg_time_to_peak", "treg_mean_on_treatment", "ratio_nadir_on_treatment",
              "ratio_time_to_nadir", "ratio_mean_on_treatment", "treg_weeks_to_baseline", "ratio_weeks_to_baseline"):
        row[m] = L(s, m, t_eot) if treated else float("nan")
        row[f"{m}_median_lower"] = L(s, m, t_eot, "median_lower") if treated else float("nan")
        row[f"{m}_median_upper"] = L(s, m, t_eot, "median_upper") if treated else float("nan")
    for m in ("treg_not_back_within_followup", "ratio_not_back_within_followup"):
        row[m] = L(s, m, t_eot, "fraction") if treated else float("nan")
    for v in ("treg", "ratio"):
        src = f"{v}_end_of_treatment" if treated else v
        wk = t_eot if treated else w
        row[f"{v}_median_eot"] = L(s, src, wk)
        row[f"{v}_p05_eot"] = L(s, src, wk, "p05")
        row[f"{v}_p95_eot"] = L(s, src, wk, "p95")
        row[f"{v}_median_eot_lower"] = L(s, src, wk, "median_lower")
        row[f"{v}_median_eot_upper"] = L(s, src, wk, "median_upper")
    for m in ("fraction_healthy", "fraction_healthy_treg", "fraction_healthy_ratio", "fraction_treg_above_healthy"):
        row[f"{m}_eot"] = (L(s, f"{m}_end_of_treatment", t_eot, "fraction") if treated
                           else L(s, m, w, "fraction"))
        row[f"{m}_eot_lower"] = (L(s, f"{m}_end_of_treatment", t_eot, "median_lower") if treated
                                 else L(s, m, w, "median_lower"))
        row[f"{m}_eot_upper"] = (L(s, f"{m}_end_of_treatment", t_eot, "median_upper") if treated
                                 else L(s, m, w, "median_upper"))
    if not treated:   # untreated: the "on treatment" reading is the comparison week
        row["ratio_mean_on_treatment"] = row["ratio_median_cmp"]
    row["bands"] = ",".join(b for b, ok in ((M.BAND_PATIENTS, "patients" in sc.bands),
                                            (M.BAND_MEDIAN, getattr(outcome, "band", None) is not None
                                             or math.isfinite(row["treg_median_cmp_lower"]))) if ok)
    return row


def comparison_table(outcomes: Iterable, sort: bool = True, ranked: bool = True):
    """DataFrame with one row per scenario (see :func:`comparison_row`) and the ranking columns ``flags``,
    ``flagged``, ``rank`` (:func:`rank_regimens`; the rule: :func:`ranking_rule`); ordered by study question
    (in the order of :data:`tregpd.scenarios.schema.QUESTIONS`, untagged last) and then name when ``sort``."""
    import pandas as pd
    table = pd.DataFrame([comparison_row(o) for o in outcomes])
    if ranked and len(table):
        table = rank_regimens(table)
    if sort and len(table):
        order = {q: i for i, q in enumerate(QUESTIONS)}
        key = table["question"].map(lambda q: order.get(q, len(order)))
        table = table.assign(_k=key).sort_values(["_k", "scenario"], kind="stable").drop(columns="_k")
        table = table.reset_index(drop=True)
    return table


def _fmt(x, nd=2):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        if isinstance(x, float) and x == math.inf:
            return "not within follow-up"
        return "–"
    text = f"{x:.{nd}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text     # no "-0"


def _bands(r, v, nd, suffix="cmp"):
    """"median [between-patient 5-95 %] {uncertainty of the median}" of one variable."""
    med, lo, hi = r[f"{v}_median_{suffix}"], r[f"{v}_p05_{suffix}"], r[f"{v}_p95_{suffix}"]
    text = f"{_fmt(med, nd)} [{_fmt(lo, nd)}–{_fmt(hi, nd)}]"
    ml, mu = r.get(f"{v}_median_{suffix}_lower", math.nan), r.get(f"{v}_median_{suffix}_upper", math.nan)
    if isinstance(ml, float) and math.isfinite(ml):
        text += f" {{{_fmt(ml, nd)}–{_fmt(mu, nd)}}}"
    return text


def _weeks_back(r, v):
    """Durability cell: weeks after the end of treatment until the median patient is back within 10 % of
    baseline; says so explicitly when treatment runs to the end or the patient is not back within follow-up."""
    x = r[f"{v}_weeks_to_baseline"]
    if r["treatment_end_week"] == 0:
        return "untreated"
    if r["treatment_end_week"] >= r["weeks"] - 1e-9:
        return "treated to the end"
    if x == math.inf:
        return f"not within follow-up (>{r['weeks'] - r['treatment_end_week']:.1f})"
    return _fmt(x, 1)


BAND_LEGEND = ("Bands: median [between-patient range: 5–95 % of virtual patients at the point estimate] "
               "{uncertainty of the median: 5–95 % of the population median over parameter draws of the "
               "calibrated parameters, widened to the SAT0261 regimen hypotheses when given}. "
               "'end of tx' = end of each regimen's own treatment window (last dose + one interval).")


def comparison_markdown(table) -> str:
    """A Markdown table for a slide or the README: medians with both bands, the outcomes over each regimen's
    own treatment window, the ranking flags and rank; followed by the band legend and the ranking rule."""
    head = ["rank", "scenario", "flags", "wk (tx)", "IL-2 total (MIU)", "SRL total (mg)",
            "Treg end of tx", "Th17/Treg end of tx", "healthy end of tx (%)",
            "Treg peak on tx (wk)", "Th17/Treg mean on tx", "wk back to baseline (ratio)",
            "Treg @cmp", "Th17/Treg @cmp", "peak IL-2/EC50_E"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table.to_dict("records"):
        cmpw = f"wk{r['compare_week']:g}"
        lines.append("| " + " | ".join([
            str(r.get("rank", "")), r["scenario"], r.get("flags", "") or "–",
            f"{r['weeks']:g} ({_fmt(r['treatment_end_week'], 1)})",
            _fmt(r["il2_miu_total"], 1), _fmt(r["sirolimus_mg_total"], 1),
            _bands(r, "treg", 1, "eot"), _bands(r, "ratio", 2, "eot"),
            _fmt(100 * r["fraction_healthy_eot"], 0),
            f"{_fmt(r['treg_peak_on_treatment'], 1)} ({_fmt(r['treg_time_to_peak'], 1)})",
            _fmt(r["ratio_mean_on_treatment"]), _weeks_back(r, "ratio"),
            f"{_bands(r, 'treg', 1)} ({cmpw})", f"{_bands(r, 'ratio', 2)} ({cmpw})",
            _fmt(r["selectivity_margin"], 4)]) + " |")
    return "\n".join(lines) + "\n\n" + BAND_LEGEND + "\n\n" + ranking_rule() + "\n"


@dataclass
class LibraryRun:
    """Result of :func:`run_library`: per-scenario outcomes, the comparison table and written files."""

    outcomes: list
    table: object
    markdown: str
    files: list
    seconds: float


def rebound_week(outcome, target: float) -> float | None:
    """First output week after the last dose at which the median Th17/Treg is back at or above ``target``;
    None if treatment runs to the end or the median stays below the target."""
    res = outcome.result
    end_week = outcome.scenario.treatment_end_day() / 7.0
    weeks = res.time_day / 7.0
    if end_week >= weeks[-1] - 1e-9 or res.get("ratio").shape[0] == 0:
        return None
    med = np.median(res.get("ratio"), axis=0)
    hit = np.flatnonzero((weeks >= end_week) & (med >= target))
    return float(weeks[hit[0]]) if hit.size else None


def answer_text(question: str, run: LibraryRun) -> str:
    """A short Markdown answer: the scenarios ranked by :func:`rank_regimens` (the rule stated); for the washout
    and duration questions also the week at which the median ratio rebounds above the target after the last
    dose."""
    t = rank_regimens(run.table.drop(columns=["flags", "flagged", "rank"], errors="ignore"))
    lines = [f"## {question}: {QUESTIONS[question]}", ""]
    if question in ("washout", "duration"):
        lines += ["After stopping (median trajectories):", ""]
        for o in run.outcomes:
            target = o.value("ratio_target", None, "value")
            end = o.scenario.treatment_end_day() / 7.0
            if end >= o.scenario.weeks - 1e-9:
                continue
            wk = rebound_week(o, target)
            doses = o.scenario.regimen.events(until_day=o.scenario.t_end_day).drug_doses()
            last = float(doses.time_day.max()) / 7.0 if len(doses) else 0.0
            lines.append(f"- {o.scenario.name}: last dose in week {last:.1f}; median ratio "
                         + (f"back above the target {target:g} by week {wk:.1f} ({wk - last:.1f} weeks after it)"
                            if wk is not None else f"still below the target {target:g} at week {o.scenario.weeks:g}")
                         + f"; at week {o.scenario.weeks:g}: Treg {o.value('treg', o.scenario.weeks):.1f} cells/µL, "
                           f"ratio {o.value('ratio', o.scenario.weeks):.2f} (baseline "
                           f"{o.value('ratio', 0.0):.2f})")
        lines.append("")
    lines += [ranking_rule(), "", "Ranking (median [between-patient 5–95 %] {uncertainty of the median}):", ""]
    for r in t.to_dict("records"):
        flag = f" — FLAGGED: {r['flags']}" if r["flags"] else ""
        when = (f"at the end of treatment (week {_fmt(r['treatment_end_week'], 1)})" if r["treatment_end_week"] > 0
                else f"untreated, at week {r['compare_week']:g}")
        lines.append(f"{r['rank']}. **{r['scenario']}**{flag}: {when} {100 * r['fraction_healthy_eot']:.0f} % of patients in "
                     f"the healthy range, Treg {_bands(r, 'treg', 1, 'eot')} cells/µL, Th17/Treg "
                     f"{_bands(r, 'ratio', 2, 'eot')}; mean Th17/Treg on treatment "
                     f"{_fmt(r['ratio_mean_on_treatment'])}; Treg peak {_fmt(r['treg_peak_on_treatment'], 1)} "
                     f"cells/µL; IL-2 {r['il2_miu_total']:.1f} MIU and sirolimus {r['sirolimus_mg_total']:.0f} mg "
                     "in total")
    lines += ["", run.markdown]
    return "\n".join(lines)


def answers_markdown(outcomes) -> str:
    """Answers to every study question present among ``outcomes`` (each: the reference plus the scenarios
    tagged with it), from runs already made; used by :func:`tregpd.scenarios.runner.run_library`
    and by :mod:`tregpd.pipeline`."""
    parts = []
    for q in QUESTIONS:
        if q == "reference":
            continue
        group = [o for o in outcomes if o.scenario.question in ("reference", q)]
        if not any(o.scenario.question == q for o in group):
            continue
        table = comparison_table(group)
        rank = {n: i for i, n in enumerate(table["scenario"])}
        group.sort(key=lambda o: rank[o.scenario.name])
        parts.append(answer_text(q, LibraryRun(group, table, comparison_markdown(table), [], 0.0)))
    return "\n\n".join(parts)
