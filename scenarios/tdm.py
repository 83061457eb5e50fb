"""Therapeutic drug monitoring (TDM) of sirolimus: titration to a whole-blood trough window, per patient.

A scenario file may carry a ``[tdm]`` table (format in :mod:`tregpd.scenarios.schema`). The regimen's one
sirolimus schedule then gives the dose *times* and the *starting* amount; at each sampling day every virtual
patient's trough is measured (optionally with a seeded assay error) and the patient's own future doses are
changed by the rule. Each patient, with own PK parameters, gets own titration.

How it is simulated (exact, and cheap)
--------------------------------------
The sirolimus PK is linear and does not depend on the cell states in any model structure (the ``c_rapa``
linear-PK block of the declaration), so the trough at a sampling day is a sum over the doses already given
of the dose amount times the impulse response of the block (a sum of exponentials from the eigen-decomposition
of the block's rate matrix, evaluated per patient with numpy). :func:`titrate` walks through the sampling days
once, carrying each patient's modal sums forward (cost: patients x doses x 3 exponentials), and decides each
patient's doses from there. :func:`simulate_titrated` then integrates the whole model once per distinct dose
history (patients with the same titrated doses share one kernel call), with each patient's own event table;
nothing is searched for and nothing is re-integrated per sampling day. The troughs it reports are the same
numbers the integrator's ``c_rapa`` gives at the sampling days (tested to 1e-6 relative).

Timing conventions
------------------
* The trough at sampling day ``d`` is the concentration just before any dose at ``d`` (doses at ``t < d``).
* The new dose applies to the doses at ``t >= d + result_delay_day`` (0: the dose given on the sampling day,
  after the blood draw, is already the new one).
* Assay error: ``measured = true x exp(sigma z)``, ``sigma = sqrt(ln(1 + cv^2))`` (log-normal with median the
  true value and coefficient of variation ``cv``); ``z`` of patient ``i`` comes from
  ``numpy.random.default_rng([seed, i // 1024, ASSAY_STREAM])`` (row ``i % 1024``), so a patient's assay error
  is the same in a scenario population and in a ``tregpd trial`` of any chunking.

Rules (:func:`next_dose`, pure)
-------------------------------
* inside the window ``[low, high]`` (measured, inclusive): keep the dose;
* ``proportional`` (as clinicians do for a linear-PK drug): ``new = old x target / measured``, rounded to the
  tablet strength (``tablet_mg``); if rounding gives back the old dose although the trough is outside the window,
  the dose moves by one tablet in the needed direction;
* ``step``: ``old +/- step_mg`` (below / above the window);
* then clipped to ``[min_dose_mg, max_dose_mg]`` (mg per administration; mg/day for once-daily dosing).

What is an ASSUMPTION in the bundled files (Lai 2018 publishes only the start dose and the window): the
sampling schedule, the rule, the tablet strength, the delay, the limits and the assay error.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields
from typing import Mapping

import numpy as np

from tregpd.errors import ScenarioError, TregpdError
from tregpd.safeio import shorten

RULES = ("proportional", "step")
#: third entry of the assay-error random stream key ``[seed, block, ASSAY_STREAM]`` (distinct from the IIV
#: streams ``[seed, block]`` of :mod:`tregpd.scenarios.trial`)
ASSAY_STREAM = 0x7D3
ASSAY_BLOCK = 1024
#: the dose-compartment drug titrated
DRUG = "sirolimus"
PK_BLOCK = "c_rapa"

#: most sampling days a titration may have (each is a (patients,) column of several arrays)
MAX_SAMPLES = 10_000
#: keys of the ``[tdm]`` table
TDM_KEYS = ("window_ng_ml", "target_ng_ml", "rule", "sampling_days", "sampling_every_day", "sampling_start_day",
            "sampling_until_day", "sampling_then_every_day", "tablet_mg", "step_mg", "min_dose_mg",
            "max_dose_mg", "result_delay_day", "assay_cv", "assay_seed", "assumption", "source")


@dataclass(frozen=True)
class TdmRule:
    """A validated trough-titration rule (build with :func:`parse_tdm`).

    Attributes
    ----------
    window_ng_ml : (low, high)
        Target trough window, ng/mL whole blood.
    target_ng_ml : float
        Trough aimed at by the proportional rule (default the window's midpoint).
    rule : "proportional" or "step"
    sampling_days : tuple of float or None
        Explicit sampling days (days from the start of the simulation); or the periodic form below.
    sampling_every_day, sampling_start_day, sampling_until_day, sampling_then_every_day : float or None
        Periodic sampling: every ``sampling_every_day`` from ``sampling_start_day`` (default: the titrated
        schedule's start + one period) up to ``sampling_until_day`` (inclusive), then every
        ``sampling_then_every_day`` until the end of the simulation (or the schedule's stop).
    tablet_mg, step_mg, min_dose_mg, max_dose_mg : float
        Tablet strength (doses are multiples of it), step of the step rule, dose limits (mg per administration).
    result_delay_day : float
        Days from the blood draw to the first changed dose.
    assay_cv : float
        Coefficient of variation of the trough assay (0 = exact).
    assay_seed : int or None
        Seed of the assay error (None: the scenario's seed).
    assumption, source : str
    """

    window_ng_ml: tuple[float, float]
    max_dose_mg: float
    target_ng_ml: float | None = None
    rule: str = "proportional"
    sampling_days: tuple[float, ...] | None = None
    sampling_every_day: float | None = None
    sampling_start_day: float | None = None
    sampling_until_day: float | None = None
    sampling_then_every_day: float | None = None
    tablet_mg: float = 0.5
    step_mg: float = 0.5
    min_dose_mg: float | None = None
    result_delay_day: float = 0.0
    assay_cv: float = 0.0
    assay_seed: int | None = None
    assumption: str = ""
    source: str = ""

    @property
    def low(self) -> float:
        return self.window_ng_ml[0]

    @property
    def high(self) -> float:
        return self.window_ng_ml[1]

    @property
    def target(self) -> float:
        return self.target_ng_ml if self.target_ng_ml is not None else 0.5 * (self.low + self.high)

    @property
    def min_dose(self) -> float:
        return self.min_dose_mg if self.min_dose_mg is not None else self.tablet_mg

    def to_dict(self) -> dict:
        """The ``[tdm]`` table (None entries left out), as :func:`parse_tdm` reads it."""
        d = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None or (f.name in ("assumption", "source") and v == ""):
                continue
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d

    def sampling_schedule(self, start_day: float, end_day: float) -> np.ndarray:
        """Sampling days strictly after ``start_day`` (the first dose) and before ``end_day``, sorted."""
        if self.sampling_days is not None:
            t = np.asarray(self.sampling_days, dtype=float)
        else:
            every = self.sampling_every_day
            first = self.sampling_start_day if self.sampling_start_day is not None else start_day + every
            until = self.sampling_until_day if self.sampling_until_day is not None else end_day
            n = int(math.floor((min(until, end_day) - first) / every + 1e-9)) + 1
            t = first + every * np.arange(max(n, 0))
            if self.sampling_then_every_day is not None and t.size:
                then = self.sampling_then_every_day
                m = int(math.floor((end_day - t[-1]) / then + 1e-9))
                t = np.concatenate([t, t[-1] + then * np.arange(1, max(m, 0) + 1)])
        t = np.unique(t)
        return t[(t > start_day) & (t < end_day)]


# ------------------------------------------------------------------------------------------------ parsing
def _err(origin: str, key: str, msg: str) -> ScenarioError:
    return ScenarioError(f"{origin}: [tdm] {key}: {msg}")


def _num(table: Mapping, key: str, origin: str, default=None, minimum: float | None = 0.0,
         strict: bool = True, required: bool = False) -> float | None:
    v = table.get(key)
    if v is None:          # absent (or None from a Python dict): the default
        if required:
            raise _err(origin, key, "is required (a number)")
        return None if default is None else float(default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _err(origin, key, f"must be a number, got {shorten(v)}")
    try:
        x = float(v)
    except OverflowError:
        raise _err(origin, key, f"must be finite, got an integer of {len(str(v))} digits") from None
    if not math.isfinite(x):
        raise _err(origin, key, f"must be finite, got {v!r}")
    if minimum is not None and (x <= minimum if strict else x < minimum):
        raise _err(origin, key, f"must be {'>' if strict else '>='} {minimum:g}, got {v!r}")
    return x


def parse_tdm(table, origin: str = "<scenario>") -> TdmRule:
    """Validate a ``[tdm]`` table (see :mod:`tregpd.scenarios.schema`) and return a :class:`TdmRule`.

    Raises
    ------
    ScenarioError
        Naming ``origin``, ``[tdm]``, the key and the bad value.
    """
    if not isinstance(table, Mapping):
        raise ScenarioError(f"{origin}: [tdm] must be a table, got {shorten(table)}")
    unknown = sorted(map(str, set(table) - set(TDM_KEYS)))
    if unknown:
        raise ScenarioError(f"{origin}: [tdm] unknown keys {shorten(unknown)}; allowed: {sorted(TDM_KEYS)}")
    for key in ("window_ng_ml", "max_dose_mg"):
        if key not in table:
            raise ScenarioError(f"{origin}: [tdm] missing required key {key!r}")
    win = table["window_ng_ml"]
    if not isinstance(win, list) or len(win) != 2:
        raise _err(origin, "window_ng_ml", f"must be a list [low, high] in ng/mL, got {shorten(win)}")
    low = _num({"window_ng_ml": win[0]}, "window_ng_ml", origin, required=True)
    high = _num({"window_ng_ml": win[1]}, "window_ng_ml", origin, required=True)
    if not low < high:
        raise _err(origin, "window_ng_ml", f"low must be below high, got {shorten(win)}")
    target = _num(table, "target_ng_ml", origin)
    if target is not None and not low <= target <= high:
        raise _err(origin, "target_ng_ml", f"must lie in the window [{low:g}, {high:g}], got {target!r}")
    rule = table.get("rule", "proportional")
    if not isinstance(rule, str) or rule not in RULES:
        raise _err(origin, "rule", f"must be one of {list(RULES)}, got {shorten(rule)}")

    days = table.get("sampling_days")
    periodic = [k for k in ("sampling_every_day", "sampling_start_day", "sampling_until_day",
                            "sampling_then_every_day") if k in table]
    if days is not None and periodic:
        raise _err(origin, "sampling_days", f"give either sampling_days or the periodic keys, not both (also "
                                            f"given: {periodic})")
    every = start = until = then = None
    if days is not None:
        if not isinstance(days, list) or not days:
            raise _err(origin, "sampling_days", f"must be a non-empty list of days, got {shorten(days)}")
        vals = [_num({"sampling_days": d}, "sampling_days", origin, required=True) for d in days]
        if any(b <= a for a, b in zip(vals, vals[1:])):
            raise _err(origin, "sampling_days", f"must be strictly increasing, got {shorten(days)}")
        if len(vals) > MAX_SAMPLES:
            raise _err(origin, "sampling_days", f"at most {MAX_SAMPLES} sampling days, got {len(vals)}")
        days = tuple(vals)
    else:
        if "sampling_every_day" not in table:
            raise ScenarioError(f"{origin}: [tdm] missing the sampling schedule: give sampling_days = [...] or "
                                f"sampling_every_day (with optional sampling_start_day, sampling_until_day, "
                                f"sampling_then_every_day)")
        every = _num(table, "sampling_every_day", origin, required=True)
        start = _num(table, "sampling_start_day", origin, minimum=0.0, strict=False)
        until = _num(table, "sampling_until_day", origin)
        then = _num(table, "sampling_then_every_day", origin)
        if then is not None and until is None:
            raise _err(origin, "sampling_then_every_day", "needs sampling_until_day (the end of the first phase)")
        if until is not None and start is not None and until < start:
            raise _err(origin, "sampling_until_day", f"must be >= sampling_start_day ({start:g}), got {until!r}")
        for k, v in (("sampling_every_day", every), ("sampling_then_every_day", then)):
            if v is not None and v < 1.0:
                raise _err(origin, k, f"must be >= 1 day (a trough is drawn once per dosing day at most), "
                                      f"got {v!r}")
    tablet = _num(table, "tablet_mg", origin, 0.5)
    step = _num(table, "step_mg", origin, tablet)
    max_dose = _num(table, "max_dose_mg", origin, required=True)
    min_dose = _num(table, "min_dose_mg", origin, tablet)
    if max_dose < min_dose:
        raise _err(origin, "max_dose_mg", f"must be >= min_dose_mg ({min_dose:g}), got {max_dose!r}")
    if max_dose / tablet > 1_000_000:
        raise _err(origin, "max_dose_mg", f"more than 1e6 tablets of {tablet:g} mg, got {max_dose!r}")
    if step > max_dose:
        raise _err(origin, "step_mg", f"must be <= max_dose_mg ({max_dose:g}), got {step!r}")
    for k, v in (("min_dose_mg", min_dose), ("max_dose_mg", max_dose), ("step_mg", step)):
        if abs(v / tablet - round(v / tablet)) > 1e-9:
            raise _err(origin, k, f"must be a multiple of tablet_mg ({tablet:g} mg), got {v!r}")
    delay = _num(table, "result_delay_day", origin, 0.0, strict=False)
    cv = _num(table, "assay_cv", origin, 0.0, strict=False)
    if cv > 2.0:
        raise _err(origin, "assay_cv", f"must be <= 2 (a coefficient of variation, not a percentage), got {cv!r}")
    seed = table.get("assay_seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise _err(origin, "assay_seed", f"must be an integer >= 0, got {shorten(seed)}")
    for k in ("assumption", "source"):
        if not isinstance(table.get(k, ""), str):
            raise _err(origin, k, f"must be a string, got {shorten(table[k])}")
    rule_obj = TdmRule(window_ng_ml=(low, high), target_ng_ml=target, rule=rule, sampling_days=days,
                       sampling_every_day=every, sampling_start_day=start, sampling_until_day=until,
                       sampling_then_every_day=then, tablet_mg=tablet, step_mg=step, min_dose_mg=min_dose,
                       max_dose_mg=max_dose, result_delay_day=delay, assay_cv=cv, assay_seed=seed,
                       assumption=table.get("assumption", ""), source=table.get("source", ""))
    gaps = np.diff(rule_obj.sampling_schedule(-1.0, math.inf)) if days is not None else np.array(
        [x for x in (every, then) if x is not None])
    if gaps.size and delay >= gaps.min():
        raise _err(origin, "result_delay_day", f"must be shorter than the shortest gap between sampling days "
                                               f"({gaps.min():g} d), got {delay!r}")
    return rule_obj


def titrated_schedule(regimen, origin: str = "<scenario>"):
    """(index, schedule) of the one sirolimus schedule of ``regimen`` that the rule titrates."""
    idx = [i for i, s in enumerate(regimen.schedules) if s.drug == DRUG]
    if len(idx) != 1:
        raise ScenarioError(f"{origin}: [tdm] titrates the regimen's sirolimus schedule; the regimen has "
                            f"{len(idx)} sirolimus schedules, need exactly 1")
    return idx[0], regimen.schedules[idx[0]]


def check_rule_for_regimen(rule: TdmRule, regimen, t_end_day: float, origin: str = "<scenario>") -> None:
    """Errors for a rule that cannot apply to ``regimen`` (no sirolimus schedule, no sampling day while on it,
    a starting dose outside the limits or not a whole number of tablets)."""
    _, sched = titrated_schedule(regimen, origin)
    dose = sched.amount_model_units
    if not rule.min_dose - 1e-12 <= dose <= rule.max_dose_mg + 1e-12:
        raise ScenarioError(f"{origin}: [tdm] the starting sirolimus dose {dose:g} mg is outside "
                            f"[min_dose_mg, max_dose_mg] = [{rule.min_dose:g}, {rule.max_dose_mg:g}]")
    if abs(dose / rule.tablet_mg - round(dose / rule.tablet_mg)) > 1e-9:
        raise ScenarioError(f"{origin}: [tdm] the starting sirolimus dose {dose:g} mg is not a multiple of "
                            f"tablet_mg ({rule.tablet_mg:g} mg)")
    times = sched.dose_times()
    end = min(t_end_day, float(sched.stop_day) if sched.stop_day is not None else math.inf)
    n_samples = rule.sampling_schedule(float(times[0]), end).size
    if n_samples > MAX_SAMPLES:
        raise ScenarioError(f"{origin}: [tdm] {n_samples} sampling days until day {end:g}, more than the limit of "
                            f"{MAX_SAMPLES}; sample less often")
    if not n_samples:
        raise ScenarioError(f"{origin}: [tdm] no sampling day falls after the first sirolimus dose (day "
                            f"{times[0]:g}) and before the end of dosing (day {end:g}); nothing would be titrated")


# ------------------------------------------------------------------------------------------------- the rule
def round_to_tablet(dose_mg, tablet_mg: float) -> np.ndarray:
    """Nearest multiple of ``tablet_mg`` (halves rounded up), elementwise."""
    return np.floor(np.asarray(dose_mg, dtype=float) / tablet_mg + 0.5 + 1e-9) * tablet_mg


def next_dose(rule: TdmRule, dose_mg, measured_ng_ml) -> tuple[np.ndarray, np.ndarray]:
    """Next dose (mg) from the current dose and the measured trough, elementwise (pure; see module docstring).

    Parameters
    ----------
    rule : TdmRule
    dose_mg : array_like, shape (n,)
        Current dose per administration, mg.
    measured_ng_ml : array_like, shape (n,)
        Measured trough, ng/mL whole blood (>= 0).

    Returns
    -------
    new_dose : (n,) mg, a multiple of ``tablet_mg`` within the limits
    action : (n,) int8: -1 decreased, 0 kept, +1 increased
    """
    dose = np.asarray(dose_mg, dtype=float)
    c = np.asarray(measured_ng_ml, dtype=float)
    low, high = rule.low, rule.high
    below, above = c < low, c > high
    if rule.rule == "proportional":
        with np.errstate(divide="ignore", invalid="ignore"):
            prop = np.where(c > 0, dose * rule.target / np.where(c > 0, c, 1.0), rule.max_dose_mg)
        new = round_to_tablet(prop, rule.tablet_mg)
        # rounding back to the old dose although out of the window: one tablet in the needed direction
        new = np.where(below & (new <= dose), dose + rule.tablet_mg, new)
        new = np.where(above & (new >= dose), dose - rule.tablet_mg, new)
    else:
        new = np.where(below, dose + rule.step_mg, np.where(above, dose - rule.step_mg, dose))
    new = np.where(below | above, new, dose)
    new = np.clip(new, rule.min_dose, rule.max_dose_mg)
    new = round_to_tablet(new, rule.tablet_mg)       # clean multiples (no 1.4999999)
    action = np.sign(np.round(new - dose, 9)).astype(np.int8)
    return new, action


def assay_factors(seed: int, patient_ids, n_samples: int, cv: float) -> np.ndarray:
    """Multiplicative assay errors, shape (n_patients, n_samples): ``exp(sigma z)``, sigma from ``cv`` (ones if
    cv is 0). Patient ``i`` always gets the same factors for a given seed (see module docstring)."""
    ids = np.asarray(patient_ids, dtype=np.int64)
    if cv == 0 or ids.size == 0 or n_samples == 0:
        return np.ones((ids.size, n_samples))
    sigma = math.sqrt(math.log1p(cv * cv))
    z = np.empty((ids.size, n_samples))
    blocks = ids // ASSAY_BLOCK
    for b in np.unique(blocks):
        rows = np.random.default_rng([int(seed), int(b), ASSAY_STREAM]).standard_normal((ASSAY_BLOCK, n_samples))
        m = blocks == b
        z[m] = rows[ids[m] % ASSAY_BLOCK]
    return np.exp(sigma * z)


# ------------------------------------------------------------------------------------ sirolimus closed form
def _pk_block(model):
    from tregpd.model.structures import get_model
    m = get_model(model)
    block = next((b for b in m.pk if b.name == PK_BLOCK), None)
    dose = next((d for d in m.doses if d.drug == DRUG), None)
    if block is None or dose is None or dose.target not in block.compartments:
        raise TregpdError(f"model {m.name!r}: trough titration needs sirolimus as a linear PK block "
                          f"{PK_BLOCK!r} dosed by CMT 3; this structure has none")
    return m, block, dose


def _eval(expr: str, scope: dict, model_name: str) -> np.ndarray:
    try:  # declaration expressions (package code, not user input) over per-patient parameter columns
        return np.asarray(eval(compile(expr, "<declaration>", "eval"), {"__builtins__": {}}, scope), float)
    except NameError as exc:
        raise TregpdError(f"model {model_name!r}: sirolimus PK expression {expr!r} uses a quantity that is not a "
                          f"parameter ({exc}); trough titration cannot evaluate it") from None


def sirolimus_modes(theta: np.ndarray, model=None) -> tuple[np.ndarray, np.ndarray]:
    """Impulse response of the sirolimus concentration per patient as a sum of exponentials.

    ``c(tau) = sum_j coef[:, j] * exp(lam[:, j] * tau)`` ng/mL after 1 mg given orally at ``tau = 0``.

    Parameters
    ----------
    theta : (n, n_parameters) kernel-unit parameters (rates per day) of model structure ``model``

    Returns
    -------
    lam : (n, k) eigenvalues of the block's rate matrix, 1/day (k = compartments of the block, 3)
    coef : (n, k) ng/mL per mg
    """
    m, block, dose = _pk_block(model)
    theta = np.atleast_2d(np.asarray(theta, dtype=float))
    n = theta.shape[0]
    scope = {name: theta[:, j] for j, name in enumerate(m.parameter_names)}
    comp = list(block.compartments)
    k = len(comp)
    K = np.zeros((n, k, k))
    for (src, dst), expr in block.rates.items():
        rate = np.broadcast_to(_eval(expr, scope, m.name), (n,))
        i = comp.index(src)
        K[:, i, i] -= rate
        if dst is not None:
            K[:, comp.index(dst), i] += rate
    lam, vec = np.linalg.eig(K)
    if np.iscomplexobj(lam) and np.abs(lam.imag).max() > 1e-12 * np.abs(lam).max():
        raise TregpdError(f"model {m.name!r}: the sirolimus rate matrix has complex eigenvalues")
    lam, vec = lam.real, vec.real
    ls = np.sort(lam, axis=1)
    gap = np.abs(np.diff(ls, axis=1)) / np.maximum(np.abs(ls[:, 1:]), 1e-300)
    bad = np.flatnonzero(gap.min(axis=1) < 1e-7)
    if bad.size:
        raise TregpdError(f"patient {bad[0]}: two sirolimus PK rate constants coincide ({ls[bad[0]]} per day); "
                          f"the modal closed form of the trough is ill-conditioned there")
    inv = np.linalg.inv(vec)
    g, c = comp.index(dose.target), comp.index(block.observed)
    f = 1.0 if dose.bioavailability is None else np.broadcast_to(_eval(dose.bioavailability, scope, m.name), (n,))
    if dose.potency is not None:
        f = f * np.broadcast_to(_eval(dose.potency, scope, m.name), (n,))
    scale = np.broadcast_to(_eval(block.concentration, {**scope, "amount": 1.0}, m.name), (n,))
    coef = (vec[:, c, :] * inv[:, :, g]) * (np.asarray(f) * scale)[:, None]
    return lam, coef


# ----------------------------------------------------------------------------------------------- titration
@dataclass
class Titration:
    """Per-patient titration of one population (output of :func:`titrate`).

    Attributes
    ----------
    rule : TdmRule
    regimen : Regimen (the base regimen; its sirolimus schedule gives times and the starting dose)
    schedule_index : int
    patient_ids : (n,) int
    sample_day : (S,) sampling days
    effective_day : (S,) first dose day of each new dose (sample day + delay)
    start_dose : float, mg
    dose_before, dose_after : (n, S) mg per administration
    trough_true, trough_measured : (n, S) ng/mL whole blood
    action : (n, S) int8 (-1, 0, +1)
    dose_times : (m,) sirolimus dose days within the simulation
    t_end_day : float
    """

    rule: TdmRule
    regimen: object
    schedule_index: int
    patient_ids: np.ndarray
    sample_day: np.ndarray
    effective_day: np.ndarray
    start_dose: float
    dose_before: np.ndarray
    dose_after: np.ndarray
    trough_true: np.ndarray
    trough_measured: np.ndarray
    action: np.ndarray
    dose_times: np.ndarray
    t_end_day: float

    @property
    def n_patients(self) -> int:
        return self.patient_ids.size

    def subset(self, rows) -> "Titration":
        """The titration of some patients only (``rows``: a slice, index array or mask)."""
        from dataclasses import replace
        return replace(self, patient_ids=self.patient_ids[rows], dose_before=self.dose_before[rows],
                       dose_after=self.dose_after[rows], trough_true=self.trough_true[rows],
                       trough_measured=self.trough_measured[rows], action=self.action[rows])

    def segment_doses(self) -> np.ndarray:
        """(n, S + 1) dose per administration in each segment: before the first change, then after each."""
        return np.column_stack([np.full(self.n_patients, self.start_dose), self.dose_after])

    def dose_amounts(self, rows=None) -> np.ndarray:
        """(n, m) amount (mg) of every sirolimus dose of every patient (or of the ``rows`` given)."""
        seg = np.searchsorted(self.effective_day, self.dose_times, side="right")
        doses = self.segment_doses()
        return (doses if rows is None else doses[rows])[:, seg]

    def cumulative_dose(self) -> np.ndarray:
        """(n,) total sirolimus mg given within the simulation, per patient."""
        return self.dose_amounts().sum(axis=1)

    def events_for(self, segment_doses: np.ndarray):
        """The regimen's event table (within the simulation) with the sirolimus amounts of one dose history
        (``segment_doses``: (S + 1,) mg per administration); other events (IL-2, prednisone levels) unchanged."""
        from tregpd.model.dosing import EventTable
        ev, rapa, seg = self._base_events
        amount = np.array(ev.amount)
        amount[rapa] = np.asarray(segment_doses, dtype=float)[seg]
        return EventTable(ev.time_day, ev.cmt, amount)

    @functools.cached_property
    def _base_events(self):
        """(regimen events within the simulation, rows of the sirolimus doses, their segment index)."""
        from tregpd.model.dosing import CMT_RAPA_GUT
        ev = self.regimen.events(until_day=self.t_end_day)
        rapa = np.flatnonzero(ev.cmt == CMT_RAPA_GUT)
        return ev, rapa, np.searchsorted(self.effective_day, ev.time_day[rapa], side="right")

    def records_frame(self, scenario: str = ""):
        """Tidy per-patient titration records: one row per patient and sampling day.

        Columns: scenario, patient, day, dose_before_mg, trough_ng_ml (true), measured_ng_ml, in_window
        (measured), action (increase/decrease/keep), dose_after_mg, effective_day. A first row per patient at
        the first dose day gives the starting dose (action "start")."""
        import pandas as pd
        n, S = self.dose_before.shape
        first = float(self.dose_times[0]) if self.dose_times.size else 0.0
        names = np.array(["decrease", "keep", "increase"])
        start = pd.DataFrame({"scenario": scenario, "patient": self.patient_ids, "day": first,
                              "dose_before_mg": np.nan, "trough_ng_ml": np.nan, "measured_ng_ml": np.nan,
                              "in_window": pd.array([pd.NA] * n, dtype="boolean"), "action": "start",
                              "dose_after_mg": self.start_dose, "effective_day": first})
        meas = self.trough_measured
        samples = pd.DataFrame({
            "scenario": scenario, "patient": np.repeat(self.patient_ids, S), "day": np.tile(self.sample_day, n),
            "dose_before_mg": self.dose_before.ravel(), "trough_ng_ml": self.trough_true.ravel(),
            "measured_ng_ml": meas.ravel(),
            "in_window": pd.array(((meas >= self.rule.low) & (meas <= self.rule.high)).ravel(), dtype="boolean"),
            "action": names[self.action.ravel().astype(int) + 1], "dose_after_mg": self.dose_after.ravel(),
            "effective_day": np.tile(self.effective_day, n)})
        df = pd.concat([start, samples], ignore_index=True)
        return df.sort_values(["patient", "day"], kind="stable").reset_index(drop=True)

    def summary_frame(self, scenario: str = "", ok=None):
        """Tidy summary per sampling day: scenario, day, quantity, statistic, value, unit.

        Quantities: ``trough`` (true; median, p05, p95), ``measured_trough`` (same), ``dose_after`` (median,
        p05, p95, mean), ``in_window`` (fraction of measured troughs in the window), ``in_window_true``
        (fraction of true troughs), ``below_window``/``above_window`` (measured), ``changed`` (fraction of
        doses changed). ``ok``: optional (n,) mask of patients to include (successful integrations)."""
        import pandas as pd
        m = np.ones(self.n_patients, bool) if ok is None else np.asarray(ok, bool)
        rows = []
        lo, hi = self.rule.low, self.rule.high
        for s, day in enumerate(self.sample_day):
            tr, me, do = self.trough_true[m, s], self.trough_measured[m, s], self.dose_after[m, s]
            if tr.size == 0:
                continue

            def pct(x):
                return {"median": np.median(x), "p05": np.percentile(x, 5), "p95": np.percentile(x, 95)}
            for q, x, unit in (("trough", tr, "ng/mL"), ("measured_trough", me, "ng/mL"), ("dose_after", do, "mg")):
                for stat, v in pct(x).items():
                    rows.append((scenario, float(day), q, stat, float(v), unit))
            rows.append((scenario, float(day), "dose_after", "mean", float(do.mean()), "mg"))
            for q, frac in (("in_window", ((me >= lo) & (me <= hi)).mean()),
                            ("in_window_true", ((tr >= lo) & (tr <= hi)).mean()),
                            ("below_window", (me < lo).mean()), ("above_window", (me > hi).mean()),
                            ("changed", (self.action[m, s] != 0).mean())):
                rows.append((scenario, float(day), q, "fraction", float(frac), "1"))
        return pd.DataFrame(rows, columns=["scenario", "day", "quantity", "statistic", "value", "unit"])

    def final_dose_frame(self, scenario: str = "", ok=None):
        """Distribution of the final dose: scenario, dose_mg, patients, fraction (one row per dose level)."""
        import pandas as pd
        m = np.ones(self.n_patients, bool) if ok is None else np.asarray(ok, bool)
        final = self.segment_doses()[m, -1]
        levels, counts = np.unique(np.round(final, 9), return_counts=True)
        return pd.DataFrame({"scenario": scenario, "dose_mg": levels, "patients": counts,
                             "fraction": counts / max(final.size, 1)})


def titrate(theta: np.ndarray, regimen, rule: TdmRule, t_end_day: float, seed: int = 0, patient_ids=None,
            model=None) -> Titration:
    """Titrate every patient's sirolimus dose to the trough window (closed-form troughs; see module docstring).

    Parameters
    ----------
    theta : (n, n_parameters) kernel-unit parameters of model structure ``model``
    regimen : Regimen with exactly one sirolimus schedule (dose times and starting dose)
    rule : TdmRule
    t_end_day : end of the simulation, days (doses and samples at or after it are ignored)
    seed : assay-error seed when ``rule.assay_seed`` is None
    patient_ids : (n,) global patient indices (assay-error streams); default ``arange(n)``

    Returns
    -------
    Titration
    """
    theta = np.atleast_2d(np.asarray(theta, dtype=float))
    n = theta.shape[0]
    ids = np.arange(n) if patient_ids is None else np.asarray(patient_ids, dtype=np.int64)
    k, sched = titrated_schedule(regimen, "titrate")
    check_rule_for_regimen(rule, regimen, t_end_day, "titrate")
    times = sched.dose_times()
    times = times[times < t_end_day]
    end = min(t_end_day, float(sched.stop_day) if sched.stop_day is not None else math.inf)
    samples = rule.sampling_schedule(float(times[0]), end)
    eff = samples + rule.result_delay_day
    S = samples.size
    start = float(sched.amount_model_units)
    lam, coef = sirolimus_modes(theta, model)
    factors = assay_factors(rule.assay_seed if rule.assay_seed is not None else seed, ids, S, rule.assay_cv)
    segments = np.empty((n, S + 1))
    segments[:, 0] = start
    before = np.empty((n, S))
    true = np.empty((n, S))
    action = np.zeros((n, S), np.int8)
    modal = np.zeros_like(lam)            # sum over given doses of amount * exp(lam (t - t_k)), at t_prev
    t_prev, i = 0.0, 0
    for s, day in enumerate(samples):
        j = int(np.searchsorted(times, day, side="left"))           # doses at t < day
        modal *= np.exp(lam * (day - t_prev))
        if j > i:
            tk = times[i:j]
            seg = np.searchsorted(eff, tk, side="right")            # <= s: decided already
            amounts = segments[:, seg]                              # (n, j - i)
            modal += np.einsum("nm,nkm->nk", amounts, np.exp(lam[:, :, None] * (day - tk)[None, None, :]))
        t_prev, i = day, j
        true[:, s] = np.maximum((modal * coef).sum(axis=1), 0.0)
        current = segments[:, s]
        before[:, s] = current
        segments[:, s + 1], action[:, s] = next_dose(rule, current, true[:, s] * factors[:, s])
    return Titration(rule=rule, regimen=regimen, schedule_index=k, patient_ids=ids, sample_day=samples,
                     effective_day=eff, start_dose=start, dose_before=before, dose_after=segments[:, 1:],
                     trough_true=true, trough_measured=true * factors, action=action, dose_times=times,
                     t_end_day=float(t_end_day))


def simulate_titrated(theta: np.ndarray, titration: Titration, t_out, *, parallel: bool = True,
                      model=None, parameters=None, seed=None, options=None, patient_ids=None):
    """Simulate each patient on his own titrated doses (one kernel call per distinct dose history).

    Returns a :class:`tregpd.model.simulate.SimulationResult` over all patients in the order of ``theta``
    (failures recorded in ``status``, as ``simulate_population(on_failure="keep")``).
    """
    from tregpd.model.simulate import SimulationResult, SolverOptions, simulate_population, validate_times
    theta = np.atleast_2d(np.asarray(theta, dtype=float))
    n = theta.shape[0]
    t_out = validate_times(t_out)
    ids = np.arange(n) if patient_ids is None else np.asarray(patient_ids)
    histories, inverse = np.unique(titration.segment_doses(), axis=0, return_inverse=True)
    inverse = np.asarray(inverse).ravel()
    order = np.argsort(inverse, kind="stable")
    splits = np.flatnonzero(np.diff(inverse[order])) + 1
    out = status = t_reached = steps = None
    m_name = None
    for g, rows in zip(range(histories.shape[0]), np.split(order, splits)):
        part = simulate_population(theta[rows], events=titration.events_for(histories[g]), t_out=t_out,
                                   parallel=parallel, on_failure="keep", model=model, options=options)
        if out is None:
            out = np.zeros((n,) + part.values.shape[1:])
            status = np.zeros(n, dtype=part.status.dtype)
            t_reached = np.zeros(n)
            steps = np.zeros(n, dtype=part.steps.dtype)
            m_name = part.model
        out[rows], status[rows], t_reached[rows], steps[rows] = part.values, part.status, part.t_reached_day, \
            part.steps
    return SimulationResult(t_out, out, status, t_reached, steps, ids, titration.regimen, parameters, seed,
                            options if options is not None else SolverOptions(), theta, m_name)


def n_histories(titration: Titration) -> int:
    """Number of distinct dose histories (= kernel calls of :func:`simulate_titrated`)."""
    return int(np.unique(titration.segment_doses(), axis=0).shape[0])


__all__ = ["TdmRule", "Titration", "parse_tdm", "next_dose", "round_to_tablet", "assay_factors",
           "sirolimus_modes", "titrate", "simulate_titrated", "check_rule_for_regimen", "titrated_schedule",
           "n_histories", "RULES", "TDM_KEYS"]

