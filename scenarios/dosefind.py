"""Dose finding: rank IL-2 regimens by the comparison's multi-criteria rule under selectivity and exposure limits.

The regimen space is a grid of

* IL-2 dose per injection (MIU), default 0.25, 0.5, 0.75, 1, 1.5, 2, 3;
* interval between injections (days), default 1, 2, 3, 7, 14;
* course length (days of dosing per 28-day cycle), default 5, 14 and 28 (28 = continuous dosing).

A candidate with course length ``L`` and interval ``i`` gives ``ceil(L / i)`` injections at ``0, i, 2i, ...`` in
each 28-day cycle (``L >= 28``: one continuous course ``0, i, 2i, ...``). Candidates that give the same dose
times are evaluated once. Sirolimus is held at a background schedule (default: the reference 0.5 mg every other
day; ``sirolimus_mg=0`` for none).

Each candidate is simulated on the **same** virtual population (common random numbers, so differences between
regimens are not sampling noise). The candidates are ranked by the same function as the scenario comparison,
:func:`tregpd.scenarios.comparison.rank_regimens` (its rule, :func:`~tregpd.scenarios.comparison.ranking_rule`,
is printed in the report): flagged regimens last; then more patients with Treg and Th17/Treg in the healthy
range at the end of treatment, lower time-averaged Th17/Treg on treatment, less IL-2. A regimen is feasible
when it has no flag; the limits below set the flags:

* ``max_selectivity``: the 95th percentile across patients of the selectivity margin (peak IL-2 concentration
  over the intermediate-receptor EC50, see :mod:`tregpd.scenarios.metrics`) must not exceed this. Default 0.03,
  i.e. peak occupancy of the intermediate (CD122/CD132) receptor below about 3 % in 95 % of patients. Under the
  literature priors this admits up to about 1.5 MIU per injection in the typical patient, the highest dose
  used in lupus trials (LUPIL-2, Charité; literature.md b). It is a modelling choice, not a clinical limit.
* ``max_cumulative_miu``: total IL-2 over the duration (optional exposure limit).
* ``max_treg_median``: ceiling on the median Treg (at the end of treatment, at its on-treatment peak and at week
  24) and on the fraction of patients above it (``OVER_EXPANSION_FRACTION``), default 64.58 cells/µL (the top
  of the healthy range, Niu; literature.md d), so that a regimen is not preferred for pushing Treg far above
  physiological counts (continuous daily IL-2 peaks far above it, an extrapolation beyond any data the model
  has seen). ``None`` removes it.

Remaining ties go to the smaller cumulative dose.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from tregpd.model.dosing import IL2_CMTS, IL2_SC_CMTS

from tregpd.model.dosing import DoseSchedule, Regimen, reference_regimen
from tregpd.errors import ScenarioError
from tregpd.model.parameters import ParameterSet, default_parameters
from tregpd.model.structures import get_model

from . import metrics as M
from .runner import simulate_scenario, summarise_result, cumulative_doses
from .schema import Scenario

DEFAULT_DOSES_MIU = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
DEFAULT_INTERVALS_DAY = (1.0, 2.0, 3.0, 7.0, 14.0)
DEFAULT_COURSE_DAYS = (5.0, 14.0, 28.0)
CYCLE_DAY = 28.0


@dataclass
class DoseFindResult:
    """Grid of evaluated regimens (DataFrame, one row each), the best feasible row and the reference row."""

    grid: object
    best: dict | None
    reference: dict
    settings: dict

    def report(self) -> str:
        """Markdown: the limits, best feasible regimen against the reference, and the top 10."""
        s = self.settings
        lim = [f"95th-percentile selectivity margin <= {s['max_selectivity']:g}"]
        if s.get("max_cumulative_miu") is not None:
            lim.append(f"cumulative IL-2 <= {s['max_cumulative_miu']:g} MIU")
        if s.get("max_treg_median") is not None:
            lim.append(f"median week-24 Treg <= {s['max_treg_median']:g} cells/uL")
        cols = ["rank", "regimen", "flags", "dose_miu", "interval_day", "course_day", "il2_miu_total",
                "fraction_healthy_eot", "ratio_mean_on_treatment", "ratio_median_cmp", "ratio_p05_cmp",
                "ratio_p95_cmp", "treg_median_cmp", "treg_peak_on_treatment", "selectivity_margin_p95"]
        head = ("| rank | regimen | flags | dose (MIU) | interval (d) | course (d/28) | IL-2 total (MIU) | "
                "healthy end of tx (%) | ratio mean on tx | ratio wk24 [5–95 % of patients] | Treg wk24 | "
                "Treg peak on tx | margin p95 |")
        fmt = lambda r: (f"| {r.get('rank', '–')} | {r['regimen']} | {r.get('flags') or '–'} | {r['dose_miu']:g} | "
                         f"{r['interval_day']:g} | {r['course_day']:g} | {r['il2_miu_total']:.1f} | "
                         f"{100 * r['fraction_healthy_eot']:.0f} | {r['ratio_mean_on_treatment']:.3f} | "
                         f"{r['ratio_median_cmp']:.3f} [{r['ratio_p05_cmp']:.2f}–{r['ratio_p95_cmp']:.2f}] | "
                         f"{r['treg_median_cmp']:.1f} | {r['treg_peak_on_treatment']:.1f} | "
                         f"{r['selectivity_margin_p95']:.4f} |")
        lines = [f"Dose finding over {len(self.grid)} IL-2 regimens ({s['population']} virtual patients, seed "
                 f"{s['seed']}, {s['weeks']:g} weeks, sirolimus background: {s['sirolimus']}).",
                 s.get("rule", ""), "Between-patient range: 5–95 % of virtual patients.", "",
                 head, "|" + "---|" * 13, fmt(self.reference)]
        if self.best is None:
            lines.append("| (no regimen satisfies the limits) |" + " |" * 12)
        else:
            lines.append(fmt(self.best))
            lines += ["", f"Best feasible: **{self.best['regimen']}**; "
                          f"{100 * self.best['fraction_healthy_eot']:.0f} % vs "
                          f"{100 * self.reference['fraction_healthy_eot']:.0f} % of patients in the healthy range "
                          f"at the end of treatment (reference: {self.reference['regimen']}); mean ratio on "
                          f"treatment {self.best['ratio_mean_on_treatment']:.3f} vs "
                          f"{self.reference['ratio_mean_on_treatment']:.3f}, with {self.best['il2_miu_total']:.1f} "
                          f"vs {self.reference['il2_miu_total']:.1f} MIU IL-2."]
        feas = self.grid[self.grid["feasible"]].head(10)
        lines += ["", "Top feasible regimens:", "", head, "|" + "---|" * 13]
        lines += [fmt(r) for r in feas[cols].to_dict("records")]
        return "\n".join(lines) + "\n"


def candidate_regimens(doses: Sequence[float] = DEFAULT_DOSES_MIU,
                       intervals: Sequence[float] = DEFAULT_INTERVALS_DAY,
                       course_days: Sequence[float] = DEFAULT_COURSE_DAYS, weeks: float = 24.0,
                       sirolimus_mg: float = 0.5, sirolimus_interval_day: float = 2.0) -> list[tuple[dict, Regimen]]:
    """The candidate grid: list of (settings dict, Regimen), duplicates (same dose times) removed."""
    for name, vals in (("dose", doses), ("interval", intervals), ("course length", course_days)):
        if len(vals) == 0 or any((not isinstance(v, (int, float))) or not math.isfinite(v) or v <= 0 for v in vals):
            raise ScenarioError(f"dose finding: every {name} must be a positive number, got {list(vals)}")
    if sirolimus_mg < 0:
        raise ScenarioError(f"dose finding: sirolimus_mg must be >= 0, got {sirolimus_mg}")
    days = weeks * 7.0
    background = ()
    if sirolimus_mg > 0:
        background = (DoseSchedule("sirolimus", sirolimus_mg, "mg", interval_day=sirolimus_interval_day,
                                   doses_per_course=int(math.ceil(days / sirolimus_interval_day)), stop_day=days),)
    out, seen = [], set()
    for L in course_days:
        for i in intervals:
            if L >= CYCLE_DAY:
                il2 = dict(interval_day=i, doses_per_course=int(math.ceil(days / i)), n_courses=1)
            else:
                n = max(1, int(math.ceil(L / i)))
                if (n - 1) * i >= CYCLE_DAY:
                    continue
                il2 = dict(interval_day=i, doses_per_course=n, n_courses=int(math.ceil(days / CYCLE_DAY)),
                           course_interval_day=CYCLE_DAY)
            for d in doses:
                sched = DoseSchedule("il2", float(d), "MIU", stop_day=days, **il2)
                times = sched.dose_times()
                key = (float(d), tuple(np.round(times, 9)))
                if key in seen:
                    continue
                seen.add(key)
                label = f"{d:g}MIU_q{i:g}d_" + ("continuous" if L >= CYCLE_DAY else f"{L:g}of28d")
                reg = Regimen(name=label, schedules=(sched, *background),
                              description=f"IL-2 {d:g} MIU every {i:g} d, "
                                          + ("continuously" if L >= CYCLE_DAY else f"{L:g} days per 28-day cycle"))
                out.append(({"regimen": label, "dose_miu": float(d), "interval_day": float(i),
                             "course_day": float(min(L, CYCLE_DAY)), "n_doses": int(times.size)}, reg))
    return out


def _plain(row: dict) -> dict:
    """numpy scalars -> Python scalars (for JSON)."""
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}


def _evaluate(regimen: Regimen, params: ParameterSet, weeks: float, population: int, seed: int, parallel: bool,
              iiv=None, model: str | None = None) -> dict:
    from .comparison import comparison_row
    from .runner import ScenarioOutcome
    sc = Scenario(name=regimen.name, description=regimen.description or regimen.name, weeks=weeks,
                  regimen=regimen, population=population, seed=seed, iiv=iiv, output_step_day=7.0,
                  model=get_model(model).name, bands=("patients",))
    res, exposure, _ = simulate_scenario(sc, params, progress=False, parallel=parallel)
    summ = summarise_result(sc, res, exposure)
    row = comparison_row(ScenarioOutcome(sc, res, summ, exposure))
    keep = ("compare_week", "treatment_end_week", "il2_miu_total", "ratio_median_cmp", "ratio_p05_cmp",
            "ratio_p95_cmp", "treg_median_cmp", "fraction_healthy_cmp", "fraction_treg_above_healthy_cmp",
            "fraction_healthy_eot", "fraction_healthy_treg_eot", "fraction_healthy_ratio_eot",
            "fraction_treg_above_healthy_eot", "treg_median_eot", "ratio_median_eot", "treg_peak_on_treatment",
            "treg_mean_on_treatment", "ratio_mean_on_treatment", "selectivity_margin", "selectivity_margin_p95")
    out = {k: row[k] for k in keep}
    out.update({"selectivity_margin_median": row["selectivity_margin"],
                "auc_il2_median": M.lookup(summ, "auc_il2", float(weeks)), "n_failed": int(res.n_failed)})
    return out


def dose_find(parameters: ParameterSet | None = None, max_selectivity: float = 0.03,
              max_cumulative_miu: float | None = None, max_treg_median: float | None = M.HEALTHY_RANGE["treg"][1],
              doses: Sequence[float] = DEFAULT_DOSES_MIU, intervals: Sequence[float] = DEFAULT_INTERVALS_DAY,
              course_days: Sequence[float] = DEFAULT_COURSE_DAYS, weeks: float = 24.0, population: int = 200,
              seed: int = 20170614, sirolimus_mg: float = 0.5, sirolimus_interval_day: float = 2.0,
              progress: bool = True, parallel: bool = True, iiv=None, model: str | None = None) -> DoseFindResult:
    """Grid search of IL-2 regimens (see the module docstring). Returns a :class:`DoseFindResult` whose ``grid``
    is sorted by feasibility and objective; ``best`` is None when no regimen meets the limits. ``model``: the
    model structure (default: the default structure); named in ``settings["model"]``."""
    import pandas as pd
    if not (isinstance(max_selectivity, (int, float)) and max_selectivity > 0):
        raise ScenarioError(f"dose finding: max_selectivity must be > 0, got {max_selectivity!r}")
    if max_cumulative_miu is not None and max_cumulative_miu <= 0:
        raise ScenarioError(f"dose finding: max_cumulative_miu must be > 0, got {max_cumulative_miu!r}")
    if isinstance(population, bool) or not isinstance(population, int) or population < 1:
        raise ScenarioError(f"dose finding: population must be a positive integer, got {population!r}")
    if not weeks > 0:
        raise ScenarioError(f"dose finding: weeks must be > 0, got {weeks!r}")
    if weeks > 520:
        raise ScenarioError(f"dose finding: weeks must be <= 520 (10 years), got {weeks!r}")
    from tregpd.safeio import check_memory
    structure = get_model(model)
    N_OUT, N_THETA = len(structure.output_names), len(structure.parameter_names)
    n_times = int(weeks) + 7   # weekly grid plus the report weeks
    check_memory(f"dose finding: population {population} over {weeks:g} weeks", population,
                 n_times * N_OUT + 3 * N_THETA,
                 "lower --population (every regimen is simulated on the same population, one regimen at a time), "
                 "or run a chosen regimen with `tregpd trial`, which streams patients in chunks",
                 error=ScenarioError, detail=f"{n_times} weekly outputs x {N_OUT} outputs and the parameters")
    params = parameters if parameters is not None else default_parameters()
    cands = candidate_regimens(doses, intervals, course_days, weeks, sirolimus_mg, sirolimus_interval_day)
    it = cands
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(cands, desc="regimens", unit="regimen")
    rows = [{**info, **_evaluate(reg, params, weeks, population, seed, parallel, iiv, structure.name)} for info, reg in it]
    from .comparison import rank_regimens, ranking_flags, ranking_rule
    limits = dict(max_treg=max_treg_median, max_selectivity=max_selectivity, max_cumulative_miu=max_cumulative_miu)
    grid = rank_regimens(pd.DataFrame(rows), **limits)
    grid["feasible"] = ~grid["flagged"].to_numpy(dtype=bool)
    best = _plain(grid.iloc[0].to_dict()) if bool(grid["feasible"].iloc[0]) else None
    ref_reg = reference_regimen(weeks)
    reference = _plain({"regimen": "shanxi_reference (assumed)", "dose_miu": 0.5, "interval_day": 1.0, "course_day": 5.0,
                 "n_doses": int(np.isin(ref_reg.events().cmt, IL2_SC_CMTS).sum()),
                 **_evaluate(ref_reg, params, weeks, population, seed, parallel, iiv, structure.name)})
    reference["flags"] = str(ranking_flags(pd.DataFrame([reference]), **limits).iloc[0])
    settings = {"max_selectivity": max_selectivity, "max_cumulative_miu": max_cumulative_miu,
                "max_treg_median": max_treg_median, "weeks": weeks, "population": population, "seed": seed,
                "sirolimus": (f"{sirolimus_mg:g} mg every {sirolimus_interval_day:g} d" if sirolimus_mg > 0
                              else "none"),
                "doses_miu": list(doses), "intervals_day": list(intervals), "course_days": list(course_days),
                "model": structure.name, "rule": ranking_rule(**limits)}
    return DoseFindResult(grid, best, reference, settings)
