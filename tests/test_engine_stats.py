"""Work counters of the fast path (``simulate_patient_cf_dp5_stats``; benchmarks/ "where the time goes").

The counters are checked against what the algorithm must do, known independently of the kernel: one dose
segment per distinct dose time before the end (the regimen says how many), two right-hand-side and forcing
evaluations per segment (the start and the initial-step probe), six right-hand sides and five forcing
evaluations per trial step, every trial step accepted or rejected, and the same results and step count as the
plain kernel call (the counters change nothing)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from tregpd.model import default_parameters, reference_regimen
from tregpd.model.kernels import for_model

NO_JIT = os.environ.get("NUMBA_DISABLE_JIT") == "1"
pytestmark = pytest.mark.skipif(NO_JIT, reason="kernel-level counters are checked with the JIT on")


@pytest.mark.parametrize("name", ["v2_lean", "v1_il2_consumption"])
def test_counters_match_the_algorithm(name):
    k = for_model(name)
    reg = reference_regimen(24, taper=False)
    ev = reg.events()
    theta = np.ascontiguousarray(default_parameters().to_theta(name))
    t_out = np.array([0.0, 42.0, 84.0, 168.0])
    out0 = np.zeros((t_out.size, k.N_OUT))
    st0, _, steps0 = k.simulate_patient(theta, ev.time_day, ev.cmt, ev.amount, t_out, 1e-6, 1e-8, 0, 0, 10**6, out0)
    out = np.zeros_like(out0)
    stats = np.zeros(k.N_STATS, dtype=np.int64)
    st, _, steps = k.simulate_patient_cf_dp5_stats(theta, ev.time_day, ev.cmt, ev.amount, t_out, 1e-6, 1e-8,
                                                   10**6, out, stats)
    assert st == st0 == 0
    assert steps == steps0
    np.testing.assert_array_equal(out, out0)
    n_seg = np.unique(ev.time_day[ev.time_day < t_out[-1]]).size      # a segment starts at every dose time
    assert 0.0 in ev.time_day
    assert stats[k.STAT_SEGMENTS] == n_seg
    assert stats[k.STAT_ACCEPTED] + stats[k.STAT_REJECTED] == steps
    assert stats[k.STAT_FORCING] == 2 * n_seg + 5 * steps
    flushes = stats[k.STAT_RHS] - (2 * n_seg + 6 * steps)     # one extra RHS after each flush of negligible states
    if k.HAS_NEGLIGIBLE:
        assert 0 < flushes <= stats[k.STAT_ACCEPTED]
    else:
        assert flushes == 0
    assert stats[k.STAT_EXP] >= steps          # at least one active PK mode per trial step (sirolimus is dosed)
    # counters accumulate: a second call adds the same again
    k.simulate_patient_cf_dp5_stats(theta, ev.time_day, ev.cmt, ev.amount, t_out, 1e-6, 1e-8, 10**6, out, stats)
    assert stats[k.STAT_SEGMENTS] == 2 * n_seg
