"""The reference model written the way a user of each peer tool would write it.

All peers integrate the same 8-state ODE (PK as ODE states, no AUC states)::

    y = (A_il2_depot [IU], A_il2_central [IU], A_rapa_gut [mg], A_rapa_central [mg], A_rapa_periph [mg],
         naive, treg, th17 [cells/uL])

segment by segment between dose times, applying each dose as a jump of its compartment (the dosing
convention of tregpd, NONMEM and mrgsolve). Parameters are the kernel vector ``p`` of
:func:`tregpd.model.kernels.derive` (theta plus the derived baseline-balancing rates), so every tool sees
bit-identical numbers.

Nothing here is used by the package; it is benchmark code.
"""
from __future__ import annotations

import math

import numpy as np
from numba import carray, cfunc, njit, types

from tregpd.model import kernels as K
from tregpd.model.parameters import (
    I_IL2_KA, I_IL2_F, I_IL2_CL, I_IL2_V, I_IL2_PMOL_PER_IU, I_RAPA_KA, I_RAPA_CL, I_RAPA_VC,
    I_RAPA_Q, I_RAPA_VP, I_EC50_TREG, I_EC50_EFF, I_RAPA_IC50, I_N0, I_R0, I_T0, I_NAIVE_DEATH, I_N_TO_R,
    I_N_TO_T, I_R_PROLIF, I_T_PROLIF, I_R_CROWD, I_R_SUPPRESS, I_IL2_EMAX_R, I_IL2_EMAX_T, I_IL2_IMAX_TDIFF,
    I_RAPA_EMAX_RIND, I_RAPA_IMAX_TDIFF, I_RAPA_IMAX_TPROLIF, I_T_CROWD,
)

N_STATE = 8
#: state index receiving a dose of each NONMEM compartment (1 IL-2 depot, 2 IL-2 central, 3 sirolimus gut)
DOSE_STATE = {1: 0, 2: 1, 3: 2}
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
    """Add the doses given at time ``t`` (IL-2 s.c. dose scaled by bioavailability)."""
    for i in np.flatnonzero(dose_t == t):
        amt = dose_amt[i] * (p[I_IL2_F] if dose_cmt[i] == 1 else 1.0)
        y[DOSE_STATE[int(dose_cmt[i])]] += amt


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
