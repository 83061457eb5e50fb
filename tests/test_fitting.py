"""Fitting: parameter recovery (typical and population mode), the seed-cohort fit, profile likelihood against
lmfit's own intervals, posterior sampling and the ``tregpd fit`` command end to end."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tregpd.cli import main
from tregpd.model import (DEFAULT_IIV, default_parameters, load_parameters, reference_regimen,
                          sample_population, simulate, simulate_population)
from tregpd.fitting import (FitProblem, confidence_intervals, fit_population, fit_typical, minimize,
                            parse_cohort, profile_likelihood, sample_posterior, seed_cohort)
from tregpd.fitting.cohort import cohort_from_result
from tregpd.fitting.optimise import DELTA_CHI2_95, build_parameters

# Every test here runs hundreds of ODE solves; without the JIT (make test-nojit) they would take hours, so
# they are marked slow (still part of `make test`).
pytestmark = pytest.mark.slow

WEEKS = (0, 6, 12, 24)
T_OUT = [7.0 * w for w in WEEKS]
#: free in the cohort fit: the bundled parameter file's fitted flags (default structure v2_lean)
FREE = ("il2_emax_treg", "il2_emax_th17", "rapa_imax_th17_prolif")
#: free in the recovery tests (identifiable from a 4-visit cohort of the default structure)
RECOVER = ("il2_emax_treg", "rapa_imax_th17_prolif", "treg_crowding")


@pytest.fixture(scope="module")
def truth_cohort():
    """Typical-patient medians at weeks 0, 6, 12, 24 simulated with known parameters (tight tolerances)."""
    truth = {"il2_emax_treg": 12.0, "rapa_imax_th17_prolif": 0.3, "treg_crowding": 80.0}
    res = simulate(default_parameters().with_values(**truth), reference_regimen(24), t_out=T_OUT,
                   rtol=1e-10, atol=1e-12)
    return truth, cohort_from_result(res, WEEKS, n=82, source="simulated truth")


def test_typical_recovery(truth_cohort):
    truth, cohort = truth_cohort
    problem = FitProblem(cohort, free=RECOVER)
    start = build_parameters(problem)                       # the file's values
    assert {n: start[n].value for n in RECOVER} != truth
    # a free parameter the structure does not read is left out of the fit (noted), not fitted as a no-op
    assert FitProblem(cohort, free=RECOVER + ("gc_imax_th17",)).dropped_free == ("gc_imax_th17",)
    _, result = minimize(problem, start)
    for name, value in truth.items():
        assert result.params[name].value == pytest.approx(value, rel=2e-3), name
    assert result.chisqr < 1e-6


def test_profile_intervals_agree_with_lmfit(truth_cohort):
    """Near a well-determined optimum the profile interval, lmfit's conf_interval (same likelihood-ratio test)
    and the Wald interval from lmfit's covariance must agree."""
    _, cohort = truth_cohort
    problem = FitProblem(cohort, free=("il2_emax_treg", "rapa_imax_th17_prolif"))
    mini, result = minimize(problem)
    prof = profile_likelihood(problem, result, "il2_emax_treg", n_points=9)
    assert prof.classification == "identifiable"
    lo, hi = prof.ci68
    best = result.params["il2_emax_treg"].value
    stderr = result.params["il2_emax_treg"].stderr
    assert lo < best < hi
    assert (hi - lo) / 2 == pytest.approx(stderr, rel=0.15)           # Wald vs profile, 68 %
    ci, msg = confidence_intervals(mini, result, names=["il2_emax_treg"], sigmas=(1,))
    assert ci is not None, msg
    entries = ci["il2_emax_treg"]                    # [(prob, lower), (0, best), (prob, upper)]
    lm_lo, lm_hi = entries[0][1], entries[-1][1]
    assert lm_lo == pytest.approx(lo, rel=0.05)
    assert lm_hi == pytest.approx(hi, rel=0.05)


def test_population_recovery_with_common_random_numbers():
    """Population medians/quartiles simulated from known typical values with the seed the fit uses; week-0
    medians are the typical baselines, so the truth reproduces the data exactly and must be recovered."""
    p = default_parameters()
    truth = {"il2_emax_treg": 12.0, "rapa_imax_th17_prolif": 0.3}
    n, seed = 80, 11
    theta = sample_population(p.with_values(**truth), n, iiv=DEFAULT_IIV, seed=seed)
    pop = simulate_population(theta, reference_regimen(24), t_out=T_OUT, rtol=1e-6, atol=1e-8)
    sim = cohort_from_result(pop, WEEKS[1:], statistics=("median", "q25", "q75"), n=n)
    rows = ["week,observable,statistic,value,n,source",
            f"0,treg,median,{p['treg_baseline'].value!r},{n},typical baseline",
            f"0,ratio,median,{p['th17_baseline'].value / p['treg_baseline'].value!r},{n},typical baseline"]
    rows += [f"{r.week:g},{r.observable},{r.statistic},{r.value!r},{r.n},sim" for r in sim.frame.itertuples()]
    cohort = parse_cohort("\n".join(rows) + "\n", origin="population-truth")
    fit = fit_population(cohort, free=tuple(truth), n_patients=n, seed=seed)
    for name, value in truth.items():
        assert fit.values[name] == pytest.approx(value, rel=5e-3), name
    # the per-patient ratio median is what is fitted, not the ratio of medians
    res = fit.problem.simulate(fit.values)
    j = int(np.flatnonzero(res.time_day == 168.0)[0])
    per_patient = np.median(res.get("th17")[:, j] / res.get("treg")[:, j])
    assert cohort.value(24, "ratio", "median") == pytest.approx(per_patient, rel=1e-3)
    assert per_patient != pytest.approx(np.median(res.get("th17")[:, j]) / np.median(res.get("treg")[:, j]),
                                        rel=1e-6)


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory):
    """``tregpd fit`` on the bundled seed cohort, end to end into a temporary folder; the FitOutcome that the
    command produced is captured so the tests can also inspect the profiles."""
    import io
    from contextlib import redirect_stdout
    from tregpd.fitting import workflow
    out = tmp_path_factory.mktemp("fit")
    captured = {}
    real = workflow.run_fit

    def spy(*args, **kwargs):
        captured["outcome"] = real(*args, **kwargs)
        return captured["outcome"]

    buf = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(buf):
        mp.setattr(workflow, "run_fit", spy)
        rc = main(["fit", "--out", str(out), "--mode", "both", "--patients", "100", "--seed", "3"])
    return rc, out, captured["outcome"], buf.getvalue()


def test_cli_fit_end_to_end(seed_run):
    rc, out, outcome, stdout = seed_run
    assert rc == 0
    for f in ("fitted_parameters.toml", "fitted_parameters_typical.toml", "fit_report.txt", "fit.png",
              "profiles.png", "residuals.csv", "provenance.json"):
        assert (out / f).stat().st_size > 0, f
    params = load_parameters(out / "fitted_parameters.toml")
    assert params["il2_emax_treg"].status == "FITTED"
    assert params["il2_emax_treg"].value == pytest.approx(outcome.population.values["il2_emax_treg"])
    assert params["treg_baseline"].value == 12.98
    typical = load_parameters(out / "fitted_parameters_typical.toml")
    resid = pd.read_csv(out / "residuals.csv", comment="#")
    row = resid[(resid["week"] == 24) & (resid["observable"] == "treg")].iloc[0]
    # the written typical parameter file reproduces the reported week-24 model value
    sim = simulate(typical, reference_regimen(24), t_out=[0.0, 168.0], rtol=1e-8, atol=1e-10)
    assert sim.at("treg", 168.0)[0] == pytest.approx(row["model_typical"], rel=1e-6)
    report = (out / "fit_report.txt").read_text()
    assert "Identifiable from these data: il2_emax_treg" in report
    assert "ASSUMPTION" in report and "[[Fit Statistics]]" in report
    assert "week 24 treg median" in stdout


def test_seed_fit_reproduces_medians(seed_run):
    """Week 0 by construction; week 24 within 3 SE (the fit verdict's rule) in both modes. The default structure
    (v2_lean, chosen by the joint calibration over all studies) has no glucocorticoid term, so Th17 cannot rise
    and the two week-24 medians are not both reachable: measured typical Treg 18.5 (-2.6 SE), ratio 0.254
    (-1.9 SE). With ``--model sat0261_v1`` (taper term) the seed fit reaches both within 3 % (see the fit report
    and the calibration report for why the joint evidence prefers v2_lean)."""
    _, _, outcome, _ = seed_run
    table = outcome.residuals
    get = lambda w, o: table[(table["week"] == w) & (table["observable"] == o)
                             & (table["statistic"] == "median")].iloc[0]
    assert get(0, "treg")["model_typical"] == pytest.approx(12.98, rel=1e-9)
    assert get(0, "ratio")["model_typical"] == pytest.approx(0.44, rel=1e-6)
    for mode in ("typical", "population"):
        for obs, val in (("treg", 22.1), ("ratio", 0.29)):
            row = get(24, obs)
            assert abs(row[f"residual_{mode}_se"]) <= 3.0, (mode, obs, row[f"model_{mode}"])
            assert row[f"model_{mode}"] == pytest.approx(val, rel=0.25)
    # the residual vector lmfit minimised is the table's fitted residuals
    fitted = table[table["role"] == "fitted"]["residual_typical_se"].to_numpy()
    assert np.sum(fitted ** 2) == pytest.approx(outcome.typical.result.chisqr, rel=1e-6)


def test_seed_identifiability_statement(seed_run):
    typ = seed_run[2].typical
    profs = typ.profiles
    assert set(profs) == set(FREE) | {"il2_ec50_treg"}
    emax = profs["il2_emax_treg"]
    assert emax.classification == "identifiable"
    lo, hi = emax.ci95
    assert lo < typ.values["il2_emax_treg"] < hi
    # lmfit's conf_interval (same likelihood-ratio test) agrees with the profile at 68 % where lmfit can run it.
    # With the seed cohort three of the four free parameters sit at a bound (limits, not estimates), the Hessian
    # is singular and lmfit refuses; the failure must then be reported, not hidden.
    if typ.ci is None:
        assert "conf_interval failed" in typ.ci_message
        assert typ.ci_message in seed_run[2].report
    else:
        i68 = [v for prob, v in typ.ci["il2_emax_treg"] if abs(prob - 0.6827) < 1e-3]
        assert min(i68) == pytest.approx(emax.ci68[0], rel=0.03)
        assert max(i68) == pytest.approx(emax.ci68[1], rel=0.03)
    # EC50 of the Treg IL-2 signal trades off against Emax: flat profile, not identifiable
    assert profs["il2_ec50_treg"].classification == "not identifiable"
    assert np.max(profs["il2_ec50_treg"].delta) < DELTA_CHI2_95
    assert set(typ.decisions) == set(FREE)
    for name in FREE:    # profile minima of the free parameters never undercut the best fit beyond optimiser noise
        assert np.min(profs[name].chisqr) >= typ.initial.chisqr - 1e-3
    # il2_ec50_treg is fixed in the fit: its profile may find lower chi-square (that is what it is for)


def test_posterior_sampling_runs_within_bounds(truth_cohort):
    """lmfit's emcee interface on a one-parameter problem: draws stay in bounds and centre on the least-squares
    estimate within its standard error (a short chain; the report runs longer ones on request)."""
    _, cohort = truth_cohort
    problem = FitProblem(cohort, free=("il2_emax_treg",))
    _, result = minimize(problem)
    best, stderr = result.params["il2_emax_treg"].value, result.params["il2_emax_treg"].stderr
    post = sample_posterior(problem, result, steps=80, walkers=6, burn=20, seed=3)
    draws = post.flatchain["il2_emax_treg"].to_numpy()
    assert draws.size == 6 * 60
    p = problem.parameters["il2_emax_treg"]
    assert np.all((draws >= p.lower) & (draws <= p.upper))
    assert abs(np.median(draws) - best) < stderr


def test_cli_rejects_bad_cohort(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("week,observable,statistic,value,n,source\n0,treg,median,12,5,a\n24,treg,median,NaN,5,a\n")
    rc = main(["fit", str(bad), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "line 3" in err and "'value'" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_user_cohort_with_more_weeks_iqr_and_other_observables():
    """A cohort in the same format with weeks 0-36, IQRs, naive counts and a mean/sd pair fits without code
    changes: baselines from week 0, roles per mode, regimen long enough, finite residuals."""
    text = "\n".join([
        "week,observable,statistic,value,n,source",
        "0,treg,median,12,40,x", "0,treg,q25,7,40,x", "0,treg,q75,19,40,x", "0,ratio,median,0.5,40,x",
        "0,naive,median,180,40,x", "6,treg,median,25,38,x", "12,ratio,median,0.3,37,x",
        "12,th17,mean,6,37,x", "12,th17,sd,3,37,x", "36,treg,median,21,30,x", "36,naive,median,160,30,x",
    ]) + "\n"
    cohort = parse_cohort(text, origin="user.csv")
    typical = FitProblem(cohort, free=("il2_emax_treg",))
    assert typical.parameters["naive_baseline"].value == 180.0
    assert typical.parameters["th17_baseline"].value == pytest.approx(6.0)
    assert typical.regimen.events().time_day.max() < 36 * 7 and typical.t_out.max() == 36 * 7
    roles = dict(zip(zip(typical.table["week"], typical.table["observable"], typical.table["statistic"]),
                     typical.table["role"]))
    assert roles[(12.0, "th17", "mean")] == "population fit only"
    assert roles[(12.0, "th17", "sd")] == "weight only"
    assert roles[(36.0, "naive", "median")] == "fitted"
    assert typical.n_targets == 4
    population = FitProblem(cohort, free=("il2_emax_treg",), mode="population", n_patients=30, rtol=1e-6,
                            atol=1e-8)
    assert population.n_targets == 7           # + week-0 q25/q75 and the week-12 mean
    for problem in (typical, population):
        r = problem.residuals({"il2_emax_treg": 10.0})
        assert r.shape == (problem.n_targets,) and np.all(np.isfinite(r))
