"""Model structures selectable by name everywhere: ``--model NAME`` on every command that simulates, a ``model``
key in scenario files (overridden by ``--model``), the model in the fit, and the structure's name and
declaration hash in every provenance record."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from tregpd.cli import main
from tregpd.errors import ScenarioError, TregpdError
from tregpd.model.structures import DEFAULT_MODEL, get_model

MODEL = "sat0261_v1"
assert MODEL != DEFAULT_MODEL  # the tests below would not show that --model is honoured otherwise

SCENARIO = """
[scenario]
name = "{name}"
description = "test"
weeks = 4
population = 3
seed = 1
output_step_day = 7.0
figures = false
outputs = ["csv"]
{extra}

[[regimen.schedules]]
drug = "il2"
amount = 0.5
unit = "MIU"
interval_day = 1
doses_per_course = 5
"""


def scenario_file(tmp_path, name="t1", extra="", fname=None) -> Path:
    p = tmp_path / (fname or f"{name}.toml")
    p.write_text(SCENARIO.format(name=name, extra=extra))
    return p


def run(argv, capsys):
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def assert_model(record, name=MODEL):
    """A provenance ``model`` record names the structure and its declaration hash."""
    assert record == {"name": name, "declaration": get_model(name).content_hash}


# ------------------------------------------------------------------------------------------ commands
def test_simulate_model(tmp_path, capsys):
    out = tmp_path / "sim"
    code, stdout, err = run(["simulate", "--model", MODEL, "--weeks", 2, "--step-day", 7, "--out", out], capsys)
    assert code == 0, err
    prov = json.loads((out / "provenance.json").read_text())
    assert_model(prov["model"])
    assert f"Model: {MODEL}" in stdout
    assert "# model: " in (out / "trajectory.csv").read_text()


def test_sbml_model(tmp_path, capsys):
    out = tmp_path / "m.xml"
    code, stdout, err = run(["sbml", "--model", MODEL, "--weeks", 2, "--out", out], capsys)
    assert code == 0, err
    assert out.is_file() and f"model {MODEL}" in stdout
    assert get_model(MODEL).content_hash[:12] in stdout


def test_fit_model(tmp_path, capsys):
    out = tmp_path / "fit"
    code, stdout, err = run(["fit", "--model", MODEL, "--mode", "typical", "--free", "il2_emax_treg",
                             "--accept-poor-fit", "--out", out], capsys)
    assert code == 0, err
    prov = json.loads((out / "provenance.json").read_text())
    assert_model(prov["model"])
    assert f"model: {MODEL}" in stdout
    assert f"Model structure: {MODEL}" in (out / "fit_report.txt").read_text()


def test_scenarios_run_model_overrides_the_file(tmp_path, capsys):
    f = scenario_file(tmp_path, extra='model = "v1_waning"')
    out = tmp_path / "o"
    code, _, err = run(["scenarios", "run", f, "--model", MODEL, "--out", out, "--no-progress"], capsys)
    assert code == 0, err
    assert_model(json.loads((out / "t1" / "provenance.json").read_text())["model"])
    with open(out / "comparison.csv") as fh:
        head = [line for line in fh if line.startswith("# model: ")]
    assert json.loads(head[0][len("# model: "):]) == {"name": MODEL,
                                                       "declaration": get_model(MODEL).content_hash}


def test_scenarios_question_model(tmp_path, capsys):
    out = tmp_path / "q"
    code, _, err = run(["scenarios", "question", "il2_dose", "--model", MODEL, "--population", 2,
                        "--step-day", 7, "--no-figures", "--no-progress", "--out", out], capsys)
    assert code == 0, err
    provs = [json.loads(p.read_text()) for p in (out / "il2_dose").glob("*/provenance.json")]
    assert len(provs) >= 2
    for prov in provs:
        assert_model(prov["model"])


def test_dosefind_model(tmp_path, capsys):
    code, _, err = run(["dosefind", "--model", MODEL, "--doses", "0.5", "--intervals", "1", "--course-days", "5",
                        "--population", 3, "--weeks", 6, "--out", tmp_path, "--no-progress"], capsys)
    assert code == 0, err
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert_model(prov["model"])
    assert prov["settings"]["model"] == MODEL


def test_sensitivity_model(tmp_path, capsys):
    code, stdout, err = run(["sensitivity", "--model", MODEL, "--method", "local", "--no-plot",
                             "--no-progress", "--out", tmp_path], capsys)
    assert code == 0, err
    prov = json.loads((tmp_path / "sensitivity_local.json").read_text())["provenance"]
    assert_model(prov["model"])
    assert prov["sensitivity_model"]["structure"] == MODEL
    table = pd.read_csv(tmp_path / "sensitivity_local.csv", comment="#")
    assert set(table["parameter"]) == set(get_model(MODEL).parameter_names)
    assert f"model {MODEL}" in stdout


def test_trial_model(tmp_path, capsys):
    code, _, err = run(["trial", "--model", MODEL, "--patients", 64, "--chunk", 64, "--block", 32,
                        "--weeks", 0, 2, "--no-plot", "--no-progress", "--out", tmp_path], capsys)
    assert code == 0, err
    prov = json.loads((tmp_path / "trial_summary.json").read_text())["provenance"]
    assert_model(prov["model"])


def test_validate_model(tmp_path, capsys):
    code, stdout, err = run(["validate", "--model", MODEL, "--population", 2, "--out", tmp_path / "v"], capsys)
    assert code == 0, err
    assert_model(json.loads((tmp_path / "v" / "provenance.json").read_text())["model"])
    assert f"model: {MODEL}" in stdout


def test_hypotheses_model(tmp_path, capsys):
    out = tmp_path / "h"
    code, stdout, err = run(["hypotheses", "--model", MODEL, "--only", "q4w_trough", "--max-nfev", 1,
                             "--out", out], capsys)
    assert code == 0, err
    assert_model(json.loads((out / "provenance.json").read_text())["model"])


@pytest.mark.parametrize("argv", [
    ["simulate", "--weeks", 1], ["sbml"], ["fit"], ["scenarios", "run", "--library"],
    ["scenarios", "question", "il2_dose"], ["dosefind"], ["sensitivity"], ["trial"], ["validate"],
    ["hypotheses"]])
def test_unknown_model_is_one_line_listing_the_known(tmp_path, capsys, argv):
    code, stdout, err = run(argv + ["--model", "nope", "--out", tmp_path / "o"], capsys)
    assert code == 2
    assert "unknown model 'nope'" in err and MODEL in err and "v1_waning" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------- scenario files
def test_scenario_file_model_key(tmp_path):
    from tregpd.scenarios.runner import run_scenario
    from tregpd.scenarios.schema import load_scenario
    sc = load_scenario(scenario_file(tmp_path, extra='model = "v1_waning"'))
    assert sc.model == "v1_waning" and sc.to_dict()["scenario"]["model"] == "v1_waning"
    assert load_scenario(scenario_file(tmp_path, name="t2")).model == DEFAULT_MODEL
    out = run_scenario(sc, tmp_path / "o", progress=False)
    assert out.result.model == "v1_waning"
    prov = json.loads((tmp_path / "o" / "t1" / "provenance.json").read_text())
    assert_model(prov["model"], "v1_waning")
    assert prov["scenario"]["scenario"]["model"] == "v1_waning"
    # theta in v1_waning's own parameter order (it reads parameters sat0261_v1 does not)
    assert out.result.theta.shape[1] == len(get_model("v1_waning").parameter_names)
    assert out.exposure["selectivity_margin"].shape == (3,)


def test_scenario_file_unknown_model(tmp_path):
    from tregpd.scenarios.schema import load_scenario
    with pytest.raises(ScenarioError, match=r"\[scenario\] model: unknown model structure 'nope'; known: .*"
                                            r"sat0261_v1.*v1_waning"):
        load_scenario(scenario_file(tmp_path, extra='model = "nope"'))
    with pytest.raises(ScenarioError, match="model: unknown model structure 3"):
        load_scenario(scenario_file(tmp_path, extra="model = 3"))


def test_scenario_file_unknown_model_on_the_command_line(tmp_path, capsys):
    code, _, err = run(["scenarios", "validate", scenario_file(tmp_path, extra='model = "nope"')], capsys)
    assert code == 2


# ------------------------------------------------------------------------------------------- the fit
def test_fit_drops_flagged_parameters_the_structure_does_not_read(params):
    """treg_desens_gain is read by v1_waning only: flagged fitted = true, it is left out of a sat0261_v1 fit
    (with a note), and fitted by a v1_waning fit; named in ``free`` it is left out too (an error if nothing is
    left)."""
    from tregpd.fitting import FitProblem, seed_cohort
    from tregpd.fitting.report import build_report  # noqa: F401  (the note is checked on the problem)
    flagged = replace(params, parameters={**params.parameters,
                                          "treg_desens_gain": replace(params["treg_desens_gain"], fitted=True)})
    assert "treg_desens_gain" not in get_model(MODEL).parameter_names
    prob = FitProblem(seed_cohort(), parameters=flagged, model=MODEL)
    assert prob.model == MODEL and "treg_desens_gain" not in prob.free
    assert prob.dropped_free == ("treg_desens_gain",)
    assert set(prob.free) == set(params.fitted_names)
    waning = FitProblem(seed_cohort(), parameters=flagged, model="v1_waning")
    assert "treg_desens_gain" in waning.free and waning.dropped_free == ()
    named = FitProblem(seed_cohort(), parameters=params, free=("il2_emax_treg", "treg_desens_gain"), model=MODEL)
    assert named.free == ("il2_emax_treg",) and named.dropped_free == ("treg_desens_gain",)
    with pytest.raises(TregpdError, match="not read by model 'sat0261_v1': treg_desens_gain"):
        FitProblem(seed_cohort(), parameters=params, free=("treg_desens_gain",), model=MODEL)
    # the problem simulates its own structure
    assert prob.simulate().model == MODEL
