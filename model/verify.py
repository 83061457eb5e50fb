"""Solver check (``--verify N``): re-simulate N patients of a run with an independent integrator.

The kernels (:mod:`tregpd.model.codegen`, :mod:`tregpd.model._engine`) are numba code generated from a model
structure's declaration, with closed-form PK, hoisted sub-expressions, a hand-written Dormand-Prince /
Rosenbrock engine and negligible-state flushing. This module checks them against an integrator that shares none
of that code:

* the right-hand side is **plain Python**, generated here from the declaration's expression strings
  (:mod:`tregpd.model.declaration`) as written: every parameter, derived constant, concentration,
  intermediate and ODE in declaration terms; linear PK blocks become ODE states (the layout of the SBML
  export, :mod:`tregpd.model.sbml`), including structures whose PK depends on the cells
  (``v1_il2_consumption``); the AUC outputs are integrated as extra states;
* the integrator is scipy ``solve_ivp(method="Radau")`` at ``rtol=1e-10`` (atol ``1e-12`` times each state's
  scale: its initial value, or the largest dose for PK amounts), segment by segment between event times:
  doses are jumps into the declared target (times bioavailability and potency), covariate events set the
  covariate, outputs are taken after the events at the same time (as the kernels do).

The difference of a patient is, over every kernel output column (observables, concentrations, AUCs) at every
output time, ``|kernel - reference| / max(|reference|, floor)`` with ``floor = 1e-6 x`` the largest
``|reference|`` of that variable over the patient's grid (values a millionth of the variable's peak, e.g. a
drug washed out, are compared absolutely against the peak; elsewhere this is the relative difference of
``tests/test_solvers.py``). The run fails above ``tol`` (default ``1e-4``; the kernels at their default
``rtol=1e-6`` are measured at ~1e-6 on the default structure).

>>> from tregpd.model.verify import verify_patients                     # doctest: +SKIP
>>> rep = verify_patients(result, n=3, seed=0, tol=1e-4)               # doctest: +SKIP
>>> rep.max_difference, rep.ok, rep.message()                         # doctest: +SKIP

Radau in pure Python costs ~1-10 s per 24-week patient; it is a check, not a solver.
"""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from tregpd.errors import TregpdError

#: default tolerance on the largest normalised difference
DEFAULT_TOL = 1e-4
#: Radau settings of the reference
REF_RTOL = 1e-10
REF_ATOL_SCALE = 1e-12
#: values below this fraction of a variable's peak (per patient) are compared absolutely against the peak
FLOOR_FRACTION = 1e-6


class VerifyError(TregpdError):
    """The solver check found a difference above its tolerance (or could not run)."""


# ------------------------------------------------------------------------------------------ plain-Python RHS
def _order_intermediates(items, known: set[str]):
    """Intermediates in an order where each is computed after the names it reads (declaration order kept
    where possible)."""
    from .declaration import expression_names
    pending = list(items)
    out = []
    have = set(known)
    while pending:
        for it in pending:
            if expression_names(it[1], it[0]) - {"exp", "log", "sqrt", "min", "max"} <= have | {it[0]}:
                out.append(it)
                have.add(it[0])
                pending.remove(it)
                break
        else:  # pragma: no cover - the declaration's validation refuses cycles
            raise VerifyError(f"solver check: cannot order the intermediates {[p[0] for p in pending]}")
    return out


def _py(expr: str) -> str:
    """A declaration expression, checked to be Python syntax, returned unchanged."""
    ast.parse(expr, mode="eval")
    return f"({expr})"


@dataclass
class PythonModel:
    """A model structure as plain Python functions (no numba, no codegen): see the module docstring.

    Attributes
    ----------
    names : tuple of str
        ODE state order: PK amounts, declared states, then one AUC per concentration.
    outputs : tuple of str
        The kernel's output columns (:attr:`ModelStructure.output_names`), in order.
    """
    model: object
    names: tuple
    outputs: tuple
    constants: Callable      # (theta) -> dict of parameters and derived constants
    initial: Callable        # (k) -> (y0, covariates dict)
    rhs: Callable            # (t, y, k, cov) -> dy
    observe: Callable        # (y, k, cov) -> outputs row
    last_peak: np.ndarray | None = None   # largest |output| over every Radau step of the last solve

    @classmethod
    def build(cls, model=None) -> "PythonModel":
        from .structures import get_model
        m = get_model(model)
        pk_amounts = list(m.pk_amount_names)
        states = list(m.state_names)
        concs = list(m.concentration_names)
        aucs = ["__auc_" + c for c in concs]
        names = pk_amounts + states + aucs
        # the order in which intermediates and concentrations can be evaluated
        base = set(m.parameter_names) | set(m.derived_names) | set(pk_amounts) | set(states) | \
            {c.name for c in m.covariates} | {"t"}
        items = []
        for b in m.pk:
            tree = ast.parse(b.concentration, mode="eval")

            class _R(ast.NodeTransformer):
                def visit_Name(self, node):  # noqa: N802
                    return ast.copy_location(ast.Name(id=b.observed, ctx=node.ctx), node) \
                        if node.id == "amount" else node
            expr = ast.unparse(_R().visit(tree))
            items.append((b.name, f"max({expr}, 0.0)"))
        items += [(c, e) for c, (e, _) in m.concentrations_from_states.items()]
        items += [(i.name, i.expr) for i in m.intermediates]
        ordered = _order_intermediates(items, base)
        obs = [(o.name, o.expr) for o in m.observables]

        src = ["from math import exp, log, sqrt", ""]
        src.append("def constants(theta):")
        src += [f"    {n} = float(theta[{i}])" for i, n in enumerate(m.parameter_names)]
        src += [f"    {d.name} = {_py(d.expr)}" for d in m.derived]
        keys = list(m.parameter_names) + list(m.derived_names)
        src.append("    return {" + ", ".join(f"{k!r}: {k}" for k in keys) + "}")
        src.append("")
        src.append("def initial(k):")
        src += [f"    {n} = k[{n!r}]" for n in keys]
        src.append("    y = [0.0] * " + str(len(names)))
        for s in m.states:
            src.append(f"    y[{names.index(s.name)}] = float({_py(s.initial)})")
        src.append("    cov = {" + ", ".join(f"{c.name!r}: float({_py(c.initial)})" for c in m.covariates) + "}")
        src.append("    return y, cov")
        src.append("")

        def scope(fn_args):
            out = [f"def {fn_args}:"]
            out += [f"    {n} = k[{n!r}]" for n in keys]
            out += [f"    {c.name} = cov[{c.name!r}]" for c in m.covariates]
            out += [f"    {n} = y[{names.index(n)}]" for n in pk_amounts + states]
            out += [f"    {n} = {_py(e)}" for n, e in ordered]
            return out

        src += scope("rhs(t, y, k, cov)")
        dy = ["0.0"] * len(names)
        for b in m.pk:
            for c in b.compartments:
                terms = "".join(f" {'-' if sign < 0 else '+'} {_py(rate)} * {a}" for sign, rate, a in b.flows(c))
                dy[names.index(c)] = "0.0" + terms
        for s in m.states:
            dy[names.index(s.name)] = _py(s.ode)
        for c, a in zip(concs, aucs):
            dy[names.index(a)] = f"max({c}, 0.0)"
        src.append("    return [" + ", ".join(dy) + "]")
        src.append("")
        src += scope("observe(y, k, cov)")
        row = [_py(e) for _, e in obs] + [f"max({c}, 0.0)" for c in concs] + \
            [f"y[{names.index(a)}]" for a in aucs]
        src.append("    return [" + ", ".join(row) + "]")
        ns: dict = {}
        exec(compile("\n".join(src), f"<tregpd.verify {m.name}>", "exec"), ns)
        outputs = tuple(m.output_names)
        if len(row) != len(outputs):  # pragma: no cover - guards the layout above
            raise VerifyError(f"solver check: {len(row)} outputs built for {len(outputs)} kernel columns")
        return cls(m, tuple(names), outputs, ns["constants"], ns["initial"], ns["rhs"], ns["observe"])

    def solve(self, theta_row, events, t_out, rtol: float = REF_RTOL) -> np.ndarray:
        """Reference trajectory of one patient: array (len(t_out), n_outputs) in the kernel's column order.

        ``events`` is a :class:`tregpd.model.dosing.EventTable`; doses after the last output time are ignored.
        Raises VerifyError if Radau fails.
        """
        from scipy.integrate import solve_ivp
        m = self.model
        k = self.constants(np.asarray(theta_row, float))
        y, cov = self.initial(k)
        y = np.array(y, float)
        t_out = np.asarray(t_out, float)
        doses = {d.cmt: d for d in m.doses}
        covs = {c.cmt: c for c in m.covariates}
        et, ec, ea = (np.asarray(events.time_day, float), np.asarray(events.cmt, int),
                      np.asarray(events.amount, float))
        keep = et <= t_out[-1]
        et, ec, ea = et[keep], ec[keep], ea[keep]

        def amount_into(d, amt):
            scale = 1.0
            if d.bioavailability:
                scale *= float(eval(d.bioavailability, {"__builtins__": {}}, dict(k)))
            if d.potency:
                scale *= float(eval(d.potency, {"__builtins__": {}}, dict(k)))
            return amt * scale

        # atol per state: its scale (initial value, or the largest dose into PK amounts), times 1e-12
        scale = np.abs(y).copy()
        for c, a in zip(ec, ea):
            if c in doses:
                i = self.names.index(doses[c].target)
                scale[i] = max(scale[i], abs(amount_into(doses[c], a)))
        atol = np.maximum(scale, 1e-300) * REF_ATOL_SCALE
        atol[scale == 0] = 1e-12
        # segments between event times only (a restart per output time would cost a new Jacobian each);
        # outputs inside a segment come from Radau's dense output, outputs at an event time are post-event
        breaks = np.unique(np.concatenate([[min(0.0, float(t_out[0]))], et, [t_out[-1]]]))
        out = np.full((t_out.size, len(self.outputs)), np.nan)
        peak = np.zeros(len(self.outputs))
        for j, t in enumerate(breaks):
            for td, c, a in zip(et, ec, ea):
                if td != t:
                    continue
                if c in covs:
                    cov[covs[c].name] = float(a)
                elif c in doses:
                    y[self.names.index(doses[c].target)] += amount_into(doses[c], a)
                else:
                    raise VerifyError(f"solver check: event CMT {c} is not declared by model {m.name!r}")
            row = np.asarray(self.observe(y, k, cov), float)
            peak = np.maximum(peak, np.abs(row))
            out[t_out == t] = row
            if j + 1 < breaks.size:
                t1 = breaks[j + 1]
                inside = t_out[(t_out > t) & (t_out < t1)]
                sol = solve_ivp(self.rhs, (t, t1), y, method="Radau", rtol=rtol, atol=atol, args=(k, cov),
                                dense_output=True)
                if not sol.success:
                    raise VerifyError(f"solver check: Radau failed at day {sol.t[-1]:g}: {sol.message}")
                if inside.size:
                    yi = sol.sol(inside)
                    idx = np.searchsorted(t_out, inside)
                    for q in range(inside.size):
                        out[idx[q]] = self.observe(yi[:, q], k, cov)
                # the scale of each output: its peak over every Radau step (not only the output grid)
                for q in range(sol.t.size):
                    peak = np.maximum(peak, np.abs(self.observe(sol.y[:, q], k, cov)))
                y = sol.y[:, -1].copy()
        self.last_peak = peak
        return out


_BUILT: dict = {}


def python_model(model=None) -> PythonModel:
    """The (cached) :class:`PythonModel` of a structure."""
    from .structures import get_model
    m = get_model(model)
    key = (m.name, m.content_hash)
    if key not in _BUILT:
        _BUILT[key] = PythonModel.build(m)
    return _BUILT[key]


# ------------------------------------------------------------------------------------------------ the check
@dataclass
class PatientCheck:
    """One patient's comparison: the worst normalised difference and where it is."""
    patient: object
    difference: float
    variable: str
    time_day: float
    kernel: float
    reference: float


@dataclass
class VerifyReport:
    """Result of :func:`verify_patients`.

    Attributes
    ----------
    checks : list of PatientCheck
        One per verified patient (row order of the selection).
    tol : float
        Tolerance on the largest normalised difference.
    label : str
        What was checked (e.g. a scenario name), used in messages.
    """
    checks: list = field(default_factory=list)
    tol: float = DEFAULT_TOL
    label: str = ""
    model: str = ""
    seed: int = 0
    requested: int = 0

    @property
    def worst(self) -> PatientCheck | None:
        return max(self.checks, key=lambda c: c.difference) if self.checks else None

    @property
    def max_difference(self) -> float:
        return float(self.worst.difference) if self.checks else 0.0

    @property
    def ok(self) -> bool:
        return self.max_difference <= self.tol

    def message(self) -> str:
        """One line: pass, or the failing patient, variable, time, difference and tolerance."""
        where = f"{self.label}: " if self.label else ""
        w = self.worst
        if w is None:
            return f"{where}solver check: no patient to verify"
        if self.ok:
            return (f"{where}solver check OK: {len(self.checks)} patient(s) re-simulated with scipy Radau "
                    f"(rtol {REF_RTOL:g}); largest normalised difference {w.difference:.2e} "
                    f"({w.variable}, patient {w.patient}, day {w.time_day:g}) <= tolerance {self.tol:g}")
        return (f"{where}solver check FAILED: patient {w.patient}, variable {w.variable}, day {w.time_day:g}: "
                f"kernel {w.kernel:.10g} vs Radau {w.reference:.10g}, normalised difference "
                f"{w.difference:.3e} > tolerance {self.tol:g}")

    def provenance(self) -> dict:
        """Flat entries for provenance.json / CSV headers."""
        w = self.worst
        return {"verify_patients": [c.patient for c in self.checks],
                "verify_max_difference": self.max_difference,
                "verify_worst": (f"patient {w.patient} {w.variable} day {w.time_day:g}" if w else ""),
                "verify_tolerance": self.tol, "verify_method": f"scipy Radau rtol {REF_RTOL:g}, plain-Python RHS",
                "verify_seed": self.seed}

    def raise_if_failed(self) -> "VerifyReport":
        if not self.ok:
            raise VerifyError(self.message())
        return self


def compare(kernel: np.ndarray, reference: np.ndarray, peak: np.ndarray | None = None) -> tuple[float, int, int]:
    """Largest normalised difference between two (T, V) trajectories: (value, time index, variable index).

    ``|a - b| / max(|b|, FLOOR_FRACTION * peak)``, ``peak`` (V,) the largest ``|reference|`` of each variable
    over the whole reference solution (default: over the rows given); exactly equal values count 0."""
    a = np.asarray(kernel, float)
    b = np.asarray(reference, float)
    if not np.all(np.isfinite(a)):
        i, j = np.argwhere(~np.isfinite(a))[0]
        return float("inf"), int(i), int(j)
    peak = np.max(np.abs(b), axis=0) if peak is None else np.maximum(np.asarray(peak, float),
                                                                        np.max(np.abs(b), axis=0))
    den = np.maximum(np.abs(b), FLOOR_FRACTION * peak[None, :])
    diff = np.abs(a - b)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / den)
    rel = np.where(np.isnan(rel), np.inf, rel)
    i, j = np.unravel_index(int(np.argmax(rel)), rel.shape)
    return float(rel[i, j]), int(i), int(j)


def _check_n(n, tol):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise TregpdError(f"--verify must be a whole number of patients >= 0, got {n!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol <= 0:
        raise TregpdError(f"--verify-tol must be a positive finite number, got {tol!r}")


def verify_patients(result, n: int = 1, seed: int = 0, tol: float = DEFAULT_TOL, *, events=None,
                    label: str = "", rows: Sequence[int] | None = None) -> VerifyReport:
    """Re-simulate ``n`` random patients of a run with the independent integrator and compare.

    Parameters
    ----------
    result : SimulationResult
        The run (values (P, T, V), ``theta`` (P, n_parameters), ``time_day`` (T,), ``regimen``, ``model``).
        Failed patients are not chosen.
    n : int
        Patients to check (at most the run's; 0 = none). Chosen with ``numpy.random.default_rng(seed)``
        without replacement; a single-patient run checks its patient.
    seed : int
    tol : float
        Tolerance on the largest normalised difference (see the module docstring).
    events : EventTable, or callable (row index -> EventTable), optional
        The doses of each patient; default the run's regimen (``result.regimen.events()``). Give a callable
        where patients have their own doses (trough-titrated sirolimus, :mod:`tregpd.scenarios.tdm`).
    label : str
        Named in messages (e.g. the scenario).
    rows : sequence of int, optional
        Check these rows instead of a random choice.

    Returns
    -------
    VerifyReport
        Call :meth:`VerifyReport.raise_if_failed` to turn a failure into :class:`VerifyError`.
    """
    _check_n(n, tol)
    if result.theta is None:
        raise TregpdError("verify_patients: the result carries no parameter matrix (theta)")
    pm = python_model(result.model)
    ok_rows = np.flatnonzero(result.ok)
    if rows is None:
        k = min(int(n), ok_rows.size)
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(ok_rows, size=k, replace=False)) if k else np.array([], int)
    report = VerifyReport(tol=float(tol), label=label, model=pm.model.name, seed=int(seed), requested=int(n))
    if events is None:
        if result.regimen is None:
            raise TregpdError("verify_patients: the result has no regimen; pass 'events'")
        base = result.regimen.events()
        ev_for = lambda r: base  # noqa: E731
    elif callable(events):
        ev_for = events
    else:
        ev_for = lambda r: events  # noqa: E731
    cols = list(pm.outputs)
    for r in rows:
        r = int(r)
        ref = pm.solve(result.theta[r], ev_for(r), result.time_day)
        ker = result.values[r][:, :len(cols)]
        d, i, j = compare(ker, ref, pm.last_peak)
        report.checks.append(PatientCheck(patient=result.patient_ids[r].item() if hasattr(result.patient_ids[r],
                                          "item") else result.patient_ids[r], difference=d, variable=cols[j],
                                          time_day=float(result.time_day[i]), kernel=float(ker[i, j]),
                                          reference=float(ref[i, j])))
    return report


def verify_titrated(result, titration, n: int = 1, seed: int = 0, tol: float = DEFAULT_TOL, label: str = "",
                    rows=None) -> VerifyReport:
    """:func:`verify_patients` for a trough-titrated run (:mod:`tregpd.scenarios.tdm`): every checked patient
    is re-simulated on his own titrated sirolimus doses (``titration`` rows in the order of ``result``)."""
    if titration is None:
        return verify_patients(result, n, seed, tol, label=label, rows=rows)
    doses = titration.segment_doses()
    return verify_patients(result, n, seed, tol, events=lambda r: titration.events_for(doses[r]), label=label,
                           rows=rows)


def merged_provenance(reports: Sequence[VerifyReport]) -> dict:
    """One provenance record for several reports (the largest difference over all of them)."""
    reports = [r for r in reports if r is not None]
    if not reports:
        return {}
    worst = max(reports, key=lambda r: r.max_difference)
    out = worst.provenance()
    out["verify_patients"] = {r.label or "run": [c.patient for c in r.checks] for r in reports}
    if worst.worst is not None:
        out["verify_worst"] = f"{worst.label}: {out['verify_worst']}" if worst.label else out["verify_worst"]
    return out

