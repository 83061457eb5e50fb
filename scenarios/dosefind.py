"""Dose finding: search IL-2 regimens for the lowest week-24 Th17/Treg under a selectivity or exposure limit.

The regimen space is a grid of

* IL-2 dose per injection (MIU), default 0.25, 0.5, 0.75, 1, 1.5, 2, 3;
* interval between injections (days), default 1, 2, 3, 7, 14;
* course length (days of dosing per 28-day cycle), default 5, 14 and 28 (28 = continuous dosing).

A candidate with course length ``L`` and interval ``i`` gives ``ceil(L / i)`` injections at ``0, i, 2i, ...`` in
each 28-day cycle (``L >= 28``: one continuous course ``0, i, 2i, ...``). Candidates that give the same dose
times are evaluated once. Sirolimus is held at a background schedule (default: the reference 0.5 mg every other
day; ``sirolimus_mg=0`` for none).

Each candidate is simulated on the **same** virtual population (common random numbers, so differences between
regimens are not sampling noise). Objective: the median week-24 Th17/Treg across the population. Constraints:

* ``max_selectivity``: the 95th percentile across patients of the selectivity margin (peak IL-2 concentration
  over the intermediate-receptor EC50, see :mod:`tregpd.scenarios.metrics`) must not exceed this. Default 0.03,
  i.e. peak occupancy of the intermediate (CD122/CD132) receptor below about 3 % in 95 % of patients. Under the
  literature priors this admits up to about 1.5 MIU per injection in the typical patient, the highest dose
  used in lupus trials (LUPIL-2, Charité; literature.md b). It is a modelling choice, not a clinical limit.
* ``max_cumulative_miu``: total IL-2 over the duration (optional exposure limit).
* ``max_treg_median``: ceiling on the week-24 median Treg, default 64.58 cells/µL (the top of the healthy range,
  Niu; literature.md d), so that a regimen is not preferred for pushing Treg far above physiological counts
  (continuous daily IL-2 drives the median Treg past 150 cells/µL under the priors, an extrapolation far
  beyond any data the model has seen). ``None`` removes it.

Ties in the objective (within 1e-9) go to the smaller cumulative dose.
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
        cols = ["regimen", "dose_miu", "interval_day", "course_day", "il2_miu_total", "ratio_median_w24",
                "ratio_p05_w24", "ratio_p95_w24", "treg_median_w24", "fraction_healthy_w24",
                "selectivity_margin_p95"]
        head = ("| regimen | dose (MIU) | interval (d) | course (d/28) | IL-2 total (MIU) | ratio wk24 [90% PI] "
                "| Treg wk24 | healthy (%) | margin p95 |")
        fmt = lambda r: (f"| {r['regimen']} | {r['dose_miu']:g} | {r['interval_day']:g} | {r['course_day']:g} | "
                         f"{r['il2_miu_total']:.1f} | {r['ratio_median_w24']:.3f} [{r['ratio_p05_w24']:.2f}–"
                         f"{r['ratio_p95_w24']:.2f}] | {r['treg_median_w24']:.1f} | "
                         f"{100 * r['fraction_healthy_w24']:.0f} | {r['selectivity_margin_p95']:.4f} |")
        lines = [f"Dose finding over {len(self.grid)} IL-2 regimens ({s['population']} virtual patients, seed "
                 f"{s['seed']}, {s['weeks']:g} weeks, sirolimus background: {s['sirolimus']}).",
                 "Objective: lowest median Th17/Treg at week 24. Limits: " + "; ".join(lim) + ".", "",
                 head, "|" + "---|" * 9, fmt(self.reference)]
        if self.best is None:
            lines.append("| (no regimen satisfies the limits) |" + " |" * 8)
        else:
            lines.append(fmt(self.best))
            d = self.best["ratio_median_w24"] - self.reference["ratio_median_w24"]
            lines += ["", f"Best feasible: **{self.best['regimen']}**; week-24 median ratio "
                          f"{self.best['ratio_median_w24']:.3f} vs {self.reference['ratio_median_w24']:.3f} for "
                          f"the reference ({d:+.3f}), with {self.best['il2_miu_total']:.1f} vs "
                          f"{self.reference['il2_miu_total']:.1f} MIU IL-2."]
        feas = self.grid[self.grid["feasible"]].head(10)
        lines += ["", "Top feasible regimens:", "", head, "|" + "---|" * 9]
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
    sc = Scenario(name=regimen.name, description=regimen.description or regimen.name, weeks=weeks,
                  regimen=regimen, population=population, seed=seed, iiv=iiv, output_step_day=7.0,
                  model=get_model(model).name)
    res, exposure, _ = simulate_scenario(sc, params, progress=False, parallel=parallel)
    summ = summarise_result(sc, res, exposure)
    w = 24.0 if weeks >= 24 else float(weeks)
    L = M.lookup
    return {"ratio_median_w24": L(summ, "ratio", w), "ratio_p05_w24": L(summ, "ratio", w, "p05"),
            "ratio_p95_w24": L(summ, "ratio", w, "p95"), "treg_median_w24": L(summ, "treg", w),
            "fraction_healthy_w24": L(summ, "fraction_healthy", w, "fraction"),
            "selectivity_margin_median": L(summ, "selectivity_margin", statistic="median"),
            "selectivity_margin_p95": L(summ, "selectivity_margin", statistic="p95"),
            "il2_miu_total": cumulative_doses(sc)["il2_cumulative_dose"],
            "auc_il2_median": L(summ, "auc_il2", float(weeks)), "n_failed": int(res.n_failed)}


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
    grid = pd.DataFrame(rows)
    feasible = grid["selectivity_margin_p95"] <= max_selectivity
    if max_cumulative_miu is not None:
        feasible &= grid["il2_miu_total"] <= max_cumulative_miu + 1e-9
    if max_treg_median is not None:
        feasible &= grid["treg_median_w24"] <= max_treg_median
    grid["feasible"] = feasible.to_numpy(dtype=bool)
    grid = grid.sort_values(["feasible", "ratio_median_w24", "il2_miu_total"], ascending=[False, True, True],
                            kind="stable").reset_index(drop=True)
    best = _plain(grid.iloc[0].to_dict()) if bool(grid["feasible"].iloc[0]) else None
    ref_reg = reference_regimen(weeks)
    reference = _plain({"regimen": "shanxi_reference (assumed)", "dose_miu": 0.5, "interval_day": 1.0, "course_day": 5.0,
                 "n_doses": int(np.isin(ref_reg.events().cmt, IL2_SC_CMTS).sum()),
                 **_evaluate(ref_reg, params, weeks, population, seed, parallel, iiv, structure.name)})
    settings = {"max_selectivity": max_selectivity, "max_cumulative_miu": max_cumulative_miu,
                "max_treg_median": max_treg_median, "weeks": weeks, "population": population, "seed": seed,
                "sirolimus": (f"{sirolimus_mg:g} mg every {sirolimus_interval_day:g} d" if sirolimus_mg > 0
                              else "none"),
                "doses_miu": list(doses), "intervals_day": list(intervals), "course_days": list(course_days),
                "model": structure.name}
    return DoseFindResult(grid, best, reference, settings)
