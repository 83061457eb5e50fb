"""SBML export of the model and a regimen, for COPASI, tellurium/libroadrunner and other SBML tools.

:func:`to_sbml` writes one self-contained SBML Level 3 Version 2 document:

* the 8-state ODE with the PK as ODE states (the ``pk="ode"`` form of :mod:`tregpd.model.kernels`)::

      il2_depot, il2_central [IU]; rapa_gut, rapa_central, rapa_periph [mg]; naive, treg, th17 [cells/uL]

  as rate rules on non-constant global parameters (no compartments or species: the amounts are not
  concentrations in one volume, and rate rules keep the equations one-to-one with the kernels);
* every model parameter as a constant global parameter in the kernel's units (time in **days**; per-hour
  values of ``parameters.toml`` are multiplied by 24), with the unit in its ``name``, an SBML unit
  definition where the unit is expressible in SBML base units, and the value, unit, source, status and
  fitted flag of the parameter file in its ``notes``;
* the baseline-balancing rates (naive supply, Treg and Th17 death) as initial assignments computed from the
  baseline parameters, and the initial cell counts as initial assignments to the baselines, so changing a
  baseline in the SBML tool keeps the untreated model at steady state, as in tregpd;
* the signals and concentrations (``c_il2`` [pM], ``c_rapa`` [ng/mL], ``s_r``, ``s_e``, ``i_m``, ``ratio``)
  as assignment rules;
* each dose as an SBML event at its dose time (bolus into the depot, IL-2 s.c. scaled by bioavailability;
  IL-2 i.v. into the central compartment; sirolimus into the gut).

>>> from tregpd.model import default_parameters, reference_regimen
>>> from tregpd.model.sbml import to_sbml
>>> xml = to_sbml(default_parameters(), reference_regimen(), path="out/tregpd_reference.xml")  # doctest: +SKIP

Requires ``python-libsbml`` (``pip install tregpd[test]`` or ``[bench]``).
"""
from __future__ import annotations

from pathlib import Path

from .dosing import CMT_GC_LEVEL, CMT_IL2_CENTRAL, CMT_IL2_DEPOT, CMT_RAPA_GUT, Regimen
from .errors import TregpdError
from .parameters import PARAMETER_NAMES, ParameterSet, _PER_DAY

#: ODE states in order: (id, unit in the kernel, description)
STATES = (
    ("il2_depot", "IU", "IL-2 amount at the s.c. injection site"),
    ("il2_central", "IU", "IL-2 amount in the central compartment"),
    ("rapa_gut", "mg", "sirolimus amount in the gut (oral dose, not yet absorbed)"),
    ("rapa_central", "mg", "sirolimus amount in the central compartment"),
    ("rapa_periph", "mg", "sirolimus amount in the peripheral compartment"),
    ("naive", "cells/uL", "naive CD4+ T cells"),
    ("treg", "cells/uL", "regulatory T cells (CD4+CD25+Foxp3+)"),
    ("th17", "cells/uL", "Th17 cells"),
)

#: dosing compartment -> state receiving the dose
DOSE_TARGET = {CMT_IL2_DEPOT: "il2_depot", CMT_IL2_CENTRAL: "il2_central", CMT_RAPA_GUT: "rapa_gut"}

#: kernel unit -> SBML unit definition id and its base-unit decomposition (kind, exponent, scale, multiplier)
_UNITS = {
    "day": ("day", [("second", 1, 0, 86400.0)]),
    "1/day": ("per_day", [("second", -1, 0, 86400.0)]),
    "L/day": ("litre_per_day", [("litre", 1, 0, 1.0), ("second", -1, 0, 86400.0)]),
    "L": ("litre", None),
    "1": ("dimensionless", None),
    "pM": ("picomolar", [("mole", 1, -12, 1.0), ("litre", -1, 0, 1.0)]),
    "ng/mL": ("ng_per_mL", [("gram", 1, -9, 1.0), ("litre", -1, -3, 1.0)]),
    "mg": ("milligram", [("gram", 1, -3, 1.0)]),
    "mg/day": ("mg_per_day", [("gram", 1, -3, 1.0), ("second", -1, 0, 86400.0)]),
    "cells/uL": ("cells_per_uL", [("item", 1, 0, 1.0), ("litre", -1, -6, 1.0)]),
    "cells/uL/day": ("cells_per_uL_per_day", [("item", 1, 0, 1.0), ("litre", -1, -6, 1.0),
                                              ("second", -1, 0, 86400.0)]),
    # IU is not an SI quantity: kept dimensionless, named in the parameter/state name
    "IU": ("dimensionless", None),
    "pmol/IU": ("picomole", [("mole", 1, -12, 1.0)]),
    "pM*day": ("picomolar_day", [("mole", 1, -12, 1.0), ("litre", -1, 0, 1.0), ("second", 1, 0, 86400.0)]),
}

_KERNEL_UNIT = {"1/h": "1/day", "L/h": "L/day"}

#: derived parameters (initial assignments), as in kernels.derive
DERIVED = (
    ("naive_supply", "cells/uL/day", "(naive_death + naive_to_treg + naive_to_th17) * naive_baseline",
     "naive supply that keeps the untreated model at baseline"),
    ("treg_death", "1/day",
     "(naive_to_treg * naive_baseline + treg_proliferation * treg_baseline)"
     " / (treg_baseline * (1 + treg_baseline / treg_crowding))",
     "Treg death rate at low density that keeps the untreated model at baseline"),
    ("th17_death", "1/day",
     "(naive_to_th17 * naive_baseline / th17_baseline + th17_proliferation / (1 + treg_baseline / treg_suppression))"
     " / (1 + th17_baseline / th17_crowding)",
     "Th17 death rate that keeps the untreated model at baseline"),
)

#: assignment rules (id, unit, formula, description), in evaluation order
RULES = (
    ("c_il2", "pM", "il2_central * il2_pmol_per_iu / il2_v", "IL-2 plasma concentration"),
    ("c_rapa", "ng/mL", "1000 * rapa_central / rapa_vc", "sirolimus whole-blood concentration"),
    ("s_r", "1", "c_il2 / (c_il2 + il2_ec50_treg)", "IL-2 signal via the high-affinity receptor (Treg)"),
    ("s_e", "1", "c_il2 / (c_il2 + il2_ec50_effector)", "IL-2 signal via the intermediate receptor"),
    ("i_m", "1", "c_rapa / (c_rapa + rapa_ic50)", "mTOR inhibition by sirolimus"),
    ("induction", "1/day", "naive_to_treg * (1 + rapa_emax_treg_induction * i_m)", "naive -> Treg induction"),
    ("differentiation", "1/day",
     "naive_to_th17 * (1 - il2_imax_th17_diff * s_e) * (1 - rapa_imax_th17_diff * i_m)",
     "naive -> Th17 differentiation"),
    ("gc_factor", "1",
     "(1 - gc_imax_th17 * gc_level / (gc_level + gc_ec50))"
     " / (1 - gc_imax_th17 * gc_baseline_dose / (gc_baseline_dose + gc_ec50))",
     "glucocorticoid factor on Th17 proliferation (1 at the baseline prednisone dose)"),
    ("ratio", "1", "th17 / treg", "Th17/Treg ratio"),
)

#: rate rules (state id -> formula), per day
RATES = {
    "il2_depot": "-il2_ka * il2_depot",
    "il2_central": "il2_ka * il2_depot - il2_cl / il2_v * il2_central",
    "rapa_gut": "-rapa_ka * rapa_gut",
    "rapa_central": "rapa_ka * rapa_gut - (rapa_cl + rapa_q) / rapa_vc * rapa_central"
                    " + rapa_q / rapa_vp * rapa_periph",
    "rapa_periph": "rapa_q / rapa_vc * rapa_central - rapa_q / rapa_vp * rapa_periph",
    "naive": "naive_supply - (naive_death + induction + differentiation) * naive",
    "treg": "induction * naive + treg_proliferation * (1 + il2_emax_treg * s_r) * treg"
            " - treg_death * treg * (1 + treg / treg_crowding)",
    "th17": "differentiation * naive + th17_proliferation * gc_factor * (1 + il2_emax_th17 * s_e)"
            " * (1 - rapa_imax_th17_prolif * i_m) * th17 / (1 + treg / treg_suppression)"
            " - th17_death * th17 * (1 + th17 / th17_crowding)",
}


def _libsbml():
    try:
        import libsbml
    except ImportError:  # pragma: no cover - exercised only without the optional dependency
        raise TregpdError("SBML export needs python-libsbml: pip install 'tregpd[test]' "
                          "(or pip install python-libsbml)") from None
    return libsbml


def _check(code, what):
    libsbml = _libsbml()
    if code != libsbml.LIBSBML_OPERATION_SUCCESS:
        raise TregpdError(f"SBML export: libsbml failed to {what}: "
                          f"{libsbml.OperationReturnValue_toString(code)}")


def _notes(text: str) -> str:
    esc = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f'<body xmlns="http://www.w3.org/1999/xhtml"><p>{esc}</p></body>'


def _math(formula: str, where: str):
    libsbml = _libsbml()
    ast = libsbml.parseL3Formula(formula)
    if ast is None:
        raise TregpdError(f"SBML export: cannot parse the formula of {where}: {formula!r} "
                          f"({libsbml.getLastParseL3Error()})")
    return ast


def _unit_id(model, unit: str):
    """Create (once) and return the SBML unit id for a kernel unit string, or None if not expressible."""
    libsbml = _libsbml()
    if unit not in _UNITS:
        return None
    uid, parts = _UNITS[unit]
    if parts is None or model.getUnitDefinition(uid) is not None:
        return uid
    ud = model.createUnitDefinition()
    _check(ud.setId(uid), f"set unit id {uid}")
    ud.setName(unit)
    for kind, exponent, scale, multiplier in parts:
        u = ud.createUnit()
        u.setKind(libsbml.UnitKind_forName(kind))
        u.setExponent(exponent)
        u.setScale(scale)
        u.setMultiplier(multiplier)
    return uid


def _parameter(model, pid, value, unit, name, constant=True, notes=None):
    par = model.createParameter()
    _check(par.setId(pid), f"set parameter id {pid}")
    par.setName(f"{name} [{unit}]" if unit else name)
    if value is not None:
        par.setValue(float(value))
    par.setConstant(constant)
    uid = _unit_id(model, unit)
    if uid is not None:
        par.setUnits(uid)
    if notes:
        _check(par.setNotes(_notes(notes)), f"set notes of {pid}")
    return par


def build_document(parameters: ParameterSet, regimen: Regimen, model_id: str = "tregpd"):
    """Build the libsbml ``SBMLDocument`` (see the module docstring). Raises TregpdError on bad input."""
    libsbml = _libsbml()
    if not isinstance(parameters, ParameterSet):
        raise TregpdError(f"to_sbml: 'parameters' must be a ParameterSet, got {type(parameters).__name__}")
    if not isinstance(regimen, Regimen):
        raise TregpdError(f"to_sbml: 'regimen' must be a Regimen, got {type(regimen).__name__}")
    events = regimen.events()
    doc = libsbml.SBMLDocument(3, 2)
    model = doc.createModel()
    _check(model.setId(model_id), "set the model id")
    model.setName(f"tregpd Th17/Treg PK/PD model, regimen {regimen.name}")
    from .. import __version__
    _check(model.setNotes(_notes(
        f"Exported by tregpd {__version__}. Time unit: day. Parameter set: {parameters.name}. "
        f"Regimen: {regimen.name} ({regimen.description}). {regimen.assumption} "
        "PK as ODE states; each dose is an event at its dose time. Per-hour parameters of the tregpd "
        "parameter file are given here per day (x 24).")), "set model notes")
    model.setTimeUnits(_unit_id(model, "day"))

    theta = parameters.to_theta()
    for i, name in enumerate(PARAMETER_NAMES):
        prm = parameters[name]
        unit = _KERNEL_UNIT.get(prm.unit, prm.unit)
        note = (f"{name}: {prm.value} {prm.unit} in the tregpd parameter file"
                + (f" (= {theta[i]} {unit})" if prm.unit in _PER_DAY else "")
                + f"; bounds [{prm.lower}, {prm.upper}] {prm.unit}; fitted: {str(prm.fitted).lower()}; "
                f"status: {prm.status}; source: {prm.source}")
        _parameter(model, name, theta[i], unit, name, notes=note)
    for pid, unit, formula, desc in DERIVED:
        _parameter(model, pid, None, unit, desc)
        ia = model.createInitialAssignment()
        ia.setSymbol(pid)
        _check(ia.setMath(_math(formula, pid)), f"set the initial assignment of {pid}")
    for sid, unit, desc in STATES:
        _parameter(model, sid, 0.0, unit, desc, constant=False)
    for sid, base in (("naive", "naive_baseline"), ("treg", "treg_baseline"), ("th17", "th17_baseline")):
        model.getParameter(sid).unsetValue()
        ia = model.createInitialAssignment()
        ia.setSymbol(sid)
        _check(ia.setMath(_math(base, sid)), f"set the initial value of {sid}")
    _parameter(model, "gc_level", None, "mg/day",
               "background prednisone-equivalent dose (set by taper events; CMT 9)", constant=False)
    ia = model.createInitialAssignment()
    ia.setSymbol("gc_level")
    _check(ia.setMath(_math("gc_baseline_dose", "gc_level")), "set the initial value of gc_level")
    for rid, unit, formula, desc in RULES:
        _parameter(model, rid, None, unit, desc, constant=False)
        rule = model.createAssignmentRule()
        rule.setVariable(rid)
        _check(rule.setMath(_math(formula, rid)), f"set the assignment rule of {rid}")
    for sid, _, _ in STATES:
        rule = model.createRateRule()
        rule.setVariable(sid)
        _check(rule.setMath(_math(RATES[sid], sid)), f"set the rate rule of {sid}")

    for k, (t, cmt, amt) in enumerate(zip(events.time_day, events.cmt, events.amount)):
        is_level = int(cmt) == CMT_GC_LEVEL
        target = "gc_level" if is_level else DOSE_TARGET[int(cmt)]
        ev = model.createEvent()
        _check(ev.setId(f"dose_{k + 1}"), "set an event id")
        ev.setName(f"prednisone level {amt:g} mg/day from day {t:g}" if is_level else
                   f"dose {k + 1}: {amt:g} {'IU' if target.startswith('il2') else 'mg'} into {target} "
                   f"at day {t:g}")
        ev.setUseValuesFromTriggerTime(True)
        trig = ev.createTrigger()
        trig.setInitialValue(False)   # fires at t = 0 for a dose at time 0
        trig.setPersistent(True)
        _check(trig.setMath(_math(f"time >= {float(t)!r}", f"dose {k + 1}")), "set an event trigger")
        ea = ev.createEventAssignment()
        ea.setVariable(target)
        scale = " * il2_bioavailability" if int(cmt) == CMT_IL2_DEPOT else ""
        value = f"{float(amt)!r}" if is_level else f"{target} + {float(amt)!r}{scale}"
        _check(ea.setMath(_math(value, f"dose {k + 1}")),
               "set an event assignment")
    return doc


def to_sbml(parameters: ParameterSet, regimen: Regimen, path: str | Path | None = None) -> str:
    """Export the model with ``parameters`` and the doses of ``regimen`` as SBML L3V2 text.

    Parameters
    ----------
    parameters : ParameterSet
    regimen : Regimen
        Its doses become SBML events (simulate from time 0 to see them all).
    path : str or Path, optional
        If given, the document is also written there atomically.

    Returns
    -------
    str
        The SBML document. Time is in days; states and outputs as listed in :data:`STATES` and
        :data:`RULES`; simulate e.g. ``roadrunner.RoadRunner(xml).simulate(0, 168, 169, ["time", "treg",
        "th17"])``.

    Raises
    ------
    TregpdError
        Bad arguments, python-libsbml missing, or an internal consistency error found by libsbml.
    """
    libsbml = _libsbml()
    doc = build_document(parameters, regimen)
    n_err = doc.checkInternalConsistency()
    errors = [doc.getError(i) for i in range(n_err)
              if doc.getError(i).getSeverity() >= libsbml.LIBSBML_SEV_ERROR]
    if errors:
        raise TregpdError("SBML export produced an invalid document: "
                          + "; ".join(e.getMessage().strip() for e in errors[:3]))
    xml = libsbml.writeSBMLToString(doc)
    if path is not None:
        from .io import atomic_write_text
        atomic_write_text(path, xml)
    return xml
