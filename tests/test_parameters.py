"""Parameter file: completeness (every parameter sourced, with unit and bounds), validation messages,
with_values, to_toml -> parse round trip, theta conversion."""
from __future__ import annotations

import math
import re
import sys
from importlib import resources

import numpy as np
import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from tregpd.model import (PARAMETER_NAMES, ParameterError, TregpdError, default_parameters, load_parameters,
                          parse_parameters)
from tregpd.model.parameters import EXPECTED_UNITS

RAW = resources.files("tregpd.model").joinpath("data", "parameters.toml").read_text()


def test_every_parameter_in_the_file_is_complete_and_sourced():
    """Read the TOML directly (not through the loader): every entry has value, unit, bounds, fitted, status
    and a non-empty source; every parameter of every registered model structure is present and nothing else."""
    data = tomllib.loads(RAW)
    data.pop("meta")
    assert set(data) == set(EXPECTED_UNITS)
    assert set(PARAMETER_NAMES) <= set(data)
    for name, entry in data.items():
        for key in ("value", "unit", "lower", "upper", "fitted", "status", "source"):
            assert key in entry, f"{name}: missing {key}"
        assert isinstance(entry["source"], str) and len(entry["source"].strip()) > 10, name
        assert entry["unit"] == EXPECTED_UNITS[name], name
        assert isinstance(entry["fitted"], bool), name
        lo, hi, v = entry["lower"], entry["upper"], entry["value"]
        assert all(isinstance(x, (int, float)) and math.isfinite(x) for x in (lo, hi, v)), name
        assert 0 <= lo <= v <= hi and lo < hi, name
        if entry["status"] == "ASSUMPTION":
            assert entry["source"].strip(), name


def test_default_parameters_load(params):
    assert params.origin.endswith("parameters.toml")
    assert set(PARAMETER_NAMES) <= {p.name for p in params}
    assert params.names_for() == tuple(PARAMETER_NAMES)
    assert set(params.fitted_names) == {n for n, e in tomllib.loads(RAW).items() if n != "meta" and e["fitted"]}


def test_theta_converts_per_hour_to_per_day(params):
    theta = params.to_theta()
    assert theta.shape == (len(PARAMETER_NAMES),) and theta.dtype == np.float64
    for j, name in enumerate(PARAMETER_NAMES):
        p = params[name]
        factor = 24.0 if p.unit in ("1/h", "L/h") else 1.0
        assert theta[j] == p.value * factor, name


def test_with_values_validates_and_copies(params):
    p2 = params.with_values(il2_emax_treg=30.0, treg_baseline=20.0)
    assert p2["il2_emax_treg"].value == 30.0 and p2["treg_baseline"].value == 20.0
    assert params["il2_emax_treg"].value == tomllib.loads(RAW)["il2_emax_treg"]["value"]  # original untouched
    assert p2["il2_emax_treg"].source == params["il2_emax_treg"].source
    with pytest.raises(ParameterError, match=r"'il2_emax_treg': value 500.0 is outside its bounds \[0.0, 200.0\]$"):
        params.with_values(il2_emax_treg=500.0)
    with pytest.raises(ParameterError, match=r"unknown parameter 'il2_emax'"):
        params.with_values(il2_emax=1.0)
    with pytest.raises(ParameterError, match="must be finite, got nan"):
        params.with_values(il2_cl=float("nan"))
    with pytest.raises(ParameterError, match="must be a number, got '3'"):
        params.with_values(il2_cl="3")
    with pytest.raises(TypeError):
        params.parameters["il2_cl"] = None  # immutable mapping


def test_with_fitted(params):
    p2 = params.with_fitted(["il2_cl", "rapa_ic50"])
    assert p2.fitted_names == ("il2_cl", "rapa_ic50")
    with pytest.raises(ParameterError, match="unknown parameter 'nope'"):
        params.with_fitted(["nope"])


def test_to_toml_round_trip(params):
    text = params.to_toml()
    back = parse_parameters(text, origin="roundtrip.toml")
    assert back.values == params.values
    for a, b in zip(params, back):
        assert (a.unit, a.lower, a.upper, a.fitted, a.status, a.source, a.note) == \
               (b.unit, b.lower, b.upper, b.fitted, b.status, b.source, b.note)
    assert back.name == params.name
    # awkward strings survive quoting
    odd = params.with_values(il2_cl=12.5)
    from dataclasses import replace
    odd = replace(odd, description='quote " and backslash \\ and unicode µL')
    assert parse_parameters(odd.to_toml()).description == odd.description


def test_load_parameters_from_file(tmp_path, params):
    path = tmp_path / "mine.toml"
    path.write_text(params.with_values(rapa_cl=9.5).to_toml())
    p = load_parameters(path)
    assert p["rapa_cl"].value == 9.5 and p.origin == str(path)
    with pytest.raises(ParameterError, match=r"parameter file '.*missing.toml' does not exist"):
        load_parameters(tmp_path / "missing.toml")


def test_binary_parameter_file_is_a_parameter_error(tmp_path):
    """A non-UTF-8 file used to escape as UnicodeDecodeError (a traceback from the CLI)."""
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00[il2_cl]")
    with pytest.raises(ParameterError, match=r"binary.toml' is not UTF-8 text"):
        load_parameters(path)


def _edit(text, name, field, new):
    """Replace ``field = ...`` inside the [name] table of a parameter file."""
    pat = re.compile(rf"(\[{name}\][^\[]*?\n){field} = [^\n]*\n", re.S)
    assert pat.search(text), (name, field)
    return pat.sub(lambda m: m.group(1) + (f"{field} = {new}\n" if new is not None else ""), text, count=1)


@pytest.mark.parametrize("edit,fragment", [
    (lambda t: t + '\n[il2_foo]\nvalue = 1.0\nunit = "1"\nlower = 0.0\nupper = 2.0\nfitted = false\n'
                   'status = "ASSUMPTION"\nsource = "x"\n', "unknown parameter 'il2_foo'"),
    (lambda t: _edit(t, "il2_cl", "source", None), "parameter 'il2_cl' is missing fields ['source']"),
    (lambda t: _edit(t, "il2_cl", "unit", '"L/day"'), "parameter 'il2_cl': unit must be 'L/h', got 'L/day'"),
    (lambda t: _edit(t, "il2_cl", "value", "99.0"), "value 99.0 L/h is outside its bounds [5.0, 30.0]"),
    (lambda t: _edit(t, "il2_cl", "value", "nan"), "field 'value' must be finite, got nan"),
    (lambda t: _edit(t, "il2_cl", "value", "inf"), "field 'value' must be finite, got inf"),
    (lambda t: _edit(t, "il2_cl", "value", '"ten"'), "field 'value' must be a number, got 'ten'"),
    (lambda t: _edit(t, "il2_cl", "lower", "40.0"), "lower bound 40.0 exceeds upper bound 30.0"),
    (lambda t: _edit(t, "il2_cl", "fitted", '"yes"'), "field 'fitted' must be true or false, got 'yes'"),
    (lambda t: _edit(t, "il2_cl", "status", '"GUESS"'), "status 'GUESS' is not one of"),
    (lambda t: _edit(t, "il2_cl", "source", '"  "'), "field 'source' must name where the value comes from"),
    (lambda t: _edit(t, "il2_cl", "unit", "L/h"), "not valid TOML"),
    (lambda t: t.replace("[rapa_vp]", "[rapa_vp_removed]"), "unknown parameter 'rapa_vp_removed'"),
    (lambda t: t.replace("\n[il2_cl]\n", "\n[il2_cl]\nbogus = 1\n"), "parameter 'il2_cl' has unknown fields ['bogus']"),
    (lambda t: "stray = 3\n" + t, "[stray] must be a table"),
    # found by fuzzing: these escaped as TypeError / OverflowError, or broke to_toml later
    (lambda t: _edit(t, "il2_cl", "status", '["VERIFIED"]'), "status ['VERIFIED'] is not one of"),
    (lambda t: _edit(t, "il2_cl", "value", "1" + "0" * 400), "field 'value' must be finite, got an integer of 401"),
    (lambda t: t.replace("\n[il2_cl]\n", "\n[il2_cl]\nnote = 5\n"), "field 'note' must be a string, got 5"),
])
def test_parameter_file_errors_name_file_parameter_and_value(edit, fragment):
    with pytest.raises(ParameterError) as exc:
        parse_parameters(edit(RAW), origin="bad.toml")
    msg = str(exc.value)
    assert fragment in msg
    assert msg.startswith("bad.toml")
    assert "\n" not in msg.split(": not valid TOML")[0]


def test_missing_parameter_is_reported():
    text = re.sub(r"\[rapa_vp\].*?(?=\n\[|\Z)", "", RAW, flags=re.S)
    with pytest.raises(ParameterError, match=r"bad.toml: .*missing parameters \['rapa_vp'\]"):
        parse_parameters(text, origin="bad.toml")


def test_parameter_errors_are_tregpd_errors():
    assert issubclass(ParameterError, TregpdError)
    with pytest.raises(TregpdError):
        default_parameters()["no_such_parameter"]
