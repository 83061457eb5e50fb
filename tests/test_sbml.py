"""SBML export (tregpd.model.sbml): the exported document, simulated by libroadrunner, reproduces tregpd.

The comparison is against tregpd's own solver at tight tolerance; the two share no code past the parameter
vector (libroadrunner compiles the SBML rate rules and events with its own CVODE integrator).
"""
from __future__ import annotations

import numpy as np
import pytest

from tregpd.model import (DoseSchedule, Regimen, TregpdError, default_parameters, no_treatment,
                          reference_regimen, simulate)
from tregpd.model import kernels as K

libsbml = pytest.importorskip("libsbml", reason="python-libsbml is not installed (pip install 'tregpd[test]')")
from tregpd.model.sbml import STATES, to_sbml  # noqa: E402


def _roadrunner():
    rr = pytest.importorskip("roadrunner", reason="libroadrunner is not installed (pip install 'tregpd[test]')")
    rr.Logger.setLevel(rr.Logger.LOG_ERROR)
    return rr


def _run_roadrunner(xml, times, selections, rtol=1e-12, atol=1e-14):
    roadrunner = _roadrunner()
    rr = roadrunner.RoadRunner(xml)
    rr.integrator.relative_tolerance = rtol
    rr.integrator.absolute_tolerance = atol
    rr.integrator.maximum_num_steps = 100_000
    out = np.empty((len(times), len(selections)))
    # piecewise to each requested time so the output lands exactly on it
    out[0] = [rr[s] for s in selections]
    for i in range(1, len(times)):
        rr.simulate(times[i - 1], times[i], 2)
        out[i] = [rr[s] for s in selections]
    return out


def test_export_is_valid_sbml_l3v2():
    p = default_parameters()
    reg = reference_regimen(24)
    xml = to_sbml(p, reg)
    doc = libsbml.readSBMLFromString(xml)
    assert (doc.getLevel(), doc.getVersion()) == (3, 2)
    doc.setConsistencyChecks(libsbml.LIBSBML_CAT_UNITS_CONSISTENCY, False)
    doc.checkConsistency()
    errors = [doc.getError(i).getMessage() for i in range(doc.getNumErrors())
              if doc.getError(i).getSeverity() >= libsbml.LIBSBML_SEV_ERROR]
    assert errors == []
    model = doc.getModel()
    assert model.getNumEvents() == len(reg.events())          # one event per dose
    assert model.getNumRules() >= len(STATES)
    # parameter values in kernel units (per hour -> per day), with the unit and source carried along
    ka = model.getParameter("il2_ka")
    assert ka.getValue() == pytest.approx(p["il2_ka"].value * 24.0, rel=1e-15)
    assert "[1/day]" in ka.getName()
    assert p["il2_ka"].source[:30] in ka.getNotesString()


@pytest.mark.parametrize("regimen, times", [
    (reference_regimen(24), [0.0, 1.5, 28.2, 42.0, 84.0, 168.0]),
    (Regimen("iv_and_sc", (
        DoseSchedule("il2", 1.0, "MIU", interval_day=1, doses_per_course=3, route="iv", start_day=0.5),
        DoseSchedule("il2", 1.0, "MIU", interval_day=2, doses_per_course=3, route="sc", start_day=7.0),
        DoseSchedule("sirolimus", 2.0, "mg", interval_day=1, doses_per_course=20),
    )), [0.0, 0.75, 3.1, 7.3, 14.0, 30.0]),
], ids=["reference", "iv_and_sc"])
def test_roadrunner_reproduces_tregpd(regimen, times):
    p = default_parameters()
    xml = to_sbml(p, regimen)
    rr_out = _run_roadrunner(xml, times, ["treg", "th17", "naive", "c_il2", "c_rapa"])
    res = simulate(p, regimen, t_out=times, rtol=1e-11, atol=1e-12)
    for j, var in enumerate(["treg", "th17", "naive"]):
        np.testing.assert_allclose(rr_out[:, j], res.get(var)[0], rtol=1e-7, err_msg=var)
    # PK: concentrations agree where they are not negligible (units and bioavailability carried over)
    for j, var in ((3, "c_il2"), (4, "c_rapa")):
        mine = res.get(var)[0]
        big = mine > 1e-6 * mine.max()
        assert big.sum() >= 2
        np.testing.assert_allclose(rr_out[big, j], mine[big], rtol=1e-7, err_msg=var)
    assert np.abs(rr_out[:, 0] / rr_out[0, 0] - 1).max() > 0.05     # treatment actually moved Treg


def test_untreated_export_stays_at_baseline_with_derived_rates():
    p = default_parameters().with_values(treg_baseline=20.0, th17_baseline=3.0)
    xml = to_sbml(p, no_treatment())
    out = _run_roadrunner(xml, [0.0, 100.0], ["naive", "treg", "th17", "treg_death", "th17_death",
                                              "naive_supply"])
    np.testing.assert_allclose(out[1, :3], [p.value("naive_baseline"), 20.0, 3.0], rtol=1e-9)
    derived = K.derive(p.to_theta())
    np.testing.assert_allclose(out[0, 3:], [derived[K.I_DEATH_R], derived[K.I_DEATH_T], derived[K.I_SRC_N]],
                               rtol=1e-14)


def test_writes_file_atomically_and_rejects_bad_input(tmp_path):
    p = default_parameters()
    reg = reference_regimen(4)
    target = tmp_path / "sub" / "model.xml"
    xml = to_sbml(p, reg, path=target)
    assert target.read_text() == xml
    assert [f.name for f in target.parent.iterdir()] == ["model.xml"]
    with pytest.raises(TregpdError, match="'parameters' must be a ParameterSet"):
        to_sbml({"il2_ka": 1.0}, reg)
    with pytest.raises(TregpdError, match="'regimen' must be a Regimen"):
        to_sbml(p, "shanxi")


def test_cli_sbml_export(tmp_path):
    """`tregpd sbml` writes a document libsbml reads back without errors, with one event per dose and taper
    step of the reference regimen."""
    libsbml = pytest.importorskip("libsbml")
    from tregpd.cli import main
    from tregpd.model import reference_regimen
    out = tmp_path / "model.xml"
    assert main(["sbml", "--out", str(out)]) == 0
    doc = libsbml.readSBMLFromFile(str(out))
    assert doc.getNumErrors(libsbml.LIBSBML_SEV_ERROR) == 0
    assert doc.getModel().getNumEvents() == len(reference_regimen(24).events())
