"""tregpd: mechanistic PK/PD simulator of the Th17/Treg balance in refractory SLE under low-dose IL-2 and
rapamycin. See README.md. Subpackages: tregpd.model, tregpd.fitting, tregpd.scenarios.

``tregpd.<name>`` re-exports :mod:`tregpd.model`'s public names. They, and ``__version__``, are imported on first
use (see :mod:`tregpd._lazy`): importing ``tregpd`` or building the command-line parser loads no numba, numpy,
pandas or matplotlib.
"""
# absolute imports: pytest imports this file on its own when it collects the repository root (a folder whose
# name is no Python identifier, such as a git worktree "wt-cli", gets no parent package, so "from ." fails)
from tregpd._lazy import attach
from tregpd.model import __all__ as _model_all

__all__ = attach("tregpd", {"_version": ("__version__",), "model": tuple(_model_all)})
