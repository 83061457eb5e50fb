"""The reference model written the way a user of each peer tool would write it.

All peers integrate the same 8-state ODE (PK as ODE states, no AUC states)::

    y = (A_il2_depot [IU], A_il2_central [IU], A_rapa_gut [mg], A_rapa_central [mg], A_rapa_periph [mg],
         naive, treg, th17 [cells/uL])

segment by segment between dose times, applying each dose as a jump of its compartment (the dosing
convention of tregpd, NONMEM and mrgsolve). Parameters are the kernel vector ``p`` of
:func:`tregpd.model.kernels.derive` (theta plus the derived baseline-balancing rates), so every tool sees
bit-identical numbers.

The hand-written right-hand sides below are the independent peers of the default structure (``sat0261_v1``).
For every registered structure, :class:`StructurePeer` writes a plain-Python right-hand side from the
structure's declaration (one line per declared expression, compiled once with Python's ``compile``), which is
what a user without tregpd would write by hand; the benchmark checks it against the hand-written one for the
default structure (identical derivatives) and uses it for the per-structure rows.

Nothing here is used by the package; it is benchmark code.
"""
from __future__ import annotations

import math

import numpy as np
from numba import carray, cfunc, njit, types

import bench_kernels as K
from tregpd.model.parameters import (
    I_POTENCY_CHINESE, I_POTENCY_ILT101, I_IL2_KA, I_IL2_F, I_IL2_CL, I_IL2_V, I_IL2_PMOL_PER_IU, I_RAPA_KA, I_RAPA_CL, I_RAPA_VC,
    I_RAPA_Q, I_RAPA_VP, I_EC50_TREG, I_EC50_EFF, I_RAPA_IC50, I_N0, I_R0, I_T0, I_NAIVE_DEATH, I_N_TO_R,
    I_N_TO_T, I_R_PROLIF, I_T_PROLIF, I_R_CROWD, I_R_SUPPRESS, I_IL2_EMAX_R, I_IL2_EMAX_T, I_IL2_IMAX_TDIFF,
    I_RAPA_EMAX_RIND, I_RAPA_IMAX_TDIFF, I_RAPA_IMAX_TPROLIF, I_T_CROWD,
)

N_STATE = 8
#: state index receiving a dose of each NONMEM compartment (1 IL-2 depot, 2 IL-2 central, 3 sirolimus gut)
DOSE_STATE = {1: 0, 2: 1, 3: 2, 10: 0, 11: 1, 12: 0, 13: 1}
TREG, TH17 = 6, 7


def derived_parameters(theta: np.ndarray) -> np.ndarray:
    """Kernel parameter vector ``p`` (N_P,) for one patient (theta plus derived rates)."""
    return K.derive(np.ascontiguousarray(theta, dtype=np.float64))


def initial_state(p: np.ndarray) -> np.ndarray:
    y = np.zeros(N_STATE)
    y[5], y[6], y[7] = p[I_N0], p[I_R0], p[I_T0]
    return y


# ------------------------------------------------------------------------------------- Python RHS
def rhs_python(t, y, p):
    """The model as a pharmacometrician writes it for scipy: plain Python floats, one state per line."""
    a_d, a_c, gut, cen, per, naive, treg, th17 = y
    ka2 = p[I_IL2_KA]
    ke2 = p[I_IL2_CL] / p[I_IL2_V]
    ka3 = p[I_RAPA_KA]
    k10 = p[I_RAPA_CL] / p[I_RAPA_VC]
    k12 = p[I_RAPA_Q] / p[I_RAPA_VC]
    k21 = p[I_RAPA_Q] / p[I_RAPA_VP]
    c_il2 = max(a_c * p[I_IL2_PMOL_PER_IU] / p[I_IL2_V], 0.0)
    c_rapa = max(1000.0 * cen / p[I_RAPA_VC], 0.0)
    s_r = c_il2 / (c_il2 + p[I_EC50_TREG])
    s_e = c_il2 / (c_il2 + p[I_EC50_EFF])
    i_m = c_rapa / (c_rapa + p[I_RAPA_IC50])
    ind = p[I_N_TO_R] * (1.0 + p[I_RAPA_EMAX_RIND] * i_m)
    dif = p[I_N_TO_T] * (1.0 - p[I_IL2_IMAX_TDIFF] * s_e) * (1.0 - p[I_RAPA_IMAX_TDIFF] * i_m)
    return [
        -ka2 * a_d,
        ka2 * a_d - ke2 * a_c,
        -ka3 * gut,
        ka3 * gut - (k10 + k12) * cen + k21 * per,
        k12 * cen - k21 * per,
        p[K.I_SRC_N] - (p[I_NAIVE_DEATH] + ind + dif) * naive,
        ind * naive + p[I_R_PROLIF] * (1.0 + p[I_IL2_EMAX_R] * s_r) * treg
        - p[K.I_DEATH_R] * treg * (1.0 + treg / p[I_R_CROWD]),
        dif * naive + p[I_T_PROLIF] * (1.0 + p[I_IL2_EMAX_T] * s_e) * (1.0 - p[I_RAPA_IMAX_TPROLIF] * i_m)
        * th17 / (1.0 + treg / p[I_R_SUPPRESS]) - p[K.I_DEATH_T] * th17 * (1.0 + th17 / p[I_T_CROWD]),
    ]


def jac_python(t, y, p):
    """Analytic Jacobian is not written: users of solve_ivp usually let it finite-difference (None)."""
    return None


# -------------------------------------------------------------------------------------- numba RHS
@njit(cache=True)
def rhs_inplace(t, y, p, dy):
    """Same equations as :func:`rhs_python`, writing ``dy`` (numba)."""
    ka2 = p[I_IL2_KA]
    ke2 = p[I_IL2_CL] / p[I_IL2_V]
    ka3 = p[I_RAPA_KA]
    k10 = p[I_RAPA_CL] / p[I_RAPA_VC]
    k12 = p[I_RAPA_Q] / p[I_RAPA_VC]
    k21 = p[I_RAPA_Q] / p[I_RAPA_VP]
    dy[0] = -ka2 * y[0]
    dy[1] = ka2 * y[0] - ke2 * y[1]
    dy[2] = -ka3 * y[2]
    dy[3] = ka3 * y[2] - (k10 + k12) * y[3] + k21 * y[4]
    dy[4] = k12 * y[3] - k21 * y[4]
    c_il2 = max(y[1] * p[I_IL2_PMOL_PER_IU] / p[I_IL2_V], 0.0)
    c_rapa = max(1000.0 * y[3] / p[I_RAPA_VC], 0.0)
    s_r = c_il2 / (c_il2 + p[I_EC50_TREG])
    s_e = c_il2 / (c_il2 + p[I_EC50_EFF])
    i_m = c_rapa / (c_rapa + p[I_RAPA_IC50])
    ind = p[I_N_TO_R] * (1.0 + p[I_RAPA_EMAX_RIND] * i_m)
    dif = p[I_N_TO_T] * (1.0 - p[I_IL2_IMAX_TDIFF] * s_e) * (1.0 - p[I_RAPA_IMAX_TDIFF] * i_m)
    naive = y[5]
    treg = y[6]
    th17 = y[7]
    dy[5] = p[K.I_SRC_N] - (p[I_NAIVE_DEATH] + ind + dif) * naive
    dy[6] = (ind * naive + p[I_R_PROLIF] * (1.0 + p[I_IL2_EMAX_R] * s_r) * treg
             - p[K.I_DEATH_R] * treg * (1.0 + treg / p[I_R_CROWD]))
    dy[7] = (dif * naive + p[I_T_PROLIF] * (1.0 + p[I_IL2_EMAX_T] * s_e) * (1.0 - p[I_RAPA_IMAX_TPROLIF] * i_m)
             * th17 / (1.0 + treg / p[I_R_SUPPRESS]) - p[K.I_DEATH_T] * th17 * (1.0 + th17 / p[I_T_CROWD]))


@njit(cache=True)
def rhs_numba(t, y, p):
    """numba right-hand side returning a new array, for solve_ivp(fun=rhs_numba)."""
    dy = np.empty(8)
    rhs_inplace(t, y, p, dy)
    return dy


# numbalsoda's cfunc signature: void rhs(double t, double *u, double *du, double *p)
_LSODA_SIG = types.void(types.double, types.CPointer(types.double), types.CPointer(types.double),
                        types.CPointer(types.double))


@cfunc(_LSODA_SIG, cache=True)
def rhs_cfunc(t, u, du, p):
    u_ = carray(u, (8,))
    du_ = carray(du, (8,))
    p_ = carray(p, (K.N_P,))
    rhs_inplace(t, u_, p_, du_)


# ------------------------------------------------------------------------------------ drivers
def segments(dose_t, t_end):
    """Segment boundaries: 0, each distinct dose time in (0, t_end), t_end."""
    inner = np.unique(dose_t[(dose_t > 0) & (dose_t < t_end)])
    return np.concatenate([[0.0], inner, [t_end]])


def apply_doses(y, p, t, dose_t, dose_cmt, dose_amt):
    """Add the doses given at time ``t`` (IL-2 s.c. dose scaled by bioavailability; product compartments 10-13
    by the product's potency). CMT 9 (prednisone level) is not a dose: the peers carry no taper."""
    for i in np.flatnonzero(dose_t == t):
        c = int(dose_cmt[i])
        if c not in DOSE_STATE:
            continue
        pot = {10: p[I_POTENCY_CHINESE], 11: p[I_POTENCY_CHINESE], 12: p[I_POTENCY_ILT101],
               13: p[I_POTENCY_ILT101]}.get(c, 1.0)
        amt = dose_amt[i] * pot * (p[I_IL2_F] if c in (1, 10, 12) else 1.0)
        y[DOSE_STATE[c]] += amt


def solve_ivp_patient(p, events, t_out, method="LSODA", rtol=1e-6, atol=1e-8, fun=rhs_python):
    """Integrate one patient with scipy.integrate.solve_ivp segment by segment; returns (n_out, 8).

    Output at a dose time is the post-dose value (tregpd's convention). ``t_out`` must be sorted.
    """
    from scipy.integrate import solve_ivp
    t_end = float(t_out[-1])
    bounds = segments(events.time_day, t_end)
    y = initial_state(p)
    out = np.empty((t_out.size, N_STATE))
    k = 0
    nfev = 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        apply_doses(y, p, a, events.time_day, events.cmt, events.amount)
        while k < t_out.size and t_out[k] <= a:
            out[k] = y
            k += 1
        inside = t_out[(t_out > a) & (t_out < b)]
        sol = solve_ivp(fun, (a, b), y, method=method, rtol=rtol, atol=atol, args=(p,),
                        t_eval=np.concatenate([inside, [b]]))
        if not sol.success:
            raise RuntimeError(f"solve_ivp {method} failed at t={a}: {sol.message}")
        nfev += sol.nfev
        for j in range(inside.size):
            out[k] = sol.y[:, j]
            k += 1
        y = sol.y[:, -1].copy()
    apply_doses(y, p, t_end, events.time_day, events.cmt, events.amount)
    while k < t_out.size:
        out[k] = y
        k += 1
    return out, nfev


def numbalsoda_patient(p, events, t_out, rtol=1e-6, atol=1e-8):
    """Integrate one patient with numbalsoda.lsoda (cfunc RHS) segment by segment; returns (n_out, 8)."""
    import numbalsoda
    t_end = float(t_out[-1])
    bounds = segments(events.time_day, t_end)
    y = initial_state(p)
    out = np.empty((t_out.size, N_STATE))
    k = 0
    fptr = rhs_cfunc.address
    for a, b in zip(bounds[:-1], bounds[1:]):
        apply_doses(y, p, a, events.time_day, events.cmt, events.amount)
        while k < t_out.size and t_out[k] <= a:
            out[k] = y
            k += 1
        inside = t_out[(t_out > a) & (t_out < b)]
        t_eval = np.concatenate([[a], inside, [b]])
        usol, ok = numbalsoda.lsoda(fptr, y, t_eval, data=p, rtol=rtol, atol=atol)
        if not ok:
            raise RuntimeError(f"numbalsoda failed at t={a}")
        for j in range(inside.size):
            out[k] = usol[1 + j]
            k += 1
        y = usol[-1].copy()
    apply_doses(y, p, t_end, events.time_day, events.cmt, events.amount)
    while k < t_out.size:
        out[k] = y
        k += 1
    return out


# ===================================================================== any structure: generated Python RHS
class StructurePeer:
    """The ODE of any model structure as a plain-Python right-hand side for ``scipy.integrate.solve_ivp``.

    Written from the structure's declaration (:mod:`tregpd.model.structures`) the way a user without tregpd
    would write it by hand: every expression string of the declaration becomes one line of Python, in the
    declaration's order, inside one function ``rhs(t, y)`` that is compiled once with Python's ``compile``; the
    parameters, derived constants and every intermediate that depends on parameters/covariates only are
    evaluated once (with ``eval``) and bound as closure variables (so the Python RHS does strictly less work
    per call than one that recomputes them). The PK is integrated as ODE states (linear PK blocks as amounts,
    concentration ``max(expr, 0)`` as in tregpd's PK-as-states layout), doses are jumps between segments.
    Nothing from tregpd's generated numba code is used: only the declaration's strings and ``to_theta``.

    State vector: linear-PK amounts (block by block), then the structure's states.
    """

    _FUNCS = {"exp": math.exp, "log": math.log, "sqrt": math.sqrt, "min": min, "max": max}

    def __init__(self, model=None):
        from tregpd.model.structures import get_model
        m = get_model(model)
        self.structure = m
        self.names = list(m.pk_amount_names) + list(m.state_names)
        self.n_state = len(self.names)
        tiers = m.tiers
        self.hoisted = [i for i in m.intermediates if tiers[i.name] in ("constant", "segment")]
        inner = [i for i in m.intermediates if tiers[i.name] not in ("constant", "segment")]
        # PK rate constants (parameters only): hoisted, named _k<block>_<n>
        self.rates = []                          # (name, expr)
        pk_lines = {c: [] for c in m.pk_amount_names}
        for b, blk in enumerate(m.pk):
            for n, ((src, dst), k) in enumerate(blk.rates.items()):
                kn = f"_k{b}_{n}"
                self.rates.append((kn, k))
                pk_lines[src].append(f"- {kn} * {src}")
                if dst is not None:
                    pk_lines[dst].append(f"+ {kn} * {src}")
        env_names = ([*m.parameter_names] + [*m.derived_names] + [c.name for c in m.covariates]
                     + [i.name for i in self.hoisted] + [k for k, _ in self.rates])
        src = ["def make_rhs(env):"]
        src += [f"    {n} = env[{n!r}]" for n in env_names]
        src += ["    def rhs(t, y):"]
        src += [f"        {', '.join(self.names)}, = y"]
        for blk in m.pk:
            src.append(f"        {blk.name} = max({_subst(blk.concentration, 'amount', blk.observed)}, 0.0)")
        for c, (expr, _) in m.concentrations_from_states.items():
            src.append(f"        {c} = {expr}")
        for i in inner:
            src.append(f"        {i.name} = {i.expr}")
        ret = [" ".join(pk_lines[c]).removeprefix("+ ") for c in m.pk_amount_names] + [s.ode for s in m.states]
        src.append("        return [")
        src += [f"            {r}," for r in ret]
        src += ["        ]", "    return rhs"]
        self.source = "\n".join(src) + "\n"
        ns = dict(self._FUNCS)
        exec(compile(self.source, f"<python rhs of {m.name}>", "exec"), ns)
        self.make_rhs = ns["make_rhs"]
        self.dose_index = {d.cmt: self.names.index(d.target) for d in m.doses}
        self.dose_f = {d.cmt: d.bioavailability for d in m.doses}
        self.dose_potency = {d.cmt: d.potency for d in m.doses}
        self.cov_cmt = {c.cmt: c.name for c in m.covariates}
        self.obs = {o.name: compile(o.expr, f"<observable {o.name}>", "eval") for o in m.observables}

    def base_env(self, theta):
        """Parameters (theta in the structure's order) and derived constants, evaluated in Python."""
        m = self.structure
        env = dict(zip(m.parameter_names, (float(v) for v in theta)))
        for d in m.derived:
            env[d.name] = eval(d.expr, dict(self._FUNCS), env)
        for k, expr in self.rates:
            env[k] = eval(expr, dict(self._FUNCS), env)
        for c in m.covariates:
            env[c.name] = eval(c.initial, dict(self._FUNCS), env)
        return env

    def segment_env(self, env):
        """env plus the intermediates that depend on parameters and covariates only (recomputed on a
        covariate event)."""
        for i in self.hoisted:
            env[i.name] = eval(i.expr, dict(self._FUNCS), env)
        return env

    def initial_state(self, env):
        m = self.structure
        y = np.zeros(self.n_state)
        for s in m.states:
            y[self.names.index(s.name)] = eval(s.initial, dict(self._FUNCS), env)
        return y

    def observe(self, y, env, name):
        return eval(self.obs[name], dict(self._FUNCS), {**env, **dict(zip(self.names, y))})

    def solve(self, theta, events, t_out, method="LSODA", rtol=1e-6, atol=1e-8, observe=("treg", "th17")):
        """Integrate one patient segment by segment with solve_ivp; returns (n_out, len(observe)).

        Output at a dose time is the post-dose value (tregpd's convention). ``t_out`` must be sorted.
        """
        from scipy.integrate import solve_ivp
        env = self.segment_env(self.base_env(theta))
        rhs = self.make_rhs(env)
        t_end = float(t_out[-1])
        bounds = segments(events.time_day, t_end)
        y = self.initial_state(env)
        states = np.empty((t_out.size, self.n_state))
        k = 0

        def apply(t, y, env, rhs):
            changed = False
            for i in np.flatnonzero(events.time_day == t):
                cmt = int(events.cmt[i])
                if cmt in self.dose_index:
                    f = self.dose_f[cmt]
                    q = self.dose_potency[cmt]
                    amt = events.amount[i] * (1.0 if f is None else env[f])
                    y[self.dose_index[cmt]] += amt * (1.0 if q is None else env[q])
                elif cmt in self.cov_cmt:
                    env[self.cov_cmt[cmt]] = float(events.amount[i])
                    changed = True
            if changed:
                env = self.segment_env(env)
                rhs = self.make_rhs(env)
            return env, rhs

        for a, b in zip(bounds[:-1], bounds[1:]):
            env, rhs = apply(a, y, env, rhs)
            while k < t_out.size and t_out[k] <= a:
                states[k] = y
                k += 1
            inside = t_out[(t_out > a) & (t_out < b)]
            sol = solve_ivp(rhs, (a, b), y, method=method, rtol=rtol, atol=atol,
                            t_eval=np.concatenate([inside, [b]]))
            if not sol.success:
                raise RuntimeError(f"solve_ivp {method} failed at t={a}: {sol.message}")
            for j in range(inside.size):
                states[k] = sol.y[:, j]
                k += 1
            y = sol.y[:, -1].copy()
        env, rhs = apply(t_end, y, env, rhs)
        while k < t_out.size:
            states[k] = y
            k += 1
        return np.array([[self.observe(s, env, o) for o in observe] for s in states])


def _subst(expr, old, new):
    """``expr`` with the name ``old`` replaced by ``new`` (whole names only)."""
    import ast
    tree = ast.parse(expr, mode="eval")
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == old:
            node.id = new
    return ast.unparse(tree)
