"""tregpd.scenarios: dosing scenarios as TOML files, a runner that simulates a virtual population per scenario,
summary metrics a clinician can read, figures, one comparison per study question, and a dose-finding helper.

Quick start::

    tregpd scenarios list                              # the bundled library
    tregpd scenarios run scenarios/library/*.toml      # or: tregpd scenarios run --library
    tregpd scenarios question il2_dose                 # one study question
    tregpd dosefind --max-selectivity 0.03             # best regimen under a selectivity limit

The scenario file format is documented in :mod:`tregpd.scenarios.schema`; the metrics in
:mod:`tregpd.scenarios.metrics`; the outputs in :mod:`tregpd.scenarios.runner`.
"""
from tregpd._lazy import attach

# public names are imported lazily (on first use; see tregpd._lazy)
__all__ = attach(__name__, {
    "schema": ("Scenario", "ScenarioWarning", "QUESTIONS", "DEFAULT_RATIO_TARGET", "load_scenario",
               "parse_scenario", "library_dir", "library_paths"),
    "metrics": ("HEALTHY_RANGE", "time_below"),
    "runner": ("ScenarioOutcome", "LibraryRun", "run_scenario", "run_library", "comparison_table",
               "comparison_markdown", "resolve_parameters"),
})
