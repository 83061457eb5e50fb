"""Model declarations (tregpd.model.declaration / structures / codegen): every structure is consistent with
itself across state layouts and solvers, sits at its baseline when untreated, has a Jacobian equal to finite
differences of its right-hand side, and a structure declared here (one new state, one new parameter) runs,
exports to SBML and matches libroadrunner without touching anything but its declaration and a parameter file.

The independent check of sat0261_v1 against a hand-written right-hand side is tests/test_solvers.py (scipy
solve_ivp); this file checks the machinery that derives everything else from a declaration.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from tregpd.model import default_parameters, no_treatment, reference_regimen, simulate
from tregpd.model import kernels as K
from tregpd.model.codegen import cache_key, generate_source, kernels_for
from tregpd.model.declaration import DeclarationError, Intermediate, ModelStructure, State
from tregpd.model.parameters import parse_parameters
from tregpd.model.structures import SAT0261_V1, get_model, models, register, unregister

NO_JIT = os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0")
STRUCTURES = list(models())


def _norm_err(a, b):
    """max |a - b| / max |b| per column, over the columns where b is not identically zero."""
    scale = np.abs(b).max(axis=0)
    ok = scale > 0
    return float((np.abs(a - b).max(axis=0)[ok] / scale[ok]).max())


@pytest.mark.parametrize("name", STRUCTURES)
def test_untreated_structure_stays_at_baseline(name):
    p = default_parameters()
    res = simulate(p, no_treatment(), t_end_day=200.0, output_step_day=50.0, model=name)
    for var, base in (("naive", "naive_baseline"), ("treg", "treg_baseline"), ("th17", "th17_baseline")):
        np.testing.assert_allclose(res.get(var)[0], p.value(base), rtol=1e-10, err_msg=f"{name}: {var}")


@pytest.mark.parametrize("name", STRUCTURES)
def test_fast_path_matches_pk_as_states_and_rosenbrock(name):
    """Closed-form PK + DP5 (default), PK-as-states DP5 and Rosenbrock with the analytic Jacobian agree."""
    p = default_parameters()
    reg = reference_regimen(8)
    t_out = np.linspace(0.0, 56.0, 29)
    ref = simulate(p, reg, t_out=t_out, pk="ode", rtol=1e-11, atol=1e-12, model=name).values[0]
    fast = simulate(p, reg, t_out=t_out, rtol=1e-9, atol=1e-11, model=name).values[0]
    assert _norm_err(fast[:, :3], ref[:, :3]) < 1e-7
    rb = simulate(p, reg, t_out=t_out, method="rosenbrock23", rtol=1e-7, atol=1e-9, model=name).values[0]
    assert _norm_err(rb[:, :3], ref[:, :3]) < 1e-4
    assert np.abs(ref[-1, 1] / ref[0, 1] - 1) > 0.05        # treatment moved Treg


@pytest.mark.skipif(NO_JIT, reason="compiled kernels only")
@pytest.mark.parametrize("name", STRUCTURES)
def test_generated_jacobian_equals_finite_differences(name):
    m = get_model(name)
    kern = kernels_for(m)
    p = kern.derive(default_parameters().to_theta(m))
    rng = np.random.default_rng(7)
    seg = np.zeros(max(kern.N_SEG, 1))
    cov = np.array([12.0] * max(kern.N_COV, 1))
    kern.segment_values(p, cov, seg)
    # ODE layout: random positive amounts and states
    n = kern.N_Y_ODE
    y = rng.uniform(0.5, 2.0, n) * np.r_[np.full(kern.N_PK_AMOUNTS, 1e5), np.ones(n - kern.N_PK_AMOUNTS) * 10]
    jac = np.zeros((n, n))
    kern.jac_ode(y, seg, p, jac)
    f0 = np.zeros(n)
    kern.derivs_ode(y, seg, p, f0)
    fd = np.zeros((n, n))
    for j in range(n):
        h = 1e-6 * max(abs(y[j]), 1.0)
        yp, ym = y.copy(), y.copy()
        yp[j] += h
        ym[j] -= h
        fp, fm = np.zeros(n), np.zeros(n)
        kern.derivs_ode(yp, seg, p, fp)
        kern.derivs_ode(ym, seg, p, fm)
        fd[:, j] = (fp - fm) / (2 * h)
    scale = np.maximum(np.abs(fd).max(), 1e-300)
    assert np.abs(jac - fd).max() / scale < 1e-6


def test_toy_structure_one_new_state_and_parameter_runs_exports_and_matches_roadrunner():
    """Adding a state and a parameter touches one declaration and the parameter file, nothing else."""
    toy = SAT0261_V1.with_changes(
        "toy_memory_treg", "sat0261_v1 plus a memory-Treg pool fed by Treg (test structure)",
        parameters={"toy_memory_rate": "1/day"},
        add_states=(State("memory_treg", "cells/uL", "toy_memory_rate * treg - 0.05 * memory_treg",
                          "toy_memory_rate * treg_baseline / 0.05", "memory Treg (toy)"),))
    register(toy, replace=True)
    try:
        _toy_checks()
    finally:
        unregister("toy_memory_treg")


def _toy_checks():
    text = default_parameters().to_toml() + (
        '\n[toy_memory_rate]\nvalue = 0.02\nunit = "1/day"\nlower = 0.0\nupper = 1.0\nfitted = false\n'
        'status = "ASSUMPTION"\nsource = "test structure: rate of Treg entering the memory pool"\n')
    params = parse_parameters(text, origin="toy.toml")
    reg = reference_regimen(6)
    times = [0.0, 1.5, 10.0, 28.2, 42.0]
    res = simulate(params, reg, t_out=times, rtol=1e-11, atol=1e-12, model="toy_memory_treg")
    base = simulate(params, reg, t_out=times, rtol=1e-11, atol=1e-12, model="sat0261_v1")
    np.testing.assert_allclose(res.get("treg")[0], base.get("treg")[0], rtol=1e-8)   # one-way coupling
    with pytest.raises(Exception, match="toy_memory_rate"):
        default_parameters().to_theta("toy_memory_treg")
    pytest.importorskip("libsbml")
    roadrunner = pytest.importorskip("roadrunner")
    from tregpd.model.sbml import to_sbml
    xml = to_sbml(params, reg, model="toy_memory_treg")
    rr = roadrunner.RoadRunner(xml)
    rr.integrator.relative_tolerance = 1e-12
    rr.integrator.absolute_tolerance = 1e-14
    got = [[rr["treg"], rr["memory_treg"]]]
    for a, b in zip(times[:-1], times[1:]):
        rr.simulate(a, b, 2)
        got.append([rr["treg"], rr["memory_treg"]])
    got = np.array(got)
    np.testing.assert_allclose(got[:, 0], res.get("treg")[0], rtol=1e-7)
    # memory Treg is a state of the structure but not an observable: check it via the kernel's ODE layout
    assert got[-1, 1] > got[0, 1] * 1.01


def test_declaration_errors_name_the_problem():
    with pytest.raises(DeclarationError, match="unknown name"):
        SAT0261_V1.with_changes("bad_one", "x", replace_odes={"treg": "treg * no_such_thing"})
    with pytest.raises(DeclarationError, match="may be called"):
        SAT0261_V1.with_changes("bad_two", "x", replace_odes={"treg": "__import__('os')"})
    with pytest.raises(DeclarationError, match="Attribute is not allowed"):
        SAT0261_V1.with_changes("bad_two", "x", replace_odes={"treg": "treg.real"})
    with pytest.raises(DeclarationError, match="declared twice"):
        SAT0261_V1.with_changes("bad_three", "x", add_intermediates=(Intermediate("treg", "1.0", "1"),))
    with pytest.raises(DeclarationError, match="unknown model"):
        get_model("no_such_model")


def test_cache_key_follows_content_and_sources_are_generated_not_hand_written():
    other = SAT0261_V1.with_changes("sat0261_v1_copy", SAT0261_V1.description)
    assert cache_key(other) != cache_key(SAT0261_V1)
    changed = SAT0261_V1.with_changes("sat0261_v1_copy", SAT0261_V1.description,
                                      replace_intermediates={"treg_prolif": "treg_proliferation"})
    assert changed.content_hash != other.content_hash
    src = generate_source(SAT0261_V1)
    # every ODE appears in the generated right-hand side with its names bound to arrays
    assert "def derivs_cf" in src and "def jac_ode" in src and "def simulate_patient_cf_dp5" in src


def test_equation_listing_is_generated_from_the_declaration():
    for m in models().values():
        md = m.equations_markdown()
        for s in m.states:
            assert f"d{s.name}/dt = {s.ode}" in md
        for n in m.parameter_names:
            assert f"`{n}`" in md


def test_default_kernel_module_attributes_are_the_default_structures():
    m = get_model(None)
    assert K.N_OUT == len(m.output_names) and K.N_THETA == len(m.parameter_names)
    # the constants kernels.py defines without compiling are the engine's own
    kern = K.for_model(None)
    for name in ("STATUS_OK", "STATUS_MAX_STEPS", "STATUS_STEP_TOO_SMALL", "STATUS_NONFINITE", "STATUS_NEGATIVE",
                 "METHOD_DOPRI5", "METHOD_ROSENBROCK23", "MODE_CLOSED_FORM", "MODE_PK_ODE"):
        assert getattr(K, name) == getattr(kern, name), name
    assert K.for_model(None) is K.for_model(m.name)
    assert K.for_model("v1_waning") is not K.for_model(None)


def test_events_on_undeclared_compartments_are_refused():
    from tregpd.model import TregpdError
    from tregpd.model.dosing import EventTable
    ev = EventTable(np.array([1.0]), np.array([3]), np.array([1.0]))
    only_il2 = SAT0261_V1.with_changes("il2_only_doses", "x", doses=SAT0261_V1.doses[:2])
    register(only_il2, replace=True)
    try:
        with pytest.raises(TregpdError, match=r"compartment\(s\) \[3\]"):
            simulate(events=ev, t_end_day=5.0, model="il2_only_doses")
    finally:
        unregister("il2_only_doses")


def test_readme_equation_block_is_the_generated_listing():
    """README.md shows the default structure's equations between markers; they must equal the generated text
    (refresh with ``python -c "from tregpd.model.models_cli import update_readme; update_readme('README.md')"``)."""
    from pathlib import Path
    from tregpd.model.models_cli import README_BEGIN, README_END, readme_block
    readme = Path(__file__).resolve().parents[1] / "README.md"
    if not readme.is_file():
        pytest.skip("README.md not beside the tests (installed package)")
    text = readme.read_text()
    block = text[text.index(README_BEGIN) + len(README_BEGIN):text.index(README_END)].strip()
    assert block == readme_block()
