"""Shared fixtures and settings for the tregpd test suite.

* ``params``: the bundled literature priors (validated ParameterSet).
* ``coarse_t``: the study's sampling grid in days (weeks 0, 6, 12, 24); tests use coarse grids so the suite
  stays fast.
* ``reference``: the assumed Shanxi reference regimen (24 weeks).
* hypothesis profile "tregpd": modest example counts and no per-example deadline (numba compile and the
  first call of a kernel would otherwise trip it). Select another with ``--hypothesis-profile``.
* ``NO_JIT`` is true when the suite runs under ``NUMBA_DISABLE_JIT=1`` (``make test-nojit``); tests that
  integrate many long trajectories are marked ``slow`` and excluded there.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from tregpd.model import default_parameters, reference_regimen

NO_JIT = os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0")

settings.register_profile(
    "tregpd", max_examples=10 if NO_JIT else 30, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile("tregpd")

#: weeks 0, 6, 12, 24 in days (the SAT0261 sampling times)
STUDY_DAYS = (0.0, 42.0, 84.0, 168.0)


@pytest.fixture(scope="session")
def params():
    return default_parameters()


@pytest.fixture(scope="session")
def coarse_t():
    return np.array(STUDY_DAYS)


@pytest.fixture(scope="session")
def reference():
    return reference_regimen(weeks=24)
