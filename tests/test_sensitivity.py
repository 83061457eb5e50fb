"""Sensitivity wiring: Sobol indices of the Ishigami function against their analytic values, Morris and local
derivatives on functions with known answers, exact PK elasticities of the model, an independent
finite-difference check through the single-patient API, input space and CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from tregpd.cli import main
from tregpd.model import PARAMETER_NAMES, SolverOptions, default_parameters, reference_regimen, simulate

D = len(PARAMETER_NAMES)
from tregpd.scenarios.backends import InProcessBackend
from tregpd.scenarios.sensitivity import (
    IshigamiModel, ParameterSpace, SensitivityError, SensitivityModel, TregpdModel, evaluate, local_sensitivity,
    morris_analysis, sobol_analysis)


# ---------------------------------------------------------------------------- small known-answer models
def linear_chunk(task):
    x, coef = task
    return (x @ coef)[:, None]


class LinearModel(SensitivityModel):
    output_names = ("y",)
    units = ("1",)
    chunk_function = staticmethod(linear_chunk)

    def __init__(self, coef):
        self.coef = np.asarray(coef, float)

    def make_task(self, values, parallel_kernel, first_row):
        return (values, self.coef)


def power_chunk(task):
    (x,) = task
    return np.column_stack([3.0 * x[:, 0] ** 2 * x[:, 1] ** -0.5, x[:, 0] + x[:, 2]])


class PowerLawModel(SensitivityModel):
    output_names = ("power", "sum")
    units = ("1", "1")
    chunk_function = staticmethod(power_chunk)

    def make_task(self, values, parallel_kernel, first_row):
        return (values,)


# ------------------------------------------------------------------------------------------- Sobol
def test_sobol_wiring_reproduces_analytic_ishigami_indices():
    model = IshigamiModel(a=7.0, b=0.1)
    exact = model.analytic_indices()
    np.testing.assert_allclose(exact["S1"], [0.3139, 0.4424, 0.0], atol=1e-4)     # literature values
    np.testing.assert_allclose(exact["ST"], [0.5576, 0.4424, 0.2437], atol=1e-4)
    res = sobol_analysis(model, model.space(), 4096, seed=2, backend=InProcessBackend(), chunk=3000)
    assert res.n_evaluations == 4096 * 5
    t = res.table.set_index("parameter").loc[["x1", "x2", "x3"]]
    np.testing.assert_allclose(t["S1"], exact["S1"], atol=0.02)
    np.testing.assert_allclose(t["ST"], exact["ST"], atol=0.02)
    assert list(res.table["parameter"]) == ["x1", "x2", "x3"]        # ranked by ST
    assert (res.table["transform"] == "none").all()



@pytest.mark.slow   # 5,120 model runs
def test_sobol_of_the_model_margin_matches_its_analytic_variance_split():
    """ln(margin) = ln F + ln pmol_per_IU - ln EC50_eff + const when only these three vary (linear PK): an
    additive model of independent log-uniform inputs, so S1 = ST = L_i^2 / sum L^2 with L = ln(upper/lower)."""
    params = default_parameters()
    names = ("il2_bioavailability", "il2_pmol_per_iu", "il2_ec50_effector")
    space = ParameterSpace.from_parameters(params, names=names, log_ratio=1.0)   # all three log-uniform
    model = TregpdModel(params, space)
    res = sobol_analysis(model, space, 1024, seed=5)
    t = res.table[res.table["output"] == "selectivity_margin"].set_index("parameter").loc[list(names)]
    widths = np.log(space.upper / space.lower) ** 2
    exact = widths / widths.sum()
    np.testing.assert_allclose(t["S1"], exact, atol=0.02)
    np.testing.assert_allclose(t["ST"], exact, atol=0.02)
    assert res.n_evaluations == 1024 * 5

def test_sobol_does_not_depend_on_the_chunk_size():
    model = IshigamiModel()
    a = sobol_analysis(model, model.space(), 256, seed=4, chunk=100).table
    b = sobol_analysis(model, model.space(), 256, seed=4, chunk=999).table
    pd.testing.assert_frame_equal(a, b, check_exact=True)


# ------------------------------------------------------------------------------------------ Morris
def test_morris_mu_star_of_a_linear_function_is_coefficient_times_range():
    coef = np.array([2.0, -0.5, 0.0, 1.0])
    space = ParameterSpace(("a", "b", "c", "d"), np.array([0.0, 1.0, -1.0, 10.0]),
                           np.array([1.0, 5.0, 1.0, 30.0]), np.zeros(4, bool))
    res = morris_analysis(LinearModel(coef), space, 20, seed=3)
    t = res.table.set_index("parameter").loc[["a", "b", "c", "d"]]
    expected = np.abs(coef) * (space.upper - space.lower)       # elementary effect per unit of the unit cube
    np.testing.assert_allclose(t["mu_star"], expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(t["sigma"], 0.0, atol=1e-9)
    assert res.n_evaluations == 20 * 5
    assert list(res.table["parameter"]) == ["d", "a", "b", "c"]


# ------------------------------------------------------------------------------------------- local
def test_local_elasticities_of_a_power_law_are_its_exponents():
    space = ParameterSpace(("x1", "x2", "x3"), np.array([0.1, 0.1, 0.1]), np.array([10.0, 10.0, 10.0]),
                           np.ones(3, bool))
    res = local_sensitivity(PowerLawModel(), space, at=np.array([2.0, 3.0, 4.0]))
    t = res.table.set_index(["output", "parameter"])["elasticity"]
    np.testing.assert_allclose([t["power", "x1"], t["power", "x2"], t["power", "x3"]], [2.0, -0.5, 0.0],
                               atol=1e-9)
    # x1 + x3 at (2, 4): elasticities 2/6 and 4/6 up to O(h^2)
    np.testing.assert_allclose([t["sum", "x1"], t["sum", "x3"]], [1 / 3, 2 / 3], rtol=1e-4)


@pytest.fixture(scope="module")
def tight_model():
    params = default_parameters()
    return TregpdModel(params, ParameterSpace.from_parameters(params),
                       options=SolverOptions(rtol=1e-10, atol=1e-12))


@pytest.fixture(scope="module")
def model_local(tight_model):
    return local_sensitivity(tight_model, tight_model.space)


@pytest.mark.slow   # many full trajectories: excluded from make test-nojit
def test_model_margin_elasticities_are_exact_for_linear_pk(model_local):
    t = model_local.table
    margin = t[t["output"] == "selectivity_margin"].set_index("parameter")["elasticity"]
    # C_IL2 is proportional to F * pmol_per_IU, and the margin is C_peak / EC50_effector
    assert margin["il2_bioavailability"] == pytest.approx(1.0, abs=1e-9)
    assert margin["il2_pmol_per_iu"] == pytest.approx(1.0, abs=1e-9)
    assert margin["il2_ec50_effector"] == pytest.approx(-1.0, abs=1e-9)
    # the reference regimen's product (Chinese rhIL-2) scales the dose: its potency acts like F
    assert margin["il2_potency_chinese_rhil2"] == pytest.approx(1.0, abs=1e-9)
    # nothing downstream of the IL-2 PK changes the IL-2 peak
    il2_pk = {"il2_ka", "il2_bioavailability", "il2_cl", "il2_v", "il2_pmol_per_iu", "il2_ec50_effector",
              "il2_potency_chinese_rhil2"}
    others = [n for n in margin.index if n not in il2_pk]
    assert len(others) == D - 7 and (margin[others] == 0.0).all()
    assert (margin[sorted(il2_pk)].abs() > 0.1).all()


@pytest.mark.slow   # many full trajectories: excluded from make test-nojit
def test_model_local_elasticity_matches_independent_finite_difference(model_local):
    """Central difference in ln(theta) through the single-patient API with another step and output grid."""
    params = default_parameters()
    reg = reference_regimen()
    t = model_local.table.set_index(["output", "parameter"])["elasticity"]
    h = 0.05
    for name in ("treg_crowding", "il2_emax_treg", "il2_cl"):
        v = params[name].value
        ys = []
        for sign in (1, -1):
            p = params.with_values(**{name: v * math.exp(sign * h)})
            r = simulate(p, reg, t_out=[0.0, 168.0], rtol=1e-10, atol=1e-12)
            ys.append((r.at("treg", 168.0)[0], r.at("ratio", 168.0)[0]))
        fd_treg = (math.log(ys[0][0]) - math.log(ys[1][0])) / (2 * h)
        fd_ratio = (math.log(ys[0][1]) - math.log(ys[1][1])) / (2 * h)
        assert t["treg_w24", name] == pytest.approx(fd_treg, abs=1e-3), name
        assert t["ratio_w24", name] == pytest.approx(fd_ratio, abs=1e-3), name
        assert abs(t["treg_w24", name]) > 0.01      # a real effect, not two zeros agreeing


def test_model_outputs_are_consistent(tight_model):
    y = evaluate(tight_model, tight_model.typical_values()[None, :])[0]
    out = dict(zip(tight_model.output_names, y))
    assert out["ratio_w24"] == pytest.approx(out["th17_w24"] / out["treg_w24"], rel=1e-14)
    p = default_parameters()
    assert out["treg_fold_w24"] == pytest.approx(out["treg_w24"] / p["treg_baseline"].value, rel=1e-9)
    r = simulate(p, reference_regimen(), t_out=[168.0], rtol=1e-10, atol=1e-12)
    assert out["treg_w24"] == pytest.approx(r.at("treg", 168.0)[0], rel=1e-9)


# ------------------------------------------------------------------------------------- input space
def test_parameter_space_uses_log_scale_for_wide_ranges():
    p = default_parameters()
    space = ParameterSpace.from_parameters(p)
    assert space.dimension == D and space.names == PARAMETER_NAMES
    scale = dict(zip(space.names, space.log))
    assert scale["il2_ec50_treg"] and scale["treg_crowding"]          # 100x, 200x
    assert not scale["il2_cl"]                                         # 5-30 L/h: 6x
    assert not scale["naive_to_treg"]                                  # lower bound 0
    mid = dict(zip(space.names, space.to_values(np.full(D, 0.5))[0]))
    assert mid["il2_ec50_treg"] == pytest.approx(10.0)                # geometric midpoint of 1..100
    assert mid["il2_cl"] == pytest.approx(17.5)
    corners = space.to_values(np.vstack([np.zeros(D), np.ones(D)]))
    np.testing.assert_allclose(corners, np.vstack([space.lower, space.upper]), rtol=1e-12)


def test_bad_sensitivity_settings_raise():
    model = IshigamiModel()
    with pytest.raises(SensitivityError, match="power of 2"):
        sobol_analysis(model, model.space(), 100)
    with pytest.raises(SensitivityError, match="lower < upper"):
        ParameterSpace(("a",), np.array([1.0]), np.array([1.0]), np.array([False]))
    with pytest.raises(SensitivityError, match="not > 0"):
        sobol_analysis(model, model.space(), 8, log_outputs=True)     # Ishigami takes negative values


@pytest.mark.slow   # many full trajectories: excluded from make test-nojit
def test_sensitivity_cli_writes_ranked_tables_and_plots(tmp_path, capsys):
    out = tmp_path / "sens"
    assert main(["sensitivity", "--method", "local", "sobol", "--n", "8", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "selectivity_margin" in text and "model runs" in text
    for method in ("local", "sobol"):
        table = pd.read_csv(out / f"sensitivity_{method}.csv", comment="#")
        assert len(table) == D * 7
        for _, g in table.groupby("output"):
            assert sorted(g["rank"]) == list(range(1, D + 1))
        prov = json.loads((out / f"sensitivity_{method}.json").read_text())["provenance"]
        assert prov["method"] == method and prov["backend"]["backend"] == "in-process"
        assert (out / f"sensitivity_{method}.png").stat().st_size > 0
    sob = pd.read_csv(out / "sensitivity_sobol.csv", comment="#")
    assert (sob["transform"] == "ln").all()
    assert main(["sensitivity", "--method", "sobol", "--n", "100", "--out", str(out)]) == 2
    assert "power of 2" in capsys.readouterr().err
