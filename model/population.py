"""Virtual populations: log-normal inter-individual variability (IIV) on named parameters, seeded.

``theta_i[name] = typical[name] * exp(omega[name] * z_i)``, ``z_i ~ N(0, 1)`` from
``numpy.random.default_rng(seed)``, drawn for all patients in one call in a fixed parameter order so that the
same seed gives the same population whatever the chunking. Draws are clipped to each parameter's bounds
(the clipped fraction is reported by :func:`sample_population` through ``info``).
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from tregpd.errors import ParameterError
from .parameters import EXPECTED_UNITS, N_THETA, PARAMETER_NAMES, ParameterSet, _PER_DAY
from .structures import get_model

#: Default IIV (SD of the log) — ASSUMPTIONS except where noted. Sirolimus CL/F: Golubovic 2019 omega^2 0.0547
#: (literature.md c2) -> omega 0.234. Baselines: spread chosen so that the simulated week-0 5-95 % range of
#: Treg spans roughly the lower half of the healthy range (Niu; d), as refractory SLE sits at its bottom edge.
DEFAULT_IIV: Mapping[str, float] = {
    "rapa_cl": 0.234,
    "il2_cl": 0.3,
    "treg_baseline": 0.35,
    "th17_baseline": 0.45,
    "naive_baseline": 0.3,
    "il2_emax_treg": 0.4,
    "treg_proliferation": 0.2,
}


def sample_population(parameters: ParameterSet, n: int, iiv: Mapping[str, float] | None = None,
                      seed: int = 0, return_info: bool = False, model=None):
    """Draw ``n`` virtual patients.

    Parameters
    ----------
    parameters : ParameterSet
        Typical values (medians of the log-normal).
    n : int
        Number of patients (>= 1).
    iiv : mapping name -> omega (SD of log-parameter, >= 0); default :data:`DEFAULT_IIV`.
    seed : int
    model : str or ModelStructure, optional
        The structure whose parameter order ``theta`` follows (default ``sat0261_v1``). IIV entries on
        parameters the structure does not read are ignored (so one IIV serves every structure); the random
        draws do not depend on the structure (the same seed gives the same scores for shared parameters).

    Returns
    -------
    theta : (n, n_parameters) kernel-unit matrix; and, with ``return_info``, a dict with the clipped fraction
    per parameter.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ParameterError(f"population size n must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ParameterError(f"seed must be a non-negative integer, got {seed!r}")
    from tregpd.safeio import check_memory
    check_memory(f"sample_population(n={n})", n, 2 * N_THETA + len(PARAMETER_NAMES),
                 "draw the population in chunks (theta_from_z on blocks of scores), or use `tregpd trial`, which "
                 "streams patients in chunks", error=ParameterError,
                 detail="the parameter matrix, the scores and the clipping mask")
    iiv = dict(DEFAULT_IIV if iiv is None else iiv)
    known = list(EXPECTED_UNITS)
    for name, om in iiv.items():
        if name not in known:
            raise ParameterError(f"IIV: unknown parameter {name!r}; known: {', '.join(known)}")
        if isinstance(om, bool) or not isinstance(om, (int, float)) or not math.isfinite(om) or om < 0:
            raise ParameterError(f"IIV: omega of {name!r} must be a finite number >= 0, got {om!r}")
    rng = np.random.default_rng(seed)
    names = [nm for nm in known if nm in iiv]
    z = rng.standard_normal((n, len(names)))
    used = set(get_model(model).parameter_names)
    keep = [k for k, name in enumerate(names) if name in used]
    theta, clipped_used = theta_from_z(parameters, z[:, keep], {names[k]: iiv[names[k]] for k in keep}, model)
    clipped = np.zeros(z.shape, dtype=bool)
    clipped[:, keep] = clipped_used
    info = {name: float(clipped[:, k].mean()) for k, name in enumerate(names)}
    return (theta, info) if return_info else theta


def theta_from_z(parameters: ParameterSet, z: np.ndarray, iiv: Mapping[str, float], model=None):
    """Kernel-unit patients from standard-normal scores (the transform inside :func:`sample_population`).

    Parameters
    ----------
    parameters : ParameterSet
        Typical values (medians).
    z : (n, k) array
        Standard-normal scores; column ``k`` belongs to the k-th entry of ``iiv`` (in its iteration order).
    iiv : mapping name -> omega, with ``k`` entries (assumed validated, as in :func:`sample_population`).

    Returns
    -------
    theta : (n, N_THETA) kernel-unit matrix, ``value * exp(omega * z)`` clipped to each parameter's bounds.
    clipped : (n, k) bool, True where a draw was clipped.
    """
    z = np.atleast_2d(np.asarray(z, dtype=np.float64))
    if z.shape[1] != len(iiv):
        raise ParameterError(f"z has {z.shape[1]} columns but {len(iiv)} IIV parameters were given")
    names = get_model(model).parameter_names
    theta = np.tile(parameters.to_theta(model), (z.shape[0], 1))
    clipped = np.zeros(z.shape, dtype=bool)
    for k, (name, omega) in enumerate(iiv.items()):
        j = names.index(name)
        p = parameters[name]
        f = _PER_DAY.get(p.unit, 1.0)
        vals = p.value * np.exp(omega * z[:, k])
        lo, hi = p.lower, p.upper
        clipped[:, k] = (vals < lo) | (vals > hi)
        theta[:, j] = np.clip(vals, lo, hi) * f
    return theta, clipped
