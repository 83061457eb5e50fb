"""Atomic output writing and provenance records.

Every file tregpd writes goes through :func:`atomic_write_bytes`: the content is written to a temporary file in
the destination folder, flushed and fsynced, then renamed over the target and the folder fsynced (so that the
rename survives a crash); an interrupted run leaves either the old file or the new one, never half of one. Only
a regular file is ever replaced.
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import os
import platform
import stat
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename).

    Only a regular file is ever replaced: a device, fifo, socket or folder at ``path`` (or a symlink to one)
    is refused with :class:`~tregpd.errors.OutputError`; a symlink to a regular file, or a dangling one, is
    replaced by the new file (the link is not followed).
    """
    path = Path(path)
    _check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and not exc.filename and exc.errno is not None:
            # a failed write/fsync (e.g. ENOSPC) names no file: name the one being written
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    return path


def fsync_dir(folder: str | Path) -> None:
    """fsync a folder so that a rename into it survives a crash (POSIX; a no-op where folders cannot be
    opened, e.g. Windows)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(folder, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder (EINVAL); the data fsync was done
        pass
    finally:
        os.close(fd)


def _check_replaceable(path: Path) -> None:
    try:
        st = os.stat(path)  # follows a symlink: a link to a device is refused like the device
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError:
        return  # reported by the write itself, with the path
    if stat.S_ISREG(st.st_mode):
        return
    from tregpd.errors import OutputError
    from tregpd.safeio import _kind, shorten
    kind = _kind(st.st_mode)
    link = " (through a symlink)" if os.path.islink(path) else ""
    raise OutputError(f"output file {shorten(str(path))} is {kind}{link}; tregpd replaces only regular files, "
                      f"refusing")


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_frame(path: str | Path, frame, provenance: dict | None = None) -> Path:
    """Write a pandas DataFrame as CSV (``.csv``) or Parquet (``.parquet``), atomically.

    CSV files get the provenance as ``# key: value`` comment lines on top (read back with
    ``pandas.read_csv(..., comment="#")``); Parquet files carry it in the schema metadata under ``tregpd``.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if provenance is not None:
            meta = dict(table.schema.metadata or {})
            meta[b"tregpd"] = json.dumps(provenance, default=_json_default).encode()
            table = table.replace_schema_metadata(meta)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return atomic_write_bytes(path, buf.getvalue())
    buf = io.StringIO()
    if provenance is not None:
        for k, v in provenance.items():
            buf.write(f"# {k}: {json.dumps(v, default=_json_default)}\n")
    frame.to_csv(buf, index=False, lineterminator="\n")
    return atomic_write_text(path, buf.getvalue())


def atomic_save_figure(path: str | Path, fig, **kwargs) -> Path:
    """Save a matplotlib figure atomically (format from the suffix)."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", **({"dpi": 120, "bbox_inches": "tight"} | kwargs))
    return atomic_write_bytes(path, buf.getvalue())


def provenance(parameters=None, regimen=None, seed=None, **extra) -> dict:
    """A provenance record: package version, time, platform, parameters, regimen, seed and extras."""
    from tregpd import __version__
    import numpy as np
    import numba
    rec = {"tregpd_version": __version__,
           "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__}
    if parameters is not None:
        rec["parameters"] = parameters.to_dict() if hasattr(parameters, "to_dict") else parameters
    if regimen is not None:
        rec["regimen"] = regimen.to_dict() if hasattr(regimen, "to_dict") else regimen
    rec["seed"] = seed
    rec.update(extra)
    return rec


def model_record(model=None) -> dict:
    """The provenance record of a model structure: its name and declaration hash (``model=None``: the default
    structure); the same record :meth:`tregpd.model.SimulationResult.provenance` writes under ``model``."""
    from tregpd.model.structures import get_model
    m = get_model(model)
    return {"name": m.name, "declaration": m.content_hash}


def _json_default(o):
    import numpy as np
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
