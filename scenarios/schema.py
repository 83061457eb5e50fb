"""Scenario files: a TOML description of one simulated study arm, parsed and validated.

Schema
------
A scenario file has two tables, ``[scenario]`` and ``[regimen]`` (with one ``[[regimen.schedules]]`` table per
drug schedule). Every key is checked; an unknown key anywhere is an error naming the file and the key.

.. code-block:: toml

    [scenario]
    name = "shanxi_reference"        # required; letters, digits, "_" and "-" (used as the output folder)
    description = "..."              # required; what is simulated, with the literature source
    source = "literature.md b"       # optional; where the regimen comes from
    assumption = "..."               # optional; what is assumed rather than published ("" = nothing)
    question = "reference"           # optional; the study question it answers (see QUESTIONS)
    weeks = 24                       # required; simulated duration (follow-up) in weeks, > 0
    parameters = "default"           # "default" (literature priors), "fitted" (the runner's --params, required)
                                     # or a path to a parameter TOML, relative to the scenario file
    population = 300                 # virtual patients, >= 1 (1 = the typical patient, no variability)
    seed = 20170614                  # integer >= 0, seeds the virtual population
    iiv = { treg_baseline = 0.35 }   # optional; replaces DEFAULT_IIV entries (omega = SD of the log)
    outputs = ["csv", "parquet", "png"]   # any of "csv", "parquet", "png", "patients" (all patients, parquet)
    output_step_day = 1.0            # trajectory grid spacing in days, > 0 and <= 7
    ratio_target = 0.29              # optional; Th17/Treg target for "time below target" (default 0.29)
    figures = true                   # optional; false = no PNG for this scenario (scripted runs; the quickest)
    model = "v2_lean"                # optional; the model structure (`tregpd models --brief`); default: the
                                     # default structure. `--model` on the command line overrides it
    bands = ["patients", "median"]   # optional; which bands the outputs carry (default both):
                                     #   "patients": between-patient range, 5-95 % of the virtual patients at
                                     #               the point estimate ("between_patients_5_95")
                                     #   "median": uncertainty of the population median, 5-95 % over parameter
                                     #             draws of the calibrated parameters (parametric bootstrap from
                                     #             the calibration's lmfit covariance), widened to the regimen
                                     #             hypotheses' refits when given ("median_uncertainty_90")
    uncertainty_draws = 30           # optional; parameter draws for the "median" band, 2-1000
    uncertainty_population = 50      # optional; virtual patients per draw (the same patients in every draw:
                                     # common random numbers), capped at `population`
    compare_week = 24                # optional; week at which the comparison table reports values (default:
                                     # 24, or the end if shorter); `--compare-week` overrides it
    report_weeks = [4, 8]            # optional; further weeks at which Treg and the ratio are reported

    [regimen]
    assumption = ""                  # optional, as in Regimen.from_dict

    [[regimen.schedules]]            # zero schedules = untreated
    drug = "il2"                     # "il2" or "sirolimus"
    amount = 0.5
    unit = "MIU"                     # MIU, WIU, IU (IL-2); mg, ug (sirolimus)
    interval_day = 1
    doses_per_course = 5
    n_courses = 6
    course_interval_day = 28
    start_day = 0                    # optional
    stop_day = 168                   # optional; doses at or after this day are dropped (washout after it)
    route = "sc"                     # optional; "sc"/"iv" (IL-2), "oral" (sirolimus)

    [tdm]                            # optional: titrate the sirolimus schedule to a trough window
    window_ng_ml = [6.0, 15.0]       # required; target trough window, ng/mL whole blood
    max_dose_mg = 6.0                # required; highest dose per administration (mg/day if once daily)
    min_dose_mg = 0.5                # optional; default one tablet
    target_ng_ml = 10.5              # optional; trough the proportional rule aims at (default: midpoint)
    rule = "proportional"            # "proportional" (new = old x target / measured, rounded to tablets)
                                     # or "step" (old +/- step_mg); inside the window the dose is kept
    tablet_mg = 0.5                  # optional; doses are multiples of it (default 0.5)
    step_mg = 0.5                    # optional; the step rule's step (default one tablet)
    sampling_every_day = 14          # sampling: every N days from sampling_start_day (default: first dose
    sampling_until_day = 28          #   + N) to sampling_until_day, then every sampling_then_every_day to
    sampling_then_every_day = 28     #   the end; or instead an explicit list: sampling_days = [14, 28, 56]
    result_delay_day = 1             # optional; days from the blood draw to the first changed dose (default 0)
    assay_cv = 0.1                   # optional; log-normal assay error with this CV, seeded (default 0)
    assay_seed = 1                   # optional; default the scenario's seed
    assumption = "..."               # optional; what about the rule is assumed
    source = "..."                   # optional

The ``[tdm]`` table is validated by :func:`tregpd.scenarios.tdm.parse_tdm` (every key, with errors naming the key
and the value); the regimen must then have exactly one sirolimus schedule (its times and starting dose), the
starting dose must be a whole number of tablets within the limits, and at least one sampling day must fall while
it is given. Each virtual patient is titrated on his own PK (:mod:`tregpd.scenarios.tdm`).

The regimen part is validated by :meth:`tregpd.model.Regimen.from_dict` (unknown keys, doses <= 0, overlapping
courses); this module adds the checks that need the scenario's duration: a schedule that starts after the end of
the simulation is an error ("impossible schedule"), one whose courses run past the end is a warning (the doses
after the end have no effect; set ``n_courses`` or ``stop_day`` to say what you mean).
"""
from __future__ import annotations

import math
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from tregpd.model.dosing import Regimen
from tregpd.errors import RegimenError, ScenarioError
from tregpd.model.population import DEFAULT_IIV
from tregpd.safeio import check_memory, check_nesting, load_toml, read_text_file, shorten
from tregpd.model.structures import DEFAULT_MODEL, get_model

from .catalog import QUESTIONS  # defined without heavy imports, for the CLI parser
OUTPUT_KINDS = ("csv", "parquet", "png", "patients")
#: Default Th17/Treg target: the study's week-24 median (seed abstract; FOUNDING DOC).
DEFAULT_RATIO_TARGET = 0.29

_SCENARIO_KEYS = {"name", "description", "source", "assumption", "question", "weeks", "parameters",
                  "population", "seed", "iiv", "outputs", "output_step_day", "ratio_target", "figures", "model"}
#: band / comparison keys (see the module docstring)
_BAND_KEYS = {"bands", "uncertainty_draws", "uncertainty_population", "compare_week", "report_weeks"}
_SCENARIO_KEYS |= _BAND_KEYS
#: the values of ``bands``
BAND_KINDS = ("patients", "median")
_REQUIRED = ("name", "description", "weeks")
#: the whole name (fullmatch): "$" would also accept a trailing newline
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,99}")


class ScenarioWarning(UserWarning):
    """A scenario that runs but probably does not say what its author meant (e.g. doses past the end)."""


@dataclass(frozen=True)
class Scenario:
    """A validated scenario (see the module docstring for the file format).

    Attributes
    ----------
    name, description, source, assumption, question : str
    weeks : float
        Simulated duration in weeks.
    parameters : str
        "default", "fitted" or an absolute path to a parameter TOML.
    population : int
    seed : int
    iiv : dict name -> omega, or None for :data:`tregpd.model.DEFAULT_IIV`
    outputs : tuple of str
    output_step_day : float
    ratio_target : float
    figures : bool
        False: no figure for this scenario, whatever ``outputs`` says (``tregpd scenarios run --no-figures``
        sets it on every scenario).
    regimen : Regimen
    model : str
        Name of the model structure simulated (``tregpd models --brief``).
    path : Path or None
        The file it was read from.
    tdm : :class:`tregpd.scenarios.tdm.TdmRule` or None
        Trough titration of the sirolimus schedule (the ``[tdm]`` table), or None for fixed doses.
    bands : tuple of "patients" / "median"
        Which bands the outputs carry (see the module docstring).
    bands_requested : bool
        True when the file (or ``--bands``) names the bands. The default asks for both, and the runner then
        leaves out the "median" band, with a warning, for a parameter file with no calibrated parameter; a
        requested "median" band is an error there.
    uncertainty_draws, uncertainty_population : int
        Parameter draws and virtual patients per draw of the "median" band.
    compare_week : float or None
        Week of the comparison table's values (None: 24, or the end if shorter; see :meth:`comparison_week`).
    extra_weeks : tuple of float
        The file's ``report_weeks``: further weeks at which Treg and the ratio are reported.
    """

    name: str
    description: str
    weeks: float
    regimen: Regimen
    source: str = ""
    assumption: str = ""
    question: str = ""
    parameters: str = "default"
    population: int = 300
    seed: int = 20170614
    iiv: dict | None = None
    outputs: tuple[str, ...] = ("csv", "parquet", "png")
    output_step_day: float = 1.0
    ratio_target: float = DEFAULT_RATIO_TARGET
    figures: bool = True
    model: str = DEFAULT_MODEL
    path: Path | None = None
    tdm: "TdmRule | None" = None
    bands: tuple[str, ...] = BAND_KINDS
    bands_requested: bool = False
    uncertainty_draws: int = 30
    uncertainty_population: int = 50
    compare_week: float | None = None
    extra_weeks: tuple[float, ...] = ()

    @property
    def t_end_day(self) -> float:
        return self.weeks * 7.0

    def report_weeks(self) -> tuple[float, ...]:
        """Weeks at which the summary reports values: 6, 12, 24 and 48 (those within the duration), the
        comparison week, the file's ``report_weeks`` and the end; sorted."""
        weeks = {w for w in (6.0, 12.0, 24.0, 48.0) if w <= self.weeks + 1e-9}
        weeks |= {self.comparison_week(), float(self.weeks), *self.extra_weeks}
        return tuple(sorted(weeks))

    def comparison_week(self) -> float:
        """The week the comparison table reports values at: ``compare_week`` if set, else 24 (or the end when
        the scenario is shorter); never past the end."""
        w = self.compare_week if self.compare_week is not None else 24.0
        return float(min(w, self.weeks))

    def treatment_end_day(self) -> float:
        """Day after the last dose interval (last dose + its interval), capped at the end; 0 if untreated."""
        ev = self.regimen.events(until_day=self.t_end_day).drug_doses()   # taper levels are not doses
        if len(ev) == 0:
            return 0.0
        last = 0.0
        for s in self.regimen.schedules:
            t = s.dose_times()
            t = t[t < self.t_end_day]
            if t.size:
                last = max(last, float(t[-1]) + (s.interval_day if s.doses_per_course > 1 else 1.0))
        return min(last, self.t_end_day)

    def with_overrides(self, **changes) -> "Scenario":
        """A copy with some fields replaced (re-validated), e.g. a smaller population for a smoke test."""
        d = self.to_dict()
        d["scenario"].update(changes)
        return parse_scenario(d, origin=str(self.path) if self.path else self.name, base_dir=None,
                              _resolved_parameters=self.parameters)

    def to_dict(self) -> dict:
        sc = {"name": self.name, "description": self.description, "source": self.source,
              "assumption": self.assumption, "question": self.question, "weeks": self.weeks,
              "parameters": self.parameters, "population": self.population, "seed": self.seed,
              "outputs": list(self.outputs), "output_step_day": self.output_step_day,
              "ratio_target": self.ratio_target, "figures": self.figures, "model": self.model,
              "uncertainty_draws": self.uncertainty_draws,
              "uncertainty_population": self.uncertainty_population, "report_weeks": list(self.extra_weeks)}
        if self.compare_week is not None:
            sc["compare_week"] = self.compare_week
        if self.bands_requested:
            sc["bands"] = list(self.bands)
        if self.iiv is not None:
            sc["iiv"] = dict(self.iiv)
        reg = self.regimen.to_dict()
        reg.pop("name", None)
        reg.pop("description", None)
        out = {"scenario": sc, "regimen": reg}
        if self.tdm is not None:
            out["tdm"] = self.tdm.to_dict()
        return out


def _err(origin: str, key: str, msg: str) -> ScenarioError:
    return ScenarioError(f"{origin}: [scenario] {key}: {msg}")


def _finite(v) -> bool:
    """math.isfinite that also accepts TOML integers beyond the float range (reported as not finite)."""
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _number(sc: dict, key: str, origin: str, default=None, positive=True) -> float:
    v = sc.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not _finite(v):
        raise _err(origin, key, f"must be a number, got {shorten(v)}")
    if positive and v <= 0:
        raise _err(origin, key, f"must be > 0, got {v!r}")
    return float(v)


def _integer(sc: dict, key: str, origin: str, default, minimum: int) -> int:
    v = sc.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise _err(origin, key, f"must be an integer >= {minimum}, got {shorten(v)}")
    return int(v)


def _string(sc: dict, key: str, origin: str, default="") -> str:
    v = sc.get(key, default)
    if not isinstance(v, str):
        raise _err(origin, key, f"must be a string, got {shorten(v)}")
    return v


def parse_scenario(data: Mapping[str, Any], origin: str = "<scenario>", base_dir: Path | None = None,
                   _resolved_parameters: str | None = None) -> Scenario:
    """Validate a scenario given as a dict (the parsed TOML) and return a :class:`Scenario`.

    Parameters
    ----------
    data : mapping with tables "scenario" and "regimen"
    origin : str
        Name used in error messages (the file path).
    base_dir : Path, optional
        Folder against which a relative ``parameters`` path is resolved (the scenario file's folder).

    Raises
    ------
    ScenarioError
        Naming ``origin``, the key and the bad value. Regimen errors are re-raised as ScenarioError.
    """
    if not isinstance(data, Mapping):
        raise ScenarioError(f"{origin}: a scenario must be a table, got {type(data).__name__}")
    check_nesting(data, origin, error=ScenarioError)
    unknown = sorted(map(str, set(data) - {"scenario", "regimen", "tdm"}))
    if unknown:
        raise ScenarioError(f"{origin}: unknown top-level tables/keys {shorten(unknown)}; allowed: "
                            f"['regimen', 'scenario', 'tdm']")
    if "scenario" not in data:
        raise ScenarioError(f"{origin}: missing the [scenario] table")
    sc = data["scenario"]
    if not isinstance(sc, Mapping):
        raise ScenarioError(f"{origin}: [scenario] must be a table")
    unknown = sorted(map(str, set(sc) - _SCENARIO_KEYS))
    if unknown:
        raise ScenarioError(f"{origin}: [scenario] unknown keys {shorten(unknown)}; allowed: "
                            f"{sorted(_SCENARIO_KEYS)}")
    missing = [k for k in _REQUIRED if k not in sc]
    if missing:
        raise ScenarioError(f"{origin}: [scenario] missing required keys {missing}")

    name = _string(sc, "name", origin)
    if not _NAME_RE.fullmatch(name):
        raise _err(origin, "name", f"must start with a letter or digit and contain only letters, digits, '_' "
                                   f"and '-', at most 100 characters (it names the output folder), got "
                                   f"{shorten(name)}")
    description = _string(sc, "description", origin)
    if not description.strip():
        raise _err(origin, "description", "must not be empty")
    question = _string(sc, "question", origin)
    if question and question not in QUESTIONS:
        raise _err(origin, "question", f"must be one of {sorted(QUESTIONS)}, got {shorten(question)}")
    weeks = _number(sc, "weeks", origin)
    if weeks > 520:
        raise _err(origin, "weeks", f"must be <= 520 (10 years), got {weeks!r}")
    population = _integer(sc, "population", origin, 300, 1)
    if population > 1_000_000:
        raise _err(origin, "population", f"must be <= 1000000 (use `tregpd trial`, which streams patients in "
                                         f"chunks, for larger runs), got {population!r}")
    seed = _integer(sc, "seed", origin, 20170614, 0)
    step = _number(sc, "output_step_day", origin, 1.0)
    if step > 7.0:
        raise _err(origin, "output_step_day", f"must be <= 7 days (the summary needs weekly values), got {step!r}")
    target = _number(sc, "ratio_target", origin, DEFAULT_RATIO_TARGET)
    model = parse_model(sc.get("model", DEFAULT_MODEL), origin)
    n_out = len(model.output_names)
    # work bound before anything is allocated: the runner holds population x grid x N_OUT float64 values
    n_times = math.floor(weeks * 7.0 / step + 1e-9) + 1 + 5     # the grid plus up to 5 report weeks
    check_memory(f"{origin}: [scenario] population {population} with output_step_day {step:g} over "
                 f"{weeks:g} weeks", population, n_times * n_out,
                 "lower population or raise output_step_day, or use `tregpd trial`, which streams patients in "
                 "chunks", error=ScenarioError, detail=f"{n_times} output times x {n_out} outputs")

    params = _string(sc, "parameters", origin, "default")
    if _resolved_parameters is not None:
        params = _resolved_parameters
    elif params not in ("default", "fitted"):
        p = Path(params)
        if not p.is_absolute() and base_dir is not None:
            p = (base_dir / p).resolve()
        if not p.is_file():
            why = "is not a regular file" if p.exists() else "does not exist"
            raise _err(origin, "parameters", f"must be 'default', 'fitted' or an existing parameter file; "
                                             f"{shorten(str(p))} {why}")
        params = str(p)

    iiv = sc.get("iiv")
    if iiv is not None:
        if not isinstance(iiv, Mapping):
            raise _err(origin, "iiv", f"must be a table name = omega, got {shorten(iiv)}")
        known = model.parameter_names
        for k, v in iiv.items():
            # DEFAULT_IIV entries the structure does not read are allowed (sample_population skips them)
            if k not in known and k not in DEFAULT_IIV:
                raise _err(origin, "iiv", f"unknown parameter {shorten(k)} for model {model.name!r}; known: "
                                          f"{', '.join(known)}")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not _finite(v) or v < 0:
                raise _err(origin, "iiv", f"omega of {shorten(k)} must be a number >= 0, got {shorten(v)}")
        merged = dict(DEFAULT_IIV)
        merged.update({k: float(v) for k, v in iiv.items()})
        iiv = merged

    outputs = sc.get("outputs", ["csv", "parquet", "png"])
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
        raise _err(origin, "outputs", f"must be a list of strings, got {shorten(outputs)}")
    bad = [o for o in outputs if o not in OUTPUT_KINDS]
    if bad:
        raise _err(origin, "outputs", f"unknown output kinds {shorten(bad)}; allowed: {list(OUTPUT_KINDS)}")

    figures = sc.get("figures", True)
    if not isinstance(figures, bool):
        raise _err(origin, "figures", f"must be true or false, got {figures!r}")
    band_keys = parse_band_keys(sc, origin, weeks)

    reg_data = data.get("regimen", {})
    if not isinstance(reg_data, Mapping):
        raise ScenarioError(f"{origin}: [regimen] must be a table")
    reg_data = dict(reg_data)
    if "name" in reg_data:
        raise ScenarioError(f"{origin}: [regimen] unknown key 'name' (the regimen takes the scenario's name)")
    if "description" in reg_data:
        raise ScenarioError(f"{origin}: [regimen] unknown key 'description' (describe it in [scenario])")
    try:
        regimen = Regimen.from_dict({"name": name, "description": description, **reg_data},
                                    where=f"{origin}: [regimen]")
    except RegimenError as exc:
        raise ScenarioError(str(exc)) from None
    assumption = _string(sc, "assumption", origin)
    if not regimen.assumption and assumption:
        regimen = Regimen(name=regimen.name, schedules=regimen.schedules, description=regimen.description,
                          assumption=assumption, taper=regimen.taper)

    t_end = weeks * 7.0
    for i, s in enumerate(regimen.schedules):
        where = f"{origin}: [regimen] schedule {i + 1} ({s.drug})"
        if s.start_day >= t_end:
            raise ScenarioError(f"{where}: start_day {s.start_day:g} is at or after the end of the simulation "
                                f"(weeks = {weeks:g} -> day {t_end:g}); no dose would be given")
        if s.stop_day is not None and s.stop_day > t_end + 1e-9:
            warnings.warn(f"{where}: stop_day {s.stop_day:g} is after the end of the simulation (day {t_end:g})",
                          ScenarioWarning, stacklevel=2)
        times = s.dose_times()
        late = int((times >= t_end).sum())
        if late and s.stop_day is None:
            warnings.warn(f"{where}: {late} of {times.size} doses fall at or after the end of the simulation "
                          f"(day {t_end:g}) and are ignored; set n_courses or stop_day", ScenarioWarning,
                          stacklevel=2)

    tdm = None
    if "tdm" in data:
        from .tdm import check_rule_for_regimen, parse_tdm
        tdm = parse_tdm(data["tdm"], origin)
        check_rule_for_regimen(tdm, regimen, t_end, origin)

    return Scenario(name=name, description=description, weeks=weeks, regimen=regimen, tdm=tdm,
                    source=_string(sc, "source", origin), assumption=assumption, question=question,
                    parameters=params, population=population, seed=seed, iiv=iiv, outputs=tuple(outputs),
                    output_step_day=step, ratio_target=target, figures=figures, model=model.name,
                    path=Path(origin) if origin and not origin.startswith("<") else None, **band_keys)


def parse_band_keys(sc: Mapping[str, Any], origin: str, weeks: float) -> dict:
    """Validate the band and comparison keys of a ``[scenario]`` table (``bands``, ``uncertainty_draws``,
    ``uncertainty_population``, ``compare_week``, ``report_weeks``); returns the Scenario fields."""
    bands = sc.get("bands", list(BAND_KINDS))
    if not isinstance(bands, list) or not all(isinstance(b, str) for b in bands):
        raise _err(origin, "bands", f"must be a list of strings, got {shorten(bands)}")
    bad = [b for b in bands if b not in BAND_KINDS]
    if bad:
        raise _err(origin, "bands", f"unknown bands {shorten(bad)}; allowed: {list(BAND_KINDS)}")
    draws = _integer(sc, "uncertainty_draws", origin, 30, 2)
    if draws > 1000:
        raise _err(origin, "uncertainty_draws", f"must be <= 1000, got {draws!r}")
    upop = _integer(sc, "uncertainty_population", origin, 50, 1)
    if upop > 10_000:
        raise _err(origin, "uncertainty_population", f"must be <= 10000, got {upop!r}")
    cw = sc.get("compare_week")
    if cw is not None:
        cw = _number(sc, "compare_week", origin)
        if cw > weeks + 1e-9:
            raise _err(origin, "compare_week", f"must be <= weeks ({weeks:g}), got {cw!r}")
    extra = sc.get("report_weeks", [])
    if not isinstance(extra, list) or not all(not isinstance(w, bool) and isinstance(w, (int, float))
                                              and _finite(w) and 0 < w <= weeks + 1e-9 for w in extra):
        raise _err(origin, "report_weeks", f"must be a list of weeks in (0, weeks = {weeks:g}], got "
                                           f"{shorten(extra)}")
    return {"bands": tuple(dict.fromkeys(bands)), "bands_requested": "bands" in sc,
            "uncertainty_draws": draws, "uncertainty_population": upop,
            "compare_week": cw, "extra_weeks": tuple(sorted({float(w) for w in extra}))}


def parse_model(value, origin: str = "<scenario>"):
    """The model structure named by a scenario's ``model`` key (a ScenarioError listing the known names if
    there is none of that name)."""
    from tregpd.model.structures import models
    if not isinstance(value, str) or value not in models():
        raise _err(origin, "model", f"unknown model structure {shorten(value)}; known: {', '.join(models())}")
    return get_model(value)


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario TOML file (see the module docstring).

    Raises
    ------
    ScenarioError
        If the file is missing, is not valid TOML, or breaks the schema (the message names file and key).
    """
    path = Path(path)
    text = read_text_file(path, "scenario file", error=ScenarioError)
    data = load_toml(text, str(path), error=ScenarioError)
    sc = parse_scenario(data, origin=str(path), base_dir=path.parent)
    object.__setattr__(sc, "path", path)
    return sc


def library_dir() -> Path:
    """Folder of the bundled scenario library (``scenarios/library``)."""
    return Path(__file__).resolve().parent / "library"


def library_paths() -> list[Path]:
    """Paths of every bundled scenario file, sorted by name."""
    return sorted(library_dir().glob("*.toml"))
