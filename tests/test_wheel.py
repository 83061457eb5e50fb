"""The wheel: builds offline without setuptools warnings, installs into a fresh virtual environment and runs a
bundled scenario outside the source tree (the data folders - parameters, seed cohort, scenario library - are in it).

Nothing is downloaded: the wheel is built with ``--no-build-isolation`` (the venv's setuptools, >= 77, see the
Makefile) and installed with ``--no-index --no-deps``; the new environment finds numpy, numba, pandas, ... through
a ``.pth`` file naming this environment's site-packages (the editable install of the source tree is not visible
there: ``.pth`` files in an added folder are not executed).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# not about the project's configuration: pip's notes about unreachable index folders, and distutils saying that
# wheels are not byte-compiled at build time
BENIGN = re.compile(r"^(WARNING: Location '.*' is ignored|warning: (build_py|install_lib): byte-compiling is "
                    r"disabled, skipping\.)")


def _setuptools_version() -> tuple[int, ...]:
    try:
        import setuptools
    except ImportError:
        return (0,)
    return tuple(int(x) for x in re.findall(r"\d+", setuptools.__version__)[:2])


def _sources() -> list[Path]:
    """What the wheel is built from: pyproject.toml, README.md, the top-level modules and the folders of the
    packages listed in pyproject.toml (tests/ and benchmarks/ are not part of it)."""
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = config["tool"]["setuptools"]["packages"]
    folders = {name.split(".")[1] for name in packages if name.count(".") >= 1}
    return [ROOT / "pyproject.toml", ROOT / "README.md", *sorted(ROOT.glob("*.py")),
            *sorted(ROOT / f for f in folders)]


def _run(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{cmd}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.slow
def test_wheel_builds_clean_installs_and_runs_outside_the_tree(tmp_path):
    if _setuptools_version() < (77,):
        pytest.fail("this environment needs setuptools >= 77 to build the wheel offline (make .venv/.installed "
                    "installs it)")
    # build from a copy of the sources, so no build/ folder is left in the work tree
    src = tmp_path / "src"
    src.mkdir()
    for p in _sources():
        if p.is_dir():
            shutil.copytree(p, src / p.name, ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
        else:
            shutil.copy2(p, src / p.name)
    wheels = tmp_path / "wheels"
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-v",
                  "-w", wheels, src])
    log = (build.stdout + build.stderr).splitlines()
    noisy = [ln for ln in log if re.search(r"(?i)warn|deprecat", ln) and not BENIGN.match(ln.strip())]
    assert not noisy, "build warnings:\n" + "\n".join(noisy)
    (wheel,) = wheels.glob("tregpd-*.whl")

    import zipfile
    names = set(zipfile.ZipFile(wheel).namelist())
    for data in ("tregpd/model/data/parameters.toml", "tregpd/fitting/data/sat0261_medians.csv",
                 "tregpd/scenarios/library/shanxi_reference.toml"):
        assert data in names, data
    assert not any(n.startswith(("tregpd/tests/", "tregpd/benchmarks/")) for n in names)

    # a fresh environment with the wheel; dependencies from this environment, nothing downloaded
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv])
    py = venv / "bin" / "python"
    site = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "_tregpd_test_deps.pth").write_text("\n".join(sorted(here)) + "\n")
    _run([py, "-m", "pip", "install", "--no-deps", "--no-index", wheel])

    work = tmp_path / "work"                # cwd outside the source tree
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NUMBA_CACHE_DIR")}
    where = _run([py, "-c", "import tregpd, tregpd.scenarios as s; print(tregpd.__file__); "
                            "print(s.library_dir() / 'shanxi_reference.toml')"], cwd=work, env=env).stdout.split()
    assert Path(where[0]).is_relative_to(venv), where      # the installed copy, not the work tree
    scenario = Path(where[1])
    assert scenario.is_file()

    tregpd = venv / "bin" / "tregpd"
    _run([tregpd, "--help"], cwd=work, env=env)
    run = _run([tregpd, "scenarios", "run", scenario, "--population", "3", "--step-day", "7", "--out", "out",
                "--no-progress"], cwd=work, env=env)
    assert "| shanxi_reference | – | 24 (24.0) |" in run.stdout
    for name in ("comparison.csv", "comparison.md", "summary_all.csv", "comparison.png",
                 "shanxi_reference/trajectories.csv", "shanxi_reference/trajectories.parquet",
                 "shanxi_reference/summary.csv", "shanxi_reference/trajectories.png",
                 "shanxi_reference/provenance.json"):
        assert (work / "out" / name).is_file(), name
