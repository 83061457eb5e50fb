"""--scheduler addresses and deadlines, worker processes reaped, Dask's files kept inside --out.

The failures use a local socket server thread (a listener that accepts and never answers, a peer sending
garbage); no real Dask cluster is needed for them. The reaping and temporary-folder tests run ``tregpd trial
--workers 2`` in a subprocess and look at its process tree and at an empty TMPDIR.
"""
from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tregpd.cli import main
from tregpd.scenarios import backends
from tregpd.scenarios.backends import BackendError, DaskBackend, check_scheduler_address, probe_scheduler


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def _server(behaviour: str):
    """A loopback TCP server thread: 'silent' accepts and never answers; 'garbage' answers every connection
    with bytes that are not the Dask protocol. Stops by itself when the block ends (bounded in time)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    stop = threading.Event()
    conns = []

    def serve():
        t_end = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < t_end:
            try:
                c, _ = srv.accept()
            except (socket.timeout, OSError):
                continue
            conns.append(c)
            if behaviour == "garbage":
                try:
                    c.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" + bytes(range(256)) * 4)
                except OSError:
                    pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield f"tcp://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        t.join(5)
        for c in conns:
            c.close()
        srv.close()


# ------------------------------------------------------------------------------------------- addresses
@pytest.mark.parametrize("address, fragment", [
    ("tcp://localhost:notaport", "not valid"),
    ("foo://", "unknown protocol"),
    ("tcp://[::1:8786", "Invalid IPv6"),
    ("localhost:8786", "no protocol"),
    ("tcp://:8786", "no host"),
    ("tcp://127.0.0.1", "no port"),
    ("tcp://127.0.0.1:70000", "not valid"),
    ("tcp://127.0.0.1:8786/x?y", "more than a host and port"),
    ("tcp://127.0.0.1:8786\n", "control characters"),
])
def test_bad_scheduler_addresses_refused_before_any_work(tmp_path, monkeypatch, address, fragment):
    import tregpd.scenarios.trial as trial
    monkeypatch.setattr(trial, "make_plan", lambda *a, **k: pytest.fail("work started before the check"))
    for cmd in (["trial", "--patients", "10"], ["sensitivity", "--method", "local"]):
        code, _, err = _cli(cmd + ["--scheduler", address, "--out", tmp_path / "o"])
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert fragment in err and "--scheduler address" in err
    assert not (tmp_path / "o").exists()


def test_good_scheduler_addresses_pass_the_check():
    for a in ("tcp://127.0.0.1:8786", "tcp://[::1]:8786", "tls://sched.example:8786", "TCP://host:1"):
        assert check_scheduler_address(a) == a


# ------------------------------------------------------------------------------------------- deadline
@pytest.mark.parametrize("behaviour", ["silent", "garbage"])
def test_handshake_within_the_deadline(behaviour):
    with _server(behaviour) as address:
        t0 = time.monotonic()
        with pytest.raises(BackendError) as info:
            DaskBackend(scheduler=address, connect_deadline_s=1.5)
        elapsed = time.monotonic() - t0
    msg = str(info.value)
    assert elapsed < 1.5 + 3.0, elapsed         # the deadline covers connect + handshake + first answer
    assert "\n" not in msg and address in msg
    assert ("within 1.5 s" in msg) or ("not the Dask protocol" in msg)


def test_silent_scheduler_through_the_cli_is_one_line_within_the_deadline(tmp_path, monkeypatch):
    monkeypatch.setattr(backends, "SCHEDULER_DEADLINE_S", 1.0)
    with _server("silent") as address:
        t0 = time.monotonic()
        code, _, err = _cli(["trial", "--patients", "10", "--no-progress", "--scheduler", address,
                             "--out", tmp_path / "o"])
        elapsed = time.monotonic() - t0
    assert code == 2 and err.count("\n") == 1 and "did not complete the connection within 1 s" in err
    assert elapsed < 1.0 + 10.0  # parameters and plan are built first (a few seconds under load)
    assert not (tmp_path / "o").exists()


def test_probe_answers_from_a_real_scheduler():
    """The probe's request is the real Dask protocol: a LocalCluster's scheduler answers it."""
    with DaskBackend(n_workers=1) as local:
        info = probe_scheduler(local.address, 20.0)
        assert info["type"] == "Scheduler" and info["address"] == local.address
        with DaskBackend(scheduler=local.address, connect_deadline_s=20.0) as remote:
            assert remote.n_workers == 1 and remote.describe()["local_cluster"] is False


# ------------------------------------------------------------------------------------------- processes
def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
    found, stack = set(), [pid]
    while stack:
        for c in children.get(stack.pop(), []):
            found.add(c)
            stack.append(c)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to list the process tree")
@pytest.mark.parametrize("when", ["starting", "running"])
def test_no_child_survives_sigterm_during_trial_workers(tmp_path, when):
    """SIGTERM while the local cluster starts, or while chunks run: exit 130 with one line, every worker
    process gone, nothing left under --out."""
    out = tmp_path / "trial"
    env = os.environ | {"TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "tregpd.cli", "trial", "--patients", "3000000", "--chunk",
                             "2048", "--workers", "2", "--no-progress", "--no-plot", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen: set[int] = set()
    try:
        if when == "running":
            line = proc.stdout.readline()
            assert line.startswith("trial:"), line + proc.stderr.read()
            time.sleep(1.0)
            seen |= _descendants(proc.pid)
        else:
            t0 = time.monotonic()
            while not seen and time.monotonic() - t0 < 60 and proc.poll() is None:
                seen |= _descendants(proc.pid)   # the first worker process is being started
                time.sleep(0.02)
            time.sleep(0.3)
            seen |= _descendants(proc.pid)
        assert seen, "no worker process was seen"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in seen) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [p for p in seen if _alive(p)]
    for p in survivors:  # pragma: no cover - only on failure; these are this test's own processes
        os.kill(p, signal.SIGKILL)
    assert not survivors
    assert proc.returncode == 130, err
    assert err.count("\n") == 1 and "Traceback" not in err and "interrupted" in err, err
    assert not out.exists()
    assert os.listdir(tmp_path / "tmp") == []


def test_dask_run_writes_nothing_under_the_system_temporary_folder(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "trial"
    env = os.environ | {"TMPDIR": str(tmp)}
    res = subprocess.run([sys.executable, "-m", "tregpd.cli", "trial", "--patients", "3000", "--chunk", "1024",
                          "--workers", "2", "--no-progress", "--no-plot", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert os.listdir(tmp) == []
    assert sorted(os.listdir(out)) == ["MANIFEST.json", "trial_summary.csv", "trial_summary.json"]


def _sleep(seconds):
    time.sleep(seconds)
    return seconds


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_process_pool_reaps_its_workers_at_once_on_error_or_interrupt(failure):
    """`with ProcessPoolExecutor()` waits for running jobs when the body fails (minutes for a profile);
    backends.process_pool cancels, terminates and reaps its workers at once, and leaves other children be."""
    import multiprocessing
    other = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(30,))
    other.start()
    try:
        time.sleep(0.3)
        pre = _descendants(os.getpid())               # `other` and helpers (e.g. the resource tracker)
        t0 = time.monotonic()
        with pytest.raises(failure):
            with backends.process_pool(2) as ex:
                futures = [ex.submit(_sleep, 60) for _ in range(4)]
                time.sleep(0.5)
                workers = _descendants(os.getpid()) - pre
                raise failure()
        assert time.monotonic() - t0 < 20
        assert workers and not [p for p in workers if _alive(p)]
        assert other.is_alive()                       # not ours to end
        # a job already handed to the pool's call queue (one beyond the workers) cannot be cancelled; it ends
        # as failed (broken pool) once its worker is gone, which the pool's manager thread settles shortly
        import concurrent.futures as cf
        cf.wait(futures[2:], timeout=10)
        assert all(f.cancelled() or f.done() for f in futures[2:])
    finally:
        other.terminate()
        other.join(5)
