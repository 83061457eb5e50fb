"""One comparison per study question.

Each question (:data:`tregpd.scenarios.schema.QUESTIONS`) compares the reference regimen with the library
scenarios tagged with that question and writes, into ``out_dir/<question>/``: the comparison table (CSV and
Markdown, with the multi-criteria ranking of :func:`tregpd.scenarios.comparison.rank_regimens`, its rule
stated, as the answer), the comparison figure, and for the dose
questions the dose-response figure. Run from the command line::

    tregpd scenarios question il2_dose            # or: python -m tregpd.scenarios.questions il2_dose
    tregpd scenarios question all
"""
from __future__ import annotations

import sys

from pathlib import Path
from typing import Sequence

from tregpd.errors import ScenarioError
from tregpd.io import atomic_write_text

from .comparison import LibraryRun, answer_text, answers_markdown, rebound_week  # noqa: F401
from .runner import run_library
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


def run_question(question: str, out_dir: str | Path | None, parameters=None, paths=None, progress: bool = True,
                 population: int | None = None, output_step_day: float | None = None,
                 ratio_target: float | None = None, figures: bool = True,
                 figure_workers: int | None = 0, model: str | None = None, folder=None,
                 bands=None, compare_week=None, hypotheses=None) -> LibraryRun:
    """Run one study question; writes ``out_dir/<question>/`` (answer.md, comparison.*, figures), or
    ``folder`` itself when given (the command line passes a staging folder, see :mod:`tregpd.rundir`)."""
    question = normalise_question(question)
    scenarios = question_scenarios(question, paths)
    if folder is not None:
        folder = Path(folder)
    elif out_dir is not None:
        folder = Path(out_dir) / question
    run = run_library(scenarios, folder, parameters=parameters, progress=progress, population=population,
                      output_step_day=output_step_day, ratio_target=ratio_target, figures=figures,
                      figure_workers=figure_workers, model=model, bands=bands, compare_week=compare_week,
                      hypotheses=hypotheses)
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
