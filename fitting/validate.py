"""``tregpd validate``: simulate every study of the calibration dataset and compare, number by number.

For each regimen of ``fitting/data/calibration_regimens.toml`` used by a row of
``fitting/data/calibration.csv``, the typical patient (the given :class:`~tregpd.model.ParameterSet`, with the
study's reported baseline from the regimen's ``[baseline]`` table) and a virtual population drawn around it
(:func:`tregpd.model.sample_population`, seeded) are simulated. Each row's prediction is then formed on the
row's own mapping:

* per patient: the observable at ``day`` (``time_summary`` point) or its max/mean over ``[day, day_end]``;
  divided by the same patient's day-0 value for ``fold_change`` and ``percent_of_cd4`` (ASSUMPTION: CD4
  constant, so a fold of Treg % of CD4 equals a fold of the Treg count);
* across patients: ``median``/``mean`` of the per-patient quantity, or ``ratio_of_medians``/``ratio_of_means``
  (summary at the time divided by summary on day 0) as the study computed it; the between-patient 5-95 % band
  is that of the per-patient quantity.

**Tolerance rule.** A number is *in* when |ln(predicted) - ln(observed)| <= 2 SE, SE being the row's SE on the
log scale (the fitting scale); ``loose_check`` rows use their loose SE. The population prediction is the one
compared (studies report cohort statistics); the typical patient's is reported beside it. Qualitative rows are
evaluated by their check (see :mod:`tregpd.fitting.build_calibration`) on the population median.

Outputs (atomic; provenance as ``# key: value`` CSV header lines and ``provenance.json``): ``validation.csv``,
``qualitative.csv``, ``validation.md`` and one ``validation_<study_slug>.png`` per study.

The model is not tuned here: with the current model many checks fail, and the report says so.
"""
from __future__ import annotations

import inspect
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from tregpd.model import (ParameterSet, default_parameters, load_parameters, output_times, sample_population,
                          simulate, simulate_population)

from .calibration import StudyRegimen, load_calibration, load_regimens, parse_check

DEFAULT_SEED = 20170614
DEFAULT_POPULATION = 200
#: |z| at or below which a number is "in tolerance"
TOLERANCE_Z = 2.0
BAND = (5.0, 95.0)


@dataclass
class StudySimulation:
    """Typical patient and virtual population of one regimen (``time_day`` shared)."""

    regimen_id: str
    time_day: np.ndarray
    typical: object
    population: object
    parameters: ParameterSet
    _values: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def values(self, observable: str) -> tuple[np.ndarray, np.ndarray]:
        """(typical (1, nt), population (n_ok, nt)) arrays of ``observable`` (computed once per observable: every
        row and check of a study reads the same arrays; treat them as read-only)."""
        got = self._values.get(observable)
        if got is None:
            typ = self.typical.get(observable)
            pop = typ if self.population is self.typical else self.population.get(observable)
            got = self._values[observable] = (typ, pop)
        return got


@dataclass
class ValidationOutcome:
    numbers: "pd.DataFrame"  # noqa: F821
    qualitative: "pd.DataFrame"  # noqa: F821
    summary: str
    files: dict = field(default_factory=dict)
    simulations: dict = field(default_factory=dict, repr=False)

    @property
    def all_pass(self) -> bool:
        return bool(self.numbers["in_tolerance"].all() and self.qualitative["pass"].all())


def _accepts(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def _resolve_parameters(parameters) -> ParameterSet:
    if parameters is None:
        return default_parameters()
    if isinstance(parameters, ParameterSet):
        return parameters
    return load_parameters(parameters)


def simulate_study(reg: StudyRegimen, parameters: ParameterSet, *, population: int, seed: int,
                   extra_days=(), potency: Mapping[str, float] | None = None, model=None,
                   iiv: Mapping[str, float] | None = None) -> StudySimulation:
    """Simulate one regimen: typical patient and ``population`` virtual patients (failures kept out)."""
    params = parameters.with_values(**reg.baseline) if reg.baseline else parameters
    regimen = reg.regimen(potency)
    t_out = output_times(reg.duration_day, reg.output_step_day, extra=[d for d in extra_days
                                                                      if d <= reg.duration_day])
    kw_s = {"model": model} if (model is not None and _accepts(simulate, "model")) else {}
    kw_p = {"model": model} if (model is not None and _accepts(simulate_population, "model")) else {}
    typ = simulate(params, regimen, t_out=t_out, **kw_s)
    theta = sample_population(params, n=population, iiv=iiv, seed=seed, model=model)
    pop = simulate_population(theta, regimen, t_out=t_out, on_failure="keep", parameters=params, seed=seed,
                              **kw_p)
    return StudySimulation(reg.regimen_id, typ.time_day, typ, pop, params)


# ----------------------------------------------------------------------------------- row quantities
def _index(t: np.ndarray, day: float) -> int:
    idx = np.flatnonzero(np.isclose(t, day, rtol=0, atol=1e-9))
    if idx.size == 0:
        raise ValueError(f"day {day} not on the output grid")
    return int(idx[0])


def _window(x: np.ndarray, t: np.ndarray, day: float, day_end: float, summary: str) -> np.ndarray:
    """Per-patient summary of x (n, nt) at ``day`` or over [day, day_end]."""
    if summary == "point":
        return x[:, _index(t, day)]
    m = (t >= day - 1e-9) & (t <= day_end + 1e-9)
    return x[:, m].max(axis=1) if summary == "max" else x[:, m].mean(axis=1)


def _trajectory(x: np.ndarray, mapping: str) -> np.ndarray:
    """Per-patient trajectory on the mapping's scale (fold of day 0, or absolute)."""
    return x if mapping == "absolute" else x / x[:, :1]


def row_quantity(sim: StudySimulation, observable: str, mapping: str, day: float, day_end: float,
                 summary: str, statistic: str) -> dict:
    """Prediction of one quantitative row: typical, population statistic, 5/95 % band of the per-patient
    quantity (see module docstring)."""
    out = {}
    for who, x in zip(("typical", "population"), sim.values(observable)):
        t = sim.time_day
        if x.shape[0] == 0:
            out[who] = (math.nan, math.nan, math.nan)
            continue
        val = _window(x, t, day, day_end, summary)
        base = x[:, _index(t, 0.0)]
        q = val if mapping == "absolute" else val / base
        if statistic == "median":
            s = float(np.median(q))
        elif statistic == "mean":
            s = float(np.mean(q))
        elif statistic == "ratio_of_medians":
            s = float(np.median(val) / (1.0 if mapping == "absolute" else np.median(base)))
        elif statistic == "ratio_of_means":
            s = float(np.mean(val) / (1.0 if mapping == "absolute" else np.mean(base)))
        else:
            raise ValueError(f"unknown statistic {statistic!r}")
        lo, hi = np.percentile(q, BAND)
        out[who] = (s, float(lo), float(hi))
    return {"predicted_typical": out["typical"][0], "predicted": out["population"][0],
            "predicted_p5": out["population"][1], "predicted_p95": out["population"][2]}


def evaluate_check(chk: dict, row, sims: Mapping[str, StudySimulation]) -> dict:
    """Evaluate a qualitative row on the population (median per-patient quantity) and the typical patient.

    Returns ``predicted`` (number or text), ``pass`` and the same for the typical patient.
    """
    sim = sims[row.regimen_id]
    t = sim.time_day
    res = {}
    for k, who in enumerate(("typical", "population")):

        def q_of(s, obs, day=row.day, day_end=row.day_end, summary=row.time_summary, mapping=row.mapping):
            x = _trajectory(s.values(obs)[k], mapping)
            return _window(x, s.time_day, day, day_end, summary)

        typ = chk["type"]
        if sim.values(row.observable)[k].shape[0] == 0:
            res[who] = (math.nan, False)
            continue
        if typ in ("direction", "not_significant", "lower_bound"):
            v = float(np.median(q_of(sim, row.observable)))
            ok = {"direction": (v > 1.0) if chk.get("sign") == "up" else (v < 1.0),
                  "not_significant": abs(math.log(v)) < chk.get("threshold", 0.0) if v > 0 else False,
                  "lower_bound": v > chk.get("bound", math.inf)}[typ]
        elif typ == "peak_window":
            x = _trajectory(sim.values(row.observable)[k], row.mapping)
            med = np.median(x, axis=0)
            m = (t >= row.day - 1e-9) & (t <= row.day_end + 1e-9)
            v = float(t[m][int(np.argmax(med[m]))])
            ok = chk["lo"] - 1e-9 <= v <= chk["hi"] + 1e-9
        elif typ == "decline":
            a, b = chk["ref_window"]
            ref = q_of(sim, row.observable, day=a, day_end=b,
                       summary=chk["ref_summary"] if b > a else "point")
            v = float(np.median(q_of(sim, row.observable) / ref))
            ok = v < chk["threshold"]
        elif typ == "greater_than":
            v = float(np.median(q_of(sim, row.observable)) / np.median(q_of(sim, chk["other"])))
            ok = v > 1.0
        elif typ == "dose_order":
            vals = [float(np.median(q_of(sims[r], row.observable))) for r in chk["regimens"]]
            v = " < ".join(f"{x:.4g}" for x in vals)
            ok = all(b > a for a, b in zip(vals, vals[1:]))
        else:  # pragma: no cover - parse_check rejects unknown types
            raise ValueError(typ)
        res[who] = (v, bool(ok))
    return {"predicted": res["population"][0], "pass": res["population"][1],
            "predicted_typical": res["typical"][0], "pass_typical": res["typical"][1]}


def _flow_percent_sigma() -> float:
    from .variability import RESIDUAL_SIGMA
    return RESIDUAL_SIGMA["flow_percent"]


# ----------------------------------------------------------------------------------- main entry
def validate(parameters=None, *, population: int = DEFAULT_POPULATION, seed: int = DEFAULT_SEED,
             out: str | Path | None = "out/validate", model=None, potency: Mapping[str, float] | None = None,
             calibration=None, regimens=None, iiv: Mapping[str, float] | None = None,
             plots: bool = True, responder_threshold: float = 1.5) -> ValidationOutcome:
    """Simulate every study in the calibration dataset and write the validation report.

    Parameters
    ----------
    parameters : ParameterSet, path to a parameter file, or None (bundled priors)
        The typical patient.
    population : int
        Virtual patients per study (between-patient 5-95 % band and population statistics).
    seed : int
        Seed of :func:`tregpd.model.sample_population` (the same seed for every study).
    out : path or None
        Output folder; None writes nothing.
    model : str or ModelStructure, optional
        The model structure simulated (default: the default structure); named in the provenance.
    potency : mapping product -> multiplier of the IU dose (default 1.0 each).
    calibration : DataFrame, optional (default :func:`load_calibration`)
    regimens : mapping, optional (default :func:`load_regimens`)
    iiv : mapping, optional; IIV of the virtual population (default ``DEFAULT_IIV``)
    plots : bool
        Write one figure per study.
    responder_threshold : float
        Column ``responder_fraction`` of Treg fold-change rows (``fold_change`` and ``percent_of_cd4``): the
        fraction of virtual patients whose *measured* per-patient Treg fold (residual error of
        :mod:`tregpd.fitting.variability` on every visit, seeded) at the row's time point (or max/mean over
        its window) is >= this; empty for other rows.

    Returns
    -------
    ValidationOutcome
        ``numbers`` (validation.csv), ``qualitative`` (qualitative.csv), the one-line ``summary`` and ``files``.
    """
    import pandas as pd
    from tregpd.errors import TregpdError
    if isinstance(population, bool) or not isinstance(population, (int, np.integer)) or population < 2:
        raise TregpdError(f"population must be an integer >= 2, got {population!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TregpdError(f"seed must be an integer >= 0, got {seed!r}")
    t0 = time.perf_counter()
    params = _resolve_parameters(parameters)
    regimens = regimens if regimens is not None else load_regimens()
    cal = calibration if calibration is not None else load_calibration(regimens=regimens)
    needed = list(dict.fromkeys(cal["regimen_id"]))
    for c in cal.loc[cal["weight_class"] == "qualitative", "check"]:
        for r in json.loads(c).get("regimens", []):
            if r not in needed:
                needed.append(r)
    sims: dict[str, StudySimulation] = {}
    for rid in needed:
        rows = cal[cal["regimen_id"] == rid]
        extra = [float(d) for d in pd.concat([rows["day"], rows["day_end"]]).dropna()]
        sims[rid] = simulate_study(regimens[rid], params, population=population, seed=seed, extra_days=extra,
                                   potency=potency, model=model, iiv=iiv)

    num_rows, qual_rows = [], []
    for r in cal.itertuples(index=False):
        sim = sims[r.regimen_id]
        common = {"id": r.id, "study": r.study, "study_slug": r.study_slug, "regimen_id": r.regimen_id,
                  "observable": r.observable, "mapping": r.mapping, "day": r.day,
                  "day_end": r.day_end, "time_summary": r.time_summary}
        if r.weight_class == "qualitative":
            ev = evaluate_check(parse_check(r.check, r.id), r, sims)
            qual_rows.append({**common, "criterion": r.criterion, "status": r.status, **ev,
                              "n_patients": int(sim.population.ok.sum())})
            continue
        pred = row_quantity(sim, r.observable, r.mapping, r.day, r.day_end, r.time_summary, r.statistic)
        if r.observable == "treg" and r.mapping in ("fold_change", "percent_of_cd4") and (
                r.day > 0 or r.time_summary != "point"):
            from .variability import responder_fraction
            pred["responder_fraction"] = responder_fraction(
                sim.population, r.day, responder_threshold, residual=True, seed=seed,
                day_end=None if r.time_summary == "point" else r.day_end, summary=r.time_summary,
                sigma=None if r.mapping == "fold_change" else _flow_percent_sigma())
        else:
            pred["responder_fraction"] = math.nan
        p = pred["predicted"]
        z = (math.log(p) - math.log(r.value)) / r.se if p > 0 and math.isfinite(p) else math.nan
        zt = pred["predicted_typical"]
        zt = (math.log(zt) - math.log(r.value)) / r.se if zt > 0 and math.isfinite(zt) else math.nan
        num_rows.append({**common, "statistic": r.statistic, "weight_class": r.weight_class, "status": r.status,
                         "observed": r.value, "se": r.se, "se_rule": r.se_rule,
                         "tolerance_low": r.value * math.exp(-TOLERANCE_Z * r.se),
                         "tolerance_high": r.value * math.exp(TOLERANCE_Z * r.se), **pred, "z": z,
                         "z_typical": zt, "in_tolerance": bool(math.isfinite(z) and abs(z) <= TOLERANCE_Z),
                         "n_patients": int(sim.population.ok.sum())})
    numbers = pd.DataFrame(num_rows)
    qual = pd.DataFrame(qual_rows)
    n_in, n_num = int(numbers["in_tolerance"].sum()) if len(numbers) else 0, len(numbers)
    k_pass, n_q = int(qual["pass"].sum()) if len(qual) else 0, len(qual)
    summary = f"{n_in} of {n_num} numbers in tolerance, {k_pass} of {n_q} qualitative checks pass"
    outcome = ValidationOutcome(numbers, qual, summary, simulations=sims)
    if out is not None:
        outcome.files = _write(outcome, Path(out), cal, params, population, seed, potency, regimens,
                               plots, time.perf_counter() - t0, model=model)
    return outcome


# ----------------------------------------------------------------------------------- writing
def _fmt(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "in" if v else "OUT"
    if isinstance(v, (float, np.floating)):
        return "" if not math.isfinite(v) else f"{v:.3g}"
    return str(v)


def _md_table(frame, cols, headers) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(getattr(r, c)).replace("|", "/") for c in cols) + " |")
    return "\n".join(lines)


def _when(r) -> str:
    return f"{r.day:g}" if r.time_summary == "point" else f"{r.time_summary} {r.day:g}-{r.day_end:g}"


def markdown(outcome: ValidationOutcome, regimens: Mapping[str, StudyRegimen], population: int,
             seed: int) -> str:
    """validation.md: the summary, the number table and the qualitative table."""
    num = outcome.numbers.copy()
    qual = outcome.qualitative.copy()
    parts = ["# Validation against the calibration dataset", "",
             f"**{outcome.summary}** (virtual population of {population} per study, seed {seed}).", "",
             "Rule: a number is *in* when |ln predicted - ln observed| <= 2 SE (SE on the log scale, from the "
             "dataset's se_rule; loose_check rows use their loose SE). *predicted* is the population statistic "
             "(median/mean of the per-patient quantity, or the ratio of the population medians/means where the "
             "study reported two medians/means); *typical* is the typical patient; *5-95 %* is the "
             "between-patient range of the per-patient quantity. Fold changes are per patient against its own "
             "day 0; % of CD4 rows assume a constant CD4 count.", "",
             "## Numbers", ""]
    if len(num):
        num["when"] = [_when(r) for r in num.itertuples()]
        num["band"] = [f"{_fmt(a)}-{_fmt(b)}" for a, b in zip(num["predicted_p5"], num["predicted_p95"])]
        num["tol"] = [f"{_fmt(a)}-{_fmt(b)}" for a, b in zip(num["tolerance_low"], num["tolerance_high"])]
        parts.append(_md_table(num, ["study", "regimen_id", "observable", "mapping", "when", "weight_class",
                                     "observed", "se", "tol", "predicted", "predicted_typical", "band", "z",
                                     "in_tolerance", "responder_fraction"],
                               ["study", "regimen", "observable", "mapping", "day", "class", "observed",
                                "SE (log)", "tolerance", "predicted", "typical", "5-95 %", "z", "in/out",
                                "responders"]))
        parts += ["", "*responders*: fraction of virtual patients whose measured Treg fold change (residual error "
                  "of tregpd.fitting.variability on every visit) is >= the responder threshold (default 1.5) at "
                  "the row's time point; Treg fold rows only."]
    parts += ["", "## Qualitative checks", ""]
    if len(qual):
        qual["result"] = ["pass" if p else "FAIL" for p in qual["pass"]]
        qual["result_typical"] = ["pass" if p else "FAIL" for p in qual["pass_typical"]]
        parts.append(_md_table(qual, ["study", "regimen_id", "criterion", "status", "predicted", "result",
                                      "predicted_typical", "result_typical"],
                               ["study", "regimen", "criterion", "status", "predicted (population)", "result",
                                "typical", "typical result"]))
    parts += ["", "## Regimens (assumptions)", ""]
    used = list(dict.fromkeys(list(num.get("regimen_id", [])) + list(qual.get("regimen_id", []))))
    for rid in used:
        reg = regimens[rid]
        parts.append(f"* `{rid}` ({reg.product}): {reg.description}. {reg.assumption}")
    return "\n".join(parts) + "\n"


def _write(outcome, out: Path, cal, params, population, seed, potency, regimens, plots, runtime_s,
           model=None) -> dict:
    from tregpd.io import atomic_save_figure, atomic_write_frame, atomic_write_json, atomic_write_text
    from tregpd.io import model_record, provenance
    prov = provenance(params, None, seed, model=model_record(model), population=population,
                      potency=potency or "1.0 for every product",
                      tolerance=f"|z| <= {TOLERANCE_Z:g} on the log scale", summary=outcome.summary,
                      calibration_rows=len(cal), runtime_s=round(runtime_s, 2))
    files = {"validation.csv": atomic_write_frame(out / "validation.csv", outcome.numbers, prov),
             "qualitative.csv": atomic_write_frame(out / "qualitative.csv", outcome.qualitative, prov),
             "validation.md": atomic_write_text(out / "validation.md",
                                                markdown(outcome, regimens, population, seed))}
    if plots:
        from .validation_plots import plot_study
        import matplotlib.pyplot as plt
        for slug, rows in cal.groupby("study_slug", sort=False):
            fig = plot_study(rows, outcome, outcome.simulations)
            files[f"validation_{slug}.png"] = atomic_save_figure(out / f"validation_{slug}.png", fig)
            plt.close(fig)
    files["provenance.json"] = atomic_write_json(out / "provenance.json",
                                                 {**prov, "files": sorted(files)})
    return files
