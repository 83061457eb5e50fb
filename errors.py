"""Exceptions raised by tregpd. Every user-facing error is a :class:`TregpdError`; the CLI prints its message
(which names the file, row or field and the bad value) and exits non-zero without a traceback."""


#: longest message a TregpdError keeps; longer ones (a value echoed whole by a message that did not shorten it)
#: are cut in the middle, so the CLI's one-line error stays readable
MAX_MESSAGE = 800


class TregpdError(Exception):
    """Base class of all errors caused by user input or a failed computation."""

    def __init__(self, message="", *args):
        if isinstance(message, str) and len(message) > MAX_MESSAGE:
            keep = MAX_MESSAGE // 2 - 40
            message = (f"{message[:keep]} ... ({len(message) - 2 * keep} characters cut) ... "
                       f"{message[-keep:]}")
        super().__init__(message, *args)


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


class OutputError(TregpdError, OSError):
    """An output path cannot be written safely (a device, fifo or folder at a file's place, a file at a
    folder's place, an unwritable folder)."""
