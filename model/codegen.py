"""Compile a model declaration into numba kernels, cached on disk by content.

:func:`kernels_for` turns a :class:`~tregpd.model.declaration.ModelStructure` into a Python module of
``@njit(cache=True)`` functions: the generated, model-specific part (parameters -> derived constants,
covariates, segment values, forcing, right-hand sides in both state layouts, their analytic Jacobians, PK rate
matrices and eigenvalues, dose handling, output rows, the fast path's block sensitivities, and the lanes form
of the stage concentrations, forcing and Dormand-Prince step that the population kernel runs for LANES patients
at once) followed by the model-independent engine (``_engine.py``: Dormand-Prince 5(4), Rosenbrock 2(3), the
closed-form fast path, the lanes kernel and the patient/population drivers). The module is written once to
``<cache>/<name>_<key>.py``, where ``key`` hashes the declaration, this generator and the engine, and imported
from there; numba's cache sits beside it, so a kernel compiled for one declaration can never be served for
another (no stale caches).

Cache folder: ``$TREGPD_CACHE_DIR``, else ``$NUMBA_CACHE_DIR/tregpd``, else ``$XDG_CACHE_HOME/tregpd`` (default
``~/.cache/tregpd``). Generating needs sympy (Jacobian, eigenvalues, sensitivities); a warm start only reads
the generated file.

Right-hand sides are emitted from the declaration's expression strings *as written* (names replaced by array
reads, operation order kept); sympy is used only where algebra is needed.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import re
import sys
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import ModuleType

import numpy as np

from .declaration import FUNCTIONS, DeclarationError, ModelStructure, expression_names

GENERATOR_VERSION = "3"
_LOCK = threading.Lock()
_LOADED: dict[str, ModuleType] = {}

#: names the engine template expects from the generated part
ENGINE_INTERFACE = (
    "N_THETA", "N_P", "N_STATES", "N_Y_CF", "N_Y_ODE", "N_OUT", "N_BLOCKS", "N_MODES", "N_PK_AMOUNTS", "N_COV",
    "N_SEG", "N_FORCING", "BLOCK_SIZE", "BLOCK_START", "BLOCK_OFFSET", "BLOCK_OBSERVED", "MODE_BLOCK",
    "NONNEGATIVE", "derive", "initial_covariates", "segment_values", "forcing", "derivs_cf", "derivs_ode",
    "jac_cf", "jac_ode", "pk_matrix", "pk_eigs", "pk_scales", "initial_state_cf", "initial_state_ode",
    "apply_dose_cf", "apply_dose_ode", "record_cf", "record_ode", "block_sensitivity", "flush_negligible",
    "HAS_NEGLIGIBLE", "LANES", "lanes_stage_conc", "forcing_lanes", "dp5_step_lanes", "derivs_cf_lane")


def cache_dir() -> Path:
    """The folder for generated kernel modules (see the module docstring)."""
    if os.environ.get("TREGPD_CACHE_DIR"):
        return Path(os.environ["TREGPD_CACHE_DIR"])
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"]) / "tregpd"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tregpd"


def _engine_source() -> str:
    return resources.files("tregpd.model").joinpath("_engine.py").read_text()


_SOURCES_DIGEST: list = []


def _sources_digest() -> bytes:
    """SHA-256 of generator version + this file + the engine template, read once per process (the sources a
    running process generates kernels from cannot change under it; re-reading them cost ~0.1 ms per simulation)."""
    if not _SOURCES_DIGEST:
        h = hashlib.sha256()
        h.update(GENERATOR_VERSION.encode())
        h.update(Path(__file__).read_bytes())
        h.update(_engine_source().encode())
        _SOURCES_DIGEST.append(h.digest())
    return _SOURCES_DIGEST[0]


def cache_key(model: ModelStructure) -> str:
    """Hash of declaration + generator + engine (hex, 16 characters)."""
    h = hashlib.sha256()
    h.update(model.content_hash.encode())
    h.update(_sources_digest())
    return h.hexdigest()[:16]


# ============================================================================================ emitting
class _Rename(ast.NodeTransformer):
    def __init__(self, mapping: dict[str, str]):
        self.mapping = mapping

    def visit_Call(self, node):  # noqa: N802
        node.args = [self.visit(a) for a in node.args]
        fname = FUNCTIONS[node.func.id]
        node.func = ast.parse(fname, mode="eval").body
        return node

    def visit_Name(self, node):  # noqa: N802
        if node.id not in self.mapping:
            raise DeclarationError(f"codegen: no binding for name {node.id!r}")
        return ast.parse(self.mapping[node.id], mode="eval").body

    def visit_Constant(self, node):  # noqa: N802
        if isinstance(node.value, int):
            return ast.Constant(float(node.value))
        return node


def emit(expr: str, mapping: dict[str, str]) -> str:
    """Python source of ``expr`` with every name replaced by its binding (operation order kept)."""
    tree = ast.parse(expr, mode="eval")
    return ast.unparse(_Rename(mapping).visit(tree).body)


class _Hoister:
    """Moves per-patient constant work out of the per-stage code (derived automatically, no hand twins).

    :meth:`rewrite` returns an expression (declaration names) in which

    * every maximal subexpression of parameters/derived constants only (that is more than a name, a number or
      a negated name) is replaced by a new per-patient constant ``hoisted_k``, and
    * every division by such a constant, ``x / k``, becomes ``x * hoisted_j`` with ``hoisted_j = 1.0 / (k)``
      (a division by a number ``x / 4.0`` becomes ``x * 0.25``).

    The hoisted constants are computed once per patient by ``derive`` and appended to ``p`` after the derived
    constants (``N_THETA`` and the theta layout are unchanged). Operation order is otherwise kept, so values
    change at the ulp level only (a division replaced by a multiplication with the rounded reciprocal).
    Identical subexpressions share one constant.
    """

    def __init__(self, constants, first_index: int):
        self.const = set(constants)
        self.first = first_index
        self.exprs: list[str] = []
        self._key: dict[str, str] = {}

    @staticmethod
    def _names(node) -> set[str]:
        called = {id(n.func) for n in ast.walk(node) if isinstance(n, ast.Call)}
        return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and id(n) not in called}

    def _is_const(self, node) -> bool:
        return self._names(node) <= self.const

    @staticmethod
    def _trivial(node) -> bool:
        if isinstance(node, (ast.Name, ast.Constant)):
            return True
        return isinstance(node, ast.UnaryOp) and isinstance(node.operand, (ast.Name, ast.Constant))

    def _hoist(self, node) -> ast.Name:
        src = ast.unparse(node)
        key = ast.dump(ast.parse(src, mode="eval"))
        name = self._key.get(key)
        if name is None:
            name = f"hoisted_{len(self.exprs)}"
            self._key[key] = name
            self.exprs.append(src)
            self.const.add(name)
        return ast.Name(name, ast.Load())

    def _tr(self, node):
        if self._is_const(node) and not self._trivial(node) and self._names(node):
            return self._hoist(node)
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.Div) and self._is_const(node.right):
                left = self._tr(node.left)
                r = node.right
                if isinstance(r, ast.Constant) and float(r.value) != 0.0:
                    return ast.BinOp(left, ast.Mult(), ast.Constant(1.0 / float(r.value)))
                inv = self._hoist(ast.BinOp(ast.Constant(1.0), ast.Div(), r))
                return ast.BinOp(left, ast.Mult(), inv)
            node.left = self._tr(node.left)
            node.right = self._tr(node.right)
            return node
        if isinstance(node, ast.UnaryOp):
            node.operand = self._tr(node.operand)
            return node
        if isinstance(node, ast.Call):
            node.args = [self._tr(a) for a in node.args]
            return node
        return node

    def rewrite(self, expr: str) -> str:
        tree = ast.parse(expr, mode="eval")
        return ast.unparse(self._tr(tree.body))

    def constant(self, expr: str) -> str:
        """A per-patient constant for ``expr`` (parameters and derived constants only)."""
        node = ast.parse(expr, mode="eval").body
        if isinstance(node, ast.Name):
            return node.id
        return self._hoist(node).id

    def bindings(self) -> dict[str, str]:
        return {n: f"p[{self.first + k}]" for k, n in enumerate(f"hoisted_{i}" for i in range(len(self.exprs)))}


class _Layout:
    """Index bookkeeping for one structure."""

    def __init__(self, m: ModelStructure):
        self.m = m
        self.params = list(m.parameter_names)
        self.derived = [d.name for d in m.derived]
        self.covs = [c.name for c in m.covariates]
        tiers = m.tiers
        self.seg = [i.name for i in m.intermediates if tiers[i.name] in ("constant", "segment")]
        self.frc = [i.name for i in m.intermediates if tiers[i.name] == "forcing"]
        self.sti = [i.name for i in m.intermediates if tiers[i.name] == "state"]
        self.blocks = list(m.pk)
        self.states = list(m.state_names)
        self.cfs = list(m.concentrations_from_states)
        self.amounts = list(m.pk_amount_names)
        self.inter = {i.name: i for i in m.intermediates}

    def constants(self) -> dict[str, str]:
        mp = {n: f"p[{i}]" for i, n in enumerate(self.params)}
        mp.update({n: f"p[{len(self.params) + i}]" for i, n in enumerate(self.derived)})
        return mp

    def segment_scope(self) -> dict[str, str]:
        """Bindings inside and after segment_values: covariates are copied to the tail of ``seg``."""
        mp = self.constants()
        mp.update({n: f"seg[{len(self.seg) + i}]" for i, n in enumerate(self.covs)})
        mp.update({n: f"seg[{i}]" for i, n in enumerate(self.seg)})
        return mp


def _lines(body: list[str], indent: int = 4) -> str:
    return "\n".join(" " * indent + b for b in body) if body else " " * indent + "pass"


#: Patients integrated side by side by the population fast path (the engine's lanes kernel): one SIMD register
#: of float64 on AVX-512, two on AVX2.
LANES = 8
_ARRAY_REF = re.compile(r"\b(y|p|seg|c|frc|dy)\[(s, )?(\d+)\]")


class _LaneRows:
    """Row layout of the lanes workspace ``w`` (1-D float64, ``W_ROWS * LANES``; row ``r`` of lane ``l`` at
    ``w[r * LANES + l]``, a compile-time stride, so that loops over the lanes vectorise without alias checks):
    state at the step start (n), the seven DP5 stages (7n), the new solution (n), the step size, the error
    norm, the forcing at the five stage times (5 x N_FORCING), the closed-form concentrations at the five
    stage times (5 x N_BLOCKS), the segment values (N_SEG), the closed-form PK of the lane's dose segment
    (eigenvalues, coefficients, exp(l_j t) at the step start, exp(l_j h) of the step: N_MODES rows each; 1.0
    / 0.0 for an active / skipped block: N_BLOCKS rows) and the parameters (N_P, last)."""

    def __init__(self, n: int, nf: int, nb: int, nseg: int, n_modes: int, mode_block: list[int]):
        self.mode_block = mode_block
        self.n, self.nf, self.nb = n, max(nf, 1), max(nb, 1)
        self.rows = {"W_Y": 0, "W_K": n, "W_YN": 8 * n, "W_H": 9 * n, "W_EN": 9 * n + 1, "W_FRC": 9 * n + 2}
        self.rows["W_SC"] = self.rows["W_FRC"] + 5 * self.nf
        self.rows["W_SEG"] = self.rows["W_SC"] + 5 * self.nb
        nmr = max(n_modes, 1)
        self.rows["W_LAM"] = self.rows["W_SEG"] + max(nseg, 1)
        self.rows["W_COEF"] = self.rows["W_LAM"] + nmr
        self.rows["W_ENOW"] = self.rows["W_COEF"] + nmr
        self.rows["W_EWH"] = self.rows["W_ENOW"] + nmr
        self.rows["W_ACT"] = self.rows["W_EWH"] + nmr
        self.rows["W_P"] = self.rows["W_ACT"] + self.nb

    def at(self, row: int) -> str:
        return f"w[{row * LANES} + l]"

    def rewrite(self, line: str, stage: int, y: str | None = None, dy: str | None = None) -> str:
        """``line`` of a one-patient body with its array references replaced: forcing and concentrations of
        DP5 stage ``stage``, parameters and segment values from ``w``; states / derivatives from the local
        names ``{y}{i}`` / ``{dy}{i}`` or, when None, from rows W_Y / stage 0 of W_K."""
        r = self.rows

        def sub(m: re.Match) -> str:
            name, k = m.group(1), int(m.group(3))
            if name == "frc":
                return self.at(r["W_FRC"] + stage * self.nf + k)
            if name == "c":
                return self.at(r["W_SC"] + stage * self.nb + k)
            if name == "p":
                return self.at(r["W_P"] + k)
            if name == "seg":
                return self.at(r["W_SEG"] + k)
            if name == "y":
                return f"{y}{k}" if y is not None else self.at(r["W_Y"] + k)
            return f"{dy}{k}" if dy is not None else self.at(r["W_K"] + k)

        out = _ARRAY_REF.sub(sub, line)
        if re.search(r"\b(y|p|seg|c|frc|dy)\[", out):
            raise DeclarationError(f"codegen: cannot make a lanes form of the generated line {line!r}")
        return out


def _lanes_source(forcing_body: list[str], derivs_body: list[str], rows: _LaneRows) -> str:
    """The lanes functions of the engine's population kernel (lanes_stage_conc, forcing_lanes, dp5_step_lanes,
    derivs_cf_lane): per lane the statements of the engine's cf_stage_conc, the one-patient forcing / derivs_cf
    and the engine's DP5 step, in their order and with their operations (so each lane equals the one-patient
    kernel bit for bit), written out in loops over the lanes that the compiler vectorises (arithmetic, selects
    and the inlined exp_simd / stage_powers only)."""
    n = rows.n
    r = rows.rows
    at = rows.at
    out = [f"LANES = {LANES}"] + [f"{k} = {v}" for k, v in r.items()]
    # closed-form concentrations at the five stage times (the engine's cf_stage_conc, written out per mode)
    body = ["for l in range(LANES):", f"    h = {at(r['W_H'])}"]
    body += [f"    sc{s}_{b} = 0.0" for b in range(rows.nb) for s in range(5)]
    for j, b in enumerate(rows.mode_block):
        body += [f"    on = {at(r['W_ACT'] + b)} != 0.0",
                 f"    a = {at(r['W_COEF'] + j)} * {at(r['W_ENOW'] + j)}",
                 f"    e18, e27, e72, e80, e90 = stage_powers(exp_simd({at(r['W_LAM'] + j)} * h / 90.0))",
                 f"    {at(r['W_EWH'] + j)} = e90 if on else {at(r['W_EWH'] + j)}"]
        body += [f"    sc{s}_{b} += a * e{m} if on else 0.0" for s, m in enumerate((18, 27, 72, 80, 90))]
    body += [f"    {at(r['W_SC'] + s * rows.nb + b)} = sc{s}_{b}" for b in range(rows.nb) for s in range(5)]
    out.append("@njit(cache=True, error_model='numpy')\ndef lanes_stage_conc(w):\n"
               "    \"\"\"The engine's cf_stage_conc for every lane: rows W_LAM, W_COEF, W_ENOW, W_ACT and the step "
               "size W_H -> the stage concentrations (W_SC) and exp(l_j h) (W_EWH); per lane the same operations in "
               "the same order (a skipped block adds 0.0 to a sum that starts at 0.0 and keeps its W_EWH).\"\"\"\n"
               + _lines(body) + "\n")
    # forcing at the five stage times
    body = ["for l in range(LANES):"]
    for s in range(5):
        body += ["    " + rows.rewrite(line, s) for line in forcing_body]
    out.append("@njit(cache=True, error_model='numpy')\ndef forcing_lanes(w):\n"
               "    \"\"\"forcing at the five DP5 stage times of every lane, from the stage concentrations (rows "
               "W_SC) into rows W_FRC of the lanes workspace w.\"\"\"\n" + _lines(body) + "\n")
    # one DP5 step

    def comb(coef: str, stages: range, i: int) -> str:
        """0.0 + C[0] * k0_i + C[1] * k1_i + ...: the engine's accumulation order (acc = 0.0; acc += ...)."""
        return "0.0" + "".join(f" + {coef.format(r=q)} * k{q}_{i}" for q in stages)

    body = ["for l in range(LANES):", f"    h = {at(r['W_H'])}"]
    body += [f"    y0_{i} = {at(r['W_Y'] + i)}" for i in range(n)]
    body += [f"    k0_{i} = {at(r['W_K'] + i)}" for i in range(n)]
    for s in range(1, 6):
        body += [f"    ys_{i} = y0_{i} + h * ({comb('DP_A[' + str(s) + ', {r}]', range(s), i)})" for i in range(n)]
        body += ["    " + rows.rewrite(line, s - 1, "ys_", f"k{s}_") for line in derivs_body]
    body += [f"    yn_{i} = y0_{i} + h * ({comb('DP_B[{r}]', range(6), i)})" for i in range(n)]
    body += ["    " + rows.rewrite(line, 4, "yn_", "k6_") for line in derivs_body]
    body.append("    en = 0.0")
    for i in range(n):
        body.append(f"    e_{i} = h * ({comb('DP_E[{r}]', range(7), i)})")
        body.append(f"    sc = atol + rtol * max(abs(y0_{i}), abs(yn_{i}))")
        body.append(f"    en += (e_{i} / sc) ** 2")
    body.append(f"    {at(r['W_EN'])} = math.sqrt(en / {n})")
    body += [f"    {at(r['W_YN'] + i)} = yn_{i}" for i in range(n)]
    body += [f"    {at(r['W_K'] + s * n + i)} = k{s}_{i}" for s in range(1, 7) for i in range(n)]
    out.append("@njit(cache=True, error_model='numpy')\ndef dp5_step_lanes(w, rtol, atol):\n"
               "    \"\"\"One Dormand-Prince 5(4) step of every lane, written out: from the state (W_Y), the first "
               "stage (W_K row 0), the step size (W_H) and the stage forcing (W_FRC), the stages 1-6 into W_K, the "
               "solution into W_YN and its error norm into W_EN -- per lane the operations of the engine's "
               "dp5_stage_state, derivs_cf, dp5_solution, dp5_error and err_norm in their order.\"\"\"\n"
               + _lines(body) + "\n")
    # the right-hand side of one lane at its state, with the forcing at t + h (after a flush of negligible states)
    body = ["    " + rows.rewrite(line, 4) for line in derivs_body]
    out.append("@njit(cache=True, error_model='numpy')\ndef derivs_cf_lane(w, l):\n"
               "    \"\"\"derivs_cf of lane l at its state (W_Y) with the forcing of stage row 4 (t + h), into W_K row "
               "0.\"\"\"\n" + _lines([b[4:] for b in body]) + "\n")
    return "\n".join(out)


def _sympy_parse(expr: str, symbols: dict):
    import sympy
    from sympy.parsing.sympy_parser import parse_expr
    local = dict(symbols)
    local.update({"exp": sympy.exp, "log": sympy.log, "sqrt": sympy.sqrt, "min": sympy.Min, "max": sympy.Max})
    return parse_expr(expr, local_dict=local, evaluate=True)


def _printer(mapping: dict[str, str]):
    from sympy.printing.pycode import PythonCodePrinter

    class Printer(PythonCodePrinter):
        def _print_Symbol(self, expr):  # noqa: N802
            return mapping[expr.name]

        def _print_Heaviside(self, expr):  # noqa: N802
            return f"(1.0 if {self._print(expr.args[0])} > 0 else 0.0)"

        def _print_Max(self, expr):  # noqa: N802
            return "max(" + ", ".join(self._print(a) for a in expr.args) + ")"

        def _print_Min(self, expr):  # noqa: N802
            return "min(" + ", ".join(self._print(a) for a in expr.args) + ")"

        def _print_Rational(self, expr):  # noqa: N802
            return f"({float(expr.p)!r} / {float(expr.q)!r})"

        def _print_Integer(self, expr):  # noqa: N802
            return repr(float(expr))

    return Printer({"fully_qualified_modules": True, "standard": "python3"})


def _jacobian_body(exprs: list, wrt: list, mapping: dict[str, str], out: str) -> list[str]:
    """Lines assigning ``out[i, j] = d exprs[i] / d wrt[j]`` (nonzero entries), with common subexpressions."""
    import sympy
    entries = []
    for i, f in enumerate(exprs):
        for j, v in enumerate(wrt):
            d = sympy.diff(f, v)
            if d != 0:
                entries.append((i, j, d))
    if not entries:
        return []
    reps, reduced = sympy.cse([e for _, _, e in entries], symbols=sympy.numbered_symbols("_x"))
    mp = dict(mapping)
    for s, _ in reps:
        mp[s.name] = "j" + s.name
    pr = _printer(mp)
    lines = [f"j{s.name} = {pr.doprint(e)}" for s, e in reps]
    lines += [f"{out}[{i}, {j}] = {pr.doprint(e)}" for (i, j, _), e in zip(entries, reduced)]
    return lines


def generate_source(m: ModelStructure) -> str:
    """The full module source for structure ``m`` (generated part + engine)."""
    import sympy

    L = _Layout(m)
    n_theta, n_der = len(L.params), len(L.derived)
    nb = len(L.blocks)
    sizes = [len(b.compartments) for b in L.blocks]
    starts = [sum(sizes[:i]) for i in range(nb)]
    n_modes = sum(sizes)
    n_states = len(L.states)
    n_cfs = len(L.cfs)
    n_y_cf = n_states + n_cfs
    n_pk = len(L.amounts)
    n_y_ode = n_pk + n_states + nb + n_cfs
    n_out = len(m.output_names)
    H = _Hoister(set(L.params) | set(L.derived), n_theta + n_der)

    def hx(expr: str, scope: dict[str, str]) -> str:
        """emit() of the hoisted rewrite of ``expr`` (per-stage code: forcing and right-hand sides)."""
        return emit(H.rewrite(expr), {**scope, **H.bindings()})

    out: list[str] = []
    w = out.append
    w(f'"""Generated by tregpd.model.codegen for model {m.name!r} (declaration {m.content_hash}). Do not edit."""')
    w("import math\nimport numpy as np\nfrom numba import njit, prange\n")
    w(f"MODEL_NAME = {m.name!r}")
    w(f"N_THETA = {n_theta}\nN_P = __N_P__\nN_STATES = {n_states}\nN_Y_CF = {n_y_cf}\n"
      f"N_Y_ODE = {n_y_ode}\nN_OUT = {n_out}\nN_BLOCKS = {nb}\nN_MODES = {n_modes}\nN_PK_AMOUNTS = {n_pk}\n"
      f"N_COV = {len(L.covs)}\nN_SEG = {len(L.seg) + len(L.covs)}\nN_FORCING = {len(L.frc)}")
    w(f"BLOCK_SIZE = np.array({sizes or [0]}, dtype=np.int64)")
    w(f"BLOCK_START = np.array({starts or [0]}, dtype=np.int64)")
    w(f"BLOCK_OFFSET = np.array({starts or [0]}, dtype=np.int64)")
    w(f"BLOCK_OBSERVED = np.array({[b.compartments.index(b.observed) for b in L.blocks] or [0]}, dtype=np.int64)")
    mode_block = [b for b in range(nb) for _ in range(sizes[b])]
    w(f"MODE_BLOCK = np.array({mode_block or [0]}, dtype=np.int64)")
    w(f"NONNEGATIVE = np.array({[bool(s.nonnegative) for s in m.states]}, dtype=np.bool_)")
    w(f"OUTPUT_NAMES = {m.output_names!r}")
    w(f"I_SRC = {n_theta}  # first derived constant in p\n")

    const = L.constants()
    # ---- derive (emitted last: the hoisted constants are collected while the per-stage code is emitted)
    i_derive = len(out)
    w("__DERIVE__")
    # ---- covariates and segment values
    body = [f"cov[{k}] = {emit(c.initial, const)}" for k, c in enumerate(m.covariates)]
    w("@njit(cache=True)\ndef initial_covariates(p, cov):\n" + _lines(body) + "\n")
    seg_scope = L.segment_scope()
    body = [f"seg[{len(L.seg) + k}] = cov[{k}]" for k in range(len(L.covs))]
    body += [f"seg[{k}] = {emit(L.inter[n].expr, seg_scope)}" for k, n in enumerate(L.seg)]
    w("@njit(cache=True, error_model='numpy')\ndef segment_values(p, cov, seg):\n" + _lines(body) + "\n")
    # ---- forcing
    fscope = dict(seg_scope)
    body = []
    for b, blk in enumerate(L.blocks):
        body.append(f"v_{blk.name} = c[{b}] if c[{b}] > 0.0 else 0.0")
        fscope[blk.name] = f"v_{blk.name}"
    for k, n in enumerate(L.frc):
        body.append(f"v_{n} = {hx(L.inter[n].expr, fscope)}")
        body.append(f"frc[s, {k}] = v_{n}")
        fscope[n] = f"v_{n}"
    w("@njit(cache=True, error_model='numpy')\ndef forcing(c, seg, p, frc, s):\n"
      "    \"\"\"Forcing quantities (depend on closed-form concentrations, not on states) into frc[s].\"\"\"\n"
      + _lines(body) + "\n")
    forcing_body = body
    # ---- derivs_cf
    cscope = dict(seg_scope)
    cscope.update({n: f"frc[s, {k}]" for k, n in enumerate(L.frc)})
    cscope.update({n: f"y[{i}]" for i, n in enumerate(L.states)})
    body = []
    for n, (expr, _) in m.concentrations_from_states.items():
        body.append(f"v_{n} = {hx(expr, cscope)}")
        cscope[n] = f"v_{n}"
    for n in L.sti:
        body.append(f"v_{n} = {hx(L.inter[n].expr, cscope)}")
        cscope[n] = f"v_{n}"
    for i, s in enumerate(m.states):
        body.append(f"dy[{i}] = {hx(s.ode, cscope)}")
    for k, n in enumerate(L.cfs):
        body.append(f"dy[{n_states + k}] = v_{n} if v_{n} > 0.0 else 0.0")
    w("@njit(cache=True, error_model='numpy')\ndef derivs_cf(y, frc, s, seg, p, dy):\n"
      "    \"\"\"d/dt of the closed-form layout (states, AUCs of state concentrations) given forcing frc[s].\"\"\"\n"
      + _lines(body) + "\n")
    w(_lanes_source(forcing_body, body, _LaneRows(n_y_cf, len(L.frc), nb, len(L.seg) + len(L.covs), n_modes,
                                                     mode_block)))
    # ---- derivs_ode
    oscope = dict(seg_scope)
    amount_idx = {a: i for i, a in enumerate(L.amounts)}
    oscope.update({a: f"y[{i}]" for a, i in amount_idx.items()})
    oscope.update({n: f"y[{n_pk + i}]" for i, n in enumerate(L.states)})
    body = []
    for b, blk in enumerate(L.blocks):
        sc = dict(oscope)
        sc["amount"] = f"y[{amount_idx[blk.observed]}]"
        body.append(f"v_{blk.name} = max({hx(blk.concentration, sc)}, 0.0)")
        oscope[blk.name] = f"v_{blk.name}"
    for n, (expr, _) in m.concentrations_from_states.items():
        body.append(f"v_{n} = {hx(expr, oscope)}")
        oscope[n] = f"v_{n}"
    for i in m.intermediates:
        if i.name in L.seg:
            continue
        body.append(f"v_{i.name} = {hx(i.expr, oscope)}")
        oscope[i.name] = f"v_{i.name}"
    for b, blk in enumerate(L.blocks):
        for c in blk.compartments:
            terms = [f"{'-' if sign < 0 else '+'} ({hx(k, oscope)}) * y[{amount_idx[a]}]"
                     for sign, k, a in blk.flows(c)]
            body.append(f"dy[{amount_idx[c]}] = 0.0 " + " ".join(terms))
    for i, s in enumerate(m.states):
        body.append(f"dy[{n_pk + i}] = {hx(s.ode, oscope)}")
    for k, n in enumerate(list(b.name for b in L.blocks) + L.cfs):
        body.append(f"dy[{n_pk + n_states + k}] = v_{n} if v_{n} > 0.0 else 0.0")
    w("@njit(cache=True, error_model='numpy')\ndef derivs_ode(y, seg, p, dy):\n"
      "    \"\"\"d/dt of the PK-as-states layout (PK amounts, states, AUCs).\"\"\"\n" + _lines(body) + "\n")

    # ---- sympy: Jacobians, eigenvalues, sensitivities
    names = (set(L.params) | set(L.derived) | set(L.covs) | set(L.seg) | set(L.frc) | set(L.sti) | set(L.states)
             | set(L.cfs) | set(L.amounts) | {b.name for b in L.blocks})
    sym = {n: sympy.Symbol(n, real=True) for n in names}
    # CF layout Jacobian: forcing and segment quantities are constants w.r.t. y
    subs_st: dict = {}
    for n, (expr, _) in m.concentrations_from_states.items():
        subs_st[sym[n]] = _sympy_parse(expr, sym).subs(subs_st)
    for n in L.sti:
        subs_st[sym[n]] = _sympy_parse(L.inter[n].expr, sym).subs(subs_st)
    f_cf = [_sympy_parse(s.ode, sym).subs(subs_st) for s in m.states]
    f_cf += [sympy.Max(subs_st[sym[n]], 0) for n in L.cfs]
    y_cf = [sym[n] for n in L.states] + [sympy.Symbol(f"__auc{k}") for k in range(n_cfs)]
    jmap = {n: v for n, v in cscope.items() if not v.startswith("v_")}
    jmap.update({n: f"frc[s, {k}]" for k, n in enumerate(L.frc)})
    body = ["for i in range(N_Y_CF):", "    for j in range(N_Y_CF):", "        J[i, j] = 0.0"]
    body += _jacobian_body(f_cf, y_cf, jmap, "J")
    w("@njit(cache=True, error_model='numpy')\ndef jac_cf(y, frc, s, seg, p, J):\n"
      "    \"\"\"Analytic Jacobian of derivs_cf (sympy).\"\"\"\n" + _lines(body) + "\n")
    # ODE layout Jacobian: everything expanded to amounts and states
    subs_o: dict = {}
    for blk in L.blocks:
        subs_o[sym[blk.name]] = sympy.Max(_sympy_parse(blk.concentration, {**sym, "amount": sym[blk.observed]}), 0)
    for n, (expr, _) in m.concentrations_from_states.items():
        subs_o[sym[n]] = _sympy_parse(expr, sym).subs(subs_o)
    for i in m.intermediates:
        if i.name in L.seg:
            continue
        subs_o[sym[i.name]] = _sympy_parse(i.expr, sym).subs(subs_o)
    f_o = []
    for blk in L.blocks:
        for c in blk.compartments:
            e = sympy.Integer(0)
            for sign, k, a in blk.flows(c):
                e += sign * _sympy_parse(k, sym) * sym[a]
            f_o.append(e)
    f_o += [_sympy_parse(s.ode, sym).subs(subs_o) for s in m.states]
    f_o += [sympy.Max(subs_o[sym[blk.name]], 0) for blk in L.blocks]
    f_o += [sympy.Max(subs_o[sym[n]], 0) for n in L.cfs]
    y_o = [sym[a] for a in L.amounts] + [sym[n] for n in L.states] + \
        [sympy.Symbol(f"__aucb{k}") for k in range(nb + n_cfs)]
    omap = {n: v for n, v in oscope.items() if not v.startswith("v_")}
    body = ["for i in range(N_Y_ODE):", "    for j in range(N_Y_ODE):", "        J[i, j] = 0.0"]
    body += _jacobian_body(f_o, y_o, omap, "J")
    w("@njit(cache=True, error_model='numpy')\ndef jac_ode(y, seg, p, J):\n"
      "    \"\"\"Analytic Jacobian of derivs_ode (sympy).\"\"\"\n" + _lines(body) + "\n")

    # ---- PK blocks: rate matrices, eigenvalues, concentration scales
    body = []
    eig_body = []
    for b, blk in enumerate(L.blocks):
        n = len(blk.compartments)
        idx = {c: i for i, c in enumerate(blk.compartments)}
        kexpr = {}
        for (src, dst), k in blk.rates.items():
            kexpr.setdefault((idx[src], idx[src]), []).append(f"- ({emit(k, const)})")
            if dst is not None:
                kexpr.setdefault((idx[dst], idx[src]), []).append(f"+ ({emit(k, const)})")
        body.append(f"if b == {b}:")
        body.append(f"    k = np.zeros(({n}, {n}))")
        for (r, c), terms in kexpr.items():
            body.append(f"    k[{r}, {c}] = 0.0 " + " ".join(terms))
        body.append("    return k")
        kmat = sympy.zeros(n, n)
        kmap = {}
        for (r, c) in kexpr:
            s_ = sympy.Symbol(f"k_{r}_{c}", real=True)
            kmat[r, c] = s_
            kmap[s_.name] = f"k[{r}, {c}]"
        ev = kmat.eigenvals(multiple=True)
        if len(ev) != n or any(e.has(sympy.I) or e.has(sympy.CRootOf) for e in ev):
            raise DeclarationError(f"model {m.name!r}: PK block {blk.name!r} has no real closed-form eigenvalues; "
                                   "declare it as states")
        pr = _printer(kmap)
        eig_body.append(f"if b == {b}:")
        eig_body.append(f"    ev = np.empty({n})")
        for j, e in enumerate(ev):
            eig_body.append(f"    ev[{j}] = {pr.doprint(e)}")
        eig_body.append("    return ev")
        conc = _sympy_parse(blk.concentration, {**sym, "amount": sympy.Symbol("amount")})
        a_ = sympy.Symbol("amount")
        if sympy.simplify(sympy.diff(conc, a_, 2)) != 0 or sympy.simplify(conc.subs(a_, 0)) != 0:
            raise DeclarationError(f"model {m.name!r}: PK block {blk.name!r}: concentration must be linear in "
                                   "the amount and zero at zero amount")
    body.append("return np.zeros((1, 1))")
    eig_body.append("return np.zeros(1)")
    w("@njit(cache=True)\ndef pk_matrix(p, b):\n    \"\"\"Rate matrix (1/day) of linear PK block b.\"\"\"\n"
      + _lines(body) + "\n")
    w("@njit(cache=True, error_model='numpy')\ndef pk_eigs(k, b):\n"
      "    \"\"\"Eigenvalues of block b's rate matrix k (closed form by sympy).\"\"\"\n" + _lines(eig_body) + "\n")
    body = []
    for b, blk in enumerate(L.blocks):
        sc = dict(const)
        sc["amount"] = "1.0"
        body.append(f"scales[{b}] = {emit(blk.concentration, sc)}")
    w("@njit(cache=True)\ndef pk_scales(p, scales):\n    \"\"\"Concentration per unit amount of each block.\"\"\"\n"
      + _lines(body) + "\n")
    # ---- initial states
    body = [f"y[{i}] = {emit(s.initial, const)}" for i, s in enumerate(m.states)]
    w("@njit(cache=True)\ndef initial_state_cf(p, y):\n" + _lines(body) + "\n")
    body = [f"y[{n_pk + i}] = {emit(s.initial, const)}" for i, s in enumerate(m.states)]
    w("@njit(cache=True)\ndef initial_state_ode(p, y):\n" + _lines(body) + "\n")
    # ---- doses
    body_cf, body_o = [], []
    for d in m.doses:
        f = "" if d.bioavailability is None else f" * {const[d.bioavailability]}"
        f += "" if d.potency is None else f" * {const[d.potency]}"
        if d.target in amount_idx:
            body_cf += [f"if cmt == {d.cmt}:", f"    a[{amount_idx[d.target]}] += amt{f}", "    return 1"]
            body_o += [f"if cmt == {d.cmt}:", f"    y[{amount_idx[d.target]}] += amt{f}", "    return 1"]
        else:
            i = L.states.index(d.target)
            body_cf += [f"if cmt == {d.cmt}:", f"    y[{i}] += amt{f}", "    return 1"]
            body_o += [f"if cmt == {d.cmt}:", f"    y[{n_pk + i}] += amt{f}", "    return 1"]
    for k, c in enumerate(m.covariates):
        for bd in (body_cf, body_o):
            bd += [f"if cmt == {c.cmt}:", f"    cov[{k}] = amt", "    return 2"]
    body_cf.append("return 0")
    body_o.append("return 0")
    w("@njit(cache=True)\ndef apply_dose_cf(cmt, amt, p, a, y, cov):\n"
      "    \"\"\"Apply one event (closed-form layout); returns 1 for a dose, 2 for a covariate change, 0 if "
      "ignored.\"\"\"\n" + _lines(body_cf) + "\n")
    w("@njit(cache=True)\ndef apply_dose_ode(cmt, amt, p, y, cov):\n" + _lines(body_o) + "\n")
    # ---- output rows: observables, closed-form concentrations, concentrations from states, AUCs
    n_obs = len(m.observables)
    n_conc = nb + n_cfs

    def record_body(rscope, closed_conc, aucs):
        body = []
        for n, (expr, _) in m.concentrations_from_states.items():
            body.append(f"v_{n} = {emit(expr, rscope)}")
            rscope[n] = f"v_{n}"
        body += [f"row[{k}] = {emit(o.expr, rscope)}" for k, o in enumerate(m.observables)]
        body += [f"row[{n_obs + b}] = {c}" for b, c in enumerate(closed_conc(rscope))]
        body += [f"row[{n_obs + nb + k}] = max(v_{n}, 0.0)" for k, n in enumerate(L.cfs)]
        body += [f"row[{n_obs + n_conc + k}] = {a}" for k, a in enumerate(aucs)]
        return body

    rscope = dict(const)
    rscope.update({n: f"y[{i}]" for i, n in enumerate(L.states)})
    body = record_body(rscope, lambda sc: [f"cconc[{b}]" for b in range(nb)],
                       [f"cauc[{b}]" for b in range(nb)] + [f"y[{n_states + k}]" for k in range(n_cfs)])
    w("@njit(cache=True)\ndef record_cf(row, y, cconc, cauc, p, seg):\n" + _lines(body) + "\n")
    rscope = dict(const)
    rscope.update({a: f"y[{i}]" for a, i in amount_idx.items()})
    rscope.update({n: f"y[{n_pk + i}]" for i, n in enumerate(L.states)})
    body = record_body(rscope, lambda sc: [
        f"max({emit(blk.concentration, {**sc, 'amount': f'y[{amount_idx[blk.observed]}]'})}, 0.0)"
        for blk in L.blocks], [f"y[{n_pk + n_states + k}]" for k in range(n_conc)])
    w("@njit(cache=True)\ndef record_ode(row, y, p, seg):\n" + _lines(body) + "\n")
    # ---- block sensitivities (fast-path skipping)
    body = []
    interface = set()
    for n in L.sti:
        interface |= expression_names(L.inter[n].expr, n) & set(L.frc)
    for s in m.states:
        interface |= expression_names(s.ode, s.name) & set(L.frc)
    frc_sub = {}
    for n in L.frc:
        frc_sub[n] = _sympy_parse(L.inter[n].expr, sym)
    allowed = set(L.params) | set(L.derived) | set(L.seg) | set(L.covs)
    smap = {n: v for n, v in seg_scope.items()}
    for b, blk in enumerate(L.blocks):
        c = sym[blk.name]
        body.append(f"sens[{b}] = 0.0")
        for n in sorted(interface):
            e = sym[n]
            # expand the forcing quantities that depend on this concentration; keep the others as symbols
            for _ in range(len(L.frc) + 1):
                e2 = e.subs({sym[k]: v for k, v in frc_sub.items() if v.has(c) or k == n})
                if e2 == e:
                    break
                e = e2
            if not e.has(c):
                continue
            num = sympy.diff(e, c).subs(c, 0)
            den = e.subs(c, 0)
            r = sympy.cancel(num / den) if den != 0 else sympy.zoo
            if r.has(sympy.zoo, sympy.nan, sympy.oo) or not {str(x) for x in r.free_symbols} <= allowed:
                body.append(f"sens[{b}] = math.inf  # {n}: not bounded relative to its zero-concentration value")
                continue
            body.append(f"r = abs({_printer(smap).doprint(r)})  # {n}")
            body.append(f"if not (r <= sens[{b}]):")
            body.append(f"    sens[{b}] = r if math.isfinite(r) else math.inf")
    w("@njit(cache=True, error_model='numpy')\ndef block_sensitivity(p, seg, sens):\n"
      "    \"\"\"Largest relative change, per unit concentration at zero concentration, of any forcing quantity "
      "the states see, per PK block.\"\"\"\n" + _lines(body) + "\n")
    # ---- negligible states (flushed to exactly 0 after accepted steps; see _engine.py "Negligible states")
    deps_memo: dict[str, set[str]] = {}
    sources = {i.name: i.expr for i in m.intermediates}
    sources.update({n: e for n, (e, _) in m.concentrations_from_states.items()})

    def deps(name_or_expr: str, expr: str) -> set[str]:
        if name_or_expr in deps_memo:
            return deps_memo[name_or_expr]
        outn: set[str] = set()
        for d in expression_names(expr, name_or_expr):
            outn.add(d)
            if d in sources:
                outn |= deps(d, sources[d])
        deps_memo[name_or_expr] = outn
        return outn

    neg = [(i, s_) for i, s_ in enumerate(m.states) if s_.negligible is not None]
    body = []
    if neg:
        nb_ = H.bindings()
        for i, s_ in neg:
            k = H.constant(s_.negligible)
            nb_ = H.bindings()
            body.append(f"ok{i} = abs(y[off + {i}]) <= {nb_.get(k, const.get(k))} and y[off + {i}] * f[off + {i}] <= 0.0")
        body.append("flushed = False")
        for i, s_ in neg:
            feed = [j for j, s2 in neg if j != i and s2.name in deps("ode:" + s_.name, s_.ode)]
            cond = " and ".join([f"ok{i}"] + [f"ok{j}" for j in feed])
            body += [f"if {cond} and y[off + {i}] != 0.0:  # {s_.name}"
                     + (f" (fed by {', '.join(m.states[j].name for j in feed)})" if feed else ""),
                     f"    y[off + {i}] = 0.0", "    flushed = True"]
        body.append("return flushed")
    else:
        body.append("return False")
    w(f"HAS_NEGLIGIBLE = {bool(neg)}")
    w("@njit(cache=True)\ndef flush_negligible(y, f, p, off):\n"
      "    \"\"\"Set negligible, non-growing states (declared ``negligible``) to exactly 0 after an accepted step;\n"
      "    ``f`` = dy/dt at ``y``, states at ``y[off:]``. Returns True if a state was changed.\"\"\"\n"
      + _lines(body) + "\n")
    # ---- derive (parameters, derived constants, hoisted per-patient constants)
    body = ["p = np.empty(N_P)", "for i in range(N_THETA):", "    p[i] = theta[i]"]
    for k, d in enumerate(m.derived):
        body.append(f"p[{n_theta + k}] = {emit(d.expr, const)}")
    hb = H.bindings()
    for k, e in enumerate(H.exprs):
        body.append(f"p[{n_theta + n_der + k}] = {emit(e, {**const, **hb})}  # hoisted_{k}")
    body.append("return p")
    out[i_derive] = ("@njit(cache=True)\ndef derive(theta):\n    \"\"\"theta (N_THETA,) -> p (N_P,): parameters, derived "
                     "constants, then per-patient constants hoisted out of the per-stage code.\"\"\"\n"
                     + _lines(body) + "\n")
    w("\n# " + "=" * 100 + "\n# engine (tregpd/model/_engine.py)\n")
    w(_engine_source())
    return "\n".join(out).replace("N_P = __N_P__", f"N_P = {n_theta + n_der + len(H.exprs)}", 1) + "\n"


# ========================================================================================== loading
@dataclass(frozen=True)
class CompiledModel:
    """A structure and its compiled kernel module."""

    structure: ModelStructure
    module: ModuleType
    path: Path

    def __getattr__(self, name):
        return getattr(self.module, name)


def _import(path: Path, modname: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(modname, None)
        raise
    return mod


def kernels_for(model: ModelStructure) -> ModuleType:
    """The compiled kernel module of ``model`` (generated and written on first use, then cached)."""
    key = cache_key(model)
    with _LOCK:
        mod = _LOADED.get(key)
        if mod is not None:
            return mod
        folder = cache_dir()
        path = folder / f"{model.name}_{key}.py"
        if not path.is_file():
            src = generate_source(model)
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
            tmp.write_text(src)
            os.replace(tmp, path)
        mod = _import(path, f"tregpd_kernels_{model.name}_{key}")
        missing = [n for n in ENGINE_INTERFACE if not hasattr(mod, n)]
        if missing:  # pragma: no cover - generator bug
            raise DeclarationError(f"generated kernels for {model.name!r} lack {missing}")
        _LOADED[key] = mod
        return mod
