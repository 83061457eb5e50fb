"""report.html in a real headless browser (Debian's chromium + chromium-driver, driven by selenium).

The output folder is made by a small real run (module fixture, ~40 s): the joint calibration of the default
structure alone without profiles, validation of four studies with 8 virtual patients each, the seed-cohort fit (typical
mode), two SAT0261 regimen hypotheses with a small evaluation budget, three library scenarios with 8 patients,
the local sensitivities; then ``tregpd report`` builds the page. The browser opens it from disk and checks that
every image has loaded (naturalWidth > 0) and is drawn once its folded section is opened, that every table has
body rows and is drawn, that the console shows no error, and that nothing was fetched from anywhere.

Screenshot artifact: ``report.png`` (and the ``report.html`` it shows) in ``$TREGPD_TEST_ARTIFACTS`` when that
variable is set (``.ci/run`` sets it to ``out/test-artifacts``), else in the pytest temporary folder
(``<basetemp>/report_artifacts0/``); the path is printed.

Without chromium, chromium-driver or selenium the test is skipped, unless ``TREGPD_REQUIRE_BROWSER=1`` (set by
``.ci/run``, which installs them), where it fails.
"""
from __future__ import annotations

import argparse
import base64
import html
import os
import shutil
from pathlib import Path

import pytest

from tregpd import report as R
from tregpd.cli import main

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: flags this machine needs (root, no GPU, no network): see the README's "Report" section
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage")
SCENARIOS = ("shanxi_reference", "charite_1p5miu_x5", "sirolimus_alone")
#: the studies validated in the small run (their rows of the calibration dataset)
VALIDATED_STUDIES = ("sat0261", "koreth_2011", "lai_2018", "kirchner_1998")



def browser_missing(paths=(CHROMIUM, CHROMEDRIVER)) -> str | None:
    """Why the browser test cannot run here (None: it can)."""
    for path in paths:
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{path} not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed (pip install -e '.[test]')"
    return None


def browser_verdict(why: str | None, environ) -> str | None:
    """"fail" or "skip" when the browser is missing (fail when TREGPD_REQUIRE_BROWSER is set, as in CI), else
    None."""
    if why is None:
        return None
    return "fail" if environ.get("TREGPD_REQUIRE_BROWSER", "") not in ("", "0") else "skip"


@pytest.fixture(scope="module")
def browser_or_skip():
    why = browser_missing()
    verdict = browser_verdict(why, os.environ)
    if verdict == "fail":
        pytest.fail(f"TREGPD_REQUIRE_BROWSER is set but {why}")
    if verdict == "skip":
        pytest.skip(why)


def test_missing_browser_skips_locally_fails_in_ci(tmp_path):
    why = browser_missing((str(tmp_path / "no-chromium"),))
    assert why == f"{tmp_path / 'no-chromium'} not installed (apt-get install chromium chromium-driver)"
    assert browser_verdict(why, {}) == "skip"
    assert browser_verdict(why, {"TREGPD_REQUIRE_BROWSER": "0"}) == "skip"
    assert browser_verdict(why, {"TREGPD_REQUIRE_BROWSER": "1"}) == "fail"
    assert browser_verdict(None, {"TREGPD_REQUIRE_BROWSER": "1"}) is None


def test_ci_requires_and_installs_the_browser():
    """.ci/run installs chromium + chromium-driver when missing and sets TREGPD_REQUIRE_BROWSER=1 before the
    tests (checked on the script text: running it would run the whole suite)."""
    text = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    install = text.index("apt-get install -y -qq chromium chromium-driver")
    require = text.index("export TREGPD_REQUIRE_BROWSER=1")
    assert install < require < text.index("make test")
    for path in (CHROMIUM, CHROMEDRIVER):
        assert f"[ -x {path} ]" in text


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, browser_or_skip) -> Path:
    """A small but real output folder, laid out as `tregpd all` writes it."""
    from tregpd.fitting import run_fit
    from tregpd.fitting.calibrate import run_calibration
    from tregpd.fitting.hypotheses_cli import run as run_hypotheses
    from tregpd.fitting.validate import load_calibration, validate
    from tregpd.model.parameters import load_parameters
    from tregpd.scenarios import library_paths, run_library
    from tregpd.scenarios.scale_cli import write_sensitivity

    out = tmp_path_factory.mktemp("report_run") / "out"
    cal = run_calibration(out / "calibration", models=["v2_lean"], do_profiles=False, progress=lambda m: None)
    params = load_parameters(cal["files"]["parameters"])
    calibration = load_calibration()
    calibration = calibration[calibration["study_slug"].isin(VALIDATED_STUDIES)]
    validate(params, population=8, seed=3, out=out / "validate", model="v2_lean", calibration=calibration)
    run_fit(None, out / "fit", mode="typical", seed=3, accept_poor_fit=True)
    run_hypotheses(argparse.Namespace(out=out / "hypotheses", model="v2_lean", only=["q4w_trough", "q2w_trough"],
                                      max_nfev=30, workers=1))
    write_sensitivity(params, out / "sensitivity", methods=("local",), plot=True)
    paths = [p for p in library_paths() if p.stem in SCENARIOS]
    run_library(paths, out / "scenarios", parameters=params, population=8, output_step_day=2.0)
    assert main(["report", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    env = os.environ.get("TREGPD_TEST_ARTIFACTS")
    folder = Path(env) if env else tmp_path_factory.mktemp("report_artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _driver(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile}")        # a fresh profile for every run
    opts.add_argument("--window-size=1400,1000")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the driver path is given: selenium-manager is never run, nothing is downloaded
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def _full_page_png(driver) -> bytes:
    size = driver.execute_script("return [document.documentElement.scrollWidth, "
                                 "document.documentElement.scrollHeight];")
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size[0], "height": min(size[1], 16000), "scale": 1}})
    return base64.b64decode(shot["data"])


@pytest.mark.slow
def test_report_renders_in_headless_chromium(small_run, artifacts, tmp_path, capsys):
    page = small_run / "report.html"
    text = page.read_text()
    # the assumption of a library scenario file, as the runner recorded it, is in the assumptions table
    from tregpd.scenarios import library_paths, load_scenario
    charite = load_scenario(next(p for p in library_paths() if p.stem == "charite_1p5miu_x5"))
    assert charite.assumption.startswith("ASSUMPTION")
    assert (f"<td>charite_1p5miu_x5</td><td>trial_regimens</td><td>{html.escape(charite.assumption)}</td>"
            in text)
    n_embedded = text.count('src="data:image/png;base64,')
    n_png = len(list(small_run.rglob("*.png")))
    assert n_embedded == n_png >= 10        # every figure the run wrote is in the page

    driver = _driver(tmp_path / "chromium-profile")
    try:
        driver.get(page.resolve().as_uri())
        assert driver.title.startswith("tregpd report")
        # every section is there and shown
        for sid, title in R.SECTIONS:
            el = driver.find_element("id", sid)
            assert el.is_displayed() and title in el.text, sid
        # every image has loaded, including those inside folded <details>
        imgs = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt]);")
        assert len(imgs) == n_embedded
        bad = [i for i in imgs if not (i[0] and i[1] > 0 and i[2] > 0)]
        assert not bad, bad
        # every table has body rows
        rows = driver.execute_script(
            "return Array.from(document.querySelectorAll('table')).map(t => t.querySelectorAll('tbody tr').length);")
        assert len(rows) >= 10 and min(rows) >= 1, rows
        # the page asked nothing from anywhere (data: URIs are no fetch)
        fetched = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith('data:'));")
        assert fetched == []
        png = _full_page_png(driver)
        # unfold every <details>: then every image and table is drawn with a size
        driver.execute_script("document.querySelectorAll('details').forEach(d => d.open = true);")
        drawn = driver.execute_script(
            "return [Array.from(document.images).filter(i => i.getBoundingClientRect().width < 1).length, "
            "Array.from(document.querySelectorAll('table')).filter(t => t.getBoundingClientRect().height < 1)"
            ".length];")
        assert drawn == [0, 0], drawn
        errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert errors == [], errors
    finally:
        driver.quit()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    shot = artifacts / "report.png"
    shot.write_bytes(png)
    shutil.copyfile(page, artifacts / "report.html")
    with capsys.disabled():
        print(f"\nreport screenshot: {shot}")
