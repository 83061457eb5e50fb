"""One comparison per study question.

Each question (:data:`tregpd.scenarios.schema.QUESTIONS`) compares the reference regimen with the library
scenarios tagged with that question and writes, into ``out_dir/<question>/``: the comparison table (CSV and
Markdown, with a ranking by week-24 median Th17/Treg as the answer line), the comparison figure, and for the dose
questions the dose-response figure. Run from the command line::

    tregpd scenarios question il2_dose            # or: python -m tregpd.scenarios.questions il2_dose
    tregpd scenarios question all
"""
from __future__ import annotations

import sys

import numpy as np
from pathlib import Path
from typing import Sequence

from tregpd.model.errors import ScenarioError
from tregpd.model.io import atomic_write_text

from .runner import LibraryRun, run_library
from .schema import QUESTIONS, Scenario, load_scenario, library_paths


def normalise_question(name: str) -> str:
    """Accept "il2-dose" as well as "il2_dose"; raise ScenarioError for an unknown question."""
    key = name.strip().lower().replace("-", "_")
    if key not in QUESTIONS:
        raise ScenarioError(f"unknown study question {name!r}; known: {', '.join(QUESTIONS)}")
    return key


def question_scenarios(question: str, paths: Sequence[str | Path] | None = None) -> list[Scenario]:
    """The reference scenario(s) plus every scenario tagged ``question`` among ``paths`` (default: library)."""
    question = normalise_question(question)
    scenarios = [load_scenario(p) for p in (paths if paths is not None else library_paths())]
    chosen = [s for s in scenarios if s.question in ("reference", question)]
    if not any(s.question == question for s in chosen) and question != "reference":
        raise ScenarioError(f"no scenario is tagged question = {question!r}")
    return chosen


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
            last = float(o.scenario.regimen.events(until_day=o.scenario.t_end_day).time_day.max()) / 7.0
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
    tagged with it), from runs already made; used by :func:`tregpd.scenarios.runner.run_library`."""
    from .runner import comparison_markdown, comparison_table
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


def run_question(question: str, out_dir: str | Path | None, parameters=None, paths=None, progress: bool = True,
                 population: int | None = None, output_step_day: float | None = None,
                 ratio_target: float | None = None, figures: bool = True,
                 figure_workers: int | None = 0) -> LibraryRun:
    """Run one study question; writes ``out_dir/<question>/`` (answer.md, comparison.*, figures)."""
    question = normalise_question(question)
    scenarios = question_scenarios(question, paths)
    folder = None if out_dir is None else Path(out_dir) / question
    run = run_library(scenarios, folder, parameters=parameters, progress=progress, population=population,
                      output_step_day=output_step_day, ratio_target=ratio_target, figures=figures,
                      figure_workers=figure_workers)
    text = answer_text(question, run)
    if folder is not None:
        run.files.append(atomic_write_text(folder / "answer.md", text + "\n"))
    run.answer = text
    return run


def main(argv=None) -> int:  # pragma: no cover - thin wrapper over the CLI
    from tregpd.cli import main as cli_main
    return cli_main(["scenarios", "question", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
