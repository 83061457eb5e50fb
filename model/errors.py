"""Re-export shim: the exceptions live in :mod:`tregpd.errors` (shared by model/, fitting/ and scenarios/).

Kept so that ``from tregpd.model.errors import TregpdError`` goes on working; new code imports
:mod:`tregpd.errors`.
"""
from tregpd.errors import (MAX_MESSAGE, CohortError, IntegrationError, ParameterError,  # noqa: F401
                           RegimenError, ScenarioError, TregpdError)

__all__ = ["MAX_MESSAGE", "TregpdError", "ParameterError", "RegimenError", "CohortError", "ScenarioError",
           "IntegrationError"]
