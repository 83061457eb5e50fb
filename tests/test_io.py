"""Atomic output writing and provenance: an interrupted write leaves the old file intact and no temp file;
outputs carry provenance; a rerun with the same seed gives bit-identical files (apart from the timestamp)."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pandas as pd
import pytest

from tregpd.model import reference_regimen, sample_population, simulate, simulate_population
from tregpd.io import (atomic_save_figure, atomic_write_bytes, atomic_write_frame, atomic_write_json,
                             atomic_write_text, provenance)


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_replaces_content(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert _listing(path.parent) == ["a.txt"]


def test_interrupted_replace_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "result.csv"
    path.write_text("old content\n")

    def boom(src, dst):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C right before the rename

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "new content that must not appear\n")
    monkeypatch.undo()
    assert path.read_text() == "old content\n"
    assert _listing(tmp_path) == ["result.csv"]


def test_interrupted_write_during_data(tmp_path, monkeypatch):
    """Failure while writing bytes (disk full) — old file intact, temp removed."""
    path = tmp_path / "x.json"
    atomic_write_json(path, {"a": 1})
    real_fsync = os.fsync

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_json(path, {"a": 2})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert json.loads(path.read_text()) == {"a": 1}
    assert _listing(tmp_path) == ["x.json"]


def test_frame_whose_serialisation_fails_writes_nothing(tmp_path, monkeypatch):
    path = tmp_path / "traj.csv"
    atomic_write_frame(path, pd.DataFrame({"a": [1, 2]}))
    before = path.read_bytes()

    class Exploding(pd.DataFrame):
        def to_csv(self, *args, **kwargs):
            args[0].write("half,a,row")  # partial output into the buffer, then an error
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        atomic_write_frame(path, Exploding({"a": [3]}))
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["traj.csv"]


def test_csv_with_provenance_reads_back(tmp_path, params):
    res = simulate(params, reference_regimen(), t_out=[0, 42, 84, 168])
    prov = res.provenance(command="test")
    path = tmp_path / "t.csv"
    atomic_write_frame(path, res.to_frame(), prov)
    text = path.read_text()
    comments = [ln for ln in text.splitlines() if ln.startswith("#")]
    assert any(ln.startswith("# tregpd_version: ") for ln in comments)
    assert any(ln.startswith("# regimen: ") and "shanxi_reference" in ln for ln in comments)
    assert any(ln.startswith("# parameters: ") for ln in comments)
    back = pd.read_csv(path, comment="#")
    frame = res.to_frame()
    assert list(back.columns) == list(frame.columns)
    np.testing.assert_array_equal(back["value"].to_numpy(), frame["value"].to_numpy())  # repr round trip
    # every provenance line is one JSON value
    for ln in comments:
        json.loads(ln.split(": ", 1)[1])


def test_parquet_carries_provenance(tmp_path):
    import pyarrow.parquet as pq
    frame = pd.DataFrame({"x": [1.0, 2.5]})
    path = atomic_write_frame(tmp_path / "f.parquet", frame, {"seed": 3, "arr": np.arange(2)})
    meta = json.loads(pq.read_schema(path).metadata[b"tregpd"])
    assert meta == {"seed": 3, "arr": [0, 1]}
    pd.testing.assert_frame_equal(pd.read_parquet(path), frame)


def test_figure_saved_atomically(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    path = atomic_save_figure(tmp_path / "f.png", fig)
    plt.close(fig)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _listing(tmp_path) == ["f.png"]


def test_provenance_record(params):
    reg = reference_regimen()
    rec = provenance(params, reg, 42, custom=np.float64(1.5))
    for key in ("tregpd_version", "created_utc", "python", "numpy", "numba", "parameters", "regimen", "seed"):
        assert key in rec
    assert rec["seed"] == 42 and rec["regimen"]["name"] == "shanxi_reference"
    json.dumps(rec, default=float)


@pytest.mark.slow
def test_rerun_with_same_seed_is_bit_identical(tmp_path, params, reference):
    """Same seed -> identical population and identical output file bytes (timestamp excluded)."""
    def run(folder):
        theta = sample_population(params, n=40, seed=11)
        pop = simulate_population(theta, reference, t_out=[0, 42, 84, 168], parameters=params, seed=11)
        prov = pop.provenance()
        prov.pop("created_utc")
        return atomic_write_frame(folder / "pop.csv", pop.to_frame(), prov).read_bytes()

    a = run(tmp_path / "a")
    b = run(tmp_path / "b")
    assert a == b
    theta_other = sample_population(params, n=40, seed=12)
    assert not np.array_equal(theta_other, sample_population(params, n=40, seed=11))


def test_written_files_get_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write_bytes(tmp_path / "perm.bin", b"x")
    finally:
        os.umask(old)
    assert (p.stat().st_mode & 0o777) == 0o644
