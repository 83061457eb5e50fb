"""SBML export of a model structure and a regimen, for COPASI, tellurium/libroadrunner and other SBML tools.

:func:`to_sbml` writes one self-contained SBML Level 3 Version 2 document, generated from the structure's
declaration (:mod:`tregpd.model.declaration`), so it cannot drift from the kernels:

* the ODEs with the linear PK as ODE states (the ``pk="ode"`` layout of the kernels), e.g. for
  ``sat0261_v1``::

      il2_depot, il2_central [IU]; rapa_gut, rapa_central, rapa_periph [mg]; naive, treg, th17 [cells/uL]

  as rate rules on non-constant global parameters (no compartments or species: the amounts are not
  concentrations in one volume, and rate rules keep the equations one-to-one with the declaration);
* every parameter of the structure as a constant global parameter in the kernel's units (time in **days**;
  per-hour values of ``parameters.toml`` are multiplied by 24), with the unit in its ``name``, an SBML unit
  definition where the unit is expressible in SBML base units, and the value, unit, source, status and
  fitted flag of the parameter file in its ``notes``;
* the derived constants (baseline-balancing rates) as initial assignments computed from the parameters, and
  the initial states as initial assignments, so changing a baseline in the SBML tool keeps the untreated
  model at steady state, as in tregpd;
* the concentrations, intermediates (signals, effects, rates) and ``ratio`` as assignment rules;
* covariates (the prednisone level) as non-constant parameters set by events;
* each dose as an SBML event at its dose time (into the structure's dose target, times its bioavailability).

>>> from tregpd.model import default_parameters, reference_regimen
>>> from tregpd.model.sbml import to_sbml
>>> xml = to_sbml(default_parameters(), reference_regimen(), path="out/tregpd_reference.xml")  # doctest: +SKIP

Requires ``python-libsbml`` (``pip install tregpd[test]`` or ``[bench]``).
"""
from __future__ import annotations

import ast
from pathlib import Path

from .declaration import ModelStructure
from .dosing import Regimen
from tregpd.errors import TregpdError
from .parameters import ParameterSet, _PER_DAY
from .structures import get_model


def states_of(model=None) -> tuple[tuple[str, str, str], ...]:
    """ODE states of the exported document: (id, unit, description), PK amounts first."""
    m = get_model(model)
    out = []
    for b in m.pk:
        for c in b.compartments:
            out.append((c, b.amount_unit, f"{c} amount ({b.description})"))
    out += [(s.name, s.unit, s.description) for s in m.states]
    return tuple(out)


#: ODE states of the default structure in order: (id, unit in the kernel, description)
STATES = states_of(None)

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


def _l3(expr: str, rename: dict[str, str] | None = None) -> str:
    """A declaration expression (Python syntax) as an SBML L3 infix formula (``**`` -> ``^``, log -> ln)."""
    rename = rename or {}

    def go(n) -> str:
        if isinstance(n, ast.Expression):
            return go(n.body)
        if isinstance(n, ast.BinOp):
            op = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "^"}[type(n.op)]
            return f"({go(n.left)} {op} {go(n.right)})"
        if isinstance(n, ast.UnaryOp):
            return f"(-{go(n.operand)})" if isinstance(n.op, ast.USub) else go(n.operand)
        if isinstance(n, ast.Constant):
            return repr(float(n.value))
        if isinstance(n, ast.Name):
            return rename.get(n.id, n.id)
        if isinstance(n, ast.Call):
            f = {"exp": "exp", "log": "ln", "sqrt": "sqrt", "min": "min", "max": "max"}[n.func.id]
            return f"{f}(" + ", ".join(go(a) for a in n.args) + ")"
        raise TregpdError(f"SBML export: cannot translate {ast.dump(n)}")  # pragma: no cover

    return go(ast.parse(expr, mode="eval"))


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


def build_document(parameters: ParameterSet, regimen: Regimen, model_id: str = "tregpd", model=None):
    """Build the libsbml ``SBMLDocument`` (see the module docstring). Raises TregpdError on bad input."""
    libsbml = _libsbml()
    if not isinstance(parameters, ParameterSet):
        raise TregpdError(f"to_sbml: 'parameters' must be a ParameterSet, got {type(parameters).__name__}")
    if not isinstance(regimen, Regimen):
        raise TregpdError(f"to_sbml: 'regimen' must be a Regimen, got {type(regimen).__name__}")
    m: ModelStructure = get_model(model)
    events = regimen.events()
    doc = libsbml.SBMLDocument(3, 2)
    sbml = doc.createModel()
    _check(sbml.setId(model_id), "set the model id")
    sbml.setName(f"tregpd {m.name}, regimen {regimen.name}")
    from .. import __version__
    _check(sbml.setNotes(_notes(
        f"Exported by tregpd {__version__} from model structure {m.name} (declaration {m.content_hash}): "
        f"{m.description} Time unit: day. Parameter set: {parameters.name}. "
        f"Regimen: {regimen.name} ({regimen.description}). {regimen.assumption} "
        "PK as ODE states; each dose is an event at its dose time. Per-hour parameters of the tregpd "
        "parameter file are given here per day (x 24).")), "set model notes")
    sbml.setTimeUnits(_unit_id(sbml, "day"))

    theta = parameters.to_theta(m)
    for i, name in enumerate(m.parameter_names):
        prm = parameters[name]
        unit = _KERNEL_UNIT.get(prm.unit, prm.unit)
        note = (f"{name}: {prm.value} {prm.unit} in the tregpd parameter file"
                + (f" (= {theta[i]} {unit})" if prm.unit in _PER_DAY else "")
                + f"; bounds [{prm.lower}, {prm.upper}] {prm.unit}; fitted: {str(prm.fitted).lower()}; "
                f"status: {prm.status}; source: {prm.source}")
        _parameter(sbml, name, theta[i], unit, name, notes=note)

    def initial(pid, formula):
        ia = sbml.createInitialAssignment()
        ia.setSymbol(pid)
        _check(ia.setMath(_math(_l3(formula), pid)), f"set the initial assignment of {pid}")

    def assignment(pid, formula):
        rule = sbml.createAssignmentRule()
        rule.setVariable(pid)
        _check(rule.setMath(_math(formula, pid)), f"set the assignment rule of {pid}")

    for d in m.derived:
        _parameter(sbml, d.name, None, d.unit, d.description or d.name)
        initial(d.name, d.expr)
    for b in m.pk:
        for c in b.compartments:
            _parameter(sbml, c, 0.0, b.amount_unit, f"{c} amount", constant=False)
    for s in m.states:
        _parameter(sbml, s.name, None, s.unit, s.description or s.name, constant=False)
        initial(s.name, s.initial)
    for c in m.covariates:
        _parameter(sbml, c.name, None, c.unit, f"{c.description} (CMT {c.cmt} events)", constant=False)
        initial(c.name, c.initial)
    for b in m.pk:
        _parameter(sbml, b.name, None, b.unit, f"concentration ({b.description})", constant=False)
        assignment(b.name, _l3(f"max({b.concentration}, 0)", {"amount": b.observed}))
    for c, (expr, unit) in m.concentrations_from_states.items():
        _parameter(sbml, c, None, unit, "concentration", constant=False)
        assignment(c, _l3(expr))
    for i in m.intermediates:
        _parameter(sbml, i.name, None, i.unit, i.description or i.name, constant=False)
        assignment(i.name, _l3(i.expr))
    states = set(m.state_names)
    for o in m.observables:
        if o.name not in states:
            _parameter(sbml, o.name, None, o.unit, o.description or o.name, constant=False)
            assignment(o.name, _l3(o.expr))
    _parameter(sbml, "ratio", None, "1", "Th17/Treg ratio", constant=False)
    assignment("ratio", "th17 / treg")
    for b in m.pk:
        for c in b.compartments:
            terms = [f" {'-' if sign < 0 else '+'} ({_l3(k)}) * {a}" for sign, k, a in b.flows(c)]
            rule = sbml.createRateRule()
            rule.setVariable(c)
            _check(rule.setMath(_math("0" + "".join(terms), c)), f"set the rate rule of {c}")
    for s in m.states:
        rule = sbml.createRateRule()
        rule.setVariable(s.name)
        _check(rule.setMath(_math(_l3(s.ode), s.name)), f"set the rate rule of {s.name}")

    doses = {d.cmt: d for d in m.doses}
    covs = {c.cmt: c for c in m.covariates}
    units = {c: b.amount_unit for b in m.pk for c in b.compartments}
    units.update({s.name: s.unit for s in m.states})
    for k, (t, cmt, amt) in enumerate(zip(events.time_day, events.cmt, events.amount)):
        cmt = int(cmt)
        ev = sbml.createEvent()
        _check(ev.setId(f"dose_{k + 1}"), "set an event id")
        ev.setUseValuesFromTriggerTime(True)
        trig = ev.createTrigger()
        trig.setInitialValue(False)   # fires at t = 0 for a dose at time 0
        trig.setPersistent(True)
        _check(trig.setMath(_math(f"time >= {float(t)!r}", f"dose {k + 1}")), "set an event trigger")
        ea = ev.createEventAssignment()
        if cmt in covs:
            c = covs[cmt]
            ev.setName(f"{c.name} level {amt:g} {c.unit} from day {t:g}")
            ea.setVariable(c.name)
            value = f"{float(amt)!r}"
        elif cmt in doses:
            d = doses[cmt]
            ev.setName(f"dose {k + 1}: {amt:g} {units[d.target]} into {d.target} at day {t:g}")
            ea.setVariable(d.target)
            scale = (f" * {d.bioavailability}" if d.bioavailability else "") + \
                (f" * {d.potency}" if d.potency else "")
            value = f"{d.target} + {float(amt)!r}{scale}"
        else:
            raise TregpdError(f"SBML export: event CMT {cmt} is not declared by model {m.name!r}")
        _check(ea.setMath(_math(value, f"dose {k + 1}")), "set an event assignment")
    return doc


def to_sbml(parameters: ParameterSet, regimen: Regimen, path: str | Path | None = None, model=None) -> str:
    """Export the model with ``parameters`` and the doses of ``regimen`` as SBML L3V2 text.

    Parameters
    ----------
    parameters : ParameterSet
    regimen : Regimen
        Its doses become SBML events (simulate from time 0 to see them all).
    path : str or Path, optional
        If given, the document is also written there atomically.
    model : str or ModelStructure, optional
        Model structure (default ``sat0261_v1``).

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
    doc = build_document(parameters, regimen, model=model)
    n_err = doc.checkInternalConsistency()
    errors = [doc.getError(i) for i in range(n_err)
              if doc.getError(i).getSeverity() >= libsbml.LIBSBML_SEV_ERROR]
    if errors:
        raise TregpdError("SBML export produced an invalid document: "
                          + "; ".join(e.getMessage().strip() for e in errors[:3]))
    xml = libsbml.writeSBMLToString(doc)
    if path is not None:
        from tregpd.io import atomic_write_text
        atomic_write_text(path, xml)
    return xml
