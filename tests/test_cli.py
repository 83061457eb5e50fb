"""``tregpd simulate`` end to end, and bad input -> exit code 2 with one line on stderr, no traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tregpd.cli import main
from tregpd.model import reference_regimen, write_nonmem

NO_JIT = os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0")


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_simulate_end_to_end(tmp_path, capsys, params):
    out = tmp_path / "sim"
    code, stdout, err = run_cli(["simulate", "--weeks", 12, "--step-day", 1.0, "--out", out], capsys)
    assert code == 0, err
    for name in ("trajectory.csv", "trajectory.png", "provenance.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert sorted(p.name for p in out.iterdir()) == ["MANIFEST.json", "provenance.json", "trajectory.csv",
                                                    "trajectory.png"]
    text = (out / "trajectory.csv").read_text()
    assert text.startswith("# tregpd_version: ")
    assert "# seed: " in text and "# regimen: " in text and "# parameters: " in text
    frame = pd.read_csv(out / "trajectory.csv", comment="#")
    assert list(frame.columns) == ["patient", "time_day", "variable", "value", "unit"]
    assert frame["time_day"].max() == 84.0
    assert frame["value"].notna().all()
    treg = frame[frame["variable"] == "treg"].sort_values("time_day")["value"].to_numpy()
    assert treg[0] == pytest.approx(params["treg_baseline"].value)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["command"] == "tregpd simulate" and prov["regimen"]["name"] == "shanxi_reference"
    assert prov["solver"]["method"] == "dopri5"
    assert (out / "trajectory.png").read_bytes()[:4] == b"\x89PNG"
    # the console shows the weekly table and names the assumption
    assert "ASSUMPTION" in stdout and "week 6" in stdout and "wrote" in stdout


def test_simulate_with_event_file_and_param_file(tmp_path, capsys, params):
    ev = tmp_path / "ev.csv"
    write_nonmem(reference_regimen(weeks=6).events(), ev)
    pf = tmp_path / "p.toml"
    pf.write_text(params.with_values(il2_emax_treg=40.0).to_toml())
    out = tmp_path / "o"
    code, stdout, err = run_cli(["simulate", "--events", ev, "--params", pf, "--weeks", 6, "--step-day", 7,
                                 "--out", out], capsys)
    assert code == 0, err
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["regimen"]["name"] == "ev"
    assert prov["parameters"]["values"]["il2_emax_treg"] == 40.0


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("case,fragment", [
    ("missing_params", "does not exist"),
    ("malformed_toml", "not valid TOML"),
    ("bad_value", "is outside its bounds"),
    ("bad_events", "e.csv, line 3: column AMT must be a number, got 'lots'"),
    ("missing_events", "event file"),
    ("two_ids", "'simulate' takes one ID"),
    ("bad_weeks", "--weeks must be > 0"),
    ("nan_weeks", "--weeks must be > 0 and <= 5200, got nan"),
    ("inf_weeks", "--weeks must be > 0 and <= 5200, got inf"),
    ("bad_step", "output_step_day must be a positive number"),
    ("tiny_step", "points; at most 10000000 are allowed"),  # was a MemoryError traceback (1.2 TiB grid)
    ("bad_rtol", "'rtol' must be a number in (0, 1)"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, params, case, fragment):
    args = ["simulate", "--out", tmp_path / "out", "--weeks", 1]
    if case == "missing_params":
        args += ["--params", tmp_path / "nope.toml"]
    elif case == "malformed_toml":
        args += ["--params", _write(tmp_path / "m.toml", "[il2_cl\nvalue = 3\n")]
    elif case == "bad_value":
        args += ["--params", _write(tmp_path / "v.toml", params.to_toml().replace("value = 10.0", "value = 1e9"))]
    elif case == "bad_events":
        args += ["--events", _write(tmp_path / "e.csv", "ID,TIME,AMT,CMT,EVID\n1,0,1e6,1,1\n1,1,lots,1,1\n")]
    elif case == "missing_events":
        args += ["--events", tmp_path / "none.csv"]
    elif case == "two_ids":
        args += ["--events", _write(tmp_path / "e2.csv", "ID,TIME,AMT,CMT,EVID\n1,0,1e6,1,1\n2,0,1e6,1,1\n")]
    elif case == "bad_weeks":
        args[-1] = -3
    elif case == "nan_weeks":
        args[-1] = "nan"
    elif case == "inf_weeks":
        args[-1] = "inf"
    elif case == "bad_step":
        args += ["--step-day", 0]
    elif case == "tiny_step":
        args += ["--step-day", 1e-9]
    elif case == "bad_rtol":
        args += ["--rtol", 2]
    code, stdout, err = run_cli(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tregpd simulate: error: ")
    assert fragment in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_output_path_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    """--out pointing at an existing file used to end in a FileExistsError traceback."""
    occupied = tmp_path / "occupied"
    occupied.write_text("keep me")
    code, _, err = run_cli(["simulate", "--weeks", 1, "--step-day", 7, "--out", occupied], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "occupied" in err and err.startswith("tregpd simulate: error: ")
    assert occupied.read_text() == "keep me"


@pytest.mark.slow
@pytest.mark.skipif(NO_JIT, reason="subprocess startup plus pure-Python kernels")
def test_console_script_subprocess(tmp_path):
    """The installed console entry point: bad file -> exit 2, one stderr line, no traceback."""
    exe = Path(sys.executable).parent / "tregpd"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "tregpd.cli"]
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    proc = subprocess.run(cmd + ["simulate", "--params", str(bad), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "not valid TOML" in proc.stderr


def test_help_and_no_command(capsys):
    assert main([]) == 1
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--method", "euler"])
    assert exc.value.code == 2


def test_interrupt_exits_130_and_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    """Ctrl-C while the figure is being written: exit 130, one line that says what is left, and nothing of
    the run (the run is staged as a whole, see tests/test_run_atomic.py)."""
    import tregpd.io as tio

    def interrupted_figure(path, fig, **kw):
        def boom(src, dst):
            raise KeyboardInterrupt
        monkeypatch.setattr(os, "replace", boom)  # the rename of the figure's temp file is interrupted
        return original(path, fig, **kw)

    original = tio.atomic_save_figure
    monkeypatch.setattr(tio, "atomic_save_figure", interrupted_figure)
    out = tmp_path / "o"
    code, _, err = run_cli(["simulate", "--weeks", 1, "--step-day", 7, "--out", out], capsys)
    monkeypatch.undo()
    assert code == 130
    assert err.strip() == (f"tregpd simulate: interrupted; {str(out)!r} was not created (nothing of the "
                           f"interrupted run was kept there)")
    assert not out.exists()  # no CSV without its figure, no .tmp left behind


HEAVY = ("numba", "numpy", "pandas", "matplotlib", "scipy", "lmfit", "dask", "pyarrow")


@pytest.mark.parametrize("argv", [["--help"], ["simulate", "--help"], ["scenarios", "run", "--help"],
                                  ["simulate", "--no-such-flag"], ["--version"]])
def test_parser_imports_nothing_heavy(argv):
    """``tregpd --help``, ``--version`` and argument errors build the parser only: no numba, numpy, pandas,
    matplotlib, scipy, lmfit, dask or pyarrow is imported (that is what makes them answer in well under 0.3 s)."""
    code = (
        "import sys, tregpd.cli\n"
        "parser = tregpd.cli.build_parser()\n"
        "try:\n"
        f"    parser.parse_args({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
        "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stderr


def test_package_import_is_lazy_but_complete():
    """``import tregpd`` is light; the public names still resolve (to the same objects as the submodules')."""
    code = (
        "import sys, tregpd, tregpd.model, tregpd.fitting, tregpd.scenarios\n"
        "assert 'numba' not in sys.modules and 'numpy' not in sys.modules\n"
        "import tregpd.model.simulate as S\n"          # importing the submodule keeps the exported function
        "from tregpd.model import simulate, kernels\n"
        "from tregpd.model.simulate import simulate_population\n"
        "assert callable(simulate) and simulate is tregpd.simulate and simulate is S\n"
        "assert tregpd.model.simulate_population is simulate_population\n"
        "for pkg in (tregpd, tregpd.model, tregpd.fitting, tregpd.scenarios):\n"
        "    missing = [n for n in pkg.__all__ if not hasattr(pkg, n)]\n"
        "    assert not missing, (pkg.__name__, missing)\n"
        "    assert set(pkg.__all__) <= set(dir(pkg))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_trajectory_csv_matches_the_frame_writer(tmp_path):
    """``tregpd simulate`` writes its CSV without pandas; the bytes equal the pandas writer's on to_frame()."""
    from tregpd.model import default_parameters, sample_population, simulate, simulate_population
    from tregpd.model.cli import trajectory_csv
    from tregpd.io import atomic_write_frame
    prov = {"command": "x", "seed": 3, "list": [1.5, "a"]}
    one = simulate(default_parameters(), reference_regimen(6), t_end_day=42.0, output_step_day=0.5)
    theta = sample_population(default_parameters(), 5, seed=3)
    many = simulate_population(theta, reference_regimen(6), t_out=np.linspace(0.0, 42.0, 13))
    many.status[1] = 1                                          # a failed patient is left out by both
    many.values[2, 3, 0] = np.nan                               # NaN: an empty field
    for res in (one, many):
        ref = atomic_write_frame(tmp_path / "ref.csv", res.to_frame(), prov).read_text()
        assert trajectory_csv(res, prov) == ref
