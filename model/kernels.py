"""Numba kernels: PK in closed form, the cell ODE, two adaptive solvers and the patient/population drivers.

Everything here is a pure function over arrays (``@njit(cache=True)``, no globals for parameters, functions
calling each other by name). The Python layer (:mod:`tregpd.model.simulate`) validates all input before it
reaches these functions and turns the integer status they return into an :class:`IntegrationError`.

Model (time in days; cells in cells/uL; IL-2 in pM; sirolimus in ng/mL whole blood)
-------------------------------------------------------------------------------
PK, linear, closed form between doses (spectral decomposition ``exp(K t) = sum_j exp(l_j t) M_j`` with the
Sylvester projectors ``M_j``; eigenvalues are distinct for any valid parameter set, see :func:`pk_modes`):

* IL-2 s.c.: depot -> central, ``dA_d = -ka A_d``, ``dA_c = ka A_d - (CL/V) A_c``; dose x F into the depot;
  ``C_IL2 [pM] = A_c [IU] * pmol_per_IU / V [L]``.
* Sirolimus oral: gut -> central <-> peripheral with apparent CL/F, Vc/F, Q/F, Vp/F;
  ``C_RAPA [ng/mL] = 1000 * A_central [mg] / Vc [L]``.

Signals: ``S_R = C_IL2/(C_IL2 + EC50_treg)`` (high-affinity receptor on Treg), ``S_E = C_IL2/(C_IL2 +
EC50_effector)`` (intermediate receptor on conventional/Th17 cells), ``I_m = C_RAPA/(C_RAPA + IC50)`` (mTOR).

Cells (N naive CD4, R Treg, T Th17)::

    ind  = k_NR (1 + E_rapa_ind I_m)                         naive -> Treg induction, 1/day
    dif  = k_NT (1 - Imax_il2_dif S_E)(1 - Imax_rapa_dif I_m)  naive -> Th17 differentiation, 1/day
    dN/dt = s_N - d_N N - ind N - dif N
    dR/dt = ind N + p_R (1 + Emax_il2_R S_R) R - d_R R (1 + R/K_crowd)
    dT/dt = dif N + p_T g(P) (1 + Emax_il2_T S_E)(1 - Imax_rapa_prolif I_m) T / (1 + R/K_supp)
            - d_T T (1 + T/K_T)

``g(P) = (1 - Imax_gc P/(P + EC50_gc)) / (1 - Imax_gc P0/(P0 + EC50_gc))`` is the background glucocorticoid
(prednisone-equivalent dose P, mg/day, set by CMT 9 events; P0 = gc_baseline_dose) acting on Th17
proliferation; g = 1 until a taper event, so a regimen without one is unaffected.

``s_N``, ``d_R`` and ``d_T`` are derived (:func:`derive`) so that the untreated model sits exactly at the
baseline (N0, R0, T0).

Two state layouts ("modes"):

* ``MODE_CLOSED_FORM`` (default): y = (N, R, T); PK and AUCs evaluated analytically inside the right-hand side.
* ``MODE_PK_ODE``: y = (A_d, A_c, gut, A_central, A_periph, N, R, T, AUC_il2, AUC_rapa); the same model with
  the PK integrated as ODE states (reference form, as most tools would write it).

Output columns per output time: see ``OUT_*``.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .parameters import (
    N_THETA, I_IL2_KA, I_IL2_F, I_IL2_CL, I_IL2_V, I_IL2_PMOL_PER_IU, I_RAPA_KA, I_RAPA_CL, I_RAPA_VC,
    I_RAPA_Q, I_RAPA_VP, I_EC50_TREG, I_EC50_EFF, I_RAPA_IC50, I_N0, I_R0, I_T0, I_NAIVE_DEATH, I_N_TO_R,
    I_N_TO_T, I_R_PROLIF, I_T_PROLIF, I_R_CROWD, I_R_SUPPRESS, I_IL2_EMAX_R, I_IL2_EMAX_T, I_IL2_IMAX_TDIFF,
    I_RAPA_EMAX_RIND, I_RAPA_IMAX_TDIFF, I_RAPA_IMAX_TPROLIF, I_GC0, I_GC_EC50, I_GC_IMAX_T, I_T_CROWD,
)

# ---- derived entries appended to theta by derive()
I_SRC_N = N_THETA          # naive supply, cells/uL/day
I_DEATH_R = N_THETA + 1    # Treg baseline death rate, 1/day
I_DEATH_T = N_THETA + 2    # Th17 death rate, 1/day
N_P = N_THETA + 3

# ---- status codes (see STATUS_MESSAGES in simulate.py)
STATUS_OK = 0
STATUS_MAX_STEPS = 1
STATUS_STEP_TOO_SMALL = 2
STATUS_NONFINITE = 3
STATUS_NEGATIVE = 4

METHOD_DOPRI5 = 0
METHOD_ROSENBROCK23 = 1
MODE_CLOSED_FORM = 0
MODE_PK_ODE = 1

# ---- output columns
OUT_NAIVE, OUT_TREG, OUT_TH17, OUT_C_IL2, OUT_C_RAPA, OUT_AUC_IL2, OUT_AUC_RAPA = range(7)
N_OUT = 7

# ---- PK coefficient block layout (pkc): t_seg, il2 rates(2), il2 coefs(2), rapa rates(3), rapa coefs(3)
PKC_T0, PKC_L2, PKC_C2, PKC_L3, PKC_C3, PKC_GC = 0, 1, 3, 5, 8, 11
N_PKC = 12

# ---- Dormand-Prince 5(4) tableau (Dormand & Prince 1980; as in scipy.integrate._ivp.rk.RK45)
DP_C = np.array([0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0])
DP_A = np.array([
    [0, 0, 0, 0, 0],
    [1 / 5, 0, 0, 0, 0],
    [3 / 40, 9 / 40, 0, 0, 0],
    [44 / 45, -56 / 15, 32 / 9, 0, 0],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729, 0],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656]])
DP_B = np.array([35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84])
DP_E = np.array([-71 / 57600, 0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40])
#: dense-output polynomial (Hairer's continuous extension, scipy RK45.P), shape (7, 4)
DP_P = np.array([
    [1, -8048581381 / 2820520608, 8663915743 / 2820520608, -12715105075 / 11282082432],
    [0, 0, 0, 0],
    [0, 131558114200 / 32700410799, -68118460800 / 10900136933, 87487479700 / 32700410799],
    [0, -1754552775 / 470086768, 14199869525 / 1410260304, -10690763975 / 1880347072],
    [0, 127303824393 / 49829197408, -318862633887 / 49829197408, 701980252875 / 199316789632],
    [0, -282668133 / 205662961, 2019193451 / 616988883, -1453857185 / 822651844],
    [0, 40617522 / 29380423, -110615467 / 29380423, 69997945 / 29380423]])

# ---- Rosenbrock 2(3) "ode23s" constants (Shampine & Reichelt, SIAM J Sci Comput 1997;18:1)
RB_D = 1.0 / (2.0 + math.sqrt(2.0))
RB_E32 = 6.0 + math.sqrt(2.0)

SAFETY = 0.9
MIN_FACTOR = 0.2
MAX_FACTOR = 10.0


# =============================================================================================== model
@njit(cache=True)
def derive(theta):
    """Append the baseline-balancing rates to ``theta``; returns ``p`` of shape ``(N_P,)``.

    s_N = (d_N + k_NR + k_NT) N0;  d_R = (k_NR N0 + p_R R0) / (R0 (1 + R0/K_crowd));
    d_T = (k_NT N0 / T0 + p_T / (1 + R0/K_supp)) / (1 + T0/K_T).
    """
    p = np.empty(N_P)
    p[:N_THETA] = theta
    n0 = theta[I_N0]
    r0 = theta[I_R0]
    t0 = theta[I_T0]
    p[I_SRC_N] = (theta[I_NAIVE_DEATH] + theta[I_N_TO_R] + theta[I_N_TO_T]) * n0
    p[I_DEATH_R] = (theta[I_N_TO_R] * n0 + theta[I_R_PROLIF] * r0) / (r0 * (1.0 + r0 / theta[I_R_CROWD]))
    p[I_DEATH_T] = ((theta[I_N_TO_T] * n0 / t0 + theta[I_T_PROLIF] / (1.0 + r0 / theta[I_R_SUPPRESS]))
                    / (1.0 + t0 / theta[I_T_CROWD]))
    return p


@njit(cache=True)
def gc_factor(level, p):
    """Glucocorticoid factor on Th17 proliferation at a prednisone-equivalent dose ``level`` (mg/day):
    g = (1 - Imax P/(P + EC50)) / (1 - Imax P0/(P0 + EC50)); g = 1 at the baseline dose P0."""
    occ = level / (level + p[I_GC_EC50])
    occ0 = p[I_GC0] / (p[I_GC0] + p[I_GC_EC50])
    return (1.0 - p[I_GC_IMAX_T] * occ) / (1.0 - p[I_GC_IMAX_T] * occ0)


@njit(cache=True)
def cell_derivs(naive, treg, th17, c_il2, c_rapa, gc, p, dy, off):
    """Cell equations (module docstring); ``gc`` is the glucocorticoid factor (:func:`gc_factor`);
    writes dN, dR, dT to ``dy[off:off+3]``."""
    if c_il2 < 0.0:
        c_il2 = 0.0
    if c_rapa < 0.0:
        c_rapa = 0.0
    s_r = c_il2 / (c_il2 + p[I_EC50_TREG])
    s_e = c_il2 / (c_il2 + p[I_EC50_EFF])
    i_m = c_rapa / (c_rapa + p[I_RAPA_IC50])
    ind = p[I_N_TO_R] * (1.0 + p[I_RAPA_EMAX_RIND] * i_m)
    dif = p[I_N_TO_T] * (1.0 - p[I_IL2_IMAX_TDIFF] * s_e) * (1.0 - p[I_RAPA_IMAX_TDIFF] * i_m)
    dy[off] = p[I_SRC_N] - (p[I_NAIVE_DEATH] + ind + dif) * naive
    dy[off + 1] = (ind * naive + p[I_R_PROLIF] * (1.0 + p[I_IL2_EMAX_R] * s_r) * treg
                   - p[I_DEATH_R] * treg * (1.0 + treg / p[I_R_CROWD]))
    dy[off + 2] = (dif * naive
                   + p[I_T_PROLIF] * gc * (1.0 + p[I_IL2_EMAX_T] * s_e) * (1.0 - p[I_RAPA_IMAX_TPROLIF] * i_m)
                   * th17 / (1.0 + treg / p[I_R_SUPPRESS])
                   - p[I_DEATH_T] * th17 * (1.0 + th17 / p[I_T_CROWD]))


@njit(cache=True)
def pk_matrices(p):
    """Rate matrices (per day) of the IL-2 (2x2) and sirolimus (3x3) linear PK systems."""
    ka2 = p[I_IL2_KA]
    ke2 = p[I_IL2_CL] / p[I_IL2_V]
    k2 = np.zeros((2, 2))
    k2[0, 0] = -ka2
    k2[1, 0] = ka2
    k2[1, 1] = -ke2
    ka3 = p[I_RAPA_KA]
    k10 = p[I_RAPA_CL] / p[I_RAPA_VC]
    k12 = p[I_RAPA_Q] / p[I_RAPA_VC]
    k21 = p[I_RAPA_Q] / p[I_RAPA_VP]
    k3 = np.zeros((3, 3))
    k3[0, 0] = -ka3
    k3[1, 0] = ka3
    k3[1, 1] = -(k10 + k12)
    k3[1, 2] = k21
    k3[2, 1] = k12
    k3[2, 2] = -k21
    return k2, k3


@njit(cache=True)
def pk_eigenvalues(p):
    """Eigenvalues (per day) of the two PK systems: IL-2 (-ka, -ke); sirolimus (-ka, -alpha, -beta)."""
    ka2 = p[I_IL2_KA]
    ke2 = p[I_IL2_CL] / p[I_IL2_V]
    lam2 = np.array([-ka2, -ke2])
    k10 = p[I_RAPA_CL] / p[I_RAPA_VC]
    k12 = p[I_RAPA_Q] / p[I_RAPA_VC]
    k21 = p[I_RAPA_Q] / p[I_RAPA_VP]
    s = k10 + k12 + k21
    disc = math.sqrt(s * s - 4.0 * k10 * k21)
    lam3 = np.array([-p[I_RAPA_KA], -0.5 * (s + disc), -0.5 * (s - disc)])
    return lam2, lam3


@njit(cache=True)
def projectors(k, lam):
    """Sylvester projectors M_j = prod_{i!=j} (K - l_i I)/(l_j - l_i), shape (n, n, n), so that
    expm(K t) = sum_j exp(l_j t) M_j. Requires distinct eigenvalues."""
    n = lam.size
    m = np.zeros((n, n, n))
    for j in range(n):
        acc = np.eye(n)
        for i in range(n):
            if i != j:
                acc = acc @ ((k - lam[i] * np.eye(n)) / (lam[j] - lam[i]))
        m[j] = acc
    return m


@njit(cache=True)
def pk_modes(p):
    """Eigenvalues and projectors of both PK systems for one patient.

    If absorption and elimination rates coincide to within 1e-9 (relative), the absorption rate is nudged
    by 1e-7 (relative) so the projectors exist; the resulting error is of that order.
    """
    lam2, lam3 = pk_eigenvalues(p)
    k2, k3 = pk_matrices(p)
    for a in range(2):
        for b in range(a + 1, 2):
            if abs(lam2[a] - lam2[b]) <= 1e-9 * abs(lam2[a]):
                lam2[0] *= 1.0 + 1e-7
                k2[0, 0] = lam2[0]
                k2[1, 0] = -lam2[0]
    for a in range(3):
        for b in range(a + 1, 3):
            if abs(lam3[a] - lam3[b]) <= 1e-9 * abs(lam3[a]):
                lam3[0] *= 1.0 + 1e-7
                k3[0, 0] = lam3[0]
                k3[1, 0] = -lam3[0]
    return lam2, projectors(k2, lam2), lam3, projectors(k3, lam3)


@njit(cache=True)
def pk_set_segment(t0, a2, a3, lam2, m2, lam3, m3, p, pkc):
    """Fill the concentration coefficients of a segment that starts at ``t0`` with amounts a2 (IL-2 depot,
    central; IU) and a3 (sirolimus gut, central, peripheral; mg)."""
    pkc[PKC_T0] = t0
    s2 = p[I_IL2_PMOL_PER_IU] / p[I_IL2_V]
    s3 = 1000.0 / p[I_RAPA_VC]
    for j in range(2):
        pkc[PKC_L2 + j] = lam2[j]
        pkc[PKC_C2 + j] = s2 * (m2[j, 1, 0] * a2[0] + m2[j, 1, 1] * a2[1])
    for j in range(3):
        pkc[PKC_L3 + j] = lam3[j]
        pkc[PKC_C3 + j] = s3 * (m3[j, 1, 0] * a3[0] + m3[j, 1, 1] * a3[1] + m3[j, 1, 2] * a3[2])


@njit(cache=True)
def pk_conc(t, pkc):
    """(C_IL2 [pM], C_RAPA [ng/mL]) at time t within the segment described by ``pkc``."""
    tau = t - pkc[PKC_T0]
    c2 = 0.0
    for j in range(2):
        c = pkc[PKC_C2 + j]
        if c != 0.0:
            c2 += c * math.exp(pkc[PKC_L2 + j] * tau)
    c3 = 0.0
    for j in range(3):
        c = pkc[PKC_C3 + j]
        if c != 0.0:
            c3 += c * math.exp(pkc[PKC_L3 + j] * tau)
    return c2, c3


@njit(cache=True)
def pk_auc(t, pkc):
    """AUC of (C_IL2, C_RAPA) from the segment start to t (pM*day, ng/mL*day)."""
    tau = t - pkc[PKC_T0]
    a2 = 0.0
    for j in range(2):
        lam = pkc[PKC_L2 + j]
        a2 += pkc[PKC_C2 + j] * math.expm1(lam * tau) / lam
    a3 = 0.0
    for j in range(3):
        lam = pkc[PKC_L3 + j]
        a3 += pkc[PKC_C3 + j] * math.expm1(lam * tau) / lam
    return a2, a3


@njit(cache=True)
def pk_advance(a, lam, m, tau):
    """Amounts after ``tau`` days: sum_j exp(l_j tau) M_j a."""
    n = a.size
    out = np.zeros(n)
    for j in range(n):
        e = math.exp(lam[j] * tau)
        for r in range(n):
            s = 0.0
            for c in range(n):
                s += m[j, r, c] * a[c]
            out[r] += e * s
    return out


@njit(cache=True)
def rhs(t, y, p, pkc, mode, dy):
    """Right-hand side in either state layout (module docstring). Writes ``dy``."""
    if mode == MODE_CLOSED_FORM:
        c2, c3 = pk_conc(t, pkc)
        cell_derivs(y[0], y[1], y[2], c2, c3, pkc[PKC_GC], p, dy, 0)
    else:
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
        c2 = y[1] * p[I_IL2_PMOL_PER_IU] / p[I_IL2_V]
        c3 = 1000.0 * y[3] / p[I_RAPA_VC]
        cell_derivs(y[5], y[6], y[7], c2, c3, pkc[PKC_GC], p, dy, 5)
        dy[8] = c2
        dy[9] = c3


@njit(cache=True)
def n_states(mode):
    return 3 if mode == MODE_CLOSED_FORM else 10


@njit(cache=True)
def initial_state(p, mode):
    y = np.zeros(n_states(mode))
    off = 0 if mode == MODE_CLOSED_FORM else 5
    y[off] = p[I_N0]
    y[off + 1] = p[I_R0]
    y[off + 2] = p[I_T0]
    return y


@njit(cache=True)
def record(row, t, y, p, pkc, mode, auc2, auc3):
    """Write one output row (OUT_* columns) at time t."""
    if mode == MODE_CLOSED_FORM:
        row[OUT_NAIVE] = y[0]
        row[OUT_TREG] = y[1]
        row[OUT_TH17] = y[2]
        c2, c3 = pk_conc(t, pkc)
        a2, a3 = pk_auc(t, pkc)
        row[OUT_C_IL2] = max(c2, 0.0)
        row[OUT_C_RAPA] = max(c3, 0.0)
        row[OUT_AUC_IL2] = auc2 + a2
        row[OUT_AUC_RAPA] = auc3 + a3
    else:
        row[OUT_NAIVE] = y[5]
        row[OUT_TREG] = y[6]
        row[OUT_TH17] = y[7]
        row[OUT_C_IL2] = max(y[1] * p[I_IL2_PMOL_PER_IU] / p[I_IL2_V], 0.0)
        row[OUT_C_RAPA] = max(1000.0 * y[3] / p[I_RAPA_VC], 0.0)
        row[OUT_AUC_IL2] = y[8]
        row[OUT_AUC_RAPA] = y[9]


# ============================================================================================ solvers
@njit(cache=True, error_model="numpy")
def err_norm(err, y, ynew, rtol, atol):
    """RMS of err / (atol + rtol * max(|y|, |ynew|)) (Hairer; scipy common.norm)."""
    s = 0.0
    n = y.size
    for i in range(n):
        sc = atol + rtol * max(abs(y[i]), abs(ynew[i]))
        s += (err[i] / sc) ** 2
    return math.sqrt(s / n)


@njit(cache=True)
def initial_step(t, y, f0, p, pkc, mode, rtol, atol, order, h_max):
    """Starting step (Hairer, Norsett & Wanner, Solving ODEs I, sec. II.4; scipy select_initial_step)."""
    n = y.size
    d0 = 0.0
    d1 = 0.0
    for i in range(n):
        sc = atol + rtol * abs(y[i])
        d0 += (y[i] / sc) ** 2
        d1 += (f0[i] / sc) ** 2
    d0 = math.sqrt(d0 / n)
    d1 = math.sqrt(d1 / n)
    h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    h0 = min(h0, h_max)
    y1 = y + h0 * f0
    f1 = np.empty(n)
    rhs(t + h0, y1, p, pkc, mode, f1)
    d2 = 0.0
    for i in range(n):
        sc = atol + rtol * abs(y[i])
        d2 += ((f1[i] - f0[i]) / sc) ** 2
    d2 = math.sqrt(d2 / n) / h0
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
    return min(100 * h0, h1, h_max)


@njit(cache=True)
def dopri5_segment(t0, t1, y, p, pkc, mode, rtol, atol, h, t_out, k_out, out, auc2, auc3, max_steps):
    """Integrate y from t0 to t1 in place with Dormand-Prince 5(4), writing dense output for every
    ``t_out[k] < t1`` with ``k >= k_out``. Returns (status, t_reached, next k_out, last accepted h, steps)."""
    n = y.size
    k = np.empty((7, n))
    ytmp = np.empty(n)
    ynew = np.empty(n)
    err = np.empty(n)
    f = np.empty(n)
    rhs(t0, y, p, pkc, mode, f)
    span = t1 - t0
    if h <= 0.0:
        h = initial_step(t0, y, f, p, pkc, mode, rtol, atol, 4, span)
    t = t0
    steps = 0
    n_out = t_out.size
    while t < t1:
        if steps >= max_steps:
            return STATUS_MAX_STEPS, t, k_out, h, steps
        if h < 1e-12 * max(1.0, abs(t)) and t1 - t > 1e-12 * max(1.0, abs(t)):  # a tiny segment is no failure
            return STATUS_STEP_TOO_SMALL, t, k_out, h, steps
        last = False
        if t + h >= t1 or t + 1.01 * h >= t1:
            h = t1 - t
            last = True
        k[0, :] = f
        for s in range(1, 6):
            for i in range(n):
                acc = 0.0
                for r in range(s):
                    acc += DP_A[s, r] * k[r, i]
                ytmp[i] = y[i] + h * acc
            rhs(t + DP_C[s] * h, ytmp, p, pkc, mode, k[s])
        for i in range(n):
            acc = 0.0
            for r in range(6):
                acc += DP_B[r] * k[r, i]
            ynew[i] = y[i] + h * acc
        rhs(t + h, ynew, p, pkc, mode, k[6])
        steps += 1
        for i in range(n):
            acc = 0.0
            for r in range(7):
                acc += DP_E[r] * k[r, i]
            err[i] = h * acc
        en = err_norm(err, y, ynew, rtol, atol)
        if not math.isfinite(en):
            # a non-finite trial: shrink hard and retry (reported if it persists)
            h *= MIN_FACTOR
            continue
        if en <= 1.0:
            t_new = t1 if last else t + h
            # dense output for requested times inside (t, t_new)
            while k_out < n_out and t_out[k_out] < t_new and t_out[k_out] < t1:
                x = (t_out[k_out] - t) / h
                for i in range(n):
                    q = 0.0
                    xp = x
                    for c in range(4):
                        acc = 0.0
                        for r in range(7):
                            acc += k[r, i] * DP_P[r, c]
                        q += acc * xp
                        xp *= x
                    ytmp[i] = y[i] + h * q
                record(out[k_out], t_out[k_out], ytmp, p, pkc, mode, auc2, auc3)
                k_out += 1
            for i in range(n):
                if not math.isfinite(ynew[i]):
                    return STATUS_NONFINITE, t, k_out, h, steps
            y[:] = ynew
            f[:] = k[6]
            t = t_new
            fac = MAX_FACTOR if en == 0.0 else min(MAX_FACTOR, SAFETY * en ** -0.2)
            if not last:
                h *= fac
        else:
            h *= max(MIN_FACTOR, SAFETY * en ** -0.2)
    return STATUS_OK, t, k_out, h, steps


@njit(cache=True)
def lu_factor(a, piv):
    """In-place LU with partial pivoting of a small dense matrix. Returns False if singular."""
    n = a.shape[0]
    for c in range(n):
        best = c
        for r in range(c + 1, n):
            if abs(a[r, c]) > abs(a[best, c]):
                best = r
        piv[c] = best
        if a[best, c] == 0.0:
            return False
        if best != c:
            for j in range(n):
                tmp = a[c, j]
                a[c, j] = a[best, j]
                a[best, j] = tmp
        for r in range(c + 1, n):
            a[r, c] /= a[c, c]
            for j in range(c + 1, n):
                a[r, j] -= a[r, c] * a[c, j]
    return True


@njit(cache=True)
def lu_solve(lu, piv, b):
    """Solve in place for b given lu_factor output."""
    n = lu.shape[0]
    for c in range(n):
        if piv[c] != c:
            tmp = b[c]
            b[c] = b[piv[c]]
            b[piv[c]] = tmp
    for r in range(n):
        for j in range(r):
            b[r] -= lu[r, j] * b[j]
    for r in range(n - 1, -1, -1):
        for j in range(r + 1, n):
            b[r] -= lu[r, j] * b[j]
        b[r] /= lu[r, r]


@njit(cache=True)
def rosenbrock23_segment(t0, t1, y, p, pkc, mode, rtol, atol, h, t_out, k_out, out, auc2, auc3, max_steps):
    """L-stable Rosenbrock 2(3) (Shampine & Reichelt 1997, MATLAB ode23s) with a finite-difference
    Jacobian, for stiff extensions. Same contract as :func:`dopri5_segment`."""
    n = y.size
    f0 = np.empty(n)
    f1 = np.empty(n)
    f2 = np.empty(n)
    ft = np.empty(n)
    k1 = np.empty(n)
    k2 = np.empty(n)
    k3 = np.empty(n)
    ytmp = np.empty(n)
    ynew = np.empty(n)
    err = np.empty(n)
    jac = np.empty((n, n))
    w = np.empty((n, n))
    piv = np.zeros(n, dtype=np.int64)
    dfdt = np.empty(n)
    rhs(t0, y, p, pkc, mode, f0)
    span = t1 - t0
    if h <= 0.0:
        h = initial_step(t0, y, f0, p, pkc, mode, rtol, atol, 2, span)
    t = t0
    steps = 0
    n_out = t_out.size
    need_jac = True
    while t < t1:
        if steps >= max_steps:
            return STATUS_MAX_STEPS, t, k_out, h, steps
        if h < 1e-12 * max(1.0, abs(t)) and t1 - t > 1e-12 * max(1.0, abs(t)):  # a tiny segment is no failure
            return STATUS_STEP_TOO_SMALL, t, k_out, h, steps
        if need_jac:
            for j in range(n):
                dj = math.sqrt(2.2e-16) * max(abs(y[j]), 1e-6)
                ytmp[:] = y
                ytmp[j] += dj
                rhs(t, ytmp, p, pkc, mode, ft)
                for i in range(n):
                    jac[i, j] = (ft[i] - f0[i]) / dj
            dt = math.sqrt(2.2e-16) * max(abs(t), 1e-3)
            rhs(t + dt, y, p, pkc, mode, ft)
            for i in range(n):
                dfdt[i] = (ft[i] - f0[i]) / dt
            need_jac = False
        last = False
        if t + 1.01 * h >= t1:
            h = t1 - t
            last = True
        hd = h * RB_D
        for i in range(n):
            for j in range(n):
                w[i, j] = -hd * jac[i, j]
            w[i, i] += 1.0
        if not lu_factor(w, piv):
            h *= 0.5
            continue
        for i in range(n):
            k1[i] = f0[i] + hd * dfdt[i]
        lu_solve(w, piv, k1)
        for i in range(n):
            ytmp[i] = y[i] + 0.5 * h * k1[i]
        rhs(t + 0.5 * h, ytmp, p, pkc, mode, f1)
        for i in range(n):
            k2[i] = f1[i] - k1[i]
        lu_solve(w, piv, k2)
        for i in range(n):
            k2[i] += k1[i]
            ynew[i] = y[i] + h * k2[i]
        rhs(t + h, ynew, p, pkc, mode, f2)
        for i in range(n):
            k3[i] = f2[i] - RB_E32 * (k2[i] - f1[i]) - 2.0 * (k1[i] - f0[i]) + hd * dfdt[i]
        lu_solve(w, piv, k3)
        for i in range(n):
            err[i] = h / 6.0 * (k1[i] - 2.0 * k2[i] + k3[i])
        steps += 1
        en = err_norm(err, y, ynew, rtol, atol)
        if not math.isfinite(en):
            h *= MIN_FACTOR
            continue
        if en <= 1.0:
            t_new = t1 if last else t + h
            c = 1.0 / (1.0 - 2.0 * RB_D)
            while k_out < n_out and t_out[k_out] < t_new and t_out[k_out] < t1:
                s = (t_out[k_out] - t) / h
                for i in range(n):
                    ytmp[i] = y[i] + h * (s * (1.0 - s) * c * k1[i] + s * (s - 2.0 * RB_D) * c * k2[i])
                record(out[k_out], t_out[k_out], ytmp, p, pkc, mode, auc2, auc3)
                k_out += 1
            for i in range(n):
                if not math.isfinite(ynew[i]):
                    return STATUS_NONFINITE, t, k_out, h, steps
            y[:] = ynew
            f0[:] = f2
            t = t_new
            need_jac = True
            if not last:
                h *= min(5.0, 0.8 * en ** (-1.0 / 3.0)) if en > 0 else 5.0
        else:
            h *= max(MIN_FACTOR, 0.8 * en ** (-1.0 / 3.0))
    return STATUS_OK, t, k_out, h, steps



# ===================================================== fast path: closed-form PK + Dormand-Prince 5(4)
# The default configuration (MODE_CLOSED_FORM, METHOD_DOPRI5) runs through the functions below. They compute
# the same model as :func:`rhs` / :func:`dopri5_segment` with less work per step (measured in benchmarks/):
#
# * work arrays are allocated once per patient, not once per dose segment;
# * the cell right-hand side reads precomputed rate products (:func:`cf_coefficients`) instead of
#   re-deriving them at every evaluation;
# * the PK exponentials of a trial step come from one ``exp`` per PK mode: the stage times of DP5 are
#   t + (m/90) h with m in (18, 27, 72, 80, 90), so exp(l (t + m h / 90)) = E(t) w**m with w = exp(l h / 90)
#   and the powers built by 10 multiplications (relative rounding <= ~1e-14, far below any rtol accepted by
#   SolverOptions); E(t) is recomputed exactly with ``exp`` at every accepted step, so nothing drifts;
# * the sixth and seventh stage share the time t + h and so share their concentrations;
# * IL-2 terms are skipped in a segment once they cannot change the result: if the bound
#   sum_j |c_j| >= C_IL2(t) (all PK eigenvalues are negative) times the largest IL-2 sensitivity
#   (Emax_R/EC50_R, (Emax_T + Imax_dif)/EC50_E) is below 1e-17, every factor (1 + Emax S) and (1 - Imax S)
#   rounds to exactly 1.0 in double precision, so the right-hand side is bit-identical with C_IL2 = 0.

#: stage offsets of DP5 in units of h/90 (DP_C * 90), stages 1..5 (stage 6 shares stage 5's time)
DP_C90 = np.array([18, 27, 72, 80, 90])
N_MODES = 5            # 2 IL-2 modes (columns 0, 1) + 3 sirolimus modes (columns 2, 3, 4)
IL2_EXACT_ZERO = 1e-17
#: The first step of a dose segment is the Hairer-Norsett-Wanner estimate times this factor. A dose starts
#: an absorption pulse whose time scale (1/ka, hours) the two-point estimate overrates; the full estimate
#: gives first steps outside the asymptotic regime of the error estimator, so they are often rejected and,
#: worse, accepted with an underestimated error. Measured on the reference regimen (30 sampled patients,
#: benchmarks/README.md): a quarter of the estimate gives about the same number of steps at rtol 1e-6
#: (~5 % more) and fewer at rtol <= 1e-7, with 10-30x smaller global error at the same rtol.
CF_INITIAL_STEP_FACTOR = 0.25
#: within a segment, exp(l_j t) at a step start is carried from the previous step's exp(l_j h); every this
#: many accepted steps it is recomputed with ``exp``
CF_EXACT_EVERY = 8

# ---- cf_coefficients layout
(Q_SRC_N, Q_LOSS_N, Q_N_TO_R, Q_N_TO_R_RAPA, Q_N_TO_T, Q_IMAX_DIF_IL2, Q_IMAX_DIF_RAPA, Q_PROLIF_R,
 Q_PROLIF_R_IL2, Q_DEATH_R, Q_DEATH_R_CROWD, Q_PROLIF_T, Q_EMAX_T_IL2, Q_IMAX_PROLIF_RAPA, Q_INV_SUPP,
 Q_DEATH_T, Q_EC50_R, Q_EC50_E, Q_IC50, Q_IL2_SENS, Q_DEATH_T_CROWD) = range(21)
N_Q = 21


@njit(cache=True)
def cf_coefficients(p):
    """Rate products used by :func:`cf_cell_derivs`, shape ``(N_Q,)`` (see the Q_* layout)."""
    q = np.empty(N_Q)
    q[Q_SRC_N] = p[I_SRC_N]
    q[Q_LOSS_N] = p[I_NAIVE_DEATH]
    q[Q_N_TO_R] = p[I_N_TO_R]
    q[Q_N_TO_R_RAPA] = p[I_N_TO_R] * p[I_RAPA_EMAX_RIND]
    q[Q_N_TO_T] = p[I_N_TO_T]
    q[Q_IMAX_DIF_IL2] = p[I_IL2_IMAX_TDIFF]
    q[Q_IMAX_DIF_RAPA] = p[I_RAPA_IMAX_TDIFF]
    q[Q_PROLIF_R] = p[I_R_PROLIF]
    q[Q_PROLIF_R_IL2] = p[I_IL2_EMAX_R]
    q[Q_DEATH_R] = p[I_DEATH_R]
    q[Q_DEATH_R_CROWD] = p[I_DEATH_R] / p[I_R_CROWD]
    q[Q_PROLIF_T] = p[I_T_PROLIF]
    q[Q_EMAX_T_IL2] = p[I_IL2_EMAX_T]
    q[Q_IMAX_PROLIF_RAPA] = p[I_RAPA_IMAX_TPROLIF]
    q[Q_INV_SUPP] = 1.0 / p[I_R_SUPPRESS]
    q[Q_DEATH_T] = p[I_DEATH_T]
    q[Q_DEATH_T_CROWD] = p[I_DEATH_T] / p[I_T_CROWD]
    q[Q_EC50_R] = p[I_EC50_TREG]
    q[Q_EC50_E] = p[I_EC50_EFF]
    q[Q_IC50] = p[I_RAPA_IC50]
    q[Q_IL2_SENS] = max(p[I_IL2_EMAX_R] / p[I_EC50_TREG],
                        (p[I_IL2_EMAX_T] + p[I_IL2_IMAX_TDIFF]) / p[I_EC50_EFF])
    return q


@njit(cache=True, error_model="numpy")
def cf_rates(c_il2, c_rapa, q, rates, s):
    """Drug-dependent rates at one time, written to ``rates[s]``: (naive->Treg induction, naive->Th17
    differentiation, Treg proliferation, Th17 proliferation before suppression), all 1/day. They depend on
    the concentrations only, so a DP5 step computes them for all stages before the (serial) stage chain.
    ``c_il2 = 0`` (a skipped IL-2 block) gives exactly the untreated IL-2 factors."""
    if c_rapa < 0.0:
        c_rapa = 0.0
    i_m = c_rapa / (c_rapa + q[Q_IC50])
    if c_il2 > 0.0:
        s_r = c_il2 / (c_il2 + q[Q_EC50_R])
        s_e = c_il2 / (c_il2 + q[Q_EC50_E])
        rates[s, 2] = q[Q_PROLIF_R] * (1.0 + q[Q_PROLIF_R_IL2] * s_r)
        rates[s, 1] = q[Q_N_TO_T] * (1.0 - q[Q_IMAX_DIF_IL2] * s_e) * (1.0 - q[Q_IMAX_DIF_RAPA] * i_m)
        rates[s, 3] = q[Q_PROLIF_T] * (1.0 + q[Q_EMAX_T_IL2] * s_e) * (1.0 - q[Q_IMAX_PROLIF_RAPA] * i_m)
    else:
        rates[s, 2] = q[Q_PROLIF_R]
        rates[s, 1] = q[Q_N_TO_T] * (1.0 - q[Q_IMAX_DIF_RAPA] * i_m)
        rates[s, 3] = q[Q_PROLIF_T] * (1.0 - q[Q_IMAX_PROLIF_RAPA] * i_m)
    rates[s, 0] = q[Q_N_TO_R] + q[Q_N_TO_R_RAPA] * i_m


@njit(cache=True, error_model="numpy")
def cf_cells(naive, treg, th17, rates, s, q, dy):
    """The cell equations of :func:`cell_derivs` given the rates in ``rates[s]`` (:func:`cf_rates`);
    writes ``dy[0:3]``."""
    ind = rates[s, 0]
    dif = rates[s, 1]
    dy[0] = q[Q_SRC_N] - (q[Q_LOSS_N] + ind + dif) * naive
    dy[1] = ind * naive + rates[s, 2] * treg - treg * (q[Q_DEATH_R] + q[Q_DEATH_R_CROWD] * treg)
    dy[2] = (dif * naive + rates[s, 3] * th17 / (1.0 + treg * q[Q_INV_SUPP])
             - th17 * (q[Q_DEATH_T] + q[Q_DEATH_T_CROWD] * th17))


@njit(cache=True, error_model="numpy")
def cf_cell_derivs(naive, treg, th17, c_il2, c_rapa, q, dy, rates):
    """Cell derivatives at given concentrations (uses ``rates[5]`` as scratch)."""
    cf_rates(c_il2, c_rapa, q, rates, 5)
    cf_cells(naive, treg, th17, rates, 5, q, dy)


@njit(cache=True, error_model="numpy")
def cf_segment_setup(pkc, q, lam, coef):
    """Copy a segment's PK modes from ``pkc`` to ``lam``/``coef`` (N_MODES,); returns whether the IL-2 block
    can change the right-hand side at all in this segment (see the fast-path notes above)."""
    bound = 0.0
    for j in range(2):
        lam[j] = pkc[PKC_L2 + j]
        coef[j] = pkc[PKC_C2 + j]
        bound += abs(coef[j])
    for j in range(3):
        lam[2 + j] = pkc[PKC_L3 + j]
        coef[2 + j] = pkc[PKC_C3 + j]
    return bound * q[Q_IL2_SENS] >= IL2_EXACT_ZERO


@njit(cache=True, error_model="numpy")
def cf_conc_now(tau, lam, coef, il2_on, enow):
    """Concentrations at ``tau`` days into the segment; stores exp(l_j tau) in ``enow``."""
    c2 = 0.0
    c3 = 0.0
    j0 = 0 if il2_on else 2
    for j in range(j0, N_MODES):
        e = math.exp(lam[j] * tau)
        enow[j] = e
        if j < 2:
            c2 += coef[j] * e
        else:
            c3 += coef[j] * e
    if not il2_on:
        enow[0] = 0.0
        enow[1] = 0.0
    return c2, c3


@njit(cache=True, error_model="numpy")
def cf_stage_conc(h, lam, coef, il2_on, enow, conc):
    """Concentrations at the five distinct DP5 stage times t + DP_C[s] h (s = 1..5) from exp(l_j t) in
    ``enow``: conc[0, s-1] = C_IL2, conc[1, s-1] = C_RAPA; conc[2, j] = exp(l_j h) for the active modes."""
    for s in range(5):
        conc[0, s] = 0.0
        conc[1, s] = 0.0
    j0 = 0 if il2_on else 2
    for j in range(j0, N_MODES):
        a = coef[j] * enow[j]
        w = math.exp(lam[j] * h / 90.0)
        w2 = w * w
        w4 = w2 * w2
        w8 = w4 * w4
        w9 = w8 * w
        w18 = w9 * w9
        w27 = w18 * w9
        w36 = w18 * w18
        w72 = w36 * w36
        w80 = w72 * w8
        w90 = w72 * w18
        conc[2, j] = w90
        g = 0 if j < 2 else 1
        conc[g, 0] += a * w18
        conc[g, 1] += a * w27
        conc[g, 2] += a * w72
        conc[g, 3] += a * w80
        conc[g, 4] += a * w90


@njit(cache=True, error_model="numpy")
def cf_initial_step(y, f0, q, conc_h0_fn_lam, coef, il2_on, tau0, rtol, atol, h_max, work, rates):
    """Starting step of a segment: the rule of :func:`initial_step` (order 4) with the fast RHS, times
    :data:`CF_INITIAL_STEP_FACTOR`."""
    n = 3
    d0 = 0.0
    d1 = 0.0
    for i in range(n):
        sc = atol + rtol * abs(y[i])
        d0 += (y[i] / sc) ** 2
        d1 += (f0[i] / sc) ** 2
    d0 = math.sqrt(d0 / n)
    d1 = math.sqrt(d1 / n)
    h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    h0 = min(h0, h_max)
    y1 = work[7]
    f1 = work[9]
    for i in range(n):
        y1[i] = y[i] + h0 * f0[i]
    c2 = 0.0
    c3 = 0.0
    j0 = 0 if il2_on else 2
    for j in range(j0, N_MODES):
        e = math.exp(conc_h0_fn_lam[j] * (tau0 + h0))
        if j < 2:
            c2 += coef[j] * e
        else:
            c3 += coef[j] * e
    cf_cell_derivs(y1[0], y1[1], y1[2], c2, c3, q, f1, rates)
    d2 = 0.0
    for i in range(n):
        sc = atol + rtol * abs(y[i])
        d2 += ((f1[i] - f0[i]) / sc) ** 2
    d2 = math.sqrt(d2 / n) / h0
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / 5.0)
    return min(CF_INITIAL_STEP_FACTOR * min(100 * h0, h1), h_max)


@njit(cache=True, error_model="numpy")
def dopri5_cf_segment(t0, t1, y, p, q, pkc, rtol, atol, t_out, k_out, out, auc2, auc3, max_steps, work,
                      lam, coef, enow, conc, rates):
    """Dormand-Prince 5(4) over one dose segment [t0, t1] with closed-form PK (fast path).

    Same contract as :func:`dopri5_segment` (state ``y`` of length 3 updated in place, dense output for
    ``t_out[k_out:]`` inside the segment); ``work`` is a (11, 3) scratch array, ``lam``/``coef``/``enow``
    (N_MODES,), ``conc`` (3, 5) and ``rates`` (6, 4) scratch arrays. The step size restarts from :func:`cf_initial_step` in
    every segment (a dose changes the forcing on the time scale of absorption).
    Returns (status, t_reached, next k_out, steps).
    """
    n = 3
    k = work[0:7]
    ytmp = work[7]
    ynew = work[8]
    err = work[9]
    f = work[10]
    il2_on = cf_segment_setup(pkc, q, lam, coef)
    c2, c3 = cf_conc_now(t0 - pkc[PKC_T0], lam, coef, il2_on, enow)
    cf_cell_derivs(y[0], y[1], y[2], c2, c3, q, f, rates)
    span = t1 - t0
    h = cf_initial_step(y, f, q, lam, coef, il2_on, t0 - pkc[PKC_T0], rtol, atol, span, work, rates)
    for j in range(N_MODES):
        conc[2, j] = 0.0
    n_carry = 0
    t = t0
    steps = 0
    n_out = t_out.size
    while t < t1:
        if steps >= max_steps:
            return STATUS_MAX_STEPS, t, k_out, steps
        if h < 1e-12 * max(1.0, abs(t)) and t1 - t > 1e-12 * max(1.0, abs(t)):  # a tiny segment is no failure
            return STATUS_STEP_TOO_SMALL, t, k_out, steps
        last = False
        if t + 1.01 * h >= t1:
            h = t1 - t
            last = True
        cf_stage_conc(h, lam, coef, il2_on, enow, conc)
        for s in range(5):
            cf_rates(conc[0, s], conc[1, s], q, rates, s)
        for i in range(n):
            k[0, i] = f[i]
        for s in range(1, 6):
            for i in range(n):
                acc = 0.0
                for r in range(s):
                    acc += DP_A[s, r] * k[r, i]
                ytmp[i] = y[i] + h * acc
            cf_cells(ytmp[0], ytmp[1], ytmp[2], rates, s - 1, q, k[s])
        for i in range(n):
            acc = 0.0
            for r in range(6):
                acc += DP_B[r] * k[r, i]
            ynew[i] = y[i] + h * acc
        cf_cells(ynew[0], ynew[1], ynew[2], rates, 4, q, k[6])
        steps += 1
        for i in range(n):
            acc = 0.0
            for r in range(7):
                acc += DP_E[r] * k[r, i]
            err[i] = h * acc
        en = err_norm(err, y, ynew, rtol, atol)
        if not math.isfinite(en):
            h *= MIN_FACTOR
            continue
        if en <= 1.0:
            t_new = t1 if last else t + h
            while k_out < n_out and t_out[k_out] < t_new and t_out[k_out] < t1:
                x = (t_out[k_out] - t) / h
                for i in range(n):
                    qv = 0.0
                    xp = x
                    for c in range(4):
                        acc = 0.0
                        for r in range(7):
                            acc += k[r, i] * DP_P[r, c]
                        qv += acc * xp
                        xp *= x
                    ytmp[i] = y[i] + h * qv
                record(out[k_out], t_out[k_out], ytmp, p, pkc, MODE_CLOSED_FORM, auc2, auc3)
                k_out += 1
            for i in range(n):
                if not math.isfinite(ynew[i]):
                    return STATUS_NONFINITE, t, k_out, steps
            for i in range(n):
                y[i] = ynew[i]
                f[i] = k[6, i]
            t = t_new
            if not last:
                # exponentials at the new step start: carried multiplicatively (relative rounding ~1e-15 per
                # step), recomputed exactly every CF_EXACT_EVERY accepted steps so that nothing drifts
                n_carry += 1
                if n_carry >= CF_EXACT_EVERY:
                    cf_conc_now(t - pkc[PKC_T0], lam, coef, il2_on, enow)
                    n_carry = 0
                else:
                    for j in range(N_MODES):
                        enow[j] *= conc[2, j]
                fac = MAX_FACTOR if en == 0.0 else min(MAX_FACTOR, SAFETY * en ** -0.2)
                h *= fac
        else:
            h *= max(MIN_FACTOR, SAFETY * en ** -0.2)
    return STATUS_OK, t, k_out, steps


@njit(cache=True, error_model="numpy")
def pk_advance_inplace(a, lam, m, tau, tmp):
    """In-place twin of :func:`pk_advance` (``tmp`` scratch of the same length as ``a``)."""
    n = a.size
    for r in range(n):
        tmp[r] = 0.0
    for j in range(n):
        e = math.exp(lam[j] * tau)
        for r in range(n):
            s = 0.0
            for c in range(n):
                s += m[j, r, c] * a[c]
            tmp[r] += e * s
    for r in range(n):
        a[r] = tmp[r]


@njit(cache=True, error_model="numpy")
def simulate_patient_cf_dp5(theta, dose_t, dose_cmt, dose_amt, t_out, rtol, atol, max_steps, out):
    """:func:`simulate_patient` for MODE_CLOSED_FORM with METHOD_DOPRI5 (the default), via the fast path.
    Same arguments (minus method/mode) and return values."""
    p = derive(theta)
    q = cf_coefficients(p)
    lam2, m2, lam3, m3 = pk_modes(p)
    y = initial_state(p, MODE_CLOSED_FORM)
    work = np.empty((11, 3))
    lam = np.empty(N_MODES)
    coef = np.empty(N_MODES)
    enow = np.empty(N_MODES)
    conc = np.empty((3, 5))
    rates = np.empty((6, 4))
    tmp = np.empty(3)
    a2 = np.zeros(2)
    a3 = np.zeros(3)
    pkc = np.zeros(N_PKC)
    auc2 = 0.0
    auc3 = 0.0
    n_dose = dose_t.size
    n_out = t_out.size
    i_dose = 0
    k_out = 0
    t = 0.0
    steps = 0
    t_end = t_out[n_out - 1]
    pkc[PKC_GC] = 1.0
    while True:
        while i_dose < n_dose and dose_t[i_dose] <= t:
            c = dose_cmt[i_dose]
            amt = dose_amt[i_dose]
            if c == 1:
                a2[0] += amt * p[I_IL2_F]
            elif c == 2:
                a2[1] += amt
            elif c == 3:
                a3[0] += amt
            else:  # CMT 9: glucocorticoid level (mg/day) from now on
                pkc[PKC_GC] = gc_factor(amt, p)
                q[Q_PROLIF_T] = p[I_T_PROLIF] * pkc[PKC_GC]
            i_dose += 1
        pk_set_segment(t, a2, a3, lam2, m2, lam3, m3, p, pkc)
        while k_out < n_out and t_out[k_out] <= t:
            record(out[k_out], t, y, p, pkc, MODE_CLOSED_FORM, auc2, auc3)
            k_out += 1
        if k_out >= n_out:
            break
        t_next = t_end
        if i_dose < n_dose and dose_t[i_dose] < t_next:
            t_next = dose_t[i_dose]
        status, t_reached, k_out, nst = dopri5_cf_segment(
            t, t_next, y, p, q, pkc, rtol, atol, t_out, k_out, out, auc2, auc3, max_steps - steps, work,
            lam, coef, enow, conc, rates)
        steps += nst
        if status != STATUS_OK:
            return status, t_reached, steps
        for i in range(3):
            if y[i] < -(atol + rtol * abs(p[I_N0 + i])):
                return STATUS_NEGATIVE, t_next, steps
        da2, da3 = pk_auc(t_next, pkc)
        auc2 += da2
        auc3 += da3
        pk_advance_inplace(a2, lam2, m2, t_next - t, tmp)
        pk_advance_inplace(a3, lam3, m3, t_next - t, tmp)
        t = t_next
    return STATUS_OK, t, steps


# ============================================================================================= drivers
@njit(cache=True)
def simulate_patient(theta, dose_t, dose_cmt, dose_amt, t_out, rtol, atol, method, mode, max_steps, out):
    """Simulate one patient from t=0 (baseline steady state, no drug) to ``t_out[-1]``.

    Parameters
    ----------
    theta : (N_THETA,) float64, kernel units (see parameters.to_theta)
    dose_t, dose_cmt, dose_amt : (n_dose,) sorted dose events (days; CMT 1/2/3; IU or mg)
    t_out : (n_out,) sorted output times in days, >= 0
    rtol, atol : float
    method : METHOD_DOPRI5 or METHOD_ROSENBROCK23
    mode : MODE_CLOSED_FORM or MODE_PK_ODE
    max_steps : int, per patient
    out : (n_out, N_OUT) float64, written in place (post-dose values at a dose time)

    Returns
    -------
    status : int (STATUS_*)
    t_reached : float, days
    steps : int, accepted + rejected steps
    """
    if mode == MODE_CLOSED_FORM and method == METHOD_DOPRI5:
        return simulate_patient_cf_dp5(theta, dose_t, dose_cmt, dose_amt, t_out, rtol, atol, max_steps, out)
    p = derive(theta)
    lam2, m2, lam3, m3 = pk_modes(p)
    y = initial_state(p, mode)
    a2 = np.zeros(2)
    a3 = np.zeros(3)
    pkc = np.zeros(N_PKC)
    pk_set_segment(0.0, a2, a3, lam2, m2, lam3, m3, p, pkc)
    pkc[PKC_GC] = 1.0
    auc2 = 0.0
    auc3 = 0.0
    n_dose = dose_t.size
    n_out = t_out.size
    i_dose = 0
    k_out = 0
    t = 0.0
    h = 0.0
    steps = 0
    t_end = t_out[n_out - 1]
    off = 0 if mode == MODE_CLOSED_FORM else 5
    while True:
        dosed = False
        while i_dose < n_dose and dose_t[i_dose] <= t:
            c = dose_cmt[i_dose]
            amt = dose_amt[i_dose]
            if c == 1:
                amt *= p[I_IL2_F]
            if c == 9:  # glucocorticoid level (mg/day) from now on
                pkc[PKC_GC] = gc_factor(amt, p)
            elif mode == MODE_CLOSED_FORM:
                if c == 1:
                    a2[0] += amt
                elif c == 2:
                    a2[1] += amt
                else:
                    a3[0] += amt
            else:
                if c == 1:
                    y[0] += amt
                elif c == 2:
                    y[1] += amt
                else:
                    y[2] += amt
            i_dose += 1
            dosed = True
        if dosed:
            h = 0.0  # dynamics change at a dose: choose the next step afresh
        pk_set_segment(t, a2, a3, lam2, m2, lam3, m3, p, pkc)
        while k_out < n_out and t_out[k_out] <= t:
            record(out[k_out], t, y, p, pkc, mode, auc2, auc3)
            k_out += 1
        if k_out >= n_out:
            break
        t_next = t_end
        if i_dose < n_dose and dose_t[i_dose] < t_next:
            t_next = dose_t[i_dose]
        if method == METHOD_DOPRI5:
            status, t_reached, k_out, h, nst = dopri5_segment(
                t, t_next, y, p, pkc, mode, rtol, atol, h, t_out, k_out, out, auc2, auc3, max_steps - steps)
        else:
            status, t_reached, k_out, h, nst = rosenbrock23_segment(
                t, t_next, y, p, pkc, mode, rtol, atol, h, t_out, k_out, out, auc2, auc3, max_steps - steps)
        steps += nst
        if status != STATUS_OK:
            return status, t_reached, steps
        for i in range(3):
            if y[off + i] < -(atol + rtol * abs(p[I_N0 + i])):
                return STATUS_NEGATIVE, t_next, steps
        if mode == MODE_CLOSED_FORM:
            da2, da3 = pk_auc(t_next, pkc)
            auc2 += da2
            auc3 += da3
            a2 = pk_advance(a2, lam2, m2, t_next - t)
            a3 = pk_advance(a3, lam3, m3, t_next - t)
        t = t_next
    return STATUS_OK, t, steps


@njit(cache=True, parallel=True)
def simulate_population_parallel(theta, dose_t, dose_cmt, dose_amt, t_out, rtol, atol, method, mode,
                                 max_steps, out, status, t_reached, steps):
    """Simulate ``theta.shape[0]`` patients in parallel (prange); each writes its own row of ``out``
    (n_pat, n_out, N_OUT), ``status``, ``t_reached`` and ``steps``."""
    for i in prange(theta.shape[0]):
        s, tr, ns = simulate_patient(theta[i], dose_t, dose_cmt, dose_amt, t_out, rtol, atol, method, mode,
                                     max_steps, out[i])
        status[i] = s
        t_reached[i] = tr
        steps[i] = ns


@njit(cache=True)
def simulate_population_serial(theta, dose_t, dose_cmt, dose_amt, t_out, rtol, atol, method, mode,
                               max_steps, out, status, t_reached, steps):
    """Serial twin of :func:`simulate_population_parallel` (same numbers, one thread)."""
    for i in range(theta.shape[0]):
        s, tr, ns = simulate_patient(theta[i], dose_t, dose_cmt, dose_amt, t_out, rtol, atol, method, mode,
                                     max_steps, out[i])
        status[i] = s
        t_reached[i] = tr
        steps[i] = ns
