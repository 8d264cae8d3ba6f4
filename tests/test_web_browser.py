"""The web page in a real headless browser: Debian's chromium driven by selenium through Debian's
chromedriver (`apt-get install chromium chromium-driver`), against a real `dnsbl web` process. A person
types an address, reads the answer, sends a delisting request, and the operator's plots render.
Screenshots go to tests/screenshots/ (git-ignored) for a person to look at."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from test_web import TOKEN, TRAP, WebServer, listed_db, requests_json, write_config  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SHOTS = Path(__file__).parent / "screenshots"

if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("needs Debian's chromium and chromium-driver", allow_module_level=True)


@pytest.fixture
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1400"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    driver.implicitly_wait(10)  # find_element retries until the element is there (the page may be loading)
    yield driver
    driver.quit()


@pytest.fixture
def site(listed_db: Path, tmp_path: Path) -> Iterator[WebServer]:  # noqa: F811 (the fixture)
    server = WebServer(listed_db, write_config(tmp_path / "web.toml", token=TOKEN))
    yield server
    server.close()


def leaving(driver: Any, action: Any) -> None:
    """Do `action` (a click or submit that loads a new page) and wait until the old page is gone:
    neither waits for the navigation, and the old page's elements would answer find_element meanwhile."""
    old = driver.find_element(By.TAG_NAME, "html")
    action()
    WebDriverWait(driver, 30).until(expected_conditions.staleness_of(old))


def shot(driver: Any, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def test_lookup_request_and_plots_in_a_browser(browser: Any, site: WebServer, listed_db: Path) -> None:  # noqa: F811
    browser.get(site.base + "/")
    assert "Listing policy" in browser.find_element(By.ID, "policy").text
    box = browser.find_element(By.ID, "ip")
    box.send_keys("203.0.113.9")
    shot(browser, "1-home")
    leaving(browser, box.submit)
    verdict = browser.find_element(By.CSS_SELECTOR, "section.address .verdict")
    assert verdict.text == "LISTED"
    assert browser.find_element(By.CSS_SELECTOR, "td.first-hit").text == "2026-11-20T10:00:00Z"
    assert "autoreply: 2, bounce: 1" in browser.find_element(By.CSS_SELECTOR, "td.by-kind").text
    assert TRAP not in browser.page_source
    color = verdict.value_of_css_property("color")  # the stylesheet loaded under the CSP
    assert color in ("rgba(176, 58, 46, 1)", "rgb(176, 58, 46)"), color
    shot(browser, "2-lookup-listed")

    leaving(browser, browser.find_element(By.CSS_SELECTOR, "a.delist").click)
    assert browser.find_element(By.ID, "ip").get_attribute("value") == "203.0.113.9"
    browser.find_element(By.ID, "email").send_keys("postmaster@relay.example.net")
    browser.find_element(By.ID, "reason").send_keys("Fixed: we reject at SMTP time now. <b>really</b>")
    shot(browser, "3-request-form")
    leaving(browser, browser.find_element(By.CSS_SELECTOR, "#delist button").click)
    assert "Request #1 to delist 203.0.113.9" in browser.find_element(By.CSS_SELECTOR, "p.ok").text
    shot(browser, "4-request-sent")
    assert [r["reason"] for r in requests_json(listed_db)] == [
        "Fixed: we reject at SMTP time now. <b>really</b>"
    ]

    browser.get(site.base + "/lookup?ip=" + "1.2.3")
    assert "not an address" in browser.find_element(By.CSS_SELECTOR, "p.error").text
    shot(browser, "5-lookup-malformed")

    browser.get(f"{site.base}/operator?token={TOKEN}")
    figures = browser.find_elements(By.CSS_SELECTOR, "figure svg")
    assert len(figures) == 3
    assert all(f.size["width"] >= 600 and f.size["height"] >= 60 for f in figures)
    bars = browser.find_elements(By.CSS_SELECTOR, "rect.bar")
    assert len(bars) >= 3 and all(b.size["width"] > 0 and b.size["height"] > 0 for b in bars)
    line = browser.find_element(By.CSS_SELECTOR, "polyline.series")
    assert line.size["width"] > 300  # the listings line spans the plot
    assert "<b>really</b>" in browser.find_element(By.CSS_SELECTOR, "td.reason").text  # shown as text
    shot(browser, "6-operator")
    assert run_cli("requests", "approve", "1", db=listed_db).returncode == 0
    browser.get(site.base + "/lookup?ip=203.0.113.9")
    assert browser.find_element(By.CSS_SELECTOR, "section.address .verdict").text == "not listed"
    shot(browser, "7-after-approval")
