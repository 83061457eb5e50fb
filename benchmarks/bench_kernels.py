"""The kernels that the hand-written peers (peers.py) are compared with: the structure ``sat0261_v1``.

The peers' right-hand sides are written by hand for that structure (8 states with the PK as ODE states), so the
side-by-side rows run tregpd on the same structure; the per-structure rows (``structure_rows`` in run.py) cover
every structure, the default included, against a Python right-hand side generated from each declaration.
Module attributes not defined here are those of the compiled ``sat0261_v1`` kernel module.
"""
from __future__ import annotations

from tregpd.model import kernels as _K
from tregpd.model.structures import get_model

BENCH_MODEL = "sat0261_v1"
_m = get_model(BENCH_MODEL)

STATUS_OK, STATUS_MAX_STEPS = _K.STATUS_OK, _K.STATUS_MAX_STEPS
METHOD_DOPRI5, METHOD_ROSENBROCK23 = _K.METHOD_DOPRI5, _K.METHOD_ROSENBROCK23
MODE_CLOSED_FORM, MODE_PK_ODE = _K.MODE_CLOSED_FORM, _K.MODE_PK_ODE
N_THETA = len(_m.parameter_names)
OUT_NAIVE, OUT_TREG, OUT_TH17 = (_m.output_names.index(n) for n in ("naive", "treg", "th17"))
OUT_C_IL2, OUT_C_RAPA = _m.output_names.index("c_il2"), _m.output_names.index("c_rapa")
OUT_AUC_IL2, OUT_AUC_RAPA = _m.output_names.index("auc_il2"), _m.output_names.index("auc_rapa")
N_OUT = len(_m.output_names)
I_SRC_N = N_THETA + _m.derived_names.index("naive_supply")
I_DEATH_R = N_THETA + _m.derived_names.index("treg_death")
I_DEATH_T = N_THETA + _m.derived_names.index("th17_death")


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(_K.for_model(BENCH_MODEL), name)


for_model = _K.for_model
