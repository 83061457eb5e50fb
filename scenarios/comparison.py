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


def _titrated_daily_dose(outcome) -> float:
    """Median over the successful patients of their own mean daily sirolimus dose (mg/day) under trough
    titration (first dose to last dose + one interval, as :func:`mean_daily_dose`)."""
    tit = outcome.titration
    s = outcome.scenario.regimen.schedules[tit.schedule_index]
    t = tit.dose_times
    span = float(t[-1]) + s.interval_day - float(t[0])
    ok = outcome.result.ok
    return float(np.median(tit.cumulative_dose()[ok])) / span if ok.any() else float("nan")


def comparison_row(outcome) -> dict:
    """One row of the cross-scenario comparison (numbers, unformatted)."""
    sc = outcome.scenario
    w = 24.0 if sc.weeks >= 24 - 1e-9 else float(sc.weeks)
    end = float(sc.weeks)
    s = outcome._index()
    L = M.lookup_index
    return {
        "scenario": sc.name, "question": sc.question, "weeks": sc.weeks, "report_week": w,
        "n_patients": int(L(s, "n_patients", statistic="count")), "n_failed": int(L(s, "n_failed", statistic="count")),
        "il2_miu_total": L(s, "il2_cumulative_dose", statistic="value"),
        "sirolimus_mg_total": L(s, "sirolimus_cumulative_dose", statistic="value"),
        "il2_dose_miu": max([x.amount_model_units / 1e6 for x in sc.regimen.schedules if x.drug == "il2"],
                            default=0.0),
        "sirolimus_mg_per_day": _titrated_daily_dose(outcome) if getattr(outcome, "titration", None) is not None
        else mean_daily_dose(sc, "sirolimus"),
        **{f"{v}_{stat}_w24": L(s, v, w, stat) for v in ("treg", "th17", "ratio") for stat in ("median", "p05", "p95")},
        "treg_change_pct_w24": L(s, "treg_change_pct", w),
        "ratio_change_pct_w24": L(s, "ratio_change_pct", w),
        "fraction_healthy_w24": L(s, "fraction_healthy", w, "fraction"),
        "time_below_target_weeks": L(s, "time_ratio_below_target", w),
        "ratio_target": L(s, "ratio_target", statistic="value"),
        "selectivity_margin": L(s, "selectivity_margin", statistic="median"),
        "selectivity_margin_p95": L(s, "selectivity_margin", statistic="p95"),
        "auc_il2": L(s, "auc_il2", end), "auc_rapa": L(s, "auc_rapa", end),
        "rapa_trough": L(s, "rapa_trough"),
        "treg_median_end": L(s, "treg", end), "ratio_median_end": L(s, "ratio", end),
    }


def comparison_table(outcomes: Iterable, sort: bool = True):
    """DataFrame with one row per scenario (see :func:`comparison_row`), ordered by study question (in the
    order of :data:`tregpd.scenarios.schema.QUESTIONS`, untagged last) and then name when ``sort``."""
    import pandas as pd
    table = pd.DataFrame([comparison_row(o) for o in outcomes])
    if sort and len(table):
        order = {q: i for i, q in enumerate(QUESTIONS)}
        key = table["question"].map(lambda q: order.get(q, len(order)))
        table = table.assign(_k=key).sort_values(["_k", "scenario"], kind="stable").drop(columns="_k")
        table = table.reset_index(drop=True)
    return table


def _fmt(x, nd=2):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    text = f"{x:.{nd}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text     # no "-0"


def comparison_markdown(table) -> str:
    """A Markdown table for a slide or the README (medians with 90 % prediction intervals)."""
    head = ["scenario", "wk", "IL-2 total (MIU)", "SRL total (mg)", "Treg wk24 [90% PI]",
            "Th17/Treg wk24 [90% PI]", "Δratio wk24 (%)", "healthy wk24 (%)", "wk ratio<target by wk24",
            "peak IL-2/EC50_E", "Treg end", "ratio end"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table.to_dict("records"):
        wk = "" if r["report_week"] == 24 else f" (wk{r['report_week']:g})"
        lines.append("| " + " | ".join([
            r["scenario"] + wk, f"{r['weeks']:g}", _fmt(r["il2_miu_total"], 1), _fmt(r["sirolimus_mg_total"], 1),
            f"{_fmt(r['treg_median_w24'], 1)} [{_fmt(r['treg_p05_w24'], 1)}–{_fmt(r['treg_p95_w24'], 1)}]",
            f"{_fmt(r['ratio_median_w24'])} [{_fmt(r['ratio_p05_w24'])}–{_fmt(r['ratio_p95_w24'])}]",
            _fmt(r["ratio_change_pct_w24"], 0), _fmt(100 * r["fraction_healthy_w24"], 0),
            _fmt(r["time_below_target_weeks"], 1), _fmt(r["selectivity_margin"], 4),
            _fmt(r["treg_median_end"], 1), _fmt(r["ratio_median_end"])]) + " |")
    return "\n".join(lines) + "\n"


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
    """A short Markdown answer: the scenarios ranked by week-24 (or last) median Th17/Treg; for the washout and
    duration questions also the week at which the median ratio rebounds above the target after the last dose."""
    t = run.table.sort_values("ratio_median_w24")
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
    lines += ["Ranked by median Th17/Treg at week 24 (lower is better; 90 % prediction interval in brackets):", ""]
    for i, r in enumerate(t.to_dict("records"), 1):
        lines.append(f"{i}. **{r['scenario']}**: ratio {r['ratio_median_w24']:.2f} "
                     f"[{r['ratio_p05_w24']:.2f}–{r['ratio_p95_w24']:.2f}], Treg {r['treg_median_w24']:.1f} "
                     f"cells/µL, {100 * r['fraction_healthy_w24']:.0f} % in the healthy range, "
                     f"IL-2 {r['il2_miu_total']:.1f} MIU and sirolimus {r['sirolimus_mg_total']:.0f} mg in total")
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
