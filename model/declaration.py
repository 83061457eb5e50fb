"""Model declarations: one object per model structure, from which everything else is derived.

A :class:`ModelStructure` says, once, what a paper's methods section would say:

* **parameters**: the names it reads from the parameter file (value, unit, bounds and source live there; the
  declaration states the unit it expects, and the file is checked against it);
* **derived** constants: per-patient expressions of the parameters (e.g. the baseline-balancing death rates
  that make the untreated model sit at its baseline);
* **linear PK blocks** (:class:`LinearPK`): compartments, a constant rate matrix, the dose compartments and the
  concentration read out of one compartment. Only these are eligible for the closed-form fast path;
* **covariates** (:class:`Covariate`): piecewise-constant inputs set by events (the prednisone dose);
* **intermediates**: named expressions (receptor occupancies, drug effects, rates), in evaluation order;
* **states** (:class:`State`) with their ODEs, units and initial values (the baseline steady state);
* **observables**: named outputs (every structure has ``naive``, ``treg`` and ``th17`` in cells/uL).

Expressions are Python-syntax strings (``"treg_proliferation * (1 + il2_emax_treg * s_treg)"``): they read
like the equations in a paper, are checked when the declaration is built (every name declared, only
arithmetic, ``exp``/``log``/``sqrt``/``min``/``max``), and are compiled *as written* (operation order kept) into
the numba right-hand sides by :mod:`tregpd.model.codegen`. sympy reads the same strings for what needs algebra:
the analytic Jacobian of the stiff solver, the sensitivity bound that lets the fast path skip a PK block whose
concentration cannot change the result, and the equation listing. A small text format inside Python objects
was chosen over a separate model language because the structures are few, reviewed as code, and need no
parser beyond Python's own ``ast``; over plain sympy objects because a string keeps the author's operation
order, which the generated code preserves exactly.

Tiers. Each intermediate is classified by what it depends on, which decides where the generated code
evaluates it: *constant* (parameters only: once per patient), *segment* (plus covariates: once per dose
segment), *forcing* (plus closed-form concentrations: once per solver stage, before the stage chain, so a
Dormand-Prince step computes them for all stages at once), or *state* (depends on the ODE states: inside the
right-hand side). A structure whose IL-2 PK depends on the cells declares the IL-2 amounts as states; its
IL-2 concentration is then a state-tier intermediate and the sirolimus block stays closed form.
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Mapping, Sequence

from .errors import TregpdError


class DeclarationError(TregpdError):
    """A model declaration is inconsistent (unknown name, cycle, bad expression)."""


_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
#: functions an expression may call (mapped to math.* in the generated code)
FUNCTIONS = {"exp": "math.exp", "log": "math.log", "sqrt": "math.sqrt", "min": "min", "max": "max"}
#: names reserved for the engine
RESERVED = {"t", "p", "y", "dy", "math", "min", "max", "exp", "log", "sqrt"}


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name in RESERVED:
        raise DeclarationError(f"{what} name {name!r} must be lower_snake_case and not one of {sorted(RESERVED)}")
    return name


def expression_names(expr: str, where: str) -> set[str]:
    """Parse an expression and return the names it reads; only arithmetic and :data:`FUNCTIONS` allowed."""
    if not isinstance(expr, str) or not expr.strip():
        raise DeclarationError(f"{where}: expression must be a non-empty string, got {expr!r}")
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as exc:
        raise DeclarationError(f"{where}: expression {expr!r} is not valid: {exc.msg}") from None
    names: set[str] = set()
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.USub,
               ast.UAdd, ast.Constant, ast.Name, ast.Load, ast.Call)
    for node in ast.walk(tree):
        if not isinstance(node, allowed):
            raise DeclarationError(f"{where}: {type(node).__name__} is not allowed in expression {expr!r}")
        if isinstance(node, ast.Constant) and (isinstance(node.value, bool)
                                               or not isinstance(node.value, (int, float))):
            raise DeclarationError(f"{where}: constant {node.value!r} is not a number in {expr!r}")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords:
                raise DeclarationError(f"{where}: only {sorted(FUNCTIONS)} may be called in {expr!r}")
        elif isinstance(node, ast.Name):
            names.add(node.id)
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return names - (called & set(FUNCTIONS))


@dataclass(frozen=True)
class State:
    """An ODE state.

    Attributes
    ----------
    name, unit, description : str
    ode : str
        d(state)/dt in ``unit`` per day.
    initial : str
        Expression (parameters and derived constants) for the value at t = 0, the untreated steady state for
        cells and 0 for drug amounts.
    nonnegative : bool
        The solver reports a failure if the state falls below -(atol + rtol |initial|).
    negligible : str, optional
        Expression (parameters and derived constants) of an amount below which the state is *negligible*:
        at the end of an accepted solver step the engine sets it to exactly 0 when |y| <= negligible and |y|
        is not growing (y dy/dt <= 0), provided every other negligible-declared state that feeds it (appears in
        its ODE, directly or through intermediates) satisfies the same two conditions. Meant for drug amounts
        that decay towards zero between doses (e.g. IL-2 declared as states): once exactly zero they stay
        zero until the next dose, and the step size is no longer limited by their elimination rate. Choose
        it so that the effect of removing that amount on every other state is far below any rtol used (see
        ``tregpd/model/_engine.py``, "Negligible states", for the error bound).
    """

    name: str
    unit: str
    ode: str
    initial: str
    description: str = ""
    nonnegative: bool = True
    negligible: str | None = None


@dataclass(frozen=True)
class Dose:
    """Where a NONMEM compartment number (CMT) puts its amount: into ``target`` (a state or a linear-PK
    compartment), multiplied by ``bioavailability`` and ``potency`` (parameter names, or ``None`` for 1)."""

    cmt: int
    target: str
    bioavailability: str | None = None
    drug: str = ""
    potency: str | None = None


@dataclass(frozen=True)
class LinearPK:
    """A linear PK block solved in closed form on the fast path (and as ODE states on the reference path).

    Attributes
    ----------
    name : str
        Also the name of its concentration (e.g. ``c_rapa``).
    compartments : tuple of str
        Amount names (e.g. gut, central, peripheral), unit ``amount_unit``.
    rates : mapping (from, to) -> expression
        First-order transfer rate constants in 1/day; ``to = None`` is elimination. The rate matrix is
        ``K[to, from] += k``, ``K[from, from] -= k``.
    observed : str
        The compartment whose amount gives the concentration.
    concentration : str
        Expression of ``amount`` (the observed compartment's amount) and parameters.
    unit : str
        Concentration unit.
    """

    name: str
    compartments: tuple[str, ...]
    rates: Mapping[tuple[str, str | None], str]
    observed: str
    concentration: str
    unit: str
    amount_unit: str
    description: str = ""

    def flows(self, compartment: str) -> list[tuple[int, str, str]]:
        """Terms of d(compartment)/dt, in declaration order: (sign, rate expression, compartment whose amount
        the rate multiplies): ``-k * compartment`` for each outflow, ``+k * source`` for each inflow."""
        terms = []
        for (src, dst), k in self.rates.items():
            if src == compartment:
                terms.append((-1, k, compartment))
            if dst == compartment:
                terms.append((1, k, src))
        return terms


@dataclass(frozen=True)
class Covariate:
    """A piecewise-constant input set by events on ``cmt`` (the value holds from the event time on)."""

    name: str
    unit: str
    cmt: int
    initial: str
    description: str = ""


@dataclass(frozen=True)
class Intermediate:
    name: str
    expr: str
    unit: str
    description: str = ""


@dataclass(frozen=True)
class Observable:
    name: str
    expr: str
    unit: str
    description: str = ""


@dataclass(frozen=True)
class ModelStructure:
    """One model structure (see the module docstring). Immutable and validated at construction.

    Parameters
    ----------
    name : str
        Selects the structure everywhere (``simulate(..., model=name)``, ``--model``, scenario files).
    parameters : mapping name -> unit
        The parameters it reads, with the unit it expects them in *in the parameter file* (per-hour rates are
        converted to per day on load).
    derived : sequence of Intermediate
        Per-patient constants from parameters (and earlier derived constants).
    pk : sequence of LinearPK
    covariates : sequence of Covariate
    intermediates : sequence of Intermediate
        In evaluation order; may read parameters, derived constants, covariates, concentrations, states and
        earlier intermediates.
    states : sequence of State
    observables : sequence of Observable
        Must include ``naive``, ``treg`` and ``th17``.
    doses : sequence of Dose
    concentrations_from_states : mapping name -> (expression, unit)
        Concentrations of drugs whose PK is declared as states (not closed form).
    """

    name: str
    description: str
    parameters: Mapping[str, str]
    derived: Sequence[Intermediate]
    pk: Sequence[LinearPK]
    covariates: Sequence[Covariate]
    intermediates: Sequence[Intermediate]
    states: Sequence[State]
    observables: Sequence[Observable]
    doses: Sequence[Dose]
    concentrations_from_states: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    hypotheses: Sequence[str] = ()
    parent: str | None = None

    def __post_init__(self) -> None:
        _check_name(self.name, "model")
        for attr in ("derived", "pk", "covariates", "intermediates", "states", "observables", "doses",
                     "hypotheses"):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))
        object.__setattr__(self, "parameters", MappingProxyType(dict(self.parameters)))
        object.__setattr__(self, "concentrations_from_states",
                           MappingProxyType(dict(self.concentrations_from_states)))
        self._validate()

    # ------------------------------------------------------------------------------------------ names
    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(self.parameters)

    @property
    def derived_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.derived)

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.states)

    @property
    def pk_amount_names(self) -> tuple[str, ...]:
        return tuple(c for b in self.pk for c in b.compartments)

    @property
    def concentration_names(self) -> tuple[str, ...]:
        """Closed-form concentrations (one per linear PK block), then those computed from states."""
        return tuple(b.name for b in self.pk) + tuple(self.concentrations_from_states)

    @property
    def concentration_units(self) -> tuple[str, ...]:
        return tuple(b.unit for b in self.pk) + tuple(u for _, u in self.concentrations_from_states.values())

    @property
    def observable_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.observables)

    @property
    def output_names(self) -> tuple[str, ...]:
        """Kernel output columns: observables, concentrations, then the AUC of each concentration."""
        return (self.observable_names + self.concentration_names
                + tuple("auc_" + c.removeprefix("c_") for c in self.concentration_names))

    @property
    def output_units(self) -> tuple[str, ...]:
        return (tuple(o.unit for o in self.observables) + self.concentration_units
                + tuple(u + "*day" for u in self.concentration_units))

    # ------------------------------------------------------------------------------------ validation
    def _validate(self) -> None:
        where = f"model {self.name!r}"
        seen: dict[str, str] = {}

        def declare(name: str, kind: str) -> None:
            _check_name(name, f"{where}: {kind}")
            if name in seen:
                raise DeclarationError(f"{where}: name {name!r} declared twice ({seen[name]} and {kind})")
            seen[name] = kind

        for n in self.parameters:
            declare(n, "parameter")
        for d in self.derived:
            declare(d.name, "derived constant")
        for b in self.pk:
            declare(b.name, "concentration")
            for c in b.compartments:
                declare(c, "PK compartment")
        for c in self.concentrations_from_states:
            declare(c, "concentration")
        for c in self.covariates:
            declare(c.name, "covariate")
        for s in self.states:
            declare(s.name, "state")
        for i in self.intermediates:
            declare(i.name, "intermediate")
        obs = self.observable_names
        for name in ("naive", "treg", "th17"):
            if name not in obs:
                raise DeclarationError(f"{where}: observables must include {name!r}")
        if len(set(obs)) != len(obs):
            raise DeclarationError(f"{where}: observable names must be unique, got {obs}")

        params = set(self.parameters)
        known = set(params)
        for d in self.derived:
            self._check_expr(d.expr, known, f"{where}: derived {d.name!r}")
            known.add(d.name)
        constants = set(known)
        for b in self.pk:
            if b.observed not in b.compartments:
                raise DeclarationError(f"{where}: PK block {b.name!r}: observed compartment {b.observed!r} "
                                       f"is not one of {b.compartments}")
            if not 1 <= len(b.compartments) <= 3:
                raise DeclarationError(f"{where}: PK block {b.name!r} must have 1-3 compartments for the "
                                       "closed form; declare larger PK systems as states")
            for (src, dst), k in b.rates.items():
                if src not in b.compartments or (dst is not None and dst not in b.compartments):
                    raise DeclarationError(f"{where}: PK block {b.name!r}: rate ({src!r}, {dst!r}) names a "
                                           "compartment outside the block")
                self._check_expr(k, constants, f"{where}: PK block {b.name!r} rate {src}->{dst}")
            self._check_expr(b.concentration, constants | {"amount"}, f"{where}: PK block {b.name!r}")
        for c in self.covariates:
            self._check_expr(c.initial, constants, f"{where}: covariate {c.name!r} initial value")
        states = set(self.state_names)
        for s in self.states:
            self._check_expr(s.initial, constants, f"{where}: state {s.name!r} initial value")
            if s.negligible is not None:
                self._check_expr(s.negligible, constants, f"{where}: state {s.name!r} negligible amount")
        for c, (expr, _) in self.concentrations_from_states.items():
            self._check_expr(expr, constants | states, f"{where}: concentration {c!r}")
        known = constants | {b.name for b in self.pk} | set(self.concentrations_from_states) \
            | {c.name for c in self.covariates} | states
        for i in self.intermediates:
            self._check_expr(i.expr, known, f"{where}: intermediate {i.name!r}")
            known.add(i.name)
        for s in self.states:
            self._check_expr(s.ode, known, f"{where}: ODE of {s.name!r}")
        for o in self.observables:
            self._check_expr(o.expr, known, f"{where}: observable {o.name!r}")
        cmts = [d.cmt for d in self.doses] + [c.cmt for c in self.covariates]
        if len(set(cmts)) != len(cmts):
            raise DeclarationError(f"{where}: a CMT number is used twice: {cmts}")
        targets = states | set(self.pk_amount_names)
        for d in self.doses:
            if d.target not in targets:
                raise DeclarationError(f"{where}: dose CMT {d.cmt} targets {d.target!r}, which is neither a "
                                       "state nor a PK compartment")
            for what in ("bioavailability", "potency"):
                name = getattr(d, what)
                if name is not None and name not in constants:
                    raise DeclarationError(f"{where}: dose CMT {d.cmt}: {what} {name!r} is not a parameter or "
                                           "derived constant")

    @staticmethod
    def _check_expr(expr: str, known: set[str], where: str) -> None:
        unknown = expression_names(expr, where) - known
        if unknown:
            raise DeclarationError(f"{where}: unknown name(s) {sorted(unknown)} in {expr!r}")

    # ---------------------------------------------------------------------------------------- tiers
    @cached_property
    def tiers(self) -> Mapping[str, str]:
        """Tier of each intermediate: 'segment', 'forcing' or 'state' (see the module docstring); derived
        constants are 'constant'. Intermediates of parameters only are 'constant' too."""
        consts = set(self.parameters) | set(self.derived_names)
        covs = {c.name for c in self.covariates}
        cf_conc = {b.name for b in self.pk}
        tier = {n: "constant" for n in consts}
        tier.update({n: "segment" for n in covs})
        tier.update({n: "forcing" for n in cf_conc})
        tier.update({n: "state" for n in self.state_names})
        tier.update({n: "state" for n in self.concentrations_from_states})
        order = {"constant": 0, "segment": 1, "forcing": 2, "state": 3}
        out = {}
        for i in self.intermediates:
            deps = expression_names(i.expr, i.name)
            t = max((tier[d] for d in deps), key=order.__getitem__, default="constant")
            tier[i.name] = t
            out[i.name] = t
        return MappingProxyType(out)

    # ------------------------------------------------------------------------------------ identity
    def to_dict(self) -> dict:
        """Plain, JSON-serialisable form (the content that :attr:`content_hash` covers)."""
        return {
            "name": self.name, "description": self.description, "parent": self.parent,
            "hypotheses": list(self.hypotheses),
            "parameters": dict(self.parameters),
            "derived": [[d.name, d.expr, d.unit] for d in self.derived],
            "pk": [{"name": b.name, "compartments": list(b.compartments),
                    "rates": [[s, d, k] for (s, d), k in b.rates.items()], "observed": b.observed,
                    "concentration": b.concentration, "unit": b.unit, "amount_unit": b.amount_unit}
                   for b in self.pk],
            "covariates": [[c.name, c.unit, c.cmt, c.initial] for c in self.covariates],
            "intermediates": [[i.name, i.expr, i.unit] for i in self.intermediates],
            "states": [[s.name, s.unit, s.ode, s.initial, s.nonnegative]
                       + ([s.negligible] if s.negligible is not None else []) for s in self.states],
            "observables": [[o.name, o.expr, o.unit] for o in self.observables],
            "doses": [[d.cmt, d.target, d.bioavailability, d.drug, d.potency] for d in self.doses],
            "concentrations_from_states": {k: list(v) for k, v in self.concentrations_from_states.items()},
        }

    @cached_property
    def content_hash(self) -> str:
        """SHA-256 (hex, 16 characters) of the declaration's content; keys the compiled-kernel cache."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def with_changes(self, name: str, description: str, *, parameters: Mapping[str, str] | None = None,
                     replace_intermediates: Mapping[str, str] | None = None,
                     add_intermediates: Sequence[Intermediate] = (), replace_odes: Mapping[str, str] | None = None,
                     add_states: Sequence[State] = (), remove_parameters: Sequence[str] = (),
                     observables: Sequence[Observable] | None = None, derived: Sequence[Intermediate] | None = None,
                     pk: Sequence[LinearPK] | None = None, doses: Sequence[Dose] | None = None,
                     concentrations_from_states: Mapping[str, tuple[str, str]] | None = None,
                     intermediates_before: Sequence[Intermediate] = (), hypotheses: Sequence[str] = (),
                     insert_after: Mapping[str, Sequence[Intermediate]] | None = None) -> "ModelStructure":
        """A new structure that differs from this one as stated (used to declare variants compactly)."""
        params = {k: v for k, v in self.parameters.items() if k not in set(remove_parameters)}
        params.update(parameters or {})
        repl = dict(replace_intermediates or {})
        inter = list(intermediates_before) + [
            Intermediate(i.name, repl.pop(i.name), i.unit, i.description) if i.name in repl else i
            for i in self.intermediates] + list(add_intermediates)
        if repl:
            raise DeclarationError(f"model {name!r}: no intermediates {sorted(repl)} to replace")
        after = dict(insert_after or {})
        if after:
            merged = []
            for i in inter:
                merged.append(i)
                merged.extend(after.pop(i.name, ()))
            if after:
                raise DeclarationError(f"model {name!r}: no intermediates {sorted(after)} to insert after")
            inter = merged
        odes = dict(replace_odes or {})
        states = [dataclasses.replace(s, ode=odes.pop(s.name))
                  if s.name in odes else s for s in self.states] + list(add_states)
        if odes:
            raise DeclarationError(f"model {name!r}: no states {sorted(odes)} whose ODE to replace")
        return ModelStructure(
            name=name, description=description, parameters=params,
            derived=self.derived if derived is None else derived, pk=self.pk if pk is None else pk,
            covariates=self.covariates, intermediates=inter, states=states,
            observables=self.observables if observables is None else observables,
            doses=self.doses if doses is None else doses,
            concentrations_from_states=(self.concentrations_from_states if concentrations_from_states is None
                                        else concentrations_from_states),
            hypotheses=tuple(self.hypotheses) + tuple(hypotheses), parent=self.name)

    # ------------------------------------------------------------------------------------- listing
    def equations_markdown(self) -> str:
        """The structure as Markdown (generated from the declaration, so it cannot drift)."""
        lines = [f"### `{self.name}`", "", self.description, ""]
        if self.parent:
            lines += [f"Derived from `{self.parent}`.", ""]
        if self.hypotheses:
            lines += ["Hypotheses:", ""] + [f"- {h}" for h in self.hypotheses] + [""]
        lines += ["States (d/dt, per day):", "", "```"]
        for s in self.states:
            neg = "" if s.negligible is None else f"; set to 0 below {s.negligible} when decaying"
            lines.append(f"d{s.name}/dt = {s.ode}        [{s.unit}; {s.name}(0) = {s.initial}{neg}]")
        lines += ["```", "", "Intermediates (tier: where the generated code evaluates it):", "", "```"]
        for i in self.intermediates:
            lines.append(f"{i.name} = {i.expr}        [{i.unit}; {self.tiers[i.name]}]")
        lines += ["```", ""]
        if self.pk:
            lines += ["Linear PK (closed form on the fast path):", "", "```"]
            for b in self.pk:
                for (src, dst), k in b.rates.items():
                    lines.append(f"{b.name}: {src} -> {dst or 'out'} at {k} per day")
                lines.append(f"{b.name} = {b.concentration.replace('amount', b.observed)}        [{b.unit}]")
            lines += ["```", ""]
        for c, (expr, unit) in self.concentrations_from_states.items():
            lines += [f"Concentration from states: `{c} = {expr}` [{unit}]", ""]
        if self.derived:
            lines += ["Derived constants (baseline steady state):", "", "```"]
            lines += [f"{d.name} = {d.expr}        [{d.unit}]" for d in self.derived]
            lines += ["```", ""]
        if self.covariates:
            lines += ["Covariates: " + "; ".join(f"`{c.name}` [{c.unit}] set by CMT {c.cmt} events "
                                                 f"(initially {c.initial})" for c in self.covariates), ""]
        lines += ["Doses: " + "; ".join(f"CMT {d.cmt} -> {d.target}"
                                        + (f" x {d.bioavailability}" if d.bioavailability else "")
                                        + (f" x {d.potency}" if d.potency else "")
                                        for d in self.doses), ""]
        lines += ["Parameters: " + ", ".join(f"`{n}` [{u}]" for n, u in self.parameters.items()), ""]
        return "\n".join(lines)
