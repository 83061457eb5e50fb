"""One safe way in for every file and value a user hands to tregpd.

* :func:`read_text_file` resolves a path the user named (exists? a regular file, not a folder, device or fifo?
  readable?), enforces a size limit, strips a UTF-8 byte-order mark and decodes UTF-8; every failure is one
  line naming what the file is for ("parameter file", "event file", ...) and the path.
* :func:`load_toml` refuses nesting deeper than :data:`MAX_NESTING` *before* ``tomllib`` sees the text (a
  scan of brackets and braces outside strings and comments), so a hostile file cannot exhaust the stack, and
  turns ``TOMLDecodeError`` into the caller's error type.
* :func:`check_nesting` bounds the nesting of dicts and lists built in Python (e.g. passed to
  ``Regimen.from_dict``), without recursion.
* :func:`shorten` cuts long values echoed in error messages ("... (N characters)").
* :func:`check_memory` refuses work whose arrays would not fit (patients x output times x variables) before
  anything is allocated, naming the limit, the estimate and the way round.

Limits (module constants, also listed in the README's table of checked inputs): :data:`MAX_INPUT_BYTES`,
:data:`MAX_NESTING`, :data:`MAX_MEMORY_BYTES`, :data:`SHORTEN_LIMIT`.
"""
from __future__ import annotations

import math
import os
import stat
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from tregpd.errors import TregpdError

#: largest input file read (bytes); the bundled files are a few kB, a 10 MB cohort or event file is a mistake
MAX_INPUT_BYTES = 10 * 1024 * 1024
#: deepest nesting of arrays / tables accepted in a TOML file or a dict given to a parser
MAX_NESTING = 32
#: largest estimated memory of the arrays of one simulation step (bytes), checked before allocating
MAX_MEMORY_BYTES = 2_000_000_000
#: longest user value echoed whole in an error message (characters)
SHORTEN_LIMIT = 200

_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def shorten(value, limit: int = SHORTEN_LIMIT) -> str:
    """``repr(value)``, cut after ``limit`` characters with ``"... (N characters)"`` (N = full length).

    Safe for any value: integers too long to print (Python refuses > 4300 digits) are described by their
    number of digits, and structures too deep to print are described as such.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 3 * limit:
        digits = int(value.bit_length() * math.log10(2)) + 1
        return f"an integer of about {digits} digits"
    try:
        text = repr(value)
    except RecursionError:
        return f"a {type(value).__name__} nested too deeply to show"
    except ValueError:  # e.g. an int inside a container beyond the int->str digit limit
        return f"a {type(value).__name__} too large to show"
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def _kind(mode: int) -> str:
    """What a file-system node is, as a phrase for messages ("a directory", "a named pipe (fifo)", ...)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a named pipe (fifo)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_text_file(path, what: str, max_bytes: int = MAX_INPUT_BYTES, error: type = TregpdError) -> str:
    """Read a user-named text file safely and return its text (UTF-8, byte-order mark removed).

    Parameters
    ----------
    path : str or Path
    what : str
        What the file is for, used in messages ("parameter file", "cohort file", ...).
    max_bytes : int
        Size limit; a larger file is refused before it is read.
    error : TregpdError subclass raised on any failure (one line naming ``what``, the path and the reason).
    """
    shown = shorten(str(path))
    where = f"{what} {shown}"
    try:
        p = Path(path)
        st = os.stat(p)
    except (FileNotFoundError, NotADirectoryError):
        raise error(f"{where} does not exist") from None
    except PermissionError:
        raise error(f"{where} cannot be accessed (permission denied on a parent folder)") from None
    except (OSError, ValueError) as exc:  # name too long, embedded NUL, loop of symlinks, ...
        reason = getattr(exc, "strerror", None) or str(exc)
        raise error(f"{where} cannot be opened: {shorten(reason)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{where} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{where} is {_kind(st.st_mode)}, not a regular file")
    if st.st_size > max_bytes:
        raise error(f"{where} is {st.st_size} bytes, larger than the limit of {max_bytes} bytes for a {what}")
    try:
        with open(p, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except PermissionError:
        raise error(f"{where} is not readable (permission denied)") from None
    except OSError as exc:
        raise error(f"{where} cannot be read: {shorten(exc.strerror or str(exc))}") from None
    if len(data) > max_bytes:  # grew while we looked
        raise error(f"{where} is larger than the limit of {max_bytes} bytes for a {what}")
    text = decode_text(data, where, error)
    _note_run(p, data)
    return text


def _note_run(path: Path, data: bytes) -> None:
    """Warn (:class:`tregpd.rundir.RunWarning`) when an input file comes from a run folder that is not whole
    or was edited after the run (a manifest check; cheap when the folder has no manifest)."""
    folder = path.parent
    if not (os.path.exists(folder / "MANIFEST.json") or os.path.exists(folder / ".tregpd-commit.json")):
        return
    from tregpd.rundir import RunWarning, input_note
    note = input_note(path, data)
    if note:
        import warnings
        warnings.warn(note, RunWarning, stacklevel=3)


def decode_text(data: bytes, where: str, error: type = TregpdError) -> str:
    """Decode bytes as UTF-8 (a UTF-8 byte-order mark is dropped); UTF-16 and invalid bytes are refused."""
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM):]
    elif data.startswith(_UTF16_BOMS):
        raise error(f"{where} is not UTF-8 text: it is UTF-16 (byte-order mark {data[:2].hex(' ')}); save it "
                    f"as UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start:exc.start + 1].hex()
        raise error(f"{where} is not UTF-8 text ({exc.reason}: byte 0x{bad} at offset {exc.start})") from None


def toml_nesting(text: str) -> tuple[int, int]:
    """Deepest nesting of ``[`` / ``{`` outside strings and comments in TOML text, and the offset where it is
    first reached. A linear scan without recursion (strings: ``"..."`` with escapes, ``'...'``, and the
    multi-line forms ``\"\"\"...\"\"\"`` and ``'''...'''``)."""
    depth = best = 0
    where = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if c in "\"'":
            triple = text.startswith(c * 3, i)
            if triple:
                j = i + 3
                while True:
                    k = text.find(c * 3, j)
                    if k < 0:
                        return best, where  # unterminated: tomllib reports it
                    if c == '"':
                        # a quote preceded by an odd number of backslashes is escaped
                        b = k
                        while b > j and text[b - 1] == "\\":
                            b -= 1
                        if (k - b) % 2:
                            j = k + 1
                            continue
                    i = k + 3
                    while i < n and text[i] == c:  # up to two quotes may close a multi-line string
                        i += 1
                    break
                continue
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                if c == '"' and text[j] == "\\":
                    j += 1
                j += 1
            i = j + 1
            continue
        if c in "[{":
            depth += 1
            if depth > best:
                best, where = depth, i
        elif c in "]}":
            depth = max(0, depth - 1)
        i += 1
    return best, where


def load_toml(text: str, origin: str, max_depth: int = MAX_NESTING, error: type = TregpdError,
              max_chars: int = MAX_INPUT_BYTES) -> dict:
    """Parse TOML text after checking its size and nesting; every failure is ``error`` naming ``origin``."""
    if not isinstance(text, str):
        raise error(f"{origin}: TOML text must be a string, got {type(text).__name__}")
    if len(text) > max_chars:
        raise error(f"{origin}: {len(text)} characters, larger than the limit of {max_chars}")
    depth, at = toml_nesting(text)
    if depth > max_depth:
        line = text.count("\n", 0, at) + 1
        raise error(f"{origin}: arrays/tables nested more than {max_depth} deep (line {line}); tregpd files "
                    f"need at most 3 levels")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{origin}: not valid TOML: {shorten(str(exc))}") from None
    except RecursionError:  # pragma: no cover - the scan above should make this unreachable
        raise error(f"{origin}: nested too deeply to parse") from None
    check_nesting(data, origin, max_depth=max_depth, error=error)  # dotted keys nest without brackets
    return data


def check_nesting(value, where: str, max_depth: int = MAX_NESTING, error: type = TregpdError) -> None:
    """Refuse dicts / lists / tuples nested more than ``max_depth`` levels (an iterative walk, so a value
    nested thousands deep is refused, not a RecursionError); also refuses self-containing values."""
    stack = [(value, 1)]
    seen = 0
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            children = v.values()
        elif isinstance(v, (list, tuple)):
            children = v
        else:
            continue
        if d > max_depth:
            raise error(f"{where}: tables/lists nested more than {max_depth} deep")
        seen += 1
        if seen > 10_000_000:
            raise error(f"{where}: more than 10000000 tables/lists")
        stack.extend((c, d + 1) for c in children)


def format_bytes(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} PB"  # pragma: no cover


def check_memory(what: str, n_patients, values_per_patient, way_round: str, error: type = TregpdError,
                 limit: int | None = None, detail: str = "", extra_bytes: float = 0.0) -> float:
    """Refuse work whose float64 arrays (``n_patients x values_per_patient``, plus ``extra_bytes``) would
    exceed ``limit`` (default :data:`MAX_MEMORY_BYTES`), before anything is allocated; returns the estimate.

    The message names ``what``, the estimate (with ``detail``, e.g. "169 output times x 7 values"), the limit
    and ``way_round`` (e.g. "use `tregpd trial`, which streams patients in chunks").
    """
    limit = MAX_MEMORY_BYTES if limit is None else limit
    est = float(n_patients) * float(values_per_patient) * 8.0 + float(extra_bytes)
    if est > limit:
        detail = f" ({detail})" if detail else ""
        raise error(f"{what}: {int(n_patients)} patients x {int(values_per_patient)} values{detail} need about "
                    f"{format_bytes(est)} of memory, above the limit of {format_bytes(limit)}; {way_round}")
    return est


def _nearest_existing(p: Path) -> Path:
    """``p`` or its nearest ancestor that exists (lstat), ``Path('.')`` at worst."""
    q = p
    while True:
        try:
            os.lstat(q)
            return q
        except (FileNotFoundError, NotADirectoryError):
            if q.parent == q:
                return q
            q = q.parent


def resolve_output(path, kind: str = "dir", what: str = "output folder", error: type = TregpdError) -> Path:
    """Check an output path the user named, before any work starts; return it as a ``Path``.

    ``kind="file"``: an existing target must be a regular file (or a symlink to one, or a dangling symlink:
    the atomic writer replaces the link, it never follows it); a device, fifo, socket or folder is refused.
    ``kind="dir"``: an existing target must be a folder, writable. In both cases the nearest existing
    ancestor must be a folder (not a file) and writable. Every refusal is one line naming ``what``, the path
    and what it is.
    """
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
    shown = shorten(str(path))
    where = f"{what} {shown}"
    try:
        p = Path(path)
        if not str(p) or "\x00" in str(p):
            raise ValueError("empty path or NUL byte")
        target_exists = os.path.lexists(p)
        st = os.stat(p) if target_exists and os.path.exists(p) else None
    except PermissionError:
        raise error(f"{where} cannot be accessed (permission denied on a parent folder)") from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise error(f"{where} cannot be used: {shorten(reason)}") from None
    if st is not None:
        if kind == "file":
            if stat.S_ISDIR(st.st_mode):
                raise error(f"{where} is a directory, not a file; name a file to write")
            if not stat.S_ISREG(st.st_mode):
                raise error(f"{where} is {_kind(st.st_mode)}; tregpd replaces only regular files, refusing")
        else:
            if not stat.S_ISDIR(st.st_mode):
                raise error(f"{where} is {_kind(st.st_mode)}, not a folder")
            if not os.access(p, os.W_OK | os.X_OK):
                raise error(f"{where} is not writable (permission denied)")
            return p
    # the folder that will hold the target: the nearest existing ancestor must be a writable folder
    parent = p.parent if kind == "file" else p
    anc = _nearest_existing(parent)
    try:
        ast = os.stat(anc)
    except OSError as exc:
        raise error(f"{where} cannot be used: {shorten(exc.strerror or str(exc))} ({shorten(str(anc))})") from None
    if not stat.S_ISDIR(ast.st_mode):
        raise error(f"{where} cannot be created: {shorten(str(anc))} is {_kind(ast.st_mode)}, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise error(f"{where} cannot be created: folder {shorten(str(anc))} is not writable (permission denied)")
    return p


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: what failed, where (the file or files it names), and for a full disk or quota
    the way round."""
    import errno as _errno
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = ""
    if exc.filename:
        where = f" {shorten(str(exc.filename))}"
        if getattr(exc, "filename2", None):
            where += f" -> {shorten(str(exc.filename2))}"
    line = f"{reason}:{where}" if where else reason
    if exc.errno in (_errno.ENOSPC, getattr(_errno, "EDQUOT", -1)):
        line += ("; the output is incomplete (files written before this one may stand without it); free some "
                 "space or choose another --out, then rerun")
    return line


def describe_memory_error(exc: MemoryError, command: str) -> str:
    """One line for a MemoryError: which command ran out of memory, what it tried to allocate if known, and
    the way round."""
    detail = shorten(str(exc)) if str(exc) else ""
    detail = f" ({detail})" if detail else ""
    return (f"out of memory{detail}; ask for less at once (fewer patients or output weeks, a smaller --chunk) or "
            f"use `tregpd trial`, which streams patients in chunks")
