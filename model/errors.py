"""Exceptions raised by tregpd. Every user-facing error is a :class:`TregpdError`; the CLI prints its message
(which names the file, row or field and the bad value) and exits non-zero without a traceback."""


class TregpdError(Exception):
    """Base class of all errors caused by user input or a failed computation."""


class ParameterError(TregpdError, ValueError):
    """A parameter file or parameter value is invalid."""


class RegimenError(TregpdError, ValueError):
    """A dosing regimen or event table is invalid."""


class CohortError(TregpdError, ValueError):
    """A cohort data file is invalid."""


class ScenarioError(TregpdError, ValueError):
    """A scenario file is invalid."""


class IntegrationError(TregpdError, RuntimeError):
    """The ODE solver failed for one or more patients.

    Attributes
    ----------
    failures : list of (patient, status_name, t_reached_day)
    """

    def __init__(self, message: str, failures=()):
        super().__init__(message)
        self.failures = list(failures)
