"""Constants of the scenario layer that the command-line parser needs; this module imports nothing heavy (no
numpy, numba or pandas), so that ``tregpd --help`` stays quick. :mod:`tregpd.scenarios.schema` re-exports them."""
from __future__ import annotations

from typing import Mapping

#: Study questions a scenario can be tagged with (``question`` key); the runner groups figures by them.
QUESTIONS: Mapping[str, str] = {
    "reference": "the study's (assumed) reference regimen",
    "combination": "each drug alone and both together",
    "il2_dose": "IL-2 dose-response on the reference frequency",
    "il2_frequency": "IL-2 dosing frequency at fixed dose",
    "trial_regimens": "regimens of other low-dose IL-2 / sirolimus trials",
    "sirolimus_dose": "sirolimus dose-response",
    "duration": "treatment duration",
    "washout": "stopping treatment and washout",
}
