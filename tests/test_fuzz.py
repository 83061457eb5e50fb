"""Bounded fuzzing of every user-input parser: whatever the input, the parser either succeeds or raises a
TregpdError subclass (whose message the CLI prints as one line) — never another exception type.

Parsers: ``parse_parameters`` (random TOML-ish text, and mutations of the bundled valid file),
``read_nonmem`` (random CSV text built from NONMEM-ish headers and awkward tokens), ``Regimen.from_dict``
(random nested dicts with the right and wrong keys and values of every TOML type), and, when present, the
cohort loader (fitting/) and the scenario-file parser (scenarios/).

The number of examples per test comes from the "tregpd" profile (conftest.py); ``FUZZ_EXAMPLES`` raises it
(e.g. ``FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py`` for a bug hunt).
"""
from __future__ import annotations

import io
import math
import os
from importlib import resources

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tregpd.model import Regimen, TregpdError, parse_parameters, read_nonmem

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0")) or None
fuzz_settings = settings(max_examples=EXAMPLES, suppress_health_check=list(HealthCheck)) if EXAMPLES \
    else settings(suppress_health_check=list(HealthCheck))

RAW_PARAMS = resources.files("tregpd.model").joinpath("data", "parameters.toml").read_text()

#: tokens that tend to break parsers: special floats, huge and tiny numbers, wrong types, TOML syntax
TOKENS = ["0", "-0", "1", "-1", "0.5", "1e308", "1e400", "-1e400", "1e-320", "nan", "inf", "-inf", "+inf",
          "10" * 30, "-" + "9" * 40, "0x1F", "0o17", "0b101", "1_000", "true", "false", '"text"', "''", '""',
          "[]", "[1, 2]", "{}", "{a = 1}", "1979-05-27", "07:32:00", "1979-05-27T07:32:00Z", '"µL"', "'\\'",
          '"""', "=", "[", "]", "[[x]]", "#", "\n", "\x00", "\ufeff", " ", ",", ".", "abc", "ID", "NaN", "1.5",
          "3", "2", "4", "1e6", "1e20", "99999999999999999999", "-5", "1" + "0" * 400, '["VERIFIED"]',
          '["L/h"]', '"L/h"', '"1/h"', '"VERIFIED"', "{value = 1}", "[[1], [2]]", "1.0e-400"]


def _only_tregpd_errors(fn, *args):
    try:
        fn(*args)
    except TregpdError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg.split(": not valid TOML")[0], msg
    # anything else propagates and fails the test


# ------------------------------------------------------------------------------------- parameter files
@fuzz_settings
@given(text=st.text(max_size=400))
def test_parse_parameters_random_text(text):
    _only_tregpd_errors(parse_parameters, text, "fuzz.toml")


@st.composite
def mutated_parameter_file(draw):
    lines = RAW_PARAMS.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["value", "delete", "insert", "duplicate", "swap", "table"]))
        i = draw(st.integers(0, len(lines) - 1))
        if kind == "value" and " = " in lines[i]:
            key = lines[i].split(" = ", 1)[0]
            lines[i] = f"{key} = {draw(st.sampled_from(TOKENS))}"
        elif kind == "delete":
            del lines[i]
        elif kind == "insert":
            lines.insert(i, draw(st.one_of(st.sampled_from(TOKENS), st.text(max_size=30))))
        elif kind == "duplicate":
            lines.insert(i, lines[i])
        elif kind == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            lines.insert(i, f"[{draw(st.sampled_from(['meta', 'il2_cl', 'x', 'value', '']))}]")
    return "\n".join(lines)


@fuzz_settings
@given(text=mutated_parameter_file())
def test_parse_parameters_mutated_valid_file(text):
    _only_tregpd_errors(parse_parameters, text, "mutated.toml")


nasty = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**500, 10**500), st.integers(-5, 5),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10),
              st.sampled_from(["1/h", "L/h", "pM", "1", "VERIFIED", "ASSUMPTION", "il2", "sirolimus", "MIU", "mg",
                               "sc", "oral", "iv", "", " "])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=5)

VALID_ENTRY = {"value": 10.0, "unit": "L/h", "lower": 5.0, "upper": 30.0, "fitted": False, "status": "VERIFIED",
               "source": "a source", "note": ""}


@fuzz_settings
@given(corrupt=st.dictionaries(st.sampled_from(sorted(VALID_ENTRY)), nasty, min_size=1, max_size=3),
       drop=st.sets(st.just("note"), max_size=1))
def test_parameter_entry_values_of_every_type(corrupt, drop):
    """A valid parameter entry with 1-3 fields replaced by values of any type and size (what TOML can
    express: integers of any length, special floats, strings, arrays, tables); missing fields are checked by
    the file parser (next test)."""
    from tregpd.model.parameters import Parameter
    entry = {k: v for k, v in (VALID_ENTRY | corrupt).items() if k not in drop}
    _only_tregpd_errors(lambda: Parameter(name="il2_cl", **entry))


@fuzz_settings
@given(corrupt=st.dictionaries(st.sampled_from(sorted(VALID_ENTRY) + ["extra"]), nasty, min_size=1, max_size=3))
def test_parameter_file_with_corrupted_entry(corrupt):
    """The same corruption through the file parser (TOML text written with tomli-compatible syntax)."""
    from tregpd.model import default_parameters
    text = default_parameters().to_toml()
    fields = []
    for k, v in corrupt.items():
        fields.append(f"{k} = {_toml_literal(v)}")
    text = text.replace("[il2_cl]\n", "[il2_cl]\n" + "\n".join(fields) + "\n", 1)
    _only_tregpd_errors(parse_parameters, text, "corrupt.toml")


def _toml_literal(v):
    if v is None:
        return '""'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_literal(x) for x in v) + "]"
    return "{" + ", ".join(f'"{k.encode("unicode_escape").decode("ascii")}" = {_toml_literal(x)}'
                           for k, x in v.items()) + "}"


# ---------------------------------------------------------------------------------------- event files
NONMEM_HEADERS = ["ID", "TIME", "AMT", "CMT", "EVID", "II", "ADDL", "RATE", "DV", "MDV", "id", " time ", "FOO", ""]
CSV_TOKENS = ["0", "1", "2", "3", "4", "9", "5", "1.5", "-1", "1e6", "0.5", "nan", "NaN", "inf", "-inf", "1e308", "1e400",
              "", ".", "abc", '"1"', "1e20", "99999999999999999999", "0x10", " 7 ", "1,2", '"', "#"]


@st.composite
def nonmem_text(draw):
    header = draw(st.lists(st.sampled_from(NONMEM_HEADERS), min_size=0, max_size=8))
    if draw(st.booleans()):  # mostly valid columns, so the row checks are reached
        header = ["ID", "TIME", "AMT", "CMT", "EVID"] + draw(st.lists(st.sampled_from(["II", "ADDL", "RATE", "DV"]),
                                                                        max_size=3, unique=True))
    n_rows = draw(st.integers(0, 6))
    rows = [",".join(draw(st.lists(st.sampled_from(CSV_TOKENS), min_size=max(len(header) - 1, 0),
                                   max_size=len(header) + 1))) for _ in range(n_rows)]
    lead = draw(st.sampled_from(["", "# comment\n", "\ufeff", "\n"]))
    return lead + ",".join(header) + "\n" + "\n".join(rows) + draw(st.sampled_from(["", "\n"]))


@fuzz_settings
@given(text=nonmem_text())
def test_read_nonmem_structured_random_csv(text):
    _only_tregpd_errors(read_nonmem, io.StringIO(text))


@fuzz_settings
@given(text=st.text(max_size=300))
def test_read_nonmem_random_text(text):
    _only_tregpd_errors(read_nonmem, io.StringIO(text))


@fuzz_settings
@given(data=st.binary(max_size=200))
def test_read_nonmem_random_bytes_file(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "events.csv"
    path.write_bytes(data)
    _only_tregpd_errors(read_nonmem, path)


# ------------------------------------------------------------------------------------------ regimens
VALID_SCHEDULES = [
    {"drug": "il2", "amount": 0.5, "unit": "MIU", "interval_day": 1, "doses_per_course": 5, "n_courses": 6,
     "course_interval_day": 28, "start_day": 0, "stop_day": 168, "route": "sc"},
    {"drug": "sirolimus", "amount": 0.5, "unit": "mg", "interval_day": 2, "doses_per_course": 84},
    {"drug": "il2", "amount": 1, "unit": "WIU"},
]
big_or_odd_numbers = st.one_of(st.integers(-10, 10**13), st.integers(-10**500, 10**500),
                               st.floats(-1e3, 1e12), st.floats(allow_nan=True, allow_infinity=True))


@st.composite
def schedule_dict(draw):
    d = dict(draw(st.sampled_from(VALID_SCHEDULES)))
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(sorted(d) + ["every", "course_interval_day", "stop_day", "route"]))
        if draw(st.booleans()) and key in d:
            del d[key]
        else:
            d[key] = draw(st.one_of(nasty, big_or_odd_numbers))
    return d


VALID_TAPER = {"start_mg_per_day": 17.2, "end_mg_per_day": 8.87, "start_day": 0, "end_day": 168, "step_day": 14}


@st.composite
def taper_dict(draw):
    d = dict(VALID_TAPER)
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(sorted(d) + ["shape"]))
        if draw(st.booleans()) and key in d:
            del d[key]
        else:
            d[key] = draw(st.one_of(nasty, big_or_odd_numbers))
    return d


regimen_dicts = st.one_of(
    nasty,
    st.fixed_dictionaries({"name": st.one_of(st.text(max_size=5), nasty),
                           "schedules": st.one_of(st.lists(schedule_dict(), max_size=3), nasty)},
                          optional={"description": nasty, "assumption": nasty, "doses": nasty,
                                    "bogus": nasty, "taper": st.one_of(taper_dict(), nasty)}),
)


@fuzz_settings
@given(d=regimen_dicts)
def test_regimen_from_dict_random_dicts(d):
    def build():
        reg = Regimen.from_dict(d, where="fuzz [regimen]")
        ev = reg.events()  # compiling must not blow up either
        assert len(ev) >= 0
        reg.to_dict()
    _only_tregpd_errors(build)


# ------------------------------------------------------------------------ cohort files (fitting/)
cohort = pytest.importorskip("tregpd.fitting.cohort")
COHORT_TEXT = resources.files("tregpd.fitting").joinpath("data", cohort.SEED_COHORT_FILE).read_text(encoding="utf-8")
COHORT_TOKENS = ["0", "24", "-1", "1e400", "nan", "inf", "", " ", "treg", "th17", "ratio", "naive", "cd8", "median",
                 "q25", "median_fold_change", "mean", "82", "0.5", "1.5", "-82", "1" + "0" * 400, '"', '""', "abc",
                 "cells/uL", "cells/µL", "1", "#", "week", "value", "\x00", "1e-320"]


@st.composite
def mutated_cohort(draw):
    lines = COHORT_TEXT.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        kind = draw(st.sampled_from(["cell", "delete", "insert", "duplicate", "column"]))
        if kind == "cell" and not lines[i].startswith("#"):
            cells = lines[i].split(",")
            j = draw(st.integers(0, len(cells) - 1))
            cells[j] = draw(st.one_of(st.sampled_from(COHORT_TOKENS), st.text(max_size=6)))
            lines[i] = ",".join(cells)
        elif kind == "delete":
            del lines[i]
        elif kind == "insert":
            lines.insert(i, ",".join(draw(st.lists(st.sampled_from(COHORT_TOKENS), max_size=8))))
        elif kind == "duplicate":
            lines.insert(i, lines[i])
        else:
            lines[i] = lines[i] + "," + draw(st.sampled_from(COHORT_TOKENS))
    return "\n".join(lines)


@fuzz_settings
@given(text=st.one_of(mutated_cohort(), st.text(max_size=300)))
def test_parse_cohort_fuzz(text):
    from tregpd.model import CohortError
    try:
        cohort.parse_cohort(text, origin="fuzz.csv")
    except CohortError as exc:
        assert "\n" not in str(exc), str(exc)


@fuzz_settings
@given(data=st.binary(max_size=200))
def test_load_cohort_random_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("cohort") / "c.csv"
    path.write_bytes(data)
    _only_tregpd_errors(cohort.load_cohort, path)


# ----------------------------------------------------------------------- scenario files (scenarios/)
schema = pytest.importorskip("tregpd.scenarios.schema")


def _scenario_data():
    import tomllib
    path = next(p for p in schema.library_paths() if p.name == "il2_alone.toml")
    return tomllib.loads(path.read_text(encoding="utf-8"))


SCENARIO = _scenario_data()
SCENARIO_KEYS = sorted(set(SCENARIO["scenario"]) | {"iiv", "ratio_target", "bogus"})


@st.composite
def mutated_scenario(draw):
    import copy
    data = copy.deepcopy(SCENARIO)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["scenario", "regimen", "schedule", "top"]))
        if where == "scenario" and isinstance(data.get("scenario"), dict):
            key = draw(st.sampled_from(SCENARIO_KEYS))
            if draw(st.integers(0, 4)) == 0:
                data["scenario"].pop(key, None)
            elif key == "iiv":
                data["scenario"]["iiv"] = draw(st.dictionaries(st.sampled_from(["il2_cl", "nope", "treg_baseline"]),
                                                               st.one_of(nasty, big_or_odd_numbers), max_size=2))
            else:
                data["scenario"][key] = draw(st.one_of(nasty, big_or_odd_numbers,
                                                       st.sampled_from(["default", "fitted", "x/../y.toml"])))
        elif where == "regimen":
            data["regimen"] = draw(st.one_of(nasty, st.just({"schedules": [draw(schedule_dict())]})))
        elif where == "schedule" and isinstance(data.get("regimen"), dict) \
                and isinstance(data["regimen"].get("schedules"), list) and data["regimen"]["schedules"]:
            data["regimen"]["schedules"][0] = draw(schedule_dict())
        else:
            data[draw(st.sampled_from(["scenario", "regimen", "extra"]))] = draw(nasty)
    return data


@fuzz_settings
@given(data=mutated_scenario())
def test_parse_scenario_fuzz(tmp_path_factory, data):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _only_tregpd_errors(schema.parse_scenario, data, "fuzz.toml", tmp_path_factory.getbasetemp())


@fuzz_settings
@given(data=st.binary(max_size=300))
def test_load_scenario_random_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("scen") / "s.toml"
    path.write_bytes(data)
    _only_tregpd_errors(schema.load_scenario, path)


def test_scenario_integer_beyond_float_range_is_a_scenario_error():
    """Found by the fuzzer above: output_step_day = <400-digit integer> escaped as OverflowError."""
    import copy
    from tregpd.model import ScenarioError
    data = copy.deepcopy(SCENARIO)
    data["scenario"]["output_step_day"] = 10**400
    with pytest.raises(ScenarioError, match="output_step_day"):
        schema.parse_scenario(data, "big.toml")
    data = copy.deepcopy(SCENARIO)
    data["scenario"]["iiv"] = {"il2_cl": -(10**400)}
    with pytest.raises(ScenarioError, match="iiv"):
        schema.parse_scenario(data, "big.toml")


# ------------------------------------------------------------------------------ the command line
NUMBER_ARGS = ["nan", "inf", "-inf", "-1", "0", "1e-9", "1e308", "0.5", "2", "abc", "", "1e-300", "7"]


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0"), reason="runs full simulations")
@settings(max_examples=EXAMPLES or 15)
@given(opts=st.dictionaries(st.sampled_from(["--weeks", "--step-day", "--rtol", "--method"]),
                            st.sampled_from(NUMBER_ARGS + ["dopri5", "rosenbrock23"]), max_size=4))
def test_simulate_argv_fuzz(tmp_path_factory, opts):
    """Any combination of odd option values: exit 0 (success), or 2 with a one-line message (TregpdError) or
    argparse's usage message; never a traceback."""
    import contextlib
    from tregpd.cli import main
    out = tmp_path_factory.mktemp("cli")
    argv = ["simulate", "--out", str(out)]
    opts.setdefault("--weeks", "1")
    opts.setdefault("--step-day", "7")
    for k, v in opts.items():
        argv += [f"{k}={v}"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse rejected an option value (its own usage message)
            code = exc.code
            assert "usage:" in err.getvalue()
    assert code in (0, 2), (argv, err.getvalue())
    assert "Traceback" not in err.getvalue()
    if code == 2 and "usage:" not in err.getvalue():
        assert len(err.getvalue().strip().splitlines()) == 1, err.getvalue()


# ------------------------------------------------------- files: nesting, encodings, sizes, special files
# Every file parser through its file entry point: whatever bytes or kind of path it is given, only a
# TregpdError comes out, on one line and short. Messages may list the 33 parameter names (~490 characters),
# so the bound is TregpdError's own cap (MAX_MESSAGE, 800) rather than 500.
from tregpd.errors import MAX_MESSAGE  # noqa: E402


def _file_parsers():
    from tregpd.model import load_parameters
    return {"parameters": load_parameters, "events": read_nonmem, "cohort": cohort.load_cohort,
            "scenario": schema.load_scenario}


VALID_FILES = {"parameters": RAW_PARAMS.encode(), "cohort": COHORT_TEXT.encode(),
               "events": b"ID,TIME,AMT,CMT,EVID,II,ADDL\n1,0,5,1,1,1,4\n",
               "scenario": next(p for p in schema.library_paths() if p.name == "il2_alone.toml").read_bytes()}


@st.composite
def hostile_bytes(draw, kind):
    """Bytes built from a valid file of ``kind``: deep nesting, BOMs and other encodings, invalid bytes, long
    fields, truncation and repetition."""
    data = VALID_FILES[kind]
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["nest", "bom", "utf16", "latin1", "invalid", "long", "truncate", "repeat",
                                    "nul", "dotted"]))
        pos = draw(st.integers(0, len(data)))
        if how == "nest":
            d = draw(st.sampled_from([2, 31, 33, 200, 2000]))
            o, c = draw(st.sampled_from([("[", "]"), ("{a=", "}"), ("[{b=", "}]")]))
            data = data[:pos] + f"x = {o * d}1{c * d}\n".encode() + data[pos:]
        elif how == "bom":
            data = b"\xef\xbb\xbf" + data
        elif how == "utf16":
            data = data.decode("utf-8", "replace").encode(draw(st.sampled_from(["utf-16", "utf-16-be",
                                                                                  "utf-32"])))
        elif how == "latin1":
            data = data[:pos] + "é µ".encode("latin-1") + data[pos:]
        elif how == "invalid":
            data = data[:pos] + draw(st.binary(min_size=1, max_size=8)) + data[pos:]
        elif how == "long":
            n = draw(st.sampled_from([300, 5000, 200_000]))
            data = data[:pos] + draw(st.sampled_from([b"x", b"9", b"[", b",", b'"'])) * n + data[pos:]
        elif how == "truncate":
            data = data[:pos]
        elif how == "repeat":
            data = data * draw(st.integers(2, 50))
        elif how == "nul":
            data = data[:pos] + b"\x00" + data[pos:]
        else:
            data = data[:pos] + (".".join(["k"] * draw(st.sampled_from([5, 40, 500]))) + " = 1\n").encode() \
                + data[pos:]
    return data


def _only_short_tregpd_errors(fn, *args):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fn(*args)
        except TregpdError as exc:
            msg = str(exc)
            assert msg and "\n" not in msg.split(": not valid TOML")[0], msg[:300]
            assert len(msg) <= MAX_MESSAGE, msg[:300]


file_fuzz_settings = settings(max_examples=EXAMPLES or 25, deadline=None,
                              suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("kind", sorted(VALID_FILES))
@file_fuzz_settings
@given(data=st.data())
def test_file_parsers_hostile_bytes(tmp_path_factory, kind, data):
    raw = data.draw(hostile_bytes(kind))
    path = tmp_path_factory.mktemp("hostile") / ("f.csv" if kind in ("events", "cohort") else "f.toml")
    path.write_bytes(raw)
    _only_short_tregpd_errors(_file_parsers()[kind], path)


@pytest.mark.parametrize("kind", sorted(VALID_FILES))
def test_file_parsers_special_files(tmp_path, kind):
    """A directory, a character device, a fifo, a missing file, a path through a file, an oversized file and
    an empty file: one TregpdError each, naming what is wrong (and never blocking on the fifo)."""
    from tregpd.safeio import MAX_INPUT_BYTES
    parse = _file_parsers()[kind]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big"
    with open(big, "wb") as fh:
        fh.truncate(MAX_INPUT_BYTES + 1)     # sparse: no disk used
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    (tmp_path / "file").write_text("x")
    cases = {tmp_path: "is a directory", "/dev/null": "character device", fifo: "named pipe",
             tmp_path / "nope": "does not exist", tmp_path / "file" / "x": "does not exist",
             big: "larger than the limit", empty: None, "x" * 5000: None}
    for path, fragment in cases.items():
        with pytest.raises(TregpdError) as exc:
            parse(path)
        msg = str(exc.value)
        assert len(msg) <= MAX_MESSAGE and "\n" not in msg, msg[:300]
        if fragment is not None:
            assert fragment in msg, (path, msg)


@file_fuzz_settings
@given(depth=st.integers(1, 3000), leaf=nasty, wrap=st.sampled_from(["dict", "list", "mixed"]))
def test_regimen_from_dict_any_nesting(depth, leaf, wrap):
    value = leaf
    for i in range(depth):
        value = {"k": value} if wrap == "dict" or (wrap == "mixed" and i % 2) else [value]
    d = {"name": "x", "schedules": [{"drug": "il2", "amount": value, "unit": "MIU"}]}
    _only_short_tregpd_errors(Regimen.from_dict, d, "nested")
    _only_short_tregpd_errors(schema.parse_scenario, {"scenario": {"name": "x", "description": "d", "weeks": 1,
                                                                   "iiv": {"il2_cl": value}}}, "nested.toml")
