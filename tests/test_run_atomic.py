"""A run is atomic as a whole (tregpd.rundir): staging folder, MANIFEST.json written last, `tregpd verify`.

References are independent of the code under test: sha256 and sizes recomputed with hashlib/os, the previous
run's bytes compared file by file, the folder listing compared with the set of files each run wrote.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import signal
from pathlib import Path

import pytest

from tregpd import rundir
from tregpd.cli import main
from tregpd.rundir import JOURNAL, MANIFEST, InPlaceRun, RunDir, verify_run

LIB = Path(__file__).resolve().parents[1] / "scenarios" / "library"


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _snapshot(folder: Path) -> dict:
    """Every file under folder (hidden ones too) -> its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _write_run(out, files: dict, **kw) -> RunDir:
    with RunDir(out, "test", **kw) as run:
        for rel, data in files.items():
            p = run.path / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
    return run


# ------------------------------------------------------------------------------------------- manifest
def test_commit_moves_files_and_writes_a_true_manifest_last(tmp_path, monkeypatch):
    out = tmp_path / "run"
    order = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (order.append(Path(b).name), real_replace(a, b))[1])
    files = {"a.csv": b"x,y\n1,2\n", "sub/b.png": b"\x89PNG" + bytes(range(256)) * 3, "c.json": b"{}"}
    run = _write_run(out, files)
    # renames: the journal, the three files, then the manifest, last
    assert order == [JOURNAL, "a.csv", "c.json", "b.png", MANIFEST]
    man = json.loads((out / MANIFEST).read_text())
    assert man["run_id"] == run.run_id and man["command"] == "test" and man["tregpd_version"]
    assert {e["path"]: (e["bytes"], e["sha256"]) for e in man["files"]} == {
        rel: (len(data), hashlib.sha256(data).hexdigest()) for rel, data in files.items()}
    assert sorted(_snapshot(out)) == sorted([*files, MANIFEST])   # no staging folder, no journal left
    assert verify_run(out).status == "complete"


def test_rerun_never_leaves_a_mix_and_keeps_unrelated_files(tmp_path):
    out = tmp_path / "run"
    _write_run(out, {"trajectory.csv": b"old", "trajectory.png": b"old png", "provenance.json": b"{}"})
    (out / "notes.txt").write_text("mine")                        # not part of any run: left alone
    _write_run(out, {"trajectory.csv": b"new", "provenance.json": b"{1}"})
    assert sorted(os.listdir(out)) == [MANIFEST, "notes.txt", "provenance.json", "trajectory.csv"]
    assert (out / "trajectory.csv").read_bytes() == b"new"
    check = verify_run(out)
    assert check.status == "mixed" and check.extra == ["notes.txt"]


def test_owned_patterns_clear_a_folder_written_before_manifests(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("trajectory.csv", "trajectory.png", "provenance.json", "keep.txt"):
        (out / name).write_text("from an old version")
    _write_run(out, {"trajectory.csv": b"new"}, owns=("trajectory.*", "provenance.json"))
    assert sorted(os.listdir(out)) == [MANIFEST, "keep.txt", "trajectory.csv"]


@pytest.mark.parametrize("failure", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failed_or_interrupted_run_keeps_the_previous_run(tmp_path, failure):
    out = tmp_path / "run"
    _write_run(out, {"a.csv": b"old a", "b.png": b"old b"})
    before = _snapshot(out)
    with pytest.raises(type(failure)):
        with RunDir(out, "test") as run:
            (run.path / "a.csv").write_bytes(b"new a")
            raise failure
    assert _snapshot(out) == before and verify_run(out).status == "complete"


def test_failed_first_run_leaves_no_folder_behind(tmp_path):
    out = tmp_path / "deep" / "er" / "run"
    with pytest.raises(RuntimeError):
        with RunDir(out, "test") as run:
            (run.path / "a.csv").write_bytes(b"a")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_inside_a_run_names_the_final_file_and_what_was_kept(tmp_path):
    out = tmp_path / "run"
    _write_run(out, {"a.csv": b"old"})
    before = _snapshot(out)
    with pytest.raises(rundir.RunError) as info:
        with RunDir(out, "test") as run:
            raise OSError(errno.ENOSPC, "No space left on device", str(run.path / "fig.png"))
    msg = str(info.value)
    assert "\n" not in msg and "No space left on device" in msg and str(out / "fig.png") in msg
    assert ".tregpd-stage" not in msg and "previous complete run" in msg
    assert _snapshot(out) == before


def test_commit_interrupted_by_a_crash_is_seen_and_repaired(tmp_path, monkeypatch):
    """A crash between the renames (simulated: the second rename fails) leaves the journal and no manifest:
    verify says incomplete; the next run removes every file the journal names."""
    out = tmp_path / "run"
    _write_run(out, {"a.csv": b"old a", "b.csv": b"old b", "c.png": b"old c"})
    real, calls = os.replace, []

    def crash(src, dst):
        calls.append(dst)
        if len(calls) == 3:    # 1: journal, 2: first new file, 3: second new file
            raise OSError(errno.EIO, "Input/output error", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        with RunDir(out, "test") as run:
            (run.path / "a.csv").write_bytes(b"new a")
            (run.path / "b.csv").write_bytes(b"new b")
    monkeypatch.undo()
    check = verify_run(out)
    assert check.status == "incomplete" and "commit was interrupted" in check.summary()
    code, text, _ = _cli(["verify", out])
    assert code == 1 and text.startswith("INCOMPLETE")
    _write_run(out, {"b.csv": b"newer b"})
    assert sorted(os.listdir(out)) == [MANIFEST, "b.csv"] and verify_run(out).ok


def test_signals_during_the_commit_are_held_until_it_is_done(tmp_path, monkeypatch):
    out = tmp_path / "run"

    def lock(folder):                          # Ctrl-C and a SIGTERM in the middle of the commit
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        return None

    monkeypatch.setattr(rundir, "_lock", lock)
    with pytest.raises(KeyboardInterrupt):
        _write_run(out, {"a.csv": b"a", "b.csv": b"b"})
    assert verify_run(out).status == "complete"    # the interrupt came after the run was whole


def test_folders_are_fsynced_after_the_renames(tmp_path, monkeypatch):
    out = tmp_path / "run"
    synced = []
    monkeypatch.setattr(rundir, "_fsync_dir", lambda d: synced.append(Path(d)))
    _write_run(out, {"a.csv": b"a", "sub/b.csv": b"b"})
    assert out / "sub" in synced and out in synced


def test_verify_tells_missing_modified_and_extra_files(tmp_path):
    out = tmp_path / "run"
    _write_run(out, {"a.csv": b"aaaa", "b.csv": b"bbbb"})
    assert _cli(["verify", out])[0] == 0
    (out / "a.csv").write_bytes(b"aaab")                    # same size, other content
    assert verify_run(out).status == "modified" and verify_run(out, check_hashes=False).ok
    (out / "a.csv").write_bytes(b"aaaa")
    (out / "b.csv").unlink()
    check = verify_run(out)
    assert check.status == "incomplete" and check.missing == ["b.csv"]
    (out / MANIFEST).unlink()
    assert verify_run(out).status == "no-manifest"
    assert verify_run(tmp_path / "nope").status == "missing"
    code, text, _ = _cli(["verify", out, tmp_path / "nope"])
    assert code == 1 and len(text.splitlines()) == 2


def test_in_place_run_covers_the_whole_folder(tmp_path):
    out = tmp_path / "all"
    first = InPlaceRun(out, "tregpd all", owns=("SUMMARY.md", "fit/*")).begin()
    (out / "fit").mkdir()
    (out / "fit" / "old.png").write_bytes(b"1")
    (out / "SUMMARY.md").write_text("one")
    first.finish()
    assert verify_run(out).ok
    second = InPlaceRun(out, "tregpd all", owns=("SUMMARY.md", "fit/*")).begin()
    assert not (out / MANIFEST).exists() and (out / JOURNAL).exists()   # incomplete while it runs
    assert verify_run(out).status == "incomplete"
    (out / "SUMMARY.md").write_text("two")       # rewritten; fit/old.png is not written by this run
    second.finish()
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [MANIFEST, "SUMMARY.md"]
    assert verify_run(out).ok


# ------------------------------------------------------------------------------------------- commands
def test_simulate_rerun_interrupted_or_disk_full_keeps_the_old_run(tmp_path, monkeypatch):
    import tregpd.io as tio
    out = tmp_path / "sim"
    assert _cli(["simulate", "--weeks", 1, "--step-day", 7, "--out", out])[0] == 0
    assert sorted(os.listdir(out)) == [MANIFEST, "provenance.json", "trajectory.csv", "trajectory.png"]
    assert verify_run(out).ok
    before = _snapshot(out)
    real = tio.atomic_write_bytes

    def full(path, data):
        if str(path).endswith(".png"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(tio, "atomic_write_bytes", full)
    code, _, err = _cli(["simulate", "--weeks", 2, "--step-day", 7, "--out", out])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert str(out / "trajectory.png") in err and "still holds the previous complete run" in err
    assert _snapshot(out) == before                      # not the new CSV beside the old PNG

    def interrupted(path, data):
        if str(path).endswith(".png"):
            raise KeyboardInterrupt
        return real(path, data)

    monkeypatch.setattr(tio, "atomic_write_bytes", interrupted)
    code, _, err = _cli(["simulate", "--weeks", 2, "--step-day", 7, "--out", out])
    assert code == 130 and f"{str(out)!r} is as it was before" in err
    assert _snapshot(out) == before


def _scenario(tmp_path, name, base="shanxi_reference.toml"):
    text = (LIB / base).read_text()
    import re
    text = re.sub(r'(?m)^name\s*=.*$', f'name = "{name}"', text, count=1)
    p = tmp_path / f"{name.strip() or 'x'}.toml".replace(" ", "_").replace("\n", "")
    p.write_text(text)
    return p


def test_scenario_batch_with_a_bad_second_name_leaves_nothing(tmp_path, monkeypatch):
    from tregpd.scenarios import runner
    good, bad = _scenario(tmp_path, "first"), _scenario(tmp_path, "bad name")
    monkeypatch.setattr(runner, "simulate_scenario", lambda *a, **k: pytest.fail("simulated before checking"))
    out = tmp_path / "out" / "batch"
    code, _, err = _cli(["scenarios", "run", good, bad, "--out", out, "--no-progress"])
    assert code == 2 and err.count("\n") == 1 and "name" in err
    assert not (tmp_path / "out").exists()


def test_sigint_in_a_scenario_batch_keeps_the_old_complete_run(tmp_path, monkeypatch):
    from tregpd.scenarios import runner
    files = [LIB / "shanxi_reference.toml", LIB / "il2_alone.toml"]
    opts = ["--population", 2, "--step-day", 7, "--no-progress", "--no-figures"]
    out = tmp_path / "batch"
    assert _cli(["scenarios", "run", *files, *opts, "--out", out])[0] == 0
    assert verify_run(out).ok
    before = _snapshot(out)
    real, calls = runner.run_scenario, []

    def second_interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:              # the first scenario's folder has been written (in the stage)
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(runner, "run_scenario", second_interrupted)
    code, _, err = _cli(["scenarios", "run", *files, "--population", 3, *opts[2:], "--out", out])
    assert code == 130 and "is as it was before" in err and "no partial output" not in err
    assert _snapshot(out) == before


def test_trial_and_fit_write_complete_runs(tmp_path):
    out = tmp_path / "trial"
    assert _cli(["trial", "--patients", 64, "--chunk", 32, "--weeks", 0, 2, "--no-plot", "--no-progress",
                 "--out", out])[0] == 0
    check = verify_run(out)
    assert check.ok and [e["path"] for e in check.manifest["files"]] == ["trial_summary.csv",
                                                                         "trial_summary.json"]
    assert check.manifest["command"] == "tregpd trial"


def test_tregpd_tells_an_input_from_an_incomplete_or_edited_run(tmp_path):
    """A parameter file read from a run folder: no note when whole; a one-line warning when the folder's
    commit was interrupted, or when the file was edited after the run."""
    from tregpd.model.parameters import default_parameters
    text = default_parameters().to_toml().encode()
    out = tmp_path / "fit"
    _write_run(out, {"fitted_parameters.toml": text})
    argv = ["simulate", "--weeks", 1, "--step-day", 7, "--params", out / "fitted_parameters.toml",
            "--out", tmp_path / "sim"]
    code, _, err = _cli(argv)
    assert code == 0 and "warning" not in err
    (out / "fitted_parameters.toml").write_bytes(text.replace(b"# ", b"#  ", 1) + b"\n")
    code, _, err = _cli(argv)
    assert code == 0 and err.count("\n") == 1
    assert err.startswith("tregpd simulate: warning: ") and "differs from its entry in MANIFEST.json" in err
    (out / JOURNAL).write_text(json.dumps({"old": [], "new": []}))
    code, _, err = _cli(argv)
    assert code == 0 and "was interrupted while its files were moved" in err


# ------------------------------------------------------------------------------------------- fuzz
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                     max_leaves=20)
_PATHS = st.sampled_from(["a.csv", "../escape", "/etc/passwd", "sub/../../x", "", ".", "link/victim",
                          "a\x00b", "sub\\x", "x" * 5000, "sub/b.csv"])


@settings(max_examples=60, deadline=None)
@given(raw=st.one_of(
    st.binary(max_size=300),
    _JSON.map(lambda v: json.dumps(v).encode()),
    st.lists(st.fixed_dictionaries({"path": _PATHS | st.text(max_size=10), "bytes": st.integers() | st.text(),
                                    "sha256": st.text(max_size=5)}), max_size=5).map(
        lambda files: json.dumps({"format": rundir.FORMAT, "run_id": "x", "files": files}).encode()),
    st.integers(100, 3000).map(lambda d: b"[" * d + b"]" * d),
    st.just("\ufeff{}".encode()),
))
def test_manifest_and_journal_readers_survive_any_content(tmp_path_factory, raw):
    """Whatever MANIFEST.json and the journal hold (garbage, deep nesting, paths escaping the folder or
    going through a symlink), verify answers with a status and a rerun deletes nothing outside the folder."""
    base = tmp_path_factory.mktemp("fz")
    outside = base / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep")
    (base / "passwd").write_text("keep")
    out = base / "run"
    out.mkdir()
    (out / "link").symlink_to(outside, target_is_directory=True)
    (out / "a.csv").write_text("a")
    (out / MANIFEST).write_bytes(raw)
    (out / JOURNAL).write_bytes(raw)
    check = verify_run(out)
    assert check.status in ("complete", "mixed", "modified", "incomplete", "no-manifest")
    assert "\n" not in check.summary()
    _write_run(out, {"b.csv": b"b"}, owns=("*.csv",))
    assert (outside / "victim").read_text() == "keep" and (base / "passwd").read_text() == "keep"
    assert (out / "link").is_symlink() and verify_run(out).status in ("complete", "mixed")


@settings(max_examples=200, deadline=None)
@given(address=st.one_of(st.text(max_size=60),
                         st.builds(lambda s, h, p: f"{s}://{h}:{p}",
                                   st.sampled_from(["tcp", "tls", "foo", "", "TCP", "ws"]),
                                   st.sampled_from(["localhost", "[::1]", "[::1", "::1", "", "h h", "1.2.3.4"]),
                                   st.one_of(st.integers(-5, 70000).map(str), st.text(max_size=6)))))
def test_scheduler_address_check_fuzz(address):
    from tregpd.scenarios.backends import BackendError, check_scheduler_address
    try:
        assert check_scheduler_address(address) == address
    except BackendError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 800


def test_real_sigint_during_a_scenario_batch_leaves_one_whole_run(tmp_path):
    """A real SIGINT to `tregpd scenarios run` in a subprocess: the folder holds the old complete run or the
    new complete run, never a mix, and the message says which."""
    import subprocess
    import sys
    import time
    files = [str(LIB / f) for f in ("shanxi_reference.toml", "il2_alone.toml", "duration_12wk.toml")]
    out = tmp_path / "batch"
    assert _cli(["scenarios", "run", *files, "--population", 2, "--step-day", 7, "--no-progress",
                 "--no-figures", "--out", out])[0] == 0
    before = _snapshot(out)
    proc = subprocess.Popen([sys.executable, "-m", "tregpd.cli", "scenarios", "run", *files, "--population",
                             "1000", "--step-day", "1", "--no-progress", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(4.0)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in err
    check = verify_run(out)
    assert check.ok, check.summary()
    if proc.returncode == 130 and "is as it was before" in err:
        assert _snapshot(out) == before
    else:  # finished (or was interrupted after the commit): the new run, whole
        assert proc.returncode == 0 or "complete before the interrupt" in err, (proc.returncode, err)
        assert check.manifest["argv"][-1] == str(out) and "1000" in check.manifest["argv"]


def test_main_job_failing_midway_leaves_out_marked_incomplete(tmp_path, monkeypatch):
    """`tregpd all` failing in a step (here: a full disk on the reference figure): the step keeps nothing,
    out/ has no MANIFEST.json (verify: incomplete), and the one-line message says both."""
    import tregpd.fitting.calibrate as cal
    out = tmp_path / "out"
    InPlaceRun(out, "tregpd all").begin().finish()            # a previous complete (empty) main job
    assert verify_run(out).ok

    def stop(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "calibration" / "report.md"))

    monkeypatch.setattr(cal, "run_calibration", stop)
    code, _, err = _cli(["all", "--quick", "--out", out])
    assert code == 2 and err.count("\n") == 1 and "report.md" in err
    assert f"{str(out)!r} is marked incomplete" in err
    assert verify_run(out).status == "incomplete"


def test_a_symlink_planted_where_a_run_folder_goes_is_replaced_not_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "run"
    out.mkdir()
    (out / "scenario").symlink_to(elsewhere, target_is_directory=True)
    _write_run(out, {"scenario/summary.csv": b"s"})
    assert list(elsewhere.iterdir()) == []
    assert not (out / "scenario").is_symlink() and (out / "scenario" / "summary.csv").read_bytes() == b"s"
    assert verify_run(out).ok
