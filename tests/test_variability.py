"""Residual error, P-value-to-SD rule, omega recovery, responder fraction (fitting/variability.py)."""
import math

import numpy as np
import pytest

from tregpd.fitting import variability as V


def test_p_value_to_sd_rule_by_hand():
    # z(1 - 0.05/2) = 1.959964; SD = |m| sqrt(n) / z = 0.1959964 * 10 / 1.959964 = 1
    assert V.sd_from_p_value(0.05, 0.1959964, 100) == pytest.approx(1.0, rel=1e-6)
    assert V.sd_from_p_value(0.05, -0.1959964, 100) == pytest.approx(1.0, rel=1e-6)
    # SAT0261 Treg: m = ln(22.1/12.98) = 0.532168, z(0.999) = 3.090232, sqrt(82) = 9.055385 -> 1.55942
    assert V.sd_from_p_value(0.002, math.log(22.1 / 12.98), 82) == pytest.approx(
        0.532168 * 9.055385 / 3.090232, rel=1e-5)
    assert V.se_log_sd_from_p(0.05, 101) == pytest.approx(math.sqrt(1 / 1.959964 ** 2 + 1 / 200), rel=1e-6)
    # Feng baseline: CV 7.59/8.1 = 0.93704 -> sqrt(ln(1.878045)) = 0.79383
    assert V.sd_log_from_mean_sd(8.1, 7.59) == pytest.approx(math.sqrt(math.log(1 + (7.59 / 8.1) ** 2)))
    assert V.sd_log_from_mean_sd(8.1, 7.59) == pytest.approx(0.7939, abs=1e-4)
    with pytest.raises(ValueError):
        V.sd_from_p_value(0.0, 0.5, 82)


def test_residual_error_reproducible_with_seed():
    x = np.full((400, 3), 10.0)
    a = V.add_residual_error(x, "treg", seed=7)
    b = V.add_residual_error(x, "treg", seed=7)
    c = V.add_residual_error(x, "treg", seed=8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.log(a / 10.0).std() == pytest.approx(V.RESIDUAL_SIGMA["flow_count"], rel=0.08)
    assert V.residual_sigma("ratio") == pytest.approx(math.sqrt(2) * V.RESIDUAL_SIGMA["flow_count"])
    assert np.array_equal(V.add_residual_error(x, "treg", sigma=0.0, seed=1), x)


class _Result:
    """Stand-in for a population SimulationResult: time_day and get(observable)."""

    def __init__(self, t, x):
        self.time_day, self._x = np.asarray(t, float), np.asarray(x, float)

    def get(self, observable):
        return self._x


def test_responder_fraction_of_known_values():
    t = [0.0, 7.0, 14.0]
    x = np.array([[10, 10, 12], [10, 20, 11], [10, 30, 40], [10, 14, 16]], float)
    r = _Result(t, x)
    assert V.responder_fraction(r, 7.0, residual=False) == 0.5          # folds 1, 2, 3, 1.4
    assert V.responder_fraction(r, 7.0, threshold=1.3, residual=False) == 0.75
    assert V.responder_fraction(r, 14.0, residual=False) == 0.5         # folds 1.2, 1.1, 4, 1.6
    assert V.responder_fraction(r, 7.0, residual=False, day_end=14.0, summary="max") == 0.75
    # with residual error: reproducible, and a fold of exactly 1 responds with P(N(0, 2 s^2) >= ln 1.5)
    big = _Result([0.0, 7.0], np.full((20000, 2), 10.0))
    f = V.responder_fraction(big, 7.0, residual=True, seed=3)
    assert f == V.responder_fraction(big, 7.0, residual=True, seed=3)
    from scipy.stats import norm
    s = V.RESIDUAL_SIGMA["flow_count"]
    assert f == pytest.approx(norm.sf(math.log(1.5) / (math.sqrt(2) * s)), abs=0.01)


def _synthetic_simulator(n, seed):
    """A population whose day-0 log value has SD omega_b and whose log fold at day 7 has SD omega_e."""
    z = np.random.default_rng(seed).standard_normal((n, 2))

    def sim(regimen_id, iiv):
        base = 10.0 * np.exp(iiv["treg_baseline"] * z[:, 0])
        fold = 2.0 * np.exp(iiv["il2_emax_treg"] * z[:, 1])
        return _Result([0.0, 7.0], np.c_[base, base * fold])
    return sim


def test_omega_recovery_from_a_synthetic_population():
    truth = {"treg_baseline": 0.5, "il2_emax_treg": 0.3}
    s = V.RESIDUAL_SIGMA["flow_count"]
    # observed SDs of a large "study" with the true omegas, residual variance added (1 visit / 2 visits)
    targets = [V.IIVTarget("level0", "x", "treg", 0.0, "level", math.sqrt(0.5 ** 2 + s ** 2), 0.1, 35, "synthetic"),
               V.IIVTarget("fold7", "x", "treg", 7.0, "fold", math.sqrt(0.3 ** 2 + 2 * s ** 2), 0.1, 35, "synthetic")]
    prob = V.IIVProblem(targets, parameters=None, base_iiv={}, n_population=4000, seed=1,
                        simulator=_synthetic_simulator(4000, 11), use=["level0", "fold7"])
    fit = V.fit_iiv(prob, start={"treg_baseline": 0.2, "il2_emax_treg": 0.8})
    # tolerance: the fit uses 4000 fixed draws, whose sample SDs differ from the truth by ~1/sqrt(2n) (1 %)
    for k, v in truth.items():
        assert fit.estimates[k] == pytest.approx(v, abs=0.03), (k, fit.estimates)
        assert math.isfinite(fit.stderr[k]) and fit.stderr[k] > 0
    assert fit.chi2 < 1e-3
    prof = V.profile_omega(fit, "il2_emax_treg", [0.1, 0.2, 0.3, 0.4, 0.6])
    lo, hi = V.profile_interval(prof)
    assert lo < 0.3 < hi


def test_profile_interval_interpolates():
    import pandas as pd
    prof = pd.DataFrame({"value": [0.0, 1.0, 2.0, 3.0], "delta_chi2": [7.68, 0.0, 1.92, 3.0]})
    lo, hi = V.profile_interval(prof)
    assert lo == pytest.approx(0.5) and hi == 3.0
