"""Hostile input (issue 12, input and fit-failure classes): one safe reader for every parsed file, nesting and
size limits, long values cut in messages, work bounds before allocation, scenario names, and a fit that does
not fit saying so. Each test failed before the fix it names."""
from __future__ import annotations

import re
import contextlib
import io
import os
import stat
import time

import pytest

from tregpd.cli import main
from tregpd.model import (CohortError, ParameterError, Regimen, RegimenError, ScenarioError, TregpdError,
                          default_parameters, load_parameters, read_nonmem, sample_population)
from tregpd.safeio import (MAX_INPUT_BYTES, MAX_NESTING, check_nesting, load_toml, read_text_file, shorten,
                           toml_nesting)

PARAMS_TEXT = default_parameters().to_toml()
SCENARIO = """[scenario]
name = "robust"
description = "test"
weeks = 4
population = 2
outputs = ["csv"]

[regimen]
[[regimen.schedules]]
drug = "il2"
amount = 0.5
unit = "MIU"
"""
COHORT = ("week,observable,statistic,value,n,source\n0,treg,median,12.98,82,a\n24,treg,median,22.1,82,a\n"
          "0,ratio,median,0.44,82,a\n24,ratio,median,0.29,82,a\n")


def _cli(argv):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _deep_toml(depth: int = 600) -> str:
    return "x = " + "[" * depth + "1" + "]" * depth + "\n"


# ------------------------------------------------------------------------------------------ the reader
def test_read_text_file_names_the_kind_of_path(tmp_path):
    with pytest.raises(TregpdError, match=r"^parameter file '.*nope.toml' does not exist$"):
        read_text_file(tmp_path / "nope.toml", "parameter file")
    with pytest.raises(TregpdError, match=r"^cohort file '.*' is a directory, not a file$"):
        read_text_file(tmp_path, "cohort file")
    with pytest.raises(TregpdError, match="is a character device, not a regular file"):
        read_text_file("/dev/null", "event file")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    t0 = time.perf_counter()
    with pytest.raises(TregpdError, match=r"scenario file '.*fifo' is a named pipe \(fifo\), not a regular file"):
        read_text_file(fifo, "scenario file")   # refused without opening it (opening would block)
    assert time.perf_counter() - t0 < 5
    with pytest.raises(TregpdError, match="does not exist"):
        read_text_file(tmp_path / "nope.toml" / "x", "parameter file")


def test_read_text_file_size_bom_and_encodings(tmp_path):
    p = tmp_path / "f.toml"
    p.write_bytes(b"\xef\xbb\xbfa = 1\n")
    assert read_text_file(p, "parameter file") == "a = 1\n"
    p.write_bytes("a = 1\n".encode("utf-16"))
    with pytest.raises(TregpdError, match="is not UTF-8 text: it is UTF-16"):
        read_text_file(p, "parameter file")
    p.write_bytes(b"a = \xff\n")
    with pytest.raises(TregpdError, match=r"is not UTF-8 text \(invalid start byte: byte 0xff at offset 4\)"):
        read_text_file(p, "parameter file")
    p.write_bytes(b"#" * 101)
    with pytest.raises(TregpdError, match="is 101 bytes, larger than the limit of 100 bytes for a parameter file"):
        read_text_file(p, "parameter file", max_bytes=100)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_read_text_file_unreadable(tmp_path):  # pragma: no cover - CI runs as root
    p = tmp_path / "secret.toml"
    p.write_text("a = 1\n")
    p.chmod(0)
    with pytest.raises(TregpdError, match="is not readable"):
        read_text_file(p, "parameter file")


def test_bom_before_valid_toml_is_accepted(tmp_path):
    """Was 'Invalid statement' (the CSV readers accepted a BOM, the TOML readers did not)."""
    p = tmp_path / "bom.toml"
    p.write_bytes(b"\xef\xbb\xbf" + PARAMS_TEXT.encode())
    assert load_parameters(p).values == default_parameters().values
    s = tmp_path / "bom_scenario.toml"
    s.write_bytes(b"\xef\xbb\xbf" + SCENARIO.encode())
    from tregpd.scenarios.schema import load_scenario
    assert load_scenario(s).name == "robust"


@pytest.mark.parametrize("option", ["--params", "--events"])
def test_directory_given_as_an_input_file_says_directory(tmp_path, option):
    """Was 'does not exist'."""
    code, _, err = _cli(["simulate", option, str(tmp_path), "--weeks", "1", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "is a directory, not a file" in err and "does not exist" not in err
    assert not (tmp_path / "o").exists()


def test_directory_given_as_cohort_says_directory(tmp_path):
    code, _, err = _cli(["fit", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2 and f"cohort file '{tmp_path}' is a directory, not a file" in err


# ------------------------------------------------------------------------------------------ nesting
def test_toml_nesting_scan_skips_strings_and_comments():
    assert toml_nesting('a = "[[[[" # [[[[\nb = \'{{{\'\nc = """\n[[[\\"""\n"""\nd = [[1], {e = 2}]\n')[0] == 2
    assert toml_nesting("[[x]]\ny = '''[[['''\n")[0] == 2
    assert toml_nesting(_deep_toml(40))[0] == 40


def test_deeply_nested_parameter_file_is_a_parameter_error(tmp_path):
    """A 1.2 kB file nested 600 deep gave a RecursionError traceback and 3,000 lines of stderr."""
    p = tmp_path / "deep.toml"
    p.write_text(PARAMS_TEXT.replace("[meta]\n", _deep_toml() + "[meta]\n", 1))
    with pytest.raises(ParameterError, match=rf"deep.toml: arrays/tables nested more than {MAX_NESTING} deep"):
        load_parameters(p)
    code, _, err = _cli(["simulate", "--params", str(p), "--weeks", "1", "--out", str(tmp_path / "o")])
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err


def test_deeply_nested_scenario_file_and_dotted_keys(tmp_path):
    from tregpd.scenarios.schema import load_scenario
    p = tmp_path / "deep.toml"
    p.write_text(SCENARIO.replace("[regimen]\n", "[regimen]\nassumption = " + _deep_toml()[4:], 1))
    with pytest.raises(ScenarioError, match="nested more than 32 deep"):
        load_scenario(p)
    p.write_text(SCENARIO + "[scenario.iiv]\n" + ".".join(["k"] * 100) + " = 1\n")   # nests without brackets
    with pytest.raises(ScenarioError, match="nested more than 32 deep"):
        load_scenario(p)


def test_regimen_from_dict_nested_600_deep_is_a_regimen_error():
    deep: dict = {}
    cur = deep
    for _ in range(600):
        cur["a"] = {}
        cur = cur["a"]
    data = {"name": "x", "schedules": [{"drug": "il2", "amount": deep, "unit": "MIU"}]}
    with pytest.raises(RegimenError, match="x: tables/lists nested more than 32 deep"):
        Regimen.from_dict(data, where="x")
    lst: list = []
    for _ in range(5000):
        lst = [lst]
    with pytest.raises(TregpdError, match="nested more than"):
        check_nesting({"a": lst}, "y")


# ------------------------------------------------------------------------------------ long values
def test_shorten():
    assert shorten("abc") == "'abc'"
    long = shorten("x" * 2_000_000)
    assert long.endswith("... (2000002 characters)") and len(long) < 260
    assert shorten(10 ** 5000) == "an integer of about 5001 digits"


def test_two_megabyte_bad_field_is_not_echoed_whole(tmp_path):
    """A 2 MB bad field was echoed whole (a 2,000,110-character error line)."""
    big = "y" * 2_000_000
    p = tmp_path / "s.toml"
    p.write_text(SCENARIO.replace('name = "robust"', f'name = "{big}"'))
    code, stdout, _ = _cli(["scenarios", "validate", str(p)])   # prints "INVALID <message>" per file
    assert code == 2 and "name: must start with a letter" in stdout and "(2000002 characters)" in stdout
    assert len(stdout) < 800
    ev = tmp_path / "e.csv"
    ev.write_text(f"ID,TIME,AMT,CMT,EVID\n1,{big},5,1,1\n")
    with pytest.raises(RegimenError) as exc:
        read_nonmem(ev)
    assert "column TIME must be a number" in str(exc.value) and len(str(exc.value)) < 500
    c = tmp_path / "c.csv"
    c.write_text(COHORT.replace("24,treg,median,22.1", f"24,treg,{big[:100_000]},22.1"))  # csv field limit
    with pytest.raises(CohortError) as exc:
        from tregpd.fitting.cohort import load_cohort
        load_cohort(c)
    assert "field 'statistic'" in str(exc.value) and len(str(exc.value)) < 500
    # a message that does not shorten its value itself (parameter entries) is cut by TregpdError
    p2 = tmp_path / "p.toml"
    p2.write_text(PARAMS_TEXT.replace('status = "VERIFIED"', f'status = "{big}"', 1))
    with pytest.raises(ParameterError) as exc:
        load_parameters(p2)
    assert "status" in str(exc.value) and len(str(exc.value)) <= 800


# ------------------------------------------------------------------------------------- work bounds
def test_nonmem_total_dose_count_is_bounded_before_expanding(tmp_path):
    """60 rows x ADDL 1e6 (1.9 kB) expanded to 6e7 doses, 4 GB and 23 s."""
    from tregpd.model.dosing import MAX_TOTAL_DOSES
    p = tmp_path / "many.csv"
    p.write_text("ID,TIME,AMT,CMT,EVID,II,ADDL\n" + "".join(f"1,{i},5,1,1,0.001,1000000\n" for i in range(60)))
    t0 = time.perf_counter()
    with pytest.raises(RegimenError) as exc:
        read_nonmem(p)
    assert time.perf_counter() - t0 < 5
    msg = str(exc.value)
    assert "60000060 doses" in msg and f"limit of {MAX_TOTAL_DOSES}" in msg and "split the file by ID" in msg


def test_scenario_population_memory_bound_names_tregpd_trial(tmp_path):
    from tregpd.scenarios.schema import load_scenario
    p = tmp_path / "big.toml"
    p.write_text(SCENARIO.replace("weeks = 4\npopulation = 2", "weeks = 24\npopulation = 1000000"))
    with pytest.raises(ScenarioError) as exc:
        load_scenario(p)
    msg = str(exc.value)
    assert "[scenario] population 1000000" in msg and "above the limit of 2.0 GB" in msg
    assert "`tregpd trial`" in msg and "tregpd scale" not in msg
    p.write_text(SCENARIO.replace("population = 2", "population = 2000000"))
    with pytest.raises(ScenarioError, match="use `tregpd trial`, which streams patients in chunks"):
        load_scenario(p)
    # the population override goes through the same check
    p.write_text(SCENARIO)
    with pytest.raises(ScenarioError, match="population 1000000"):
        load_scenario(p).with_overrides(population=1_000_000, weeks=24)


def test_sample_population_bound():
    with pytest.raises(ParameterError, match=r"sample_population\(n=1000000000\).*GB of memory.*limit"):
        sample_population(default_parameters(), 10 ** 9)


def test_dosefind_population_bound(tmp_path):
    code, _, err = _cli(["dosefind", "--population", str(10 ** 9), "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 2 and "dose finding: population 1000000000" in err and "`tregpd trial`" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra, fragment", [
    (["--chunk", str(10 ** 9), "--patients", str(10 ** 9)], "lower --chunk"),
    (["--weeks"] + [str(w / 100) for w in range(50_001)], "50001 output weeks"),
])
def test_trial_chunk_and_weeks_bound(tmp_path, extra, fragment):
    t0 = time.perf_counter()
    code, _, err = _cli(["trial", "--out", str(tmp_path / "o"), "--no-progress", "--no-plot"] + extra)
    assert code == 2 and fragment in err and "above the limit of 2.0 GB" in err
    assert time.perf_counter() - t0 < 20
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------- scenario names
@pytest.mark.parametrize("name", ["robust\n", "robust\r", " robust", "robust ", "rob\tust", "x" * 101])
def test_scenario_name_with_control_characters_or_spaces_is_refused(name):
    import tomllib
    from tregpd.scenarios.schema import parse_scenario
    data = tomllib.loads(SCENARIO)
    data["scenario"]["name"] = name
    with pytest.raises(ScenarioError, match=r"\[scenario\] name: must start with a letter or digit"):
        parse_scenario(data, "n.toml")


# ------------------------------------------------------------------------------- a fit that does not fit
POOR_COHORT = """# a cohort the model cannot follow: Treg falling 6.5x with tight SEs
week,observable,statistic,value,n,source,rel_se
0,treg,median,13,82,synthetic,0.01
24,treg,median,2,82,synthetic,0.01
0,ratio,median,0.44,82,synthetic,0.01
24,ratio,median,0.29,82,synthetic,0.01
"""


def test_fit_that_does_not_fit_exits_nonzero_unless_accepted(tmp_path):
    """Was: exit 0, 'done', il2_emax_treg = 1.9e-10 written, residuals of +202 SE, the report silent."""
    cohort = tmp_path / "poor.csv"
    cohort.write_text(POOR_COHORT)
    out = tmp_path / "fit"
    argv = ["fit", str(cohort), "--mode", "typical", "--free", "il2_emax_treg", "--out", str(out)]
    code, _, err = _cli(argv)
    assert code == 2
    assert "the model does not fit the cohort" in err and "more than 3 SE" in err and "week 24 treg median" in err
    assert "--accept-poor-fit" in err and len(err.strip().splitlines()) == 1
    assert not (out / "fitted_parameters.toml").exists()
    report = (out / "fit_report.txt").read_text()
    assert re.search(r"POOR FIT: [12] of 2 fitted statistics are more than 3 SE", report)
    assert "il2_emax_treg" in report and "lower bound 0" in report
    # a poor fit is still one complete run (report, residuals, figures), and the message names the real folder
    from tregpd.rundir import verify_run
    check = verify_run(out)
    assert check.ok and "fitted_parameters.toml" not in {e["path"] for e in check.manifest["files"]}
    assert str(out / "fit_report.txt") in err and ".tregpd-stage" not in err
    code, stdout, err = _cli(argv + ["--accept-poor-fit"])
    assert code == 0, err
    assert (out / "fitted_parameters.toml").is_file() and "verdict: POOR FIT" in stdout
    assert verify_run(out).ok and f"wrote {out / 'fitted_parameters.toml'}" in stdout


def test_fit_verdict_rules():
    import lmfit
    import pandas as pd
    from types import SimpleNamespace
    from tregpd.fitting import assess_fit
    params = lmfit.Parameters()
    params.add("a", value=0.0, min=0.0, max=1.0)
    params.add("b", value=0.5, min=0.0, max=1.0)
    res = SimpleNamespace(params=params, success=True, message="")
    typ = SimpleNamespace(result=res, decisions={"a": "BOUNDED ONLY - ..."})
    good = pd.DataFrame({"week": [24.0], "observable": ["treg"], "statistic": ["median"], "role": ["fitted"],
                         "residual_typical_se": [2.9]})
    v = assess_fit(typ, None, good)
    assert v.ok and v.notes and "reported as a limit" in v.notes[0]
    typ.decisions = {"a": "IDENTIFIABLE - ..."}
    v = assess_fit(typ, None, good)
    assert not v.ok and "a = 0 is at its lower bound 0" in v.reasons[0]
    typ.decisions = {}
    params["a"].value = 0.5
    res.success, res.message = False, "too many evaluations"
    v = assess_fit(typ, None, good.assign(residual_typical_se=[-3.5]))
    assert not v.ok and len(v.reasons) == 2 and "-3.5 SE" in v.reasons[0] and "did not converge" in v.reasons[1]


def test_load_toml_keeps_decode_errors_short():
    with pytest.raises(TregpdError, match="not valid TOML"):
        load_toml("a = [1,\n" + "2," * 100_000, "x.toml")
    with pytest.raises(TregpdError, match="larger than the limit"):
        load_toml("#" * (MAX_INPUT_BYTES + 1), "x.toml")


# ------------------------------------------------------------------------------------------ output paths
def test_sbml_out_fifo_or_device_link_refused_node_untouched(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code, out, err = _cli(["sbml", "--out", str(fifo)])
    assert code == 2
    assert err.count("\n") == 1 and str(fifo) in err and "named pipe (fifo)" in err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    link = tmp_path / "null"
    link.symlink_to("/dev/null")
    code, out, err = _cli(["sbml", "--out", str(link)])
    assert code == 2 and "character device" in err and str(link) in err
    assert os.path.islink(link) and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    code, out, err = _cli(["sbml", "--out", str(tmp_path)])
    assert code == 2 and "is a directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "null"]


def test_simulate_out_a_file_refused_before_simulating(tmp_path, monkeypatch):
    import importlib
    simmod = importlib.import_module("tregpd.model.simulate")
    called = []
    monkeypatch.setattr(simmod, "simulate", lambda *a, **k: called.append(1))
    f = tmp_path / "a_file"
    f.write_text("keep")
    for out in (f, f / "sub"):
        code, _, err = _cli(["simulate", "--out", str(out), "--weeks", "1"])
        assert code == 2 and err.count("\n") == 1 and str(f) in err and "regular file, not a folder" in err
    assert called == [] and f.read_text() == "keep"


def test_every_out_option_is_resolved_before_work(tmp_path):
    """Every command with a folder --out refuses a file there before it starts (no command function runs)."""
    from tregpd.cli import build_parser
    f = tmp_path / "a_file"
    f.write_text("")
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    checked = 0
    for name, p in sub.choices.items():
        if not any(a.dest == "out" for a in p._actions):
            continue
        defaults = {"func": lambda args: pytest.fail(f"{name} ran despite a bad --out")}
        p.set_defaults(**defaults)
        args = parser.parse_args([name, "--out", str(f / "x")] if name != "scenarios" else [name])
        if getattr(args, "out", None) is None:
            continue
        from tregpd.cli import _check_outputs
        with pytest.raises(TregpdError, match="is a regular file, not a folder"):
            _check_outputs(args)
        checked += 1
    assert checked >= 8


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_out_folder_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, _, err = _cli(["simulate", "--out", str(ro / "sim")])
        assert code == 2 and "not writable" in err
    finally:
        ro.chmod(0o700)


def test_resolve_output_kinds(tmp_path):
    from tregpd.safeio import resolve_output
    assert resolve_output(tmp_path / "new" / "deeper", kind="dir") == tmp_path / "new" / "deeper"
    assert resolve_output(tmp_path / "x.xml", kind="file") == tmp_path / "x.xml"
    (tmp_path / "reg").write_text("")
    resolve_output(tmp_path / "reg", kind="file")
    with pytest.raises(TregpdError, match=r"--out file '.*reg/x.xml' cannot be created: '.*reg' is a regular file"):
        resolve_output(tmp_path / "reg" / "x.xml", kind="file", what="--out file")
    with pytest.raises(TregpdError, match="character device"):
        resolve_output("/dev/null", kind="file")
    with pytest.raises(TregpdError, match="character device, not a folder"):
        resolve_output("/dev/null", kind="dir")


def test_atomic_writer_replaces_only_regular_files(tmp_path):
    from tregpd.errors import OutputError
    from tregpd.io import atomic_write_bytes
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="named pipe"):
        atomic_write_bytes(fifo, b"x")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    link = tmp_path / "dev"
    link.symlink_to("/dev/null")
    with pytest.raises(OutputError, match=r"character device \(through a symlink\)"):
        atomic_write_bytes(link, b"x")
    assert os.path.islink(link)
    (tmp_path / "d").mkdir()
    with pytest.raises(OutputError, match="directory"):
        atomic_write_bytes(tmp_path / "d", b"x")
    # a symlink to a regular file is replaced, not followed
    target = tmp_path / "target"
    target.write_text("old")
    (tmp_path / "lnk").symlink_to(target)
    atomic_write_bytes(tmp_path / "lnk", b"new")
    assert target.read_text() == "old" and not os.path.islink(tmp_path / "lnk")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------ options
def test_trial_workers_bounded_by_cpus(tmp_path, monkeypatch):
    from tregpd.scenarios import backends
    monkeypatch.setattr(backends, "make_backend", lambda **k: pytest.fail("a backend was started"))
    n = backends.available_cpus()
    for cmd in (["trial", "--patients", "10"], ["sensitivity", "--method", "local"]):
        code, _, err = _cli(cmd + ["--workers", str(n + 1000), "--out", str(tmp_path / "o")])
        assert code == 2 and err.count("\n") == 1
        assert f"--workers {n + 1000}" in err and f"limit {n}" in err
    assert not (tmp_path / "o").exists()
    monkeypatch.undo()
    with pytest.raises(TregpdError, match="CPUs available"):
        backends.make_backend(workers=n + 1)


def test_workers_with_scheduler_refused(tmp_path):
    for cmd in (["trial", "--patients", "10"], ["sensitivity", "--method", "local"]):
        code, _, err = _cli(cmd + ["--workers", "1", "--scheduler", "tcp://127.0.0.1:1", "--out",
                                   str(tmp_path / "o")])
        assert code == 2 and err.count("\n") == 1 and "--workers and --scheduler cannot be combined" in err
    from tregpd.scenarios.backends import make_backend
    with pytest.raises(TregpdError, match="cannot be combined"):
        make_backend(workers=1, scheduler="tcp://127.0.0.1:1")


# ------------------------------------------------------------------------------------------ signals
def test_sigterm_handled_like_sigint(tmp_path):
    import signal
    import subprocess
    import sys
    out = tmp_path / "trial"
    proc = subprocess.Popen([sys.executable, "-m", "tregpd.cli", "trial", "--patients", "5000000", "--chunk",
                             "2048", "--no-progress", "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        line = proc.stdout.readline()       # "trial: N patients ... on ..." once the work starts
        assert line.startswith("trial:"), line + proc.stderr.read()
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in (130, 143), (proc.returncode, err)
    assert "interrupted" in err and "Traceback" not in err
    left = [p for p in out.rglob("*")] if out.exists() else []
    assert not [p for p in left if p.name.endswith(".tmp")] and not [p for p in left if p.is_file()]


def test_main_restores_the_sigterm_handler():
    import signal
    before = signal.getsignal(signal.SIGTERM)
    _cli(["models"])
    assert signal.getsignal(signal.SIGTERM) is before


# ------------------------------------------------------------------------------------------ durability
def test_atomic_writer_fsyncs_the_folder_after_the_rename(tmp_path, monkeypatch):
    import tregpd.io as tio
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", stat.S_ISDIR(os.fstat(fd).st_mode), os.path.realpath(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(a, b):
        calls.append(("replace", str(b)))
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "sub" / "x.json"
    tio.atomic_write_json(target, {"a": 1})
    kinds = [c[0] if c[0] == "replace" else ("fsync_dir" if c[1] else "fsync_file") for c in calls]
    assert kinds == ["fsync_file", "replace", "fsync_dir"]
    if os.path.isdir("/proc/self/fd"):
        assert calls[-1][2] == os.path.realpath(target.parent)


# ------------------------------------------------------------------------------------------ resources
def test_disk_full_is_one_line_naming_the_file(tmp_path, monkeypatch):
    import errno
    import tregpd.io as tio
    real = tio.atomic_write_bytes

    def full(path, data):
        if str(path).endswith(".png"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(tio, "atomic_write_bytes", full)
    code, _, err = _cli(["simulate", "--weeks", "1", "--out", str(tmp_path / "sim")])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "No space left on device" in err and str(tmp_path / "sim" / "trajectory.png") in err
    assert "nothing of this run was kept" in err and not (tmp_path / "sim").exists()


def test_write_failure_without_a_filename_gets_one(tmp_path, monkeypatch):
    import errno
    from tregpd.io import atomic_write_bytes

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError) as info:
        atomic_write_bytes(tmp_path / "x.csv", b"data")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "x.csv")
    assert list(tmp_path.iterdir()) == []


def test_memory_error_is_one_line(tmp_path, monkeypatch):
    import importlib
    simmod = importlib.import_module("tregpd.model.simulate")

    def boom(*a, **k):
        raise MemoryError("Unable to allocate 6.00 GiB for an array with shape (1000000, 169, 7)")

    monkeypatch.setattr(simmod, "simulate", boom)
    code, _, err = _cli(["simulate", "--weeks", "1", "--out", str(tmp_path / "sim")])
    assert code == 2 and err.count("\n") == 1 and "out of memory" in err and "6.00 GiB" in err
    assert "tregpd trial" in err
