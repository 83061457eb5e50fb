"""A run is atomic as a whole: staged output folders, a manifest written last, and a reader that checks it.

Every file tregpd writes is atomic on its own (:mod:`tregpd.io`); this module makes the *set* of files of a
run atomic.

* :class:`RunDir` (a context manager) gives a command a staging folder ``OUT/.tregpd-stage-<run id>/`` to
  write into. Leaving the ``with`` block normally *commits*: the files of the previous run in ``OUT`` (those
  its manifest lists, and those matching the command's ``owns`` patterns) are removed, the new files are
  renamed into place, the folders fsynced, and ``OUT/MANIFEST.json`` is written **last**. Leaving it with an
  error or an interrupt (SIGINT, SIGTERM) removes the staging folder: ``OUT`` keeps the previous complete run,
  untouched. SIGINT/SIGTERM arriving during the commit are held until it is done (then raised).
* A commit interrupted by a crash (SIGKILL, power loss) leaves ``OUT/.tregpd-commit.json`` (the journal) and
  no ``MANIFEST.json``: :func:`verify_run` reports the folder as incomplete and the next run into ``OUT``
  removes every file the journal names.
* :class:`InPlaceRun` covers a folder whose steps write in place with one manifest (``tregpd all``, over its
  whole ``out/``).
* :func:`verify_run` (``tregpd verify DIR``) tells a complete run from a partial, mixed or modified one.

The manifest (JSON) holds: ``format``, ``run_id``, ``command``, ``argv``, ``tregpd_version``, ``created_utc``
and ``files`` (one entry per file: ``path`` relative to ``OUT`` with ``/`` separators, ``bytes``,
``sha256``). Hidden staging folders and the journal are never listed.

Nothing heavy is imported here (the CLI parser imports :func:`register`).
"""
from __future__ import annotations

import datetime as _dt
import errno
import fnmatch
import hashlib
import json
import os
import shutil
import signal
import stat
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tregpd.errors import TregpdError

MANIFEST = "MANIFEST.json"
JOURNAL = ".tregpd-commit.json"
STAGE_PREFIX = ".tregpd-stage-"
SCRATCH = ".scratch"
FORMAT = "tregpd-run-manifest/1"
#: a manifest larger than this is not read as one (a run lists at most a few thousand files)
MAX_MANIFEST_BYTES = 32 * 1024 * 1024

#: what happened to the runs of this process, newest last: (out folder, "active" | "committed" | "discarded",
#: whether ``out`` existed before); read by :func:`interrupt_message`
_EVENTS: list[list] = []


class RunError(TregpdError):
    """A run folder could not be committed, or is not a complete run."""


def new_run_id() -> str:
    """A run id: UTC time and 8 random hex digits, e.g. ``20261202T072200Z-1a2b3c4d``."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{now}-{uuid.uuid4().hex[:8]}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(folder: Path) -> None:
    from tregpd.io import fsync_dir
    fsync_dir(folder)


def _is_hidden_work(rel: str) -> bool:
    parts = rel.split("/")
    return any(p.startswith(STAGE_PREFIX) for p in parts) or parts[-1] == JOURNAL


def _walk_files(root: Path) -> list[str]:
    """Every file under ``root`` (relative, ``/``-separated, sorted), without staging folders and journal;
    symlinks are listed as files (never followed)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        dirnames[:] = [d for d in dirnames if not d.startswith(STAGE_PREFIX)
                       and not os.path.islink(os.path.join(dirpath, d))]
        for f in filenames:
            rel = rel_dir + f
            if not _is_hidden_work(rel):
                found.append(rel)
        for d in os.listdir(dirpath):  # symlinks to folders count as files of the folder
            full = os.path.join(dirpath, d)
            if os.path.islink(full) and os.path.isdir(full) and not _is_hidden_work(rel_dir + d):
                found.append(rel_dir + d)
    return sorted(set(found))


def read_manifest(folder: Path) -> dict | None:
    """The manifest of ``folder`` (None when there is none or it cannot be read as one)."""
    p = Path(folder) / MANIFEST
    try:
        if not os.path.isfile(p) or os.path.getsize(p) > MAX_MANIFEST_BYTES:
            return None
        with open(p, "rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
        from tregpd.safeio import decode_text
        data = json.loads(decode_text(raw, str(p), ValueError))
    except (OSError, ValueError, RecursionError):  # unreadable, not UTF-8 / JSON, nested too deeply
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), list):
        return None
    return data


def _manifest_paths(man: dict | None) -> set[str]:
    if not man:
        return set()
    return {e["path"] for e in man["files"] if isinstance(e, dict) and isinstance(e.get("path"), str)}


def _read_journal(folder: Path) -> set[str]:
    p = Path(folder) / JOURNAL
    try:
        if not os.path.isfile(p) or os.path.getsize(p) > MAX_MANIFEST_BYTES:
            return set()
        data = json.loads(p.read_bytes().decode("utf-8"))
        return {r for r in list(data.get("old", [])) + list(data.get("new", [])) if isinstance(r, str)}
    except (OSError, ValueError, AttributeError, TypeError, RecursionError):
        return set()


def _safe_rel(rel: str) -> bool:
    """A relative path that stays inside the folder (no absolute path, no ``..``, no NUL, not too long)."""
    if not isinstance(rel, str) or not rel or len(rel) > 4096 or "\x00" in rel or "\\" in rel:
        return False
    parts = rel.split("/")
    return not rel.startswith("/") and ".." not in parts and "" not in parts and "." not in parts


def manifest_record(root: Path, files: list[str], run_id: str, command: str) -> dict:
    """The manifest of ``files`` (relative to ``root``): sizes and sha256 read from disk now."""
    from tregpd import __version__
    entries = []
    for rel in files:
        p = root / rel
        entries.append({"path": rel, "bytes": os.lstat(p).st_size, "sha256": sha256_file(p)})
    return {"format": FORMAT, "run_id": run_id, "command": command, "argv": list(sys.argv[1:]),
            "tregpd_version": __version__,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "files": entries}


def write_manifest(folder: Path, record: dict) -> Path:
    from tregpd.io import atomic_write_json
    return atomic_write_json(Path(folder) / MANIFEST, record)


class _HoldSignals:
    """Hold SIGINT and SIGTERM while a short critical section runs; re-deliver them (as KeyboardInterrupt) at
    the end. Only in the main thread (elsewhere signals are not delivered to Python code anyway)."""

    def __init__(self):
        self.caught: list[int] = []
        self.previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                try:
                    self.previous[s] = signal.signal(s, lambda signum, frame: self.caught.append(signum))
                except (ValueError, OSError):  # pragma: no cover
                    pass
        return self

    def __exit__(self, *exc):
        for s, h in self.previous.items():
            signal.signal(s, h)
        if self.caught and exc[0] is None:
            raise KeyboardInterrupt(f"signal {self.caught[0]}")
        return False


def hold_signals() -> _HoldSignals:
    """A context manager holding SIGINT and SIGTERM during a short critical section (committing a run,
    starting a local cluster); a signal received meanwhile is raised as KeyboardInterrupt at its end."""
    return _HoldSignals()


def _lock(folder: Path):
    """An exclusive lock on the folder itself (flock on its descriptor; no lock file). Returns the fd."""
    try:
        import fcntl
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (ImportError, OSError):  # pragma: no cover - not POSIX
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:  # pragma: no cover
        pass
    return fd


def _unlock(fd) -> None:
    if fd is not None:
        os.close(fd)  # closing releases the flock


def _remove_stale_stages(out: Path) -> None:
    """Remove staging folders of runs whose process is gone (killed with SIGKILL, power loss)."""
    try:
        names = os.listdir(out)
    except OSError:
        return
    for name in names:
        if not name.startswith(STAGE_PREFIX):
            continue
        pid = name[len(STAGE_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
                continue  # still running
            except ProcessLookupError:
                pass
            except OSError:
                continue
            shutil.rmtree(out / name, ignore_errors=True)


def _prune_empty_dirs(out: Path, rels) -> None:
    dirs = sorted({str(Path(r).parent) for r in rels if "/" in r}, key=lambda d: -d.count("/"))
    for d in dirs:
        p = out / d
        while p != out:
            try:
                p.rmdir()
            except OSError:
                break
            p = p.parent


def _inside(out: Path, p: Path) -> bool:
    """Whether ``p``'s folder is ``out`` or below it with no symlink on the way (a manifest naming
    ``link/file``, ``link`` pointing elsewhere, must not make tregpd delete files outside ``out``)."""
    try:
        real_out = os.path.realpath(out)
        real_parent = os.path.realpath(p.parent)
    except (OSError, ValueError):
        return False
    if real_parent != real_out and not real_parent.startswith(real_out + os.sep):
        return False
    q = p.parent
    while q != out and q != q.parent:
        if q.is_symlink():
            return False
        q = q.parent
    return True


def _remove_files(out: Path, rels) -> set:
    """Remove the listed files (regular files and symlinks only, never through a symlinked folder) and the
    folders left empty; returns the folders touched (to fsync)."""
    touched = set()
    for rel in sorted(rels):
        if not _safe_rel(rel) or "\x00" in rel:
            continue
        p = out / rel
        if not _inside(out, p):
            continue
        try:
            if p.is_symlink() or p.is_file():
                p.unlink()
                touched.add(p.parent)
        except FileNotFoundError:
            pass
    _prune_empty_dirs(out, rels)
    return {d for d in touched if d.exists()} | {out}


def _real_folders(out: Path, folder: Path) -> None:
    """Create ``folder`` (below ``out``) as real folders: a symlink planted where a folder of the run goes is
    replaced by a folder, never followed (so a run never writes outside ``out``)."""
    q = out
    for part in folder.relative_to(out).parts:
        q = q / part
        if q.is_symlink():
            q.unlink()
        if not q.is_dir():
            q.mkdir()


def _owned_files(out: Path, patterns) -> set[str]:
    if not patterns:
        return set()
    try:
        existing = _walk_files(out)
    except OSError:
        return set()
    return {rel for rel in existing if any(fnmatch.fnmatchcase(rel, pat) for pat in patterns)} - {MANIFEST}


class RunDir:
    """A staging folder for one run into ``out``, committed on success, discarded on error or interrupt.

    Parameters
    ----------
    out : str or Path
        The run's output folder (created when needed). Other files in it are left alone, except those of the
        previous run (listed in its manifest or its interrupted commit's journal) and those matching ``owns``.
    command : str
        Recorded in the manifest (e.g. ``"tregpd simulate"``).
    owns : sequence of str
        ``fnmatch`` patterns (relative to ``out``, ``/``-separated) of files this command writes; files matching
        them that the new run does not write are removed at commit (so that a rerun never leaves a mix, even
        over a folder written before manifests existed).
    run_id : str, optional
        Default :func:`new_run_id`.

    Attributes
    ----------
    path : Path
        The staging folder (write here); ``path / ".scratch"`` (:attr:`scratch`) is a working folder removed
        before the commit (Dask's temporary directory, for instance).
    out : Path
    files : list of str
        After a commit: the files of the run (relative to ``out``).
    """

    def __init__(self, out, command: str, owns=(), run_id: str | None = None):
        self.out = Path(out)
        self.command = command
        self.owns = tuple(owns)
        self.run_id = run_id or new_run_id()
        self.path: Path | None = None
        self.files: list[str] = []
        self.previous_state: str | None = None
        self._created_out = False
        self._event: list | None = None

    # -------------------------------------------------------------------------------------------- staging
    def __enter__(self) -> "RunDir":
        if not self.out.exists():
            self._created = [p for p in (self.out, *self.out.parents) if not p.exists()]
            self.out.mkdir(parents=True, exist_ok=True)
            self._created_out = True
        else:
            _remove_stale_stages(self.out)
            self.previous_state = verify_run(self.out, check_hashes=False).status
        self.path = self.out / f"{STAGE_PREFIX}{os.getpid()}-{self.run_id}"
        self.path.mkdir()
        self._event = [self.out, "active", not self._created_out]
        _EVENTS.append(self._event)
        return self

    @property
    def scratch(self) -> Path:
        """A working folder inside the staging area (created on first use), removed before the commit."""
        p = self.path / SCRATCH
        p.mkdir(exist_ok=True)
        return p

    def final(self, p) -> Path:
        """The path a staged file will have after the commit."""
        p = Path(p)
        try:
            return self.out / p.relative_to(self.path)
        except ValueError:
            return p

    def final_text(self, text: str) -> str:
        """``text`` with the staging folder's path replaced by the output folder's."""
        return text.replace(str(self.path), str(self.out))

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                if self._event is None or self._event[1] != "committed":
                    self.discard()
                raise
            return False
        self.discard()
        if isinstance(exc, OSError) and not isinstance(exc, (KeyboardInterrupt,)):
            raise RunError(self._failure_line(exc)) from exc
        return False

    def _failure_line(self, exc: OSError) -> str:
        from tregpd.safeio import shorten
        reason = exc.strerror or str(exc) or type(exc).__name__
        where = f" {shorten(str(self.final(exc.filename)))}" if exc.filename else ""
        if self._created_out:
            kept = f"{shorten(str(self.out))} was not created"
        elif self.previous_state == "complete":
            kept = f"{shorten(str(self.out))} still holds the previous complete run"
        else:
            kept = f"{shorten(str(self.out))} is as it was before"
        hint = "; free some space or choose another --out, then rerun" \
            if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)) else ""
        return f"{reason}:{where}; nothing of this run was kept ({kept}){hint}"

    def discard(self) -> None:
        """Remove the staging folder (and ``out`` if this run created it and it is empty)."""
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
        for p in getattr(self, "_created", []):  # folders this run created, innermost first, if empty
            try:
                p.rmdir()
            except OSError:
                break
        if self._event is not None:
            self._event[1] = "discarded"

    # -------------------------------------------------------------------------------------------- commit
    def commit(self) -> list[str]:
        """Move the staged files into ``out``, remove the previous run's files, write the manifest last."""
        shutil.rmtree(self.path / SCRATCH, ignore_errors=True)
        new = _walk_files(self.path)
        new = [r for r in new if r != MANIFEST]
        for rel in new:  # never replace a folder, device or fifo by a file
            target = self.out / rel
            if target.exists() and not target.is_symlink() and not target.is_file():
                from tregpd.safeio import _kind, shorten
                raise RunError(f"output file {shorten(str(target))} is {_kind(os.stat(target).st_mode)}; tregpd "
                               f"replaces only regular files, refusing (nothing of this run was kept)")
        record = manifest_record(self.path, new, self.run_id, self.command)
        with _HoldSignals():
            fd = _lock(self.out)
            try:
                old = _manifest_paths(read_manifest(self.out)) | _read_journal(self.out)
                old |= _owned_files(self.out, self.owns)
                from tregpd.io import atomic_write_json
                atomic_write_json(self.out / JOURNAL, {"run_id": self.run_id, "old": sorted(old), "new": new})
                try:
                    (self.out / MANIFEST).unlink()
                except FileNotFoundError:
                    pass
                touched = _remove_files(self.out, old - set(new))
                for rel in new:
                    target = self.out / rel
                    _real_folders(self.out, target.parent)
                    os.replace(self.path / rel, target)
                    touched.add(target.parent)
                for d in sorted(touched, key=lambda p: -len(p.parts)):
                    _fsync_dir(d)
                write_manifest(self.out, record)
                (self.out / JOURNAL).unlink()
                shutil.rmtree(self.path, ignore_errors=True)
                _fsync_dir(self.out)
            finally:
                _unlock(fd)
            self.files = new
            if self._event is not None:
                self._event[1] = "committed"
        return new


# ------------------------------------------------------------------------------------------- in place
def _identity(p: Path):
    try:
        st = os.lstat(p)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class InPlaceRun:
    """A run whose steps write into ``out`` in place (``tregpd all``; its steps stage their own folders).

    :meth:`begin` lists the previous run's files (its manifest, an interrupted commit's journal, and files
    matching ``owns``), records them in the journal and removes the manifest, so that ``out`` reads as
    incomplete until :meth:`finish`. :meth:`finish` removes every one of those files that this run did not
    write again (same inode, mtime and size as at the start: the atomic writers always make a new file), then
    writes the manifest of every file now in ``out``, last.
    """

    def __init__(self, out, command: str, owns=(), run_id: str | None = None):
        self.out = Path(out)
        self.command = command
        self.owns = tuple(owns)
        self.run_id = run_id or new_run_id()
        self.old: dict[str, tuple | None] = {}

    def begin(self) -> "InPlaceRun":
        out = self.out
        existed = out.exists()
        out.mkdir(parents=True, exist_ok=True)
        _remove_stale_stages(out)
        old = _manifest_paths(read_manifest(out)) | _read_journal(out) | _owned_files(out, self.owns)
        self.old = {rel: _identity(out / rel) for rel in sorted(old) if _safe_rel(rel)}
        from tregpd.io import atomic_write_json
        atomic_write_json(out / JOURNAL, {"run_id": self.run_id, "old": sorted(self.old), "new": []})
        try:
            (out / MANIFEST).unlink()
        except FileNotFoundError:
            pass
        _fsync_dir(out)
        _EVENTS.append([out, "in-place", existed])
        return self

    def finish(self) -> Path:
        out = self.out
        with _HoldSignals():
            stale = [rel for rel, ident in self.old.items()
                     if ident is not None and _identity(out / rel) == ident]
            for d in _remove_files(out, stale):
                _fsync_dir(d)
            files = sorted(set(_walk_files(out)) - {MANIFEST})
            path = write_manifest(out, manifest_record(out, files, self.run_id, self.command))
            try:
                (out / JOURNAL).unlink()
            except FileNotFoundError:
                pass
            _fsync_dir(out)
            for e in _EVENTS:
                if e[0] == out and e[1] == "in-place":
                    e[1] = "committed"
        return path


# ------------------------------------------------------------------------------------------- reading
@dataclass
class RunCheck:
    """What :func:`verify_run` found.

    ``status``: "complete" (every listed file present with its size and sha256, nothing else), "mixed" (complete,
    but files not part of the run sit beside it), "modified" (a listed file differs: size or hash), "incomplete"
    (files missing, or a commit was interrupted), "no-manifest" (not a finished tregpd run, or one from before
    manifests), "missing" (no such folder).
    """

    folder: Path
    status: str
    manifest: dict | None = None
    missing: list = field(default_factory=list)
    changed: list = field(default_factory=list)
    extra: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "complete"

    def summary(self) -> str:
        from tregpd.safeio import shorten
        where = shorten(str(self.folder))
        m = self.manifest or {}
        head = {"complete": f"{where}: complete run {m.get('run_id')} ({m.get('command')}, "
                            f"{len(m.get('files', []))} files)",
                "mixed": f"{where}: run {m.get('run_id')} complete, but {len(self.extra)} file(s) not part of it",
                "modified": f"{where}: run {m.get('run_id')} modified: {len(self.changed)} file(s) differ from "
                            f"the manifest",
                "incomplete": f"{where}: incomplete run",
                "no-manifest": f"{where}: no {MANIFEST}: not a complete tregpd run (interrupted, or written "
                               f"before manifests existed)",
                "missing": f"{where}: no such folder"}[self.status]
        parts = [head]
        for label, items in (("missing", self.missing), ("differ", self.changed), ("not in the manifest",
                                                                                    self.extra)):
            if items:
                shown = ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5 else "")
                parts.append(f"{label}: {shown}")
        parts += self.notes
        return "; ".join(parts)


def verify_run(folder, check_hashes: bool = True) -> RunCheck:
    """Check a run folder against its manifest (see :class:`RunCheck` for the verdicts)."""
    folder = Path(folder)
    if not folder.is_dir():
        return RunCheck(folder, "missing")
    notes = []
    try:
        stages = [n for n in os.listdir(folder) if n.startswith(STAGE_PREFIX)]
    except OSError:
        stages = []
    if stages:
        notes.append(f"a run into this folder is in progress or was killed ({stages[0]})")
    journal = (folder / JOURNAL).exists()
    man = read_manifest(folder)
    if man is None:
        status = "incomplete" if journal else "no-manifest"
        if journal:
            notes.insert(0, f"a commit was interrupted (journal {JOURNAL} present); rerun the command")
        return RunCheck(folder, status, None, notes=notes)
    missing, changed = [], []
    listed = set()
    for e in man["files"]:
        rel = e.get("path") if isinstance(e, dict) else None
        if not isinstance(rel, str) or not _safe_rel(rel):
            changed.append(str(rel))
            continue
        listed.add(rel)
        p = folder / rel
        try:
            st = os.lstat(p)
        except (OSError, ValueError):
            missing.append(rel)
            continue
        if not stat.S_ISREG(st.st_mode):  # a folder, fifo, device or symlink where a file was written
            changed.append(rel)
        elif st.st_size != e.get("bytes") or (check_hashes and sha256_file(p) != e.get("sha256")):
            changed.append(rel)
    extra = [r for r in _walk_files(folder) if r != MANIFEST and r not in listed]
    if missing or journal:
        status = "incomplete"
    elif changed:
        status = "modified"
    elif extra:
        status = "mixed"
    else:
        status = "complete"
    return RunCheck(folder, status, man, missing, changed, extra, notes)


class RunWarning(UserWarning):
    """An input file comes from a run folder that is not whole (see :func:`input_note`)."""


def input_note(path, data: bytes | None = None) -> str | None:
    """What tregpd knows about an input file from the run that wrote it, or None when nothing is wrong:
    its folder holds an interrupted commit (a mix of two runs), or the file differs from its entry in the
    folder's ``MANIFEST.json`` (edited after the run). Files not listed in a manifest get no note."""
    from tregpd.safeio import shorten
    p = Path(path)
    folder = p.parent
    where = shorten(str(p))
    if (folder / JOURNAL).exists():
        return (f"{where} comes from a folder whose last run was interrupted while its files were moved into "
                f"place (it may mix two runs; `tregpd verify {shorten(str(folder), 80)}`); rerun the command "
                f"that wrote it")
    man = read_manifest(folder)
    if man is None:
        return None
    entry = next((e for e in man["files"] if isinstance(e, dict) and e.get("path") == p.name), None)
    if entry is None:
        return None
    digest = hashlib.sha256(data).hexdigest() if data is not None else sha256_file(p)
    if digest != entry.get("sha256"):
        return (f"{where} differs from its entry in {MANIFEST} of run {man.get('run_id')} (edited after "
                f"{man.get('command')} wrote it)")
    return None


def interrupt_message() -> str:
    """What an interrupt left behind, as one true line (for ``tregpd``'s exit message)."""
    from tregpd.safeio import shorten
    discarded = [e for e in _EVENTS if e[1] in ("discarded", "active")]
    committed = [e for e in _EVENTS if e[1] == "committed"]
    in_place = [e for e in _EVENTS if e[1] == "in-place"]
    parts = []
    if in_place:
        parts.append(f"{shorten(str(in_place[-1][0]))} is marked incomplete (no {MANIFEST}; `tregpd verify` says "
                     f"so); rerun to complete it")
    if discarded:
        e = discarded[-1]
        parts.append(f"{shorten(str(e[0]))} " + ("is as it was before" if e[2] else "was not created")
                     + " (nothing of the interrupted run was kept there)")
    if committed:
        names = ", ".join(shorten(str(e[0]), 80) for e in committed[-5:])
        parts.append(f"complete before the interrupt: {names}")
    if not parts:
        return "every file written is complete, but this command's outputs may be a partial set"
    return "; ".join(parts)


def incomplete_note() -> str:
    """``"; 'out' is marked incomplete ..."`` when an in-place run (``tregpd all``) was started and not
    finished in this process, else ``""``; appended to error messages."""
    from tregpd.safeio import shorten
    open_runs = [e for e in _EVENTS if e[1] == "in-place"]
    if not open_runs:
        return ""
    return f"; {shorten(str(open_runs[-1][0]))} is marked incomplete (no {MANIFEST}); rerun to complete it"


def reset_events() -> None:
    _EVENTS.clear()


# ------------------------------------------------------------------------------------------- command line
def register(sub) -> None:
    p = sub.add_parser("verify", help="check that an output folder holds one complete run (MANIFEST.json)",
                       description="Check an output folder against its MANIFEST.json (written last by every run "
                                   "of simulate, fit, trial, scenarios run/question, dosefind and all): every "
                                   "listed file present with its size and sha256, and no file that is not part "
                                   "of the run. Exit 0 when complete, 1 otherwise (one line per folder).")
    p.add_argument("folders", nargs="+", type=Path, help="output folders to check")
    p.add_argument("--quick", action="store_true", help="compare sizes only, not sha256")
    p.set_defaults(func=verify_command)


def verify_command(args) -> int:
    bad = 0
    for folder in args.folders:
        check = verify_run(folder, check_hashes=not args.quick)
        print(("OK      " if check.ok else f"{check.status.upper():8s}") + check.summary())
        bad += not check.ok
    return 1 if bad else 0
