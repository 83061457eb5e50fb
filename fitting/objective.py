"""Objective: weighted log-scale residuals between model statistics and cohort statistics.

For every fitted cohort row ``i`` with observed value ``y_i > 0`` and model value ``m_i > 0``::

    r_i = (ln m_i - ln y_i) / s_i

so ``sum r_i^2`` is a chi-square with *known* standard errors (lmfit's ``scale_covar=False``; the covariance is
not rescaled by the reduced chi-square, which is undefined for exactly determined problems). ``s_i`` is the
standard error of ``ln y_i``, chosen in this order (the rule used is written into each residual table row):

1. ``rel_se`` column of the row, if given (user override; soft constraints such as the SAT0261 Th17 row).
2. Quantiles (median, q25, q75) when the cohort gives the IQR at that week and observable:
   between-patient log-SD ``sigma = (ln q75 - ln q25) / 1.349`` (log-normal assumption) and
   ``s = c_p sigma / sqrt(n)`` with ``c_0.5 = sqrt(pi/2) = 1.2533`` and ``c_0.25 = c_0.75 = 1.3626``
   (asymptotic SE of a sample quantile, ``sqrt(p(1-p)) / phi(z_p)``).
3. ``mean`` with an ``sd`` row: ``s = sd / (mean sqrt(n))`` (delta method).
4. Otherwise the stated default between-patient log-SD :data:`DEFAULT_LOG_SD` = 0.5 in the formula of rule 2
   (ASSUMPTION: lymphocyte-subset counts in SLE cohorts typically have an IQR of about x/÷ 2, i.e. a log-SD
   near 0.5; the model's own default IIV on the Treg/Th17 baselines is 0.35-0.45). For the seed cohort
   (n = 82, no IQR) this gives ``s = 1.2533 x 0.5 / sqrt(82) = 0.069``: a median is known to about +/-7 %.
   A ``median_fold_change`` without ``rel_se`` gets ``sqrt(2)`` times that (two medians).

``sd`` rows only provide weights for ``mean`` rows; they are not fitted.
"""
from __future__ import annotations

import math

import numpy as np

from tregpd.errors import TregpdError

#: Default between-patient SD of log cell counts (ASSUMPTION, see the module docstring).
DEFAULT_LOG_SD = 0.5
#: asymptotic SE factor of the p-quantile of a normal sample: sqrt(p (1-p)) / phi(z_p)
QUANTILE_SE_FACTOR = {"median": math.sqrt(math.pi / 2.0), "q25": 1.3626, "q75": 1.3626}
IQR_TO_SD = 1.349  # IQR of a standard normal


def standard_errors(cohort, default_log_sd: float = DEFAULT_LOG_SD):
    """Log-scale standard error of every row of a cohort.

    Returns
    -------
    sigma : (n_rows,) float array (NaN for ``sd`` rows, which are not fitted)
    rules : list of str, the rule used for each row (for the residual table)
    """
    f = cohort.frame
    sigma = np.full(len(f), np.nan)
    rules = [""] * len(f)
    for k, r in enumerate(f.itertuples()):
        if r.statistic == "sd":
            rules[k] = "not fitted (weights the mean)"
            continue
        if not math.isnan(r.rel_se):
            sigma[k] = r.rel_se
            rules[k] = f"rel_se column ({r.rel_se:g})"
            continue
        q25 = cohort.value(r.week, r.observable, "q25")
        q75 = cohort.value(r.week, r.observable, "q75")
        if r.statistic in QUANTILE_SE_FACTOR:
            if q25 is not None and q75 is not None and q75 > q25:
                sd_log = (math.log(q75) - math.log(q25)) / IQR_TO_SD
                rule = f"IQR log-SD {sd_log:.3g}, n={r.n}"
            else:
                sd_log = default_log_sd
                rule = f"default log-SD {default_log_sd:g}, n={r.n}"
            sigma[k] = QUANTILE_SE_FACTOR[r.statistic] * sd_log / math.sqrt(r.n)
            rules[k] = rule
        elif r.statistic == "mean":
            sd = cohort.value(r.week, r.observable, "sd")
            if sd is not None:
                sigma[k] = sd / (r.value * math.sqrt(r.n))
                rules[k] = f"sd/(mean sqrt n), n={r.n}"
            else:
                sigma[k] = default_log_sd / math.sqrt(r.n)
                rules[k] = f"default log-SD {default_log_sd:g}/sqrt n, n={r.n}"
        elif r.statistic == "median_fold_change":
            sigma[k] = math.sqrt(2.0) * QUANTILE_SE_FACTOR["median"] * default_log_sd / math.sqrt(r.n)
            rules[k] = f"sqrt2 x default median SE, n={r.n}"
    return sigma, rules


def log_residuals(model_values: np.ndarray, observed: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """``(ln model - ln observed) / sigma``, all arrays of shape (n_targets,).

    Model values must be positive and finite; anything else is a bug upstream (the solver reports failed
    integrations as errors before values reach this function), so it raises rather than returning NaN.
    """
    model_values = np.asarray(model_values, dtype=float)
    if not np.all(np.isfinite(model_values)) or np.any(model_values <= 0):
        bad = int(np.flatnonzero(~np.isfinite(model_values) | (model_values <= 0))[0])
        raise TregpdError(f"model statistic {bad} is {model_values[bad]!r}; it must be positive")
    return (np.log(model_values) - np.log(observed)) / sigma
