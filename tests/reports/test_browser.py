"""The report in a real browser: headless Debian chromium through selenium and chromedriver.

Asserts no console errors, every figure rendered with data, no network request, and keeps a
screenshot in the test's output folder. Under CI (CI=true) the test must run: a missing
browser is a failure there (``make browser`` installs it); elsewhere it skips.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from analysis.results import load
from reports import render_html

CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)
DRIVER = shutil.which("chromedriver")
IN_CI = os.environ.get("CI", "").lower() == "true"

if not (CHROMIUM and DRIVER):
    if IN_CI:
        raise RuntimeError(
            "CI=true but chromium/chromedriver are missing: run `make browser` (apt-get install chromium chromium-driver)"
        )
    pytest.skip("chromium and chromedriver not installed (make browser)", allow_module_level=True)

webdriver = (
    pytest.importorskip("selenium.webdriver")
    if not IN_CI
    else __import__("selenium.webdriver", fromlist=["webdriver"])
)

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--window-size=1400,1000",
    # WebGL (the 3-D surface) on the CPU: chromium no longer falls back to SwiftShader silently
    "--enable-unsafe-swiftshader",
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for flag in FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        opts.add_argument(flag)
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    opts.add_experimental_option("perfLoggingPrefs", {"enableNetwork": True, "enablePage": False})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def _open(driver, path: Path) -> None:
    driver.get_log("browser"), driver.get_log("performance")  # drop what an earlier page left
    driver.get(path.resolve().as_uri())
    deadline = time.time() + 60
    while (
        time.time() < deadline
    ):  # plotly draws asynchronously: wait until every figure div has its SVG
        done = driver.execute_script(
            "const d = document.querySelectorAll('.plotly-graph-div');"
            "return d.length > 0 && Array.from(d).every(e => e.querySelector('.main-svg'));"
        )
        if done:
            break
        time.sleep(0.25)
    time.sleep(0.5)


def _requests(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    urls += driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    return urls


def test_report_renders_offline_without_errors(browser, tiny_study, tmp_path):
    page = tiny_study / "report.html"
    _open(browser, page)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    # chromium's own chrome:// resources are not network; anything with a network scheme is
    requests = [
        u
        for u in _requests(browser)
        if u.split(":", 1)[0].lower() in ("http", "https", "ws", "wss", "ftp")
    ]
    figures = browser.execute_script(
        "return Array.from(document.querySelectorAll('.plotly-graph-div')).map(e => ({id: e.id, svg: e.querySelectorAll('.main-svg').length,"
        " traces: (e.data || []).length, full: (e._fullData || []).length, marks: e.querySelectorAll('.trace, .hm, .contour, .gl-container, .barlayer .point').length}))"
    )
    expected = [
        f.name
        for f in __import__("reports.figures", fromlist=["build_figures"]).build_figures(
            load(tiny_study / "results.h5")
        )
    ]
    browser.set_window_size(
        1400, max(1000, browser.execute_script("return document.body.scrollHeight"))
    )
    shot = tmp_path / "report.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    assert not errors, errors
    assert not requests, requests
    assert [f["id"] for f in figures] == [f"fig-{n}" for n in expected]
    for f in figures:
        assert f["svg"] > 0 and f["traces"] > 0 and f["full"] == f["traces"] and f["marks"] > 0, f
    assert (
        browser.execute_script(
            "return document.querySelectorAll('#overview table tbody tr').length"
        )
        == 2
    )


def test_group_names_show_as_text(browser, tmp_path, write_results):
    from selenium.common.exceptions import NoAlertPresentException

    evil = "<script>alert(1)</script>"
    page = render_html(
        load(write_results(tmp_path / "x.h5", groups=(evil, "w-asym"), seeds=2)),
        tmp_path / "x.html",
    )
    _open(browser, page)
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert  # noqa: B018 - an injected script would have opened one
    cells = browser.execute_script(
        "return Array.from(document.querySelectorAll('#overview td')).map(td => td.textContent)"
    )
    assert evil in cells
    legend = browser.execute_script(
        "return Array.from(document.querySelectorAll('#fig-interpolation .legendtext')).map(t => t.textContent)"
    )
    assert evil in legend
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_bnn_and_calibration_figures_draw(browser, tmp_path, write_results):
    """The synthetic writer's file holds every analysis, BNN curves and reliability diagrams
    included: every figure the report builds draws with data."""
    res = load(write_results(tmp_path / "all.h5", seeds=2))
    page = render_html(res, tmp_path / "all.html")
    _open(browser, page)
    expected = [
        f.name for f in __import__("reports.figures", fromlist=["build_figures"]).build_figures(res)
    ]
    assert {"bnn-curves", "reliability"} <= set(expected)
    figures = browser.execute_script(
        "return Array.from(document.querySelectorAll('.plotly-graph-div')).map(e => ({id: e.id,"
        " svg: e.querySelectorAll('.main-svg').length, traces: (e.data || []).length,"
        " full: (e._fullData || []).length, marks: e.querySelectorAll('.trace, .hm, .contour,"
        " .gl-container, .barlayer .point').length}))"
    )
    assert [f["id"] for f in figures] == [f"fig-{n}" for n in expected]
    for f in figures:
        assert f["svg"] > 0 and f["traces"] > 0 and f["full"] == f["traces"] and f["marks"] > 0, f
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
