"""Re-export shim: atomic writes and provenance records live in :mod:`tregpd.io` (shared by model/, fitting/
and scenarios/).

Kept so that ``from tregpd.model.io import atomic_write_text`` goes on working; new code imports
:mod:`tregpd.io`.
"""
from tregpd.io import (_json_default, atomic_save_figure, atomic_write_bytes, atomic_write_frame,  # noqa: F401
                       atomic_write_json, atomic_write_text, provenance)

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_write_frame",
           "atomic_save_figure", "provenance"]
