"""The HTML report builder (tregpd/report.py), on a small hand-made output folder: every section present, every
figure embedded byte for byte, nothing loaded from outside the page, every string from a file escaped, tables
equal to the files they come from, missing inputs noted instead of empty tables, and the ``tregpd report``
command. The page in a real browser: tests/test_report_browser.py."""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tregpd import report as R
from tregpd.cli import main
from tregpd.errors import OutputError

EVIL = '<script>alert("x")</script> & "quoted" \'single\''


def tiny_png(width: int = 3, height: int = 2, rgb=(200, 30, 30)) -> bytes:
    """A valid RGB PNG written with zlib and struct only (independent of the code under test)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


class Parsed(HTMLParser):
    """Every start tag with its attributes, the text of each table's rows, and the visible text."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.tables: list[list[list[str]]] = []
        self.text: list[str] = []
        self._cell = None
        self._stack = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self.tables and self.tables[-1]:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def write_csv(path: Path, header, rows, prov: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    for k, v in (prov or {}).items():
        buf.write(f"# {k}: {json.dumps(v)}\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    path.write_text(buf.getvalue())


PARAMS_TOML = """[meta]
name = "calibrated v2_lean"
description = "test set"

[alpha]
value = 0.25
unit = "1/d"
lower = 0.01
upper = 2.0
fitted = true
status = "DERIVED"
source = "fitted here | CALIBRATED"
role = "calibrated"

[beta]
value = 12.5
unit = "cells/uL"
lower = 1.0
upper = 100.0
fitted = false
status = "RECALLED"
source = "a book <b>bold</b> | profile flat in the joint fit: NOT IDENTIFIED by the calibration dataset"

[gamma]
value = 3.0
unit = "1"
lower = 1.0
upper = 10.0
fitted = false
status = "VERIFIED"
source = "Smith 2020"
"""


@pytest.fixture
def outdir(tmp_path) -> Path:
    """A small output folder laid out as `tregpd all` writes it (hand-made files)."""
    out = tmp_path / "out"
    model = {"name": "v2_lean", "declaration": "abc123def456"}
    (out / "calibration").mkdir(parents=True)
    (out / "calibration" / "calibrated_parameters.toml").write_text(PARAMS_TOML)
    write_csv(out / "calibration" / "model_comparison.csv", ["model", "chi2", "aic", "chosen", "hypotheses"],
              [["v2_lean", "20.85", "38.85", "True", "long text"], ["v1_waning", "20.08", "42.08", "False", "x"]])
    (out / "calibration" / "profiles.png").write_bytes(tiny_png(4, 4))
    (out / "fit").mkdir()
    (out / "fit" / "fit.png").write_bytes(tiny_png(5, 3))
    write_csv(out / "fit" / "residuals.csv", ["week", "observable", "value"], [["24", "treg", "0.123456789"]])
    prov = {"tregpd_version": "0.1.0", "created_utc": "2026-12-02T07:00:00+00:00", "seed": 7, "model": model}
    write_csv(out / "validate" / "validation.csv", ["study", "observable", "predicted", "predicted_p5", "z",
                                                    "in_tolerance"],
              [["sat0261", "treg", "14.2", "9.1", "-0.4", "True"], ["koreth", "treg_fold", "1.9", "1.2", "1.1",
                                                                    "True"],
               ["he2020", "ratio", "nan", "nan", "nan", "False"]], prov)
    write_csv(out / "validate" / "qualitative.csv", ["study", "criterion", "pass"], [["lai", "ratio falls", "True"]],
              prov)
    (out / "validate" / "validation_sat0261.png").write_bytes(tiny_png(6, 2))
    (out / "validate" / "validation_koreth.png").write_bytes(tiny_png(2, 6))
    sc = out / "scenarios"
    sc.mkdir()
    (sc / "comparison.md").write_text(
        "| scenario | Treg wk24 [between-patient 5-95 %] | Treg wk24 [uncertainty of the median] |\n"
        "|---|---|---|\n| shanxi_reference | 30.1 [20.0–41.2] | 30.1 [25.3–35.0] |\n"
        "| sirolimus_alone | 18.0 [12.1–25.5] | 18.0 [16.0–20.2] |\n")
    write_csv(sc / "comparison.csv", ["scenario", "treg_median_w24", "treg_p05_w24", "treg_p95_w24",
                                      "treg_median_lo_w24"],
              [["shanxi_reference", "30.1", "20.0", "41.2", "25.3"], ["sirolimus_alone", "18.0", "12.1", "25.5",
                                                                      "16.0"]], prov)
    (sc / "comparison.png").write_bytes(tiny_png(8, 4))
    (sc / "answers.md").write_text("# Answers\n\n* **IL-2 dose**: more is *not* better\n")
    for name, assumption, regimen_assumption in (("shanxi_reference", EVIL, EVIL), ("sirolimus_alone", "", ""),
                                                 ("dense", "", "every 2 weeks")):
        (sc / name).mkdir()
        (sc / name / "trajectories.png").write_bytes(tiny_png(3, 3))
        # laid out as Scenario.to_dict() writes it (tests/test_report_browser.py reads the runner's own files)
        (sc / name / "provenance.json").write_text(json.dumps(
            {"tregpd_version": "0.1.0", "created_utc": "2026-12-02T07:01:00+00:00", "model": model,
             "scenario": {"scenario": {"name": name, "question": "reference", "source": "SAT0261",
                                       "assumption": assumption},
                          "regimen": {"assumption": regimen_assumption, "schedules": []}}}))
    (out / "hypotheses").mkdir()
    (out / "hypotheses" / "hypotheses.md").write_text(
        "# SAT0261 regimen uncertainty\n\nEvery hypothesis is an ASSUMPTION.\n\n## Fits\n\n"
        "| hypothesis | chi2 | combo Treg fold |\n|---|---|---|\n| reference | 20.9 | 2.1 |\n| dense | 22.0 | 2.6 |\n")
    write_csv(out / "hypotheses" / "hypotheses.csv", ["hypothesis", "chi2"], [["reference", "20.9"],
                                                                              ["dense", "22.0"]])
    (out / "sensitivity").mkdir()
    (out / "sensitivity" / "sensitivity_local.png").write_bytes(tiny_png(7, 7))
    return out


def build(out: Path) -> str:
    return R.build_report(out, created="2026-12-02T08:00:00+00:00")


def test_every_section_is_present_in_order_with_its_nav_link(outdir):
    page = build(outdir)
    parsed = Parsed(page)
    ids = [a["id"] for t, a in parsed.tags if t == "section"]
    assert ids == [sid for sid, _ in R.SECTIONS]
    links = [a["href"] for t, a in parsed.tags if t == "a" and a.get("href", "").startswith("#")]
    assert [f"#{sid}" for sid, _ in R.SECTIONS] == links[:len(R.SECTIONS)]
    for _, title in R.SECTIONS:
        assert f"<h2>{html.escape(title)}</h2>" in page
    for heading in ("Parameters", "Joint calibration: model comparison", "Fit of the SAT0261 cohort medians",
                    "Validation, study by study",
                    "Qualitative checks", "Validation figures", "Comparison figures",
                    "Assumptions of each scenario", "Parameters fixed at their priors",
                    "Local sensitivity of the outcomes to each parameter"):
        assert f"<h3>{html.escape(heading)}</h3>" in page, heading


def test_every_figure_is_embedded_byte_for_byte(outdir):
    page = build(outdir)
    srcs = [a["src"] for t, a in Parsed(page).tags if t == "img"]
    pngs = sorted(outdir.rglob("*.png"))
    assert len(srcs) == len(pngs) == 9
    embedded = sorted(base64.b64decode(s.removeprefix("data:image/png;base64,")) for s in srcs)
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert embedded == sorted(p.read_bytes() for p in pngs)


def test_svg_figures_are_embedded_and_other_files_refused(tmp_path):
    svg = tmp_path / "f.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><rect width="4" height="4"/></svg>')
    block = R.embed_image(svg, caption="a <caption>")
    src = Parsed(block).tags[1][1]["src"]
    assert base64.b64decode(src.removeprefix("data:image/svg+xml;base64,")) == svg.read_bytes()
    assert "a &lt;caption&gt;" in block
    bad = tmp_path / "g.png"
    bad.write_bytes(b"GIF89a not a png")
    with pytest.raises(ValueError, match="g.png is not a PNG or SVG"):
        R.embed_image(bad)


def test_no_external_resource_script_or_link(outdir):
    page = build(outdir)
    parsed = Parsed(page)
    tags = {t for t, _ in parsed.tags}
    assert not tags & {"script", "link", "iframe", "object", "embed", "base", "form"}
    for tag, attrs in parsed.tags:
        for name in ("src", "href", "srcset", "action", "poster", "data"):
            if name in attrs:
                value = attrs[name]
                assert value.startswith(("data:image/", "#")), (tag, name, value[:80])
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)
    style = page[page.index("<style>"):page.index("</style>")]
    assert "url(" not in style and "@import" not in style


def test_strings_from_files_are_escaped(outdir):
    page = build(outdir)
    # the hostile assumption string appears only escaped, and the parser finds no script tag
    assert EVIL not in page
    assert html.escape(EVIL, quote=True) in page
    parsed = Parsed(page)
    assert "script" not in {t for t, _ in parsed.tags}
    assert EVIL in "".join(parsed.text)
    # a tag inside a parameter source stays text
    assert "a book &lt;b&gt;bold&lt;/b&gt;" in page and "<b>" not in page


def test_tables_equal_their_files(outdir):
    parsed = Parsed(build(outdir))
    tables = {tuple(t[0]): t[1:] for t in parsed.tables if t}
    # the parameter table: every entry of the TOML file, calibrated first, values as written
    params = tables[("parameter", "value", "unit", "lower", "upper", "role", "status", "source")]
    assert [r[0] for r in params] == ["alpha", "beta", "gamma"]
    assert params[0][1:6] == ["0.25", "1/d", "0.01", "2", "calibrated"]
    assert params[1][5] == "prior" and params[1][6] == "RECALLED"
    # the model comparison without its long "hypotheses" column
    assert tables[("model", "chi2", "aic", "chosen")] == [["v2_lean", "20.85", "38.85", "True"],
                                                         ["v1_waning", "20.08", "42.08", "False"]]
    # the validation table: one row per CSV row, NaN shown as a dash; the chosen columns first (those present,
    # in VALIDATION_COLUMNS order), every column in the folded table
    val = tables[("study", "observable", "predicted", "predicted_p5", "z", "in_tolerance")]
    assert [r[0] for r in val] == ["sat0261", "koreth", "he2020"]
    assert val[2][2:5] == ["–", "–", "–"]
    assert tables[("study", "criterion", "pass")] == [["lai", "ratio falls", "True"]]
    # 4 significant digits
    assert tables[("week", "observable", "value")] == [["24", "treg", "0.1235"]]
    # the comparison as the runner wrote it, band headers as named there
    comp = tables[("scenario", "Treg wk24 [between-patient 5-95 %]", "Treg wk24 [uncertainty of the median]")]
    assert comp == [["shanxi_reference", "30.1 [20.0–41.2]", "30.1 [25.3–35.0]"],
                    ["sirolimus_alone", "18.0 [12.1–25.5]", "18.0 [16.0–20.2]"]]
    # the hypotheses table from hypotheses.md, and the priors table: beta (not identified) before gamma
    assert tables[("hypothesis", "chi2", "combo Treg fold")] == [["reference", "20.9", "2.1"],
                                                                ["dense", "22.0", "2.6"]]
    priors = tables[("parameter", "value", "unit", "status", "source")]
    assert [r[0] for r in priors] == ["beta", "gamma"]
    # scenario assumptions: only the scenario that states one
    assumptions = tables[("scenario", "question", "assumption", "source")]
    assert assumptions == [["dense", "reference", "every 2 weeks", "SAT0261"],
                           ["shanxi_reference", "reference", EVIL, "SAT0261"]]


def test_every_table_has_rows_and_band_columns_are_named(outdir):
    page = build(outdir)
    parsed = Parsed(page)
    assert len(parsed.tables) >= 10
    for t in parsed.tables:
        assert len(t) >= 2, t      # a header row and at least one data row
    for col in ("treg_p05_w24", "treg_p95_w24", "treg_median_lo_w24"):
        assert f"<code>{col}</code>" in page
    assert "<code>treg_median_w24</code>" not in page


def test_provenance_in_the_page(outdir):
    from tregpd import __version__
    page = build(outdir)
    text = " ".join(Parsed(page).text)
    assert f"tregpd {__version__}" in text and "2026-12-02T08:00:00+00:00" in text
    git = R.git_revision()
    assert git in text
    assert "declaration abc123def456 in the outputs" in text
    # the recorded hash is not the current code's: the page says so
    assert "DIFFERS from the outputs" in text
    assert "seed(s) 7" in text.replace("\n", " ") or "7" in text
    import hashlib
    digest = hashlib.sha256((outdir / "calibration" / "calibrated_parameters.toml").read_bytes()).hexdigest()
    assert digest[:16] in text
    # the files read, with the creation time from their provenance
    files = {r[0]: r[1] for r in next(t for t in Parsed(page).tables if t and t[0][0] == "file")[1:]}
    assert files["validate/validation.csv"] == "2026-12-02T07:00:00+00:00"
    assert files["scenarios/shanxi_reference/provenance.json"] == "2026-12-02T07:01:00+00:00"


def test_current_declaration_hash_is_not_flagged(outdir):
    from tregpd.io import model_record
    rec = model_record("v2_lean")
    p = outdir / "validate" / "validation.csv"
    p.write_text(p.read_text().replace("abc123def456", rec["declaration"]))
    for f in (outdir / "scenarios").glob("*/provenance.json"):
        f.write_text(f.read_text().replace("abc123def456", rec["declaration"]))
    text = " ".join(Parsed(build(outdir)).text)
    assert f"current code {rec['declaration']}" in text and "DIFFERS" not in text


def test_git_revision_outside_a_checkout(tmp_path):
    assert R.git_revision(tmp_path) == "not a git checkout"


def test_missing_inputs_are_noted_never_empty_tables(tmp_path):
    out = tmp_path / "out"
    (out / "scenarios").mkdir(parents=True)
    (out / "scenarios" / "comparison.md").write_text("| a | b |\n|---|---|\n| 1 | 2 |\n")
    page = build(out)
    parsed = Parsed(page)
    for rel in ("calibration/calibrated_parameters.toml", "calibration/model_comparison.csv", "fit/fit.png",
                "validate/validation.csv", "hypotheses/hypotheses.md"):
        assert f"<code>{rel}</code> is absent" in page, rel
    for t in parsed.tables:
        assert len(t) >= 2
    assert [a["id"] for t, a in parsed.tags if t == "section"] == [sid for sid, _ in R.SECTIONS]


def test_unreadable_inputs_become_notes(outdir):
    (outdir / "fit" / "fit.png").write_bytes(b"not an image")
    (outdir / "scenarios" / "sirolimus_alone" / "provenance.json").write_text("{broken")
    page = build(outdir)
    assert "figure fit/fit.png could not be embedded" in page
    assert "scenarios/sirolimus_alone/provenance.json could not be read" in page
    assert "Problems met while reading" in page


def test_embedding_budget_lists_the_rest(outdir, monkeypatch):
    monkeypatch.setattr(R, "MAX_EMBED_BYTES", 1)
    page = build(outdir)
    assert "3 scenario figures not embedded" in page
    assert "shanxi_reference/trajectories.png" in page


def test_not_an_output_folder(tmp_path):
    with pytest.raises(OutputError, match="holds none of calibration/"):
        R.build_report(tmp_path)
    with pytest.raises(OutputError, match="does not exist"):
        R.build_report(tmp_path / "nope")


def test_markdown_subset():
    md = ("# Title\n\nSome `a<b` and **bold** and *em* text\ncontinued.\n\n"
          "- one\n- two with [link](http://example.org)\n\n1. first\n2. second\n\n"
          "```\nx < y\n```\n\n| h1 | h2 |\n|:---|---:|\n| a \\| b | 2 |\n")
    out = R.markdown_to_html(md, heading_offset=2)
    assert "<h3>Title</h3>" in out
    assert "<p>Some <code>a&lt;b</code> and <strong>bold</strong> and <em>em</em> text continued.</p>" in out
    assert "<ul><li>one</li><li>two with link (http://example.org)</li></ul>" in out
    assert "href" not in out
    assert "<ol><li>first</li><li>second</li></ol>" in out
    assert "<pre>x &lt; y</pre>" in out
    t = Parsed(out).tables[0]
    assert t == [["h1", "h2"], ["a | b", "2"]]
    assert R.markdown_to_html("##### deep", heading_offset=3) == "<h6>deep</h6>"


@pytest.mark.parametrize("cell, shown, num", [("3", "3", True), ("0.123456", "0.1235", True),
                                              ("-0.00001", "-1e-05", True), ("nan", "–", True),
                                              ("12345678.9", "1.235e+07", True), ("True", "True", False),
                                              ("", "", False), ("-0.00000", "0", True), ("inf", "inf", True)])
def test_cell_format(cell, shown, num):
    assert R._fmt_cell(cell) == (shown, num)


def test_cli_writes_the_report_atomically(outdir, capsys):
    assert main(["report", "--out", str(outdir)]) == 0
    path = outdir / "report.html"
    assert path.is_file() and f"wrote {path}" in capsys.readouterr().out
    assert path.read_text().startswith("<!DOCTYPE html>")
    assert not list(outdir.glob(".report.html.*"))      # no temporary file left
    other = outdir.parent / "elsewhere" / "r.html"
    assert main(["report", "--out", str(outdir), "--html", str(other)]) == 0
    assert other.is_file()


def test_cli_refuses_a_folder_without_outputs(tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "tregpd report: error:" in err and str(tmp_path) in err
    assert main(["report", "--out", str(tmp_path), "--html", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_summary_and_report_list_the_same_assumptions(outdir):
    from tregpd.pipeline import ASSUMPTIONS
    page = build(outdir)
    assert len(ASSUMPTIONS) >= 3
    for a in ASSUMPTIONS:
        assert R._md_inline(a) in page


def test_validation_shows_the_chosen_columns_then_all(outdir):
    p = outdir / "validate" / "validation.csv"
    write_csv(p, ["id", "study", "weight_class", "z", "observable", "extra"],
              [["s-1", "sat0261", "calibration", "0.5", "treg", "x"]])
    tables = {tuple(t[0]): t[1:] for t in Parsed(build(outdir)).tables if t}
    assert tables[("study", "observable", "z")] == [["sat0261", "treg", "0.5"]]
    assert tables[("id", "study", "weight_class", "z", "observable", "extra")] == [
        ["s-1", "sat0261", "calibration", "0.5", "treg", "x"]]


def test_calibration_studies_are_listed_once():
    tail = "SAT0261 (Shanxi, SLE), Feng 2019 (Shanxi course)"
    rows = [{"source": f"lit A | BOUNDED ONLY by the joint fit (v2_lean, typical mode) to: {tail}"},
            {"source": f"lit B | CALIBRATED by the joint fit (v2_lean) to: {tail}"},
            {"source": "Smith 2020: cells to: nothing"}]
    assert R._factor_studies(rows) == tail
    assert rows[0]["source"] == ("lit A | BOUNDED ONLY by the joint fit (v2_lean, typical mode) to: "
                                 "the calibration studies")
    assert rows[1]["source"].endswith("to: the calibration studies")
    assert rows[2]["source"] == "Smith 2020: cells to: nothing"
    single = [{"source": f"lit A | by the joint fit to: {tail}"}]
    assert R._factor_studies(single) == "" and single[0]["source"].endswith(tail)
