"""``tregpd report``: one self-contained HTML page (``report.html``) built from an existing output folder.

The page is made from the files the other commands wrote (``tregpd all`` writes it at its end; ``tregpd report
--out DIR`` re-makes it from ``DIR`` without re-running anything). It is built generically from those files, so
new columns or tables written by the commands show up without changes here:

* **Provenance**: tregpd version, git commit of the code that built the page, the model structure and its
  declaration hash (as recorded by the outputs, and as the current code computes it), a hash of the calibrated
  parameter file, the date, and the creation time of every input file read.
* **The fit**: the calibrated parameter table (value, unit, bounds, role, status, source) from
  ``calibration/calibrated_parameters.toml``; the model comparison (``calibration/model_comparison.csv``); the
  profile figure; the seed-cohort fit (``fit/fit.png``, ``fit/residuals.csv``); the reference trajectory.
* **Validation**: ``validate/validation.csv``, ``validate/qualitative.csv`` and every ``validation_*.png``.
* **Scenario comparison**: ``scenarios/comparison.md`` (the curated table, whatever band columns it has),
  ``scenarios/answers.md``, the comparison figures, the full ``comparison.csv`` (folded) and each scenario's
  trajectory figure (folded, within :data:`MAX_EMBED_BYTES`).
* **Assumptions and their effect**: the main job's assumptions (:data:`tregpd.pipeline.ASSUMPTIONS`), the
  assumption string of every scenario (from its ``provenance.json``), the SAT0261 regimen hypotheses
  (``hypotheses/hypotheses.md``), between-patient variability (``variability/variability.md``), the local
  sensitivities, and the parameters fixed at their priors (role ``prior`` in the calibrated parameter file).

The page has no script and no external resource: figures are embedded as base64 ``data:`` URIs (PNG, or SVG as
an image), the stylesheet is inline, links point only to anchors within the page. Every string taken from a file
is escaped with :func:`html.escape`. A missing input gives a short note in its section (naming the file and the
command that writes it), never an empty table. The page is written atomically (:func:`tregpd.io.atomic_write_text`).

This module imports only the standard library at module level (it registers a CLI subcommand).
"""
from __future__ import annotations

import argparse
import base64
import csv
import datetime as _dt
import hashlib
import html
import io
import json
import math
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

#: total bytes of figures embedded in one page; per-scenario trajectory figures beyond it are listed, not embedded
MAX_EMBED_BYTES = 40 * 1024 * 1024
#: rows shown of a CSV table before the rest is cut (with a note saying how many)
MAX_TABLE_ROWS = 400
#: the sections of the page, in order: (anchor id, heading)
SECTIONS = (
    ("provenance", "Provenance"),
    ("fit", "The fit"),
    ("validation", "Model comparison and validation"),
    ("scenarios", "Scenario comparison"),
    ("assumptions", "Assumptions and their effect"),
    ("files", "Files read"),
)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1d2430;
background:#fafbfc;line-height:1.45}
header{background:#22324a;color:#fff;padding:1.2em 2em}
header h1{margin:0 0 .3em 0;font-size:1.6em}
header p{margin:0;opacity:.85}
nav{padding:.6em 2em;background:#e8edf3;border-bottom:1px solid #cfd8e3}
nav a{margin-right:1.4em;color:#22324a;text-decoration:none;font-weight:600}
main{padding:0 2em 3em 2em;max-width:1500px}
section{margin-top:2em}
h2{border-bottom:2px solid #22324a;padding-bottom:.2em}
h3{margin-top:1.6em;color:#22324a}
h4,h5,h6{margin-top:1.2em}
.tablewrap{overflow-x:auto;margin:.6em 0 1em 0}
table{border-collapse:collapse;font-size:.84em;background:#fff}
th,td{border:1px solid #cfd8e3;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#eef2f7;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:nth-child(even) td{background:#f6f8fb}
figure{margin:1em 0;background:#fff;border:1px solid #cfd8e3;padding:.5em;display:inline-block;max-width:100%}
figure img{max-width:100%;height:auto;display:block}
.gallery{display:flex;flex-wrap:wrap;gap:.8em;align-items:flex-start}
.gallery figure{max-width:calc(50% - 1.6em);margin:0}
figcaption{font-size:.85em;color:#4a5568;margin-top:.3em}
.note{background:#fff8e1;border-left:4px solid #f0b429;padding:.4em .8em;margin:.6em 0}
.assumption{background:#fdecec;border-left:4px solid #c53030;padding:.3em .8em;margin:.3em 0}
code{background:#eef2f7;padding:0 .2em;border-radius:3px}
pre{background:#eef2f7;padding:.6em;overflow-x:auto}
details{margin:.6em 0}
summary{cursor:pointer;font-weight:600;color:#22324a}
dl.prov{display:grid;grid-template-columns:max-content auto;gap:.2em 1.2em}
dl.prov dt{font-weight:600}
dl.prov dd{margin:0}
"""


# ----------------------------------------------------------------------------------------------- escaping
def esc(value) -> str:
    """``html.escape`` of ``str(value)`` (quotes too: safe in text and in attribute values)."""
    return html.escape(str(value), quote=True)


def _fmt_cell(text: str) -> tuple[str, bool]:
    """A CSV cell for display: numbers to 4 significant digits (integers as they are), NaN as an en dash.
    Returns (display text, is_number)."""
    s = text.strip()
    if s == "":
        return "", False
    try:
        x = float(s)
    except ValueError:
        return s, False
    if s.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return ("–" if math.isnan(x) else s), True
    if re.fullmatch(r"[+-]?\d+", s):
        return s, True
    if x == 0:
        return "0", True
    shown = f"{x:.4g}"
    return (shown[1:] if shown.startswith("-") and float(shown) == 0 else shown), True


# ----------------------------------------------------------------------------------------------- tables
def html_table(header, rows, caption: str | None = None, max_rows: int = MAX_TABLE_ROWS,
               numeric_format: bool = True) -> str:
    """An HTML table (in a scrolling wrapper) from a header and rows of cells; every cell is escaped.

    Parameters
    ----------
    header : sequence of str, length n_columns
    rows : sequence of sequences of cell values (str or anything ``str()`` accepts), each of length n_columns
        (shorter rows are padded with empty cells)
    caption : optional caption text
    max_rows : rows shown; the rest are cut with a note
    numeric_format : format numeric-looking cells (:func:`_fmt_cell`) and right-align them

    Returns
    -------
    str: the HTML; ``""`` when there are no rows (callers show a note instead of an empty table)
    """
    rows = [list(r) for r in rows]
    if not rows:
        return ""
    n = max(len(header), max(len(r) for r in rows))
    header = list(header) + [""] * (n - len(header))
    out = ['<div class="tablewrap"><table>']
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>")
    for r in rows[:max_rows]:
        cells = []
        for c in list(r) + [""] * (n - len(r)):
            c = "" if c is None else str(c)
            shown, num = _fmt_cell(c) if numeric_format else (c, False)
            cells.append(f'<td class="num">{esc(shown)}</td>' if num else f"<td>{esc(shown)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    if len(rows) > max_rows:
        out.append(f'<p class="note">{len(rows) - max_rows} more rows not shown (see the CSV file).</p>')
    return "\n".join(out)


def read_csv(path: Path) -> tuple[list[str], list[list[str]], dict]:
    """Read a tregpd CSV: ``# key: json`` provenance lines on top, then a header and rows.

    Returns
    -------
    (header, rows, provenance dict)
    """
    text = path.read_text(encoding="utf-8-sig")
    prov, body = {}, []
    for line in text.splitlines():
        if not body and line.startswith("#"):
            key, _, val = line[1:].strip().partition(":")
            try:
                prov[key.strip()] = json.loads(val.strip())
            except ValueError:
                prov[key.strip()] = val.strip()
        elif line.strip() or body:
            body.append(line)
    rows = list(csv.reader(io.StringIO("\n".join(body))))
    if not rows:
        return [], [], prov
    return rows[0], [r for r in rows[1:] if r], prov


# ----------------------------------------------------------------------------------------------- Markdown
_MD_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_MD_LIST = re.compile(r"^(\s*)([-*+]|\d+[.)])\s+(.*)$")
_MD_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _md_inline(text: str) -> str:
    """Inline Markdown to HTML: `code`, **bold**, *emphasis*, [text](target) shown as text (no link is made, so
    the page never points outside itself). Everything is escaped first."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if len(part) >= 2 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{esc(part[1:-1])}</code>")
            continue
        part = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r"\1 (\2)", part)
        s = esc(part)
        s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
        s = re.sub(r"(?<![\w*])\*(?!\s)([^*]+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", s)
        out.append(s)
    return "".join(out)


def _md_row(line: str) -> list[str]:
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|") and not s.endswith("\\|"):
        s = s[:-1]
    cells = re.split(r"(?<!\\)\|", s)
    return [c.strip().replace("\\|", "|") for c in cells]


def markdown_to_html(text: str, heading_offset: int = 2) -> str:
    """The Markdown the tregpd commands write, as HTML: headings (shifted down by ``heading_offset`` levels, at
    most h6), pipe tables, bullet and numbered lists, fenced code, paragraphs, inline code/bold/emphasis.

    Table cells are rendered with :func:`_md_inline` (no number reformatting: the writer chose the digits).
    """
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            out.append("<pre>" + esc("\n".join(lines[i + 1:j])) + "</pre>")
            i = j + 1
            continue
        m = _MD_HEADING.match(line)
        if m:
            level = min(6, len(m.group(1)) + heading_offset)
            out.append(f"<h{level}>{_md_inline(m.group(2))}</h{level}>")
            i += 1
            continue
        if line.lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append(lines[i])
                i += 1
            if len(block) >= 2 and _MD_TABLE_SEP.match(block[1]):
                header, body = _md_row(block[0]), [_md_row(b) for b in block[2:]]
            else:
                header, body = [], [_md_row(b) for b in block]
            if body:
                n = max([len(header)] + [len(r) for r in body])
                head_html = ("<thead><tr>" + "".join(f"<th>{_md_inline(h)}</th>" for h in header + [""] * (
                    n - len(header))) + "</tr></thead>") if header else ""
                rows_html = "".join("<tr>" + "".join(f"<td>{_md_inline(c)}</td>" for c in r + [""] * (n - len(r)))
                                    + "</tr>" for r in body)
                out.append(f'<div class="tablewrap"><table>{head_html}<tbody>{rows_html}</tbody></table></div>')
            elif header:
                out.append(f"<p>{_md_inline(' | '.join(header))}</p>")
            continue
        if _MD_LIST.match(line):
            ordered = _MD_LIST.match(line).group(2)[0].isdigit()
            items: list[str] = []
            while i < len(lines) and lines[i].strip():
                m = _MD_LIST.match(lines[i])
                if m:
                    items.append(m.group(3))
                elif items:
                    items[-1] += " " + lines[i].strip()
                i += 1
            tag = "ol" if ordered else "ul"
            out.append(f"<{tag}>" + "".join(f"<li>{_md_inline(t)}</li>" for t in items) + f"</{tag}>")
            continue
        if not line.strip():
            i += 1
            continue
        para = []
        while i < len(lines) and lines[i].strip() and not (
                _MD_HEADING.match(lines[i]) or lines[i].lstrip().startswith(("|", "```")) or _MD_LIST.match(lines[i])):
            para.append(lines[i].strip())
            i += 1
        out.append("<p>" + _md_inline(" ".join(para)) + "</p>")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------- figures
def embed_image(path: Path, caption: str | None = None, alt: str | None = None) -> str:
    """A ``<figure>`` with the image embedded as a base64 ``data:`` URI (PNG or SVG).

    Raises
    ------
    ValueError: the file is neither a PNG (by its signature) nor an SVG
    """
    data = Path(path).read_bytes()
    if data.startswith(_PNG_MAGIC):
        mime = "image/png"
    elif Path(path).suffix.lower() == ".svg" and b"<svg" in data[:4096]:
        mime = "image/svg+xml"
    else:
        raise ValueError(f"{path} is not a PNG or SVG image")
    uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    alt = alt if alt is not None else (caption or Path(path).name)
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{uri}" alt="{esc(alt)}">{cap}</figure>'


# ----------------------------------------------------------------------------------------------- the builder
@dataclass
class _Page:
    """What the builder collects while it reads the output folder."""

    out: Path
    files: list = field(default_factory=list)       # (relative path, created_utc or "", what it is)
    notes: list = field(default_factory=list)       # problems met while reading (also shown in their section)
    embedded_bytes: int = 0
    model_records: dict = field(default_factory=dict)   # name -> set of declaration hashes seen in outputs

    def rel(self, path: Path) -> str:
        try:
            return str(Path(path).relative_to(self.out))
        except ValueError:
            return str(path)

    def read(self, path: Path, what: str, created: str = "") -> None:
        self.files.append((self.rel(path), created, what))

    def note(self, text: str) -> str:
        self.notes.append(text)
        return f'<p class="note">{esc(text)}</p>'

    def missing(self, rel: str, command: str, why: str = "") -> str:
        return f'<p class="note">Not available: <code>{esc(rel)}</code> is absent (written by ' \
               f'<code>{esc(command)}</code>{", " + esc(why) if why else ""}).</p>'

    def figure(self, path: Path, caption: str, what: str = "figure") -> str:
        try:
            size = path.stat().st_size
            block = embed_image(path, caption=f"{caption} ({self.rel(path)})")
        except (OSError, ValueError) as exc:
            return self.note(f"figure {self.rel(path)} could not be embedded: {exc}")
        self.embedded_bytes += size
        self.read(path, what)
        return block

    def csv_table(self, path: Path, what: str, drop=(), caption: str | None = None, keep=None) -> str:
        """The table of a CSV file; ``drop``: columns left out; ``keep``: only these columns, in this order
        (those present; all columns when none is)."""
        try:
            header, rows, prov = read_csv(path)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            return self.note(f"{self.rel(path)} could not be read: {exc}")
        self._model_from(prov.get("model"))
        if not any(f[0] == self.rel(path) for f in self.files):     # a file shown twice is listed once
            self.read(path, what, str(prov.get("created_utc", "")))
        if keep is not None and any(h in header for h in keep):
            keep = [header.index(h) for h in keep if h in header]
        else:
            keep = [k for k, h in enumerate(header) if h not in drop]
        table = html_table([header[k] for k in keep], [[r[k] if k < len(r) else "" for k in keep] for r in rows],
                           caption=caption)
        return table or self.note(f"{self.rel(path)} has no rows")

    def markdown(self, path: Path, what: str, heading_offset: int = 2) -> str:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            return self.note(f"{self.rel(path)} could not be read: {exc}")
        self.read(path, what)
        body = markdown_to_html(text, heading_offset=heading_offset)
        return body or self.note(f"{self.rel(path)} is empty")

    def json(self, path: Path, what: str) -> dict | None:
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            self.notes.append(f"{self.rel(path)} could not be read: {exc}")
            return None
        if not isinstance(obj, dict):
            return None
        self._model_from(obj.get("model"))
        self.read(path, what, str(obj.get("created_utc", "")))
        return obj

    def _model_from(self, rec) -> None:
        recs = rec if isinstance(rec, list) else [rec]
        for r in recs:
            if isinstance(r, dict) and r.get("name"):
                self.model_records.setdefault(str(r["name"]), set()).add(str(r.get("declaration", "")))


def git_revision(folder: Path | None = None) -> str:
    """The git commit of the code in ``folder`` (default: this package) as ``<12 hex>`` plus
    ``" (uncommitted changes)"`` when the work tree differs from it; ``"not a git checkout"`` otherwise."""
    folder = Path(folder or Path(__file__).resolve().parent)
    try:
        rev = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if rev.returncode != 0 or not rev.stdout.strip():
            return "not a git checkout"
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + (" (uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"


def _read_parameter_file(path: Path) -> dict:
    from tregpd.safeio import load_toml
    from tregpd.errors import ParameterError
    return load_toml(path.read_text(encoding="utf-8-sig"), f"parameter file {path}", error=ParameterError)


def _parameter_rows(data: dict) -> list[dict]:
    rows = []
    for name, entry in data.items():
        if name == "meta" or not isinstance(entry, dict) or "value" not in entry:
            continue
        rows.append({"parameter": name, "value": entry.get("value"), "unit": entry.get("unit", ""),
                     "lower": entry.get("lower", ""), "upper": entry.get("upper", ""),
                     "role": entry.get("role", "prior"), "fitted": entry.get("fitted", False),
                     "status": entry.get("status", ""), "source": entry.get("source", "")})
    return rows


def _scenario_assumptions(page: _Page, folder: Path) -> list[dict]:
    rows = []
    for prov_path in sorted(folder.glob("*/provenance.json")):
        prov = page.json(prov_path, "scenario provenance")
        if prov is None:
            continue
        # the scenario as Scenario.to_dict() writes it: {"scenario": {...}, "regimen": {...}} like the TOML file
        both = prov.get("scenario") if isinstance(prov.get("scenario"), dict) else {}
        sc = both.get("scenario") if isinstance(both.get("scenario"), dict) else both
        reg = both.get("regimen") if isinstance(both.get("regimen"), dict) else {}
        said = [str(a) for a in (sc.get("assumption"), reg.get("assumption")) if a]
        rows.append({"scenario": sc.get("name", prov_path.parent.name), "question": sc.get("question", ""),
                     "source": sc.get("source", ""), "assumption": " / ".join(dict.fromkeys(said))})
    return rows


def _pipeline_assumptions() -> tuple[str, ...]:
    try:
        from tregpd.pipeline import ASSUMPTIONS
    except ImportError:  # pragma: no cover
        return ()
    return tuple(ASSUMPTIONS)


def _section_provenance(page: _Page, created: str, git: str) -> str:
    from tregpd import __version__
    rows = [("tregpd version", __version__), ("code (git commit)", git),
            ("report created (UTC)", created), ("output folder", str(page.out.resolve()))]
    cal = page.out / "calibration" / "calibrated_parameters.toml"
    if cal.is_file():
        rows.append(("calibrated parameter file (sha256)",
                     f"{hashlib.sha256(cal.read_bytes()).hexdigest()[:16]} ({page.rel(cal)})"))
    for name, hashes in sorted(page.model_records.items()):
        recorded = ", ".join(sorted(h for h in hashes if h)) or "not recorded"
        try:
            from tregpd.io import model_record
            current = model_record(name)["declaration"]
        except Exception as exc:    # an unknown or removed structure: say so rather than fail
            current = f"cannot be computed here ({type(exc).__name__})"
        same = "" if current in hashes else " — DIFFERS from the outputs: they were made by other model code"
        rows.append((f"model structure {name}", f"declaration {recorded} in the outputs; current code {current}"
                                                 f"{same}"))
    if not page.model_records:
        rows.append(("model structure", "no model record found in the outputs"))
    seeds = sorted({str(s) for s in _seeds(page.out)})
    if seeds:
        rows.append(("seed(s)", ", ".join(seeds)))
    body = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in rows)
    return f'<dl class="prov">{body}</dl>' \
           "<p>Each input file's own creation time and provenance are listed under <a href=\"#files\">Files " \
           "read</a>; the CSV files carry their full provenance (parameters, regimen, seed) in their header " \
           "lines.</p>"


def _seeds(out: Path) -> set:
    seeds = set()
    for p in [out / "scenarios" / "comparison.csv", out / "validate" / "validation.csv"]:
        if p.is_file():
            try:
                _, _, prov = read_csv(p)
            except (OSError, UnicodeDecodeError, csv.Error):
                continue
            if prov.get("seed") is not None:
                seeds.add(prov["seed"])
    return seeds


_STUDIES_TAIL = " to: "


def _factor_studies(rows: list[dict]) -> str:
    """The list of calibrating studies that the calibrated parameter file appends to the source of every fitted
    parameter ("... by the joint fit (...) to: <studies>"): when two or more sources share it, it is replaced in
    ``rows`` (in place) by "the calibration studies" and returned; else ``""``."""
    tails = {}
    for r in rows:
        src = str(r["source"])
        head, sep, tail = src.rpartition(_STUDIES_TAIL)
        if sep and "joint fit" in head:
            tails.setdefault(tail, []).append(r)
    if not tails:
        return ""
    tail, users = max(tails.items(), key=lambda kv: len(kv[1]))
    if len(users) < 2:
        return ""
    for r in users:
        r["source"] = str(r["source"])[:-len(tail)] + "the calibration studies"
    return tail


def _section_fit(page: _Page) -> str:
    out = page.out
    parts = []
    cal = out / "calibration" / "calibrated_parameters.toml"
    fitted = out / "fit" / "fitted_parameters.toml"
    pfile = cal if cal.is_file() else (fitted if fitted.is_file() else None)
    parts.append("<h3>Parameters</h3>")
    if pfile is None:
        parts.append(page.missing("calibration/calibrated_parameters.toml", "tregpd calibrate"))
    else:
        try:
            data = _read_parameter_file(pfile)
        except Exception as exc:
            parts.append(page.note(f"{page.rel(pfile)} could not be read: {exc}"))
        else:
            page.read(pfile, "parameter file")
            meta = data.get("meta", {}) if isinstance(data.get("meta"), dict) else {}
            parts.append(f"<p>From <code>{esc(page.rel(pfile))}</code>: {esc(meta.get('name', ''))}"
                         f"{' — ' + esc(meta.get('description')) if meta.get('description') else ''}. "
                         "Role <em>calibrated</em>: identified by the joint fit (profile); <em>bounded</em>: "
                         "fitted but only bounded by the data; <em>prior</em>: fixed at its literature value "
                         "(status and source as given).</p>")
            prow = _parameter_rows(data)
            order = {"calibrated": 0, "bounded": 1}
            prow.sort(key=lambda r: (order.get(r["role"], 2), r["parameter"]))
            studies = _factor_studies(prow)
            if studies:
                parts.append(f"<p>Calibration studies (“the calibration studies” in the sources below): "
                             f"{esc(studies)}.</p>")
            cols = ["parameter", "value", "unit", "lower", "upper", "role", "status", "source"]
            parts.append(html_table(cols, [[r[c] for c in cols] for r in prow])
                         or page.note(f"{page.rel(pfile)} has no parameter entries"))
    prof = out / "calibration" / "profiles.png"
    if prof.is_file():
        parts.append(page.figure(prof, "Profile likelihoods of the calibrated parameters (Δχ², dashed: 95 %)"))
    parts.append("<h3>Fit of the SAT0261 cohort medians</h3>")
    fig = out / "fit" / "fit.png"
    parts.append(page.figure(fig, "Fit of the SAT0261 cohort") if fig.is_file()
                 else page.missing("fit/fit.png", "tregpd fit"))
    for extra, cap in (("fit/profiles.png", "Profiles of the seed-only fit"),
                       ("reference/trajectory.png", "Reference regimen with the calibrated parameters")):
        if (out / extra).is_file():
            parts.append(page.figure(out / extra, cap))
    res = out / "fit" / "residuals.csv"
    if res.is_file():
        parts.append(page.csv_table(res, "fit residuals", caption="Residuals of the seed-only fit"))
    return "\n".join(parts)


#: columns of validate/validation.csv and qualitative.csv shown first (the rest are in the folded full table)
VALIDATION_COLUMNS = ("study", "observable", "mapping", "day", "observed", "se", "predicted", "predicted_p5",
                      "predicted_p95", "z", "in_tolerance")
QUALITATIVE_COLUMNS = ("study", "criterion", "predicted", "pass")


def _section_validation(page: _Page) -> str:
    cal = page.out / "calibration"
    parts = ["<h3>Joint calibration: model comparison</h3>"]
    mc = cal / "model_comparison.csv"
    parts.append(page.csv_table(mc, "model comparison", drop=("hypotheses",)) if mc.is_file()
                 else page.missing("calibration/model_comparison.csv", "tregpd calibrate"))
    rep = cal / "report.md"
    if rep.is_file():
        parts.append("<details><summary>Calibration report (calibration/report.md)</summary>"
                     + page.markdown(rep, "calibration report", heading_offset=3) + "</details>")
    out = page.out / "validate"
    parts.append("<h3>Validation, study by study</h3>")
    val = out / "validation.csv"
    if val.is_file():
        parts.append("<p>Each study simulated with the calibrated parameters. Predicted = the statistic the "
                     "study reports; predicted_p5/predicted_p95 = the between-patient 5-95 % range; "
                     "z = (ln predicted − ln observed)/SE; in tolerance when |z| ≤ 2.</p>")
        parts.append(page.csv_table(val, "validation table", keep=VALIDATION_COLUMNS))
        parts.append("<details><summary>Every column (validate/validation.csv)</summary>"
                     + page.csv_table(val, "validation table (all columns)") + "</details>")
    else:
        parts.append(page.missing("validate/validation.csv", "tregpd validate"))
    qual = out / "qualitative.csv"
    if qual.is_file():
        parts.append("<h3>Qualitative checks</h3>" + page.csv_table(qual, "qualitative checks",
                                                                   keep=QUALITATIVE_COLUMNS))
        parts.append("<details><summary>Every column (validate/qualitative.csv)</summary>"
                     + page.csv_table(qual, "qualitative checks (all columns)") + "</details>")
    figs = sorted(out.glob("validation_*.png")) + sorted(out.glob("validation_*.svg"))
    if figs:
        parts.append("<h3>Validation figures</h3>")
        parts.append('<div class="gallery">' + "\n".join(
            page.figure(f, f"Validation: {f.stem.removeprefix('validation_')}") for f in figs) + "</div>")
    return "\n".join(parts)


#: a column name that holds one end of a band: a word p5/p05/p95, lo/hi, lower/upper, band, pi, ci.., uncertainty..
_BAND_COLUMN = re.compile(r"(?:^|_)(p0?5|p95|lo|hi|lower|upper|band|pi|ci\d*|uncert\w*)(?:_|$)", re.IGNORECASE)


def _section_scenarios(page: _Page) -> str:
    folder = page.out / "scenarios"
    parts = []
    md, csv_path = folder / "comparison.md", folder / "comparison.csv"
    if md.is_file():
        parts.append("<p>The comparison as the scenario runner writes it (<code>scenarios/comparison.md</code>); "
                     "each band is what its column header names it.</p>")
        parts.append(page.markdown(md, "scenario comparison"))
    elif csv_path.is_file():
        parts.append(page.csv_table(csv_path, "scenario comparison"))
    else:
        parts.append(page.missing("scenarios/comparison.md", "tregpd scenarios run / tregpd all"))
    if csv_path.is_file():
        try:
            header, _, _ = read_csv(csv_path)
        except (OSError, UnicodeDecodeError, csv.Error):
            header = []
        bands = [h for h in header if _BAND_COLUMN.search(h)]
        if bands:
            parts.append("<p>Band columns in <code>comparison.csv</code>: "
                         + ", ".join(f"<code>{esc(b)}</code>" for b in bands) + ".</p>")
        if md.is_file():
            parts.append("<details><summary>Every column (scenarios/comparison.csv)</summary>"
                         + page.csv_table(csv_path, "scenario comparison (all columns)") + "</details>")
    figs = [folder / "comparison.png"] + sorted(p for p in folder.glob("comparison_*.png")) \
        + [folder / "dose_response.png"]
    figs = [f for f in figs if f.is_file()]
    if figs:
        parts.append("<h3>Comparison figures</h3>")
        parts += [page.figure(f, f.stem.replace("_", " ")) for f in figs]
    ans = folder / "answers.md"
    if ans.is_file():
        parts.append("<h3>Study questions</h3>" + page.markdown(ans, "answers to the study questions",
                                                                   heading_offset=3))
    traj = sorted(folder.glob("*/trajectories.png"))
    if traj:
        inner, listed = [], []
        for f in traj:
            if page.embedded_bytes + f.stat().st_size > MAX_EMBED_BYTES:
                listed.append(page.rel(f))
                continue
            inner.append(page.figure(f, f"Scenario {f.parent.name}"))
        if listed:
            inner.append(page.note(f"{len(listed)} scenario figures not embedded (page limit "
                                   f"{MAX_EMBED_BYTES // 2**20} MiB): " + ", ".join(listed)))
        parts.append(f"<details><summary>Each scenario's trajectories ({len(traj)} figures)</summary>"
                     + '<div class="gallery">' + "\n".join(inner) + "</div></details>")
    return "\n".join(parts)


def _section_assumptions(page: _Page) -> str:
    out = page.out
    parts = ["<h3>Assumptions of the main job</h3>"]
    general = _pipeline_assumptions()
    parts.append("<ul>" + "".join(f"<li>{_md_inline(a)}</li>" for a in general) + "</ul>" if general
                 else page.note("no general assumptions recorded"))
    parts.append("<h3>Assumptions of each scenario</h3>")
    folder = out / "scenarios"
    rows = _scenario_assumptions(page, folder) if folder.is_dir() else []
    with_text = [r for r in rows if r["assumption"]]
    if rows:
        parts.append(f"<p>{len(with_text)} of {len(rows)} scenarios state an assumption (the text of their "
                     "scenario file); the others are taken as published.</p>")
        cols = ["scenario", "question", "assumption", "source"]
        parts.append(html_table(cols, [[r[c] for c in cols] for r in with_text], numeric_format=False)
                     or page.note("no scenario states an assumption"))
    else:
        parts.append(page.missing("scenarios/<name>/provenance.json", "tregpd scenarios run / tregpd all"))
    parts.append("<h3>SAT0261 regimen hypotheses: how much the conclusions move</h3>")
    hyp = out / "hypotheses" / "hypotheses.md"
    if hyp.is_file():
        parts.append(page.markdown(hyp, "regimen hypotheses", heading_offset=3))
        hcsv = out / "hypotheses" / "hypotheses.csv"
        if hcsv.is_file():
            parts.append("<details><summary>Every column (hypotheses/hypotheses.csv)</summary>"
                         + page.csv_table(hcsv, "regimen hypotheses table") + "</details>")
    else:
        parts.append(page.missing("hypotheses/hypotheses.md", "tregpd hypotheses",
                                  "skipped by tregpd all --quick"))
    var = out / "variability" / "variability.md"
    if var.is_file():
        parts.append("<h3>Between-patient variability, residual error, responders</h3>"
                     + page.markdown(var, "variability", heading_offset=3))
        for f in sorted((out / "variability").glob("*.png")):
            parts.append(page.figure(f, f.stem.replace("_", " ")))
    sens = sorted((out / "sensitivity").glob("sensitivity_*.png")) if (out / "sensitivity").is_dir() else []
    if sens:
        parts.append("<h3>Local sensitivity of the outcomes to each parameter</h3>"
                     "<p>Normalised derivatives d ln(output)/d ln(parameter) at the calibrated typical patient: "
                     "how much each prior moves the outcomes.</p>")
        parts += [page.figure(f, f.stem.replace("_", " ")) for f in sens]
    parts.append("<h3>Parameters fixed at their priors</h3>")
    cal = out / "calibration" / "calibrated_parameters.toml"
    if cal.is_file():
        try:
            prow = _parameter_rows(_read_parameter_file(cal))
        except Exception as exc:
            parts.append(page.note(f"{page.rel(cal)} could not be read: {exc}"))
        else:
            priors = [r for r in prow if r["role"] == "prior"]
            priors.sort(key=lambda r: ("NOT IDENTIFIED" not in str(r["source"]), str(r["status"]), r["parameter"]))
            parts.append(f"<p>{len(priors)} of {len(prow)} parameters are not fitted: they keep their literature "
                         "value, with the status (VERIFIED / RECALLED / DERIVED / ASSUMPTION) given. Those the "
                         "joint fit could not identify are listed first.</p>")
            cols = ["parameter", "value", "unit", "status", "source"]
            parts.append(html_table(cols, [[r[c] for c in cols] for r in priors])
                         or page.note("no parameter is fixed at its prior"))
    else:
        parts.append(page.missing("calibration/calibrated_parameters.toml", "tregpd calibrate"))
    return "\n".join(parts)


def _section_files(page: _Page) -> str:
    rows = [[rel, created, what] for rel, created, what in page.files]
    table = html_table(["file", "created (UTC, from its provenance)", "what"], rows, numeric_format=False)
    notes = "".join(f"<li>{esc(n)}</li>" for n in page.notes)
    return (table or "<p>No file was read.</p>") + (
        f"<h3>Problems met while reading</h3><ul>{notes}</ul>" if notes else "")


#: the output sub-folders a tregpd output folder may hold (a folder with none of them is not one)
KNOWN_PARTS = ("calibration", "validate", "fit", "scenarios", "hypotheses", "variability", "reference",
               "sensitivity")


def build_report(out: str | Path, created: str | None = None) -> str:
    """The HTML text of the report of output folder ``out``.

    Parameters
    ----------
    out : the output folder of ``tregpd all`` (or any folder holding some of its sub-folders, see
        :data:`KNOWN_PARTS`)
    created : the creation time shown (ISO 8601, UTC); default now

    Returns
    -------
    str: a complete HTML5 document

    Raises
    ------
    tregpd.errors.OutputError: ``out`` is not a folder or holds none of the known sub-folders
    """
    from tregpd.errors import OutputError
    out = Path(out)
    if not out.is_dir():
        raise OutputError(f"report: output folder {out} does not exist or is not a folder")
    if not any((out / p).is_dir() for p in KNOWN_PARTS):
        raise OutputError(f"report: output folder {out} holds none of {', '.join(p + '/' for p in KNOWN_PARTS)}; "
                          f"run `tregpd all --out {out}` first")
    created = created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    page = _Page(out)
    # content sections first (they fill page.files and the model records the provenance section shows)
    body = {"fit": _section_fit(page), "validation": _section_validation(page),
            "scenarios": _section_scenarios(page), "assumptions": _section_assumptions(page)}
    git = git_revision()
    body["provenance"] = _section_provenance(page, created, git)
    body["files"] = _section_files(page)
    from tregpd import __version__
    nav = "".join(f'<a href="#{sid}">{esc(title)}</a>' for sid, title in SECTIONS)
    sections = "\n".join(f'<section id="{sid}"><h2>{esc(title)}</h2>\n{body[sid]}\n</section>'
                         for sid, title in SECTIONS)
    prov_json = json.dumps({"tregpd_version": __version__, "created_utc": created, "git": git,
                            "models": {k: sorted(v) for k, v in page.model_records.items()}})
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"generator\" content=\"tregpd {esc(__version__)}\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<!-- tregpd provenance: {esc(prov_json).replace('--', '- -')} -->\n"
            "<title>tregpd report: Th17/Treg balance in SLE under low-dose IL-2 and sirolimus</title>\n"
            f"<style>{_CSS}</style>\n</head>\n<body>\n<header><h1>tregpd report</h1>"
            "<p>Mechanistic PK/PD model of the Th17/Treg balance in SLE under low-dose IL-2 and sirolimus: fit, "
            f"validation, scenario comparison and assumptions. tregpd {esc(__version__)}, built {esc(created)} "
            f"from <code>{esc(out.name or str(out))}</code>.</p></header>\n<nav>{nav}</nav>\n<main>\n{sections}\n"
            "</main>\n</body>\n</html>\n")


def write_report(out: str | Path, path: str | Path | None = None) -> Path:
    """Build the report of output folder ``out`` and write it atomically to ``path`` (default
    ``out/report.html``); returns the path written."""
    path = Path(path) if path is not None else Path(out) / "report.html"
    text = build_report(out)
    from tregpd.io import atomic_write_text
    return atomic_write_text(path, text)


# ----------------------------------------------------------------------------------------------- CLI
def register(sub) -> None:
    p = sub.add_parser("report", help="write report.html (self-contained) from an existing output folder",
                       description="Build one self-contained HTML page (figures embedded, no external "
                                   "resource) from the files an earlier `tregpd all` (or the single commands) "
                                   "wrote under --out: provenance, the fit, model comparison and validation, the "
                                   "scenario comparison, the assumptions and their effect. Nothing is re-run.")
    p.add_argument("--out", type=Path, default=Path("out"), help="output folder to read (default out/)")
    p.add_argument("--html", type=Path, default=None, help="file to write (default <--out>/report.html)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.html is not None:
        from tregpd.safeio import resolve_output
        resolve_output(args.html, kind="file", what="--html file")
    path = write_report(args.out, args.html)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0
