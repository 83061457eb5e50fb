"""tregpd: mechanistic PK/PD simulator of the Th17/Treg balance in refractory SLE under low-dose IL-2 and
rapamycin. See README.md. Subpackages: tregpd.model, tregpd.fitting, tregpd.scenarios."""
try:
    from importlib.metadata import version as _version
    __version__ = _version("tregpd")
except Exception:  # pragma: no cover - running from a source tree without installation
    __version__ = "0.0.0+unknown"

from .model import *  # noqa: F401,F403
from .model import __all__ as _model_all

__all__ = ["__version__", *_model_all]
