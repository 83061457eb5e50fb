"""Scenario runner: simulate a virtual population per scenario, write trajectories, summaries and figures.

>>> from tregpd.scenarios import run_library, library_paths
>>> table = run_library(library_paths(), "out/scenarios")          # doctest: +SKIP

Per scenario, into ``out_dir/<name>/``:

* ``trajectories.csv`` / ``.parquet``: tidy percentiles per output time (time_day, week, variable, statistic
  in median/p05/p95, value, unit) of naive, Treg, Th17, ratio, concentrations and AUCs; provenance in the CSV
  header comments and the Parquet metadata.
* ``patients.parquet`` (``outputs`` contains "patients"): every patient's trajectory, tidy.
* ``summary.csv``: the tidy summary (see :mod:`tregpd.scenarios.metrics`).
* ``trajectories.png``: median of Treg, Th17 and ratio with the between-patient range (5-95 % of virtual patients)
  and the uncertainty of the median (parameter draws), with the healthy ranges (when ``outputs`` contains "png"
  and the scenario's ``figures`` is true).
* ``provenance.json``.
* with a ``[tdm]`` table (trough titration, :mod:`tregpd.scenarios.tdm`): ``tdm_doses.csv`` (every patient's
  titration: patient, day, dose before, true and measured trough, in window, action, dose after, effective day),
  ``tdm_summary.csv`` (per sampling day: trough and dose percentiles, fraction in the window, below, above,
  changed; successful patients) and ``tdm_final_doses.csv`` (distribution of the final dose); with figures,
  ``tdm.png`` (:func:`tregpd.scenarios.tdm_plots.plot_titration`).

Across scenarios (:func:`run_library`): ``comparison.csv`` and ``comparison.md`` (one row per scenario),
``answers.md`` (one short answer per study question present, see :mod:`tregpd.scenarios.questions`),
``summary_all.csv``, ``comparison.png`` (trajectories for up to 8 scenarios, else bar charts at the comparison
week), ``bands.png`` (both bands for the reference, the best-ranked and the best-ranked flagged regimen),
``comparison_<question>.png`` (trajectories of the reference and each study question's scenarios, for larger
runs) and ``dose_response.png`` (unless ``figures=False``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tregpd.model.dosing import IL2_CMTS, IL2_SC_CMTS

from tregpd.errors import ScenarioError, TregpdError
from tregpd.io import atomic_save_figure, atomic_write_frame, atomic_write_json, atomic_write_text
from tregpd.model.parameters import ParameterSet, default_parameters, load_parameters
from tregpd.model.population import sample_population
from tregpd.model.simulate import SimulationResult, output_times, simulate_population

from . import metrics as M
from .comparison import (LibraryRun, _fmt, answers_markdown, comparison_markdown, comparison_row,  # noqa: F401
                         comparison_table, mean_daily_dose)
from .schema import QUESTIONS, Scenario, load_scenario

TRAJECTORY_VARIABLES = ("naive", "treg", "th17", "ratio", "c_il2", "c_rapa", "auc_il2", "auc_rapa")
_MAX_PEAK_BYTES = 64e6


@dataclass
class ScenarioOutcome:
    """What :func:`run_scenario` produced.

    Attributes
    ----------
    scenario : Scenario
    result : SimulationResult on the trajectory grid (all patients; ``result.ok`` marks the successful ones)
    summary : pandas.DataFrame, tidy (scenario, metric, week, statistic, value, unit)
    exposure : dict of per-patient arrays (peak IL-2, selectivity margin, sirolimus trough/peak)
    files : list of Path written
    parameters : ParameterSet used
    seconds : wall time
    titration : :class:`tregpd.scenarios.tdm.Titration` or None (scenarios with a ``[tdm]`` table)
    band : :class:`tregpd.scenarios.uncertainty.MedianBand` (the uncertainty of the median) or None when the
        scenario's ``bands`` do not ask for it
    """

    scenario: Scenario
    result: SimulationResult
    summary: object
    exposure: dict
    files: list = field(default_factory=list)
    parameters: ParameterSet | None = None
    seconds: float = 0.0
    titration: object = None
    band: object = None
    verify: object = None         # the solver check (:class:`tregpd.model.verify.VerifyReport`) or None

    def value(self, metric: str, week: float | None = None, statistic: str = "median") -> float:
        return M.lookup_index(self._index(), metric, week, statistic)

    def _index(self) -> dict:
        # the summary indexed once (lookups by boolean masks over the frame dominated comparison tables)
        cached = self.__dict__.get("_summary_index")
        if cached is None or cached[0] is not self.summary:
            cached = (self.summary, M.summary_index(self.summary))
            self.__dict__["_summary_index"] = cached
        return cached[1]


def resolve_parameters(scenario: Scenario, parameters: ParameterSet | str | Path | None = None) -> ParameterSet:
    """The parameter set a scenario runs with.

    ``parameters`` (the runner's override, e.g. the fitted set from ``tregpd all`` or ``--params``) wins over
    the file's ``parameters`` key when given. Otherwise "default" gives the literature priors, a path is loaded,
    and "fitted" is an error (there is nothing to resolve it with).
    """
    if isinstance(parameters, ParameterSet):
        return parameters
    if parameters is not None:
        return load_parameters(parameters)
    if scenario.parameters == "default":
        return default_parameters()
    if scenario.parameters == "fitted":
        raise ScenarioError(f"{scenario.path or scenario.name}: [scenario] parameters = 'fitted' needs a fitted "
                            "parameter file: pass --params FILE (or run 'tregpd all')")
    return load_parameters(scenario.parameters)


def _population(scenario: Scenario, params: ParameterSet) -> np.ndarray:
    if scenario.population == 1:
        return params.to_theta(scenario.model)[None, :]
    return sample_population(params, scenario.population, iiv=scenario.iiv, seed=scenario.seed,
                             model=scenario.model)


def _trajectory_grid(scenario: Scenario) -> np.ndarray:
    return output_times(scenario.t_end_day, scenario.output_step_day,
                        extra=[w * 7.0 for w in (0.0, *scenario.report_weeks())] + [scenario.treatment_end_day()])


def cumulative_doses(scenario: Scenario) -> dict[str, float]:
    """Total IL-2 (MIU) and sirolimus (mg) given within the simulated duration."""
    ev = scenario.regimen.events(until_day=scenario.t_end_day)
    return {"il2_cumulative_dose": ev.total_amount("il2") / 1e6,
            "sirolimus_cumulative_dose": ev.total_amount("sirolimus")}


def simulate_scenario(scenario: Scenario, parameters: ParameterSet, progress: bool = False,
                      parallel: bool = True, return_titration: bool = False):
    """Simulate a scenario's population; returns (trajectory result, exposure dict, theta), and the
    :class:`tregpd.scenarios.tdm.Titration` (None without a ``[tdm]`` table) with ``return_titration``.

    Exposure arrays cover the successful patients of the trajectory run (a patient failing in either pass is
    excluded from both and counted as failed). With a ``[tdm]`` table every patient is simulated on his own
    titrated sirolimus doses.
    """
    theta = _population(scenario, parameters)
    n = theta.shape[0]
    titration = None
    if scenario.tdm is not None:
        from .tdm import simulate_titrated, titrate
        titration = titrate(theta, scenario.regimen, scenario.tdm, scenario.t_end_day, seed=scenario.seed,
                            model=scenario.model)
        res = simulate_titrated(theta, titration, _trajectory_grid(scenario), parallel=parallel,
                                model=scenario.model, parameters=parameters, seed=scenario.seed)
    else:
        chunk = max(25, math.ceil(n / 20)) if progress else None
        res = simulate_population(theta, scenario.regimen, t_out=_trajectory_grid(scenario), parallel=parallel,
                                  on_failure="keep", parameters=parameters, seed=scenario.seed,
                                  chunk_size=chunk, progress=progress, model=scenario.model)
    exposure = {}
    t_peak = M.peak_grid(scenario.regimen, scenario.t_end_day)
    if t_peak.size:
        chunk = max(1, int(_MAX_PEAK_BYTES // (t_peak.size * 8 * 8)))
        c_il2 = np.zeros((n, t_peak.size))
        c_rapa = np.zeros((n, t_peak.size))
        status = np.zeros(n, dtype=np.int64)
        for s in range(0, n, chunk):
            if titration is not None:
                part = simulate_titrated(theta[s:s + chunk], titration.subset(slice(s, s + chunk)), t_peak,
                                         parallel=parallel, model=scenario.model)
            else:
                part = simulate_population(theta[s:s + chunk], scenario.regimen, t_out=t_peak, parallel=parallel,
                                           on_failure="keep", model=scenario.model)
            c_il2[s:s + chunk] = part.get("c_il2", only_ok=False)
            c_rapa[s:s + chunk] = part.get("c_rapa", only_ok=False)
            status[s:s + chunk] = part.status
        # a patient failing only in the peak pass is marked failed in the trajectory result too
        res.status = np.where((res.status == 0) & (status != 0), status, res.status)
        ok = res.ok
        ev = scenario.regimen.events(until_day=scenario.t_end_day)
        rapa_t = ev.time_day[ev.cmt == 3]
        exposure = M.peak_exposure(t_peak, c_il2[ok], c_rapa[ok], theta[ok],
                                   float(rapa_t[-1]) if rapa_t.size else None, model=scenario.model)
        if not np.any(np.isin(ev.cmt, IL2_CMTS)):
            exposure.pop("il2_peak", None)
            exposure.pop("selectivity_margin", None)
    if return_titration:
        return res, exposure, theta, titration
    return res, exposure, theta


def summarise_result(scenario: Scenario, res: SimulationResult, exposure: dict, band=None, titration=None):
    """Tidy summary of a simulated scenario (see :func:`tregpd.scenarios.metrics.summarise`): the report weeks,
    the outcomes over the regimen's own treatment window (:meth:`Scenario.treatment_end_day`; none for an
    untreated scenario) and, with ``band`` (a :class:`~tregpd.scenarios.uncertainty.MedianBand`), the
    uncertainty of each median. With a ``titration`` the sirolimus cumulative dose is the median over the
    successful patients of their own titrated totals."""
    values = {v: res.get(v) for v in ("treg", "th17", "ratio", "auc_il2", "auc_rapa")}
    doses = cumulative_doses(scenario)
    if titration is not None and res.ok.any():
        doses["sirolimus_cumulative_dose"] = float(np.median(titration.cumulative_dose()[res.ok]))
    t_end = scenario.treatment_end_day()
    return M.summarise(scenario.name, res.time_day, values, scenario.report_weeks(), scenario.ratio_target,
                       n_patients=res.n_patients, n_failed=res.n_failed, exposure=exposure,
                       doses=doses, t_treat_end=t_end if t_end > 0 else None,
                       median_bands=None if band is None else band.statistics,
                       median_band_name=M.BAND_MEDIAN)


def percentile_frame(res: SimulationResult, variables: Sequence[str] = TRAJECTORY_VARIABLES, band=None,
                     patients_band: bool = True):
    """Tidy percentiles per time: time_day, week, variable, statistic, value, unit, band.

    ``statistic`` "median" (band ""); "p05"/"p95" (band "between_patients_5_95": 5-95 % of virtual patients;
    omitted when ``patients_band`` is false); with ``band`` (a
    :class:`~tregpd.scenarios.uncertainty.MedianBand`) also "median_lower"/"median_upper" of Treg, Th17 and
    ratio (band "median_uncertainty_90": the uncertainty of the median over parameter draws).
    """
    import pandas as pd
    units = {v: u for v, (_, u) in res.variables.items()}
    frames = []
    t = res.time_day
    for v in variables:
        arr = res.get(v)
        if arr.shape[0] == 0:
            continue
        for stat, q in M.PERCENTILES:
            if stat != "median" and not patients_band:
                continue
            frames.append(pd.DataFrame({"time_day": t, "week": t / 7.0, "variable": v, "statistic": stat,
                                        "value": np.percentile(arr, q, axis=0), "unit": units[v],
                                        "band": "" if stat == "median" else M.BAND_PATIENTS}))
        if band is not None and v in band.trajectories:
            for stat, y in zip(("median_lower", "median_upper"), band.trajectories[v]):
                frames.append(pd.DataFrame({"time_day": t, "week": t / 7.0, "variable": v, "statistic": stat,
                                            "value": y, "unit": units[v], "band": band.name}))
    return pd.concat(frames, ignore_index=True)


def run_scenario(scenario: Scenario | str | Path, out_dir: str | Path | None, parameters=None,
                 progress: bool = True, parallel: bool = True, figure_writer=None,
                 model: str | None = None, hypotheses=None,
                 verify: tuple | None = None) -> ScenarioOutcome:
    """Simulate one scenario and write its outputs into ``out_dir/<name>/``.

    Parameters
    ----------
    scenario : Scenario or path to a scenario TOML
    out_dir : folder (a subfolder named after the scenario is created), or None to write nothing
    parameters : ParameterSet or path, optional
        Overrides the scenario file's ``parameters`` (see :func:`resolve_parameters`).
    progress : show a tqdm bar over patient chunks
    parallel : use the prange kernel
    figure_writer : :class:`tregpd.plotting.FigureWriter`, optional (default: draw here, at once)
    model : model structure name, optional; overrides the scenario file's ``model`` key
    hypotheses : parameter sets refitted under the SAT0261 regimen hypotheses (path of ``hypotheses.csv``, a
        DataFrame, or a list of (name, ParameterSet)); widens the "median" band (see
        :mod:`tregpd.scenarios.uncertainty`)
    verify : (n, tol, seed), optional
        Solver check (:func:`tregpd.model.verify.verify_titrated`) of ``n`` random patients before anything is
        written; raises VerifyError above ``tol``; the report goes into the provenance.

    Returns
    -------
    ScenarioOutcome
    """
    t0 = time.perf_counter()
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    if model is not None and model != scenario.model:
        scenario = scenario.with_overrides(model=model)
    params = resolve_parameters(scenario, parameters)
    res, exposure, _, titration = simulate_scenario(scenario, params, progress=progress, parallel=parallel,
                                                    return_titration=True)
    if res.n_failed == res.n_patients:
        f = res.failures()[0]
        raise TregpdError(f"scenario {scenario.name!r}: integration failed for all {res.n_patients} patients "
                          f"(e.g. patient {f[0]}: {f[1]} at t = {f[2]:.4g} d)")
    band = None
    if "median" in scenario.bands and not scenario.bands_requested:
        from .uncertainty import calibrated_names
        if not calibrated_names(params, scenario.model):
            import warnings
            from .schema import ScenarioWarning
            warnings.warn(f"scenario {scenario.name!r}: no uncertainty-of-the-median band: parameter set "
                          f"{params.name!r} has no parameter with role 'calibrated' for model {scenario.model!r} "
                          "(only the between-patient range is reported)", ScenarioWarning, stacklevel=2)
            scenario = scenario.with_overrides(bands=[b for b in scenario.bands if b != "median"])
    if "median" in scenario.bands:
        from .uncertainty import hypothesis_parameter_sets, median_uncertainty
        if hypotheses is not None and not isinstance(hypotheses, list):
            hypotheses = hypothesis_parameter_sets(hypotheses, params)
        band = median_uncertainty(scenario, params, res, hypotheses=hypotheses, parallel=parallel)
    summary = summarise_result(scenario, res, exposure, band, titration)
    outcome = ScenarioOutcome(scenario, res, summary, exposure, parameters=params, band=band,
                              titration=titration)
    if verify and verify[0]:
        from tregpd.model.verify import verify_titrated
        outcome.verify = verify_titrated(res, titration, verify[0], seed=verify[2], tol=verify[1],
                                         label=f"scenario {scenario.name!r}").raise_if_failed()
    if out_dir is not None:
        outcome.files = write_outputs(outcome, Path(out_dir) / scenario.name, figure_writer=figure_writer)
    outcome.seconds = time.perf_counter() - t0
    return outcome


def _provenance(outcome: ScenarioOutcome, **extra) -> dict:
    sc = outcome.scenario
    bands = {M.BAND_PATIENTS: M.BAND_LABELS[M.BAND_PATIENTS]} if "patients" in sc.bands else {}
    if outcome.band is not None:
        bands[outcome.band.name] = outcome.band.provenance()
    return outcome.result.provenance(
        scenario=sc.to_dict(), scenario_file=str(sc.path) if sc.path else None,
        parameter_source=sc.parameters, failures=[list(f) for f in outcome.result.failures()[:20]],
        bands=bands, **(outcome.verify.provenance() if outcome.verify is not None else {}), **extra)


def write_outputs(outcome: ScenarioOutcome, folder: Path, figure_writer=None) -> list[Path]:
    """Write a scenario's trajectories, summary, figure and provenance into ``folder``; returns the paths.

    The figure is drawn by ``figure_writer`` (a :class:`tregpd.plotting.FigureWriter`; default: here, at once);
    with a writer that has workers it is on disk once the writer is closed."""
    sc = outcome.scenario
    prov = _provenance(outcome, command="tregpd scenarios run")
    files = []
    traj = percentile_frame(outcome.result, band=outcome.band, patients_band="patients" in sc.bands)
    if "csv" in sc.outputs:
        files.append(atomic_write_frame(folder / "trajectories.csv", traj, prov))
    if "parquet" in sc.outputs:
        files.append(atomic_write_frame(folder / "trajectories.parquet", traj, prov))
    if "patients" in sc.outputs:
        files.append(atomic_write_frame(folder / "patients.parquet",
                                        outcome.result.to_frame(["naive", "treg", "th17", "ratio"]), prov))
    files.append(atomic_write_frame(folder / "summary.csv", outcome.summary, prov))
    if outcome.titration is not None:        # trough titration: every patient's doses, and their summary
        tit, ok = outcome.titration, outcome.result.ok
        files.append(atomic_write_frame(folder / "tdm_doses.csv", tit.records_frame(sc.name), prov))
        files.append(atomic_write_frame(folder / "tdm_summary.csv", tit.summary_frame(sc.name, ok), prov))
        files.append(atomic_write_frame(folder / "tdm_final_doses.csv", tit.final_dose_frame(sc.name, ok), prov))
    if "png" in sc.outputs and sc.figures:
        from . import plots
        from tregpd.plotting import Curves, FigureWriter
        import textwrap
        title = textwrap.fill(f"{sc.name}: {sc.description}", width=150)
        writer = figure_writer if figure_writer is not None else FigureWriter()
        files.append(writer.submit(plots.plot_scenario, folder / "trajectories.png", Curves.of(outcome.result),
                                   title=title, ratio_target=sc.ratio_target, save={"bbox_inches": None},
                                   median_band=None if outcome.band is None else outcome.band.trajectories,
                                   patients_band="patients" in sc.bands))
        if outcome.titration is not None:
            from .tdm_plots import plot_titration
            tit, ok = outcome.titration, outcome.result.ok
            files.append(writer.submit(plot_titration, folder / "tdm.png", tit.summary_frame(sc.name, ok),
                                       tit.final_dose_frame(sc.name, ok), tit.rule.window_ng_ml,
                                       title=f"{sc.name}: sirolimus titrated to a trough window, each patient on "
                                             f"his own PK"))
    files.append(atomic_write_json(folder / "provenance.json", prov))
    return files


def run_library(paths: Sequence[str | Path | Scenario], out_dir: str | Path | None, parameters=None,
                progress: bool = True, population: int | None = None, output_step_day: float | None = None,
                parallel: bool = True, figures: bool = True, ratio_target: float | None = None,
                figure_workers: int | None = 0, model: str | None = None, bands: Sequence[str] | None = None,
                compare_week: float | None = None, hypotheses=None,
                verify: tuple | None = None) -> LibraryRun:
    """Run several scenarios and compare them.

    Parameters
    ----------
    paths : scenario files (or Scenario objects); all are validated before anything is simulated
    out_dir : output folder, or None to write nothing
    parameters : ParameterSet or parameter file, optional
        Used for every scenario (e.g. the fitted set from ``tregpd all``); default: each file's own choice.
    progress : tqdm bar over scenarios
    figures : False: no PNG at all (neither per scenario nor across scenarios); True: per-scenario figures as
        each file's ``outputs``/``figures`` say, and the comparison figures unless every scenario has
        ``figures = false``
    figure_workers : processes drawing the figures while the scenarios run (0, the default: draw here; None:
        automatic, see :func:`tregpd.plotting.figure_workers`; the ``tregpd`` command uses automatic). Workers
        are spawned: the main module must import without side effects.
    population, output_step_day, ratio_target : optional overrides for every scenario (e.g. a quick smoke run,
        or a healthy-range ratio target instead of the study's week-24 median 0.29)
    model : model structure name, optional; overrides every file's ``model`` key (``--model``)
    bands : optional override of every file's ``bands`` ("patients", "median"; ``--bands``)
    compare_week : optional override of every file's ``compare_week`` (``--compare-week``; capped at each
        scenario's duration)
    hypotheses : ``hypotheses.csv`` of ``tregpd hypotheses`` (path or DataFrame), optional: the "median" band
        then also spans the medians under the SAT0261 regimen hypotheses' refits (``--hypotheses``)
    verify : (n, tol, seed), optional
        Solver check of ``n`` patients per scenario (see :func:`run_scenario`).

    Returns
    -------
    LibraryRun (comparison table also written as comparison.csv / comparison.md, figures as PNG)
    """
    t0 = time.perf_counter()
    scenarios = [p if isinstance(p, Scenario) else load_scenario(p) for p in paths]
    if not scenarios:
        raise ScenarioError("no scenario files given")
    names = [s.name for s in scenarios]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ScenarioError(f"scenario names must be unique (they name the output folders); repeated: {dup}")
    over = {}
    if population is not None:
        over["population"] = population
    if output_step_day is not None:
        over["output_step_day"] = output_step_day
    if ratio_target is not None:
        over["ratio_target"] = ratio_target
    if not figures:
        over["figures"] = False
    if model is not None:
        over["model"] = model
    if bands is not None:
        over["bands"] = list(bands)
    figures = figures and any(s.figures for s in scenarios)
    if over:
        scenarios = [s.with_overrides(**over) for s in scenarios]
    if compare_week is not None:
        scenarios = [s.with_overrides(compare_week=min(float(compare_week), s.weeks)) for s in scenarios]
    if isinstance(hypotheses, (str, Path)):
        import pandas as pd
        if not Path(hypotheses).is_file():
            raise ScenarioError(f"--hypotheses: {hypotheses} does not exist (run `tregpd hypotheses` first)")
        hypotheses = pd.read_csv(hypotheses)
    if isinstance(parameters, (str, Path)):
        parameters = load_parameters(parameters)
    from tregpd.plotting import FigureWriter, figure_workers as auto_workers
    n_figures = 0
    if out_dir is not None and figures:
        n_figures = sum("png" in s.outputs and s.figures for s in scenarios) + 2 + len(QUESTIONS)
    workers = auto_workers(n_figures, figure_workers) if n_figures else 0
    with FigureWriter(workers, warm=("tregpd.scenarios.plots",)) as writer:
        run = _run_library(scenarios, out_dir, parameters, progress, parallel, figures, writer, hypotheses, verify)
    run.seconds = time.perf_counter() - t0
    return run


def bands_figure_scenarios(table, outcomes) -> list[str]:
    """The scenarios of ``bands.png``: the reference, the best-ranked unflagged regimen and the best-ranked
    flagged one with other cumulative doses than those already shown (at most three, among those that carry
    the median band)."""
    with_band = {o.scenario.name for o in outcomes if o.band is not None}
    if not with_band:
        return []
    t = table[table["scenario"].isin(with_band)].sort_values("rank") if "rank" in table else table
    picks = list(t.loc[t["question"] == "reference", "scenario"][:1])
    if "flagged" not in t:
        return picks
    doses = {r["scenario"]: (round(r["il2_miu_total"], 6), round(r["sirolimus_mg_total"], 6))
             for r in t.to_dict("records")}
    used = {doses[n] for n in picks}
    for flagged in (False, True):       # a different regimen (other doses), not the same one run longer
        for n in t.loc[t["flagged"] == flagged, "scenario"]:
            if n not in picks and doses[n] not in used:
                picks.append(n)
                used.add(doses[n])
                break
    return picks


def _run_library(scenarios, out_dir, parameters, progress, parallel, figures, writer, hypotheses=None,
                 verify=None) -> LibraryRun:
    outcomes = []
    it = scenarios
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(scenarios, desc="scenarios", unit="scenario")
    for sc in it:
        if progress:
            it.set_postfix_str(sc.name)
        outcomes.append(run_scenario(sc, out_dir, parameters=parameters, progress=False, parallel=parallel,
                                     figure_writer=writer, hypotheses=hypotheses, verify=verify))
    table = comparison_table(outcomes)
    rank = {n: i for i, n in enumerate(table["scenario"])}
    outcomes.sort(key=lambda o: rank[o.scenario.name])
    md = comparison_markdown(table)
    files = []
    if out_dir is not None:
        out = Path(out_dir)
        import pandas as pd
        from tregpd.io import model_record, provenance
        names = list(dict.fromkeys(o.scenario.model for o in outcomes))
        prov = provenance(outcomes[0].parameters, None, None, command="tregpd scenarios run",
                          scenarios=[str(s.path or s.name) for s in scenarios],
                          model=model_record(names[0]) if len(names) == 1 else [model_record(n) for n in names])
        files.append(atomic_write_frame(out / "comparison.csv", table, prov))
        files.append(atomic_write_text(out / "comparison.md", md))
        if len({o.scenario.question for o in outcomes} - {"", "reference"}) > 1:
            files.append(atomic_write_text(out / "answers.md", answers_markdown(outcomes) + "\n"))
        files.append(atomic_write_frame(out / "summary_all.csv",
                                        pd.concat([o.summary for o in outcomes], ignore_index=True), prov))
        if figures:
            from . import plots
            views = [plots.OutcomeView.of(o) for o in outcomes]
            save = {"bbox_inches": None}
            files.append(writer.submit(plots.comparison_figure, out / "comparison.png", views, save=save))
            # per-question trajectory comparisons (reference + the scenarios tagged with the question)
            questions = [q for q in QUESTIONS if q != "reference"
                         and any(o.scenario.question == q for o in outcomes)]
            if len(outcomes) > 8 and questions:
                for q in questions:
                    group = [v for v in views if v.scenario.question in ("reference", q)]
                    files.append(writer.submit(plots.comparison_figure, out / f"comparison_{q}.png", group,
                                               title=f"{q}: {QUESTIONS[q]}", max_trajectories=max(8, len(group)),
                                               save=save))
            shown = bands_figure_scenarios(table, outcomes)
            if shown:
                files.append(writer.submit(plots.plot_bands, out / "bands.png",
                                           [v for v in views if v.scenario.name in shown], save=save))
            if plots.dose_response_series(table):
                files.append(writer.submit(plots.plot_dose_response, out / "dose_response.png", table, save=save))
    return LibraryRun(outcomes, table, md, files, 0.0)
