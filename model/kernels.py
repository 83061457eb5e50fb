"""Numba kernels of a model structure: a thin door onto the generated modules of :mod:`tregpd.model.codegen`.

The kernels are no longer written by hand. Each structure (:mod:`tregpd.model.structures`) is compiled from
its declaration into a module that holds the generated model functions and the shared engine
(``_engine.py``: Dormand-Prince 5(4) with a closed-form-PK fast path, Rosenbrock 2(3) with the analytic
Jacobian, patient and population drivers). :func:`for_model` returns that module; attributes of this module
that are not defined here (``simulate_patient``, ``derive``, ...) are those of the default structure, so
``from tregpd.model import kernels as K; K.simulate_patient(...)`` keeps working.

Constants shared by every structure (status codes, methods, state layouts) are defined here without compiling
anything; so are the default structure's output columns and derived-constant indices.
"""
from __future__ import annotations

from .structures import DEFAULT_MODEL, get_model

# ---- status codes (see STATUS_MESSAGES in simulate.py); same values as in _engine.py
STATUS_OK = 0
STATUS_MAX_STEPS = 1
STATUS_STEP_TOO_SMALL = 2
STATUS_NONFINITE = 3
STATUS_NEGATIVE = 4

METHOD_DOPRI5 = 0
METHOD_ROSENBROCK23 = 1
MODE_CLOSED_FORM = 0
MODE_PK_ODE = 1

_default = get_model(DEFAULT_MODEL)
#: output columns of the default structure (every structure starts with naive, treg, th17)
OUT_NAIVE, OUT_TREG, OUT_TH17 = 0, 1, 2
OUT_C_IL2 = _default.output_names.index("c_il2")
OUT_C_RAPA = _default.output_names.index("c_rapa")
OUT_AUC_IL2 = _default.output_names.index("auc_il2")
OUT_AUC_RAPA = _default.output_names.index("auc_rapa")
N_OUT = len(_default.output_names)
N_THETA = len(_default.parameter_names)
#: derived constants of the default structure, appended to theta by derive()
I_SRC_N = N_THETA + _default.derived_names.index("naive_supply")
I_DEATH_R = N_THETA + _default.derived_names.index("treg_death")
I_DEATH_T = N_THETA + _default.derived_names.index("th17_death")
N_P = N_THETA + len(_default.derived_names)


def for_model(model=None):
    """The compiled kernel module of ``model`` (a name, a ModelStructure, or None for the default)."""
    from .codegen import kernels_for
    return kernels_for(get_model(model))


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(for_model(None), name)
