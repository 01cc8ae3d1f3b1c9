"""The page in a real browser: headless Chromium opens /, uploads a photo, and the results and the
map appear. Skipped (with the reason printed) only where no Chromium/chromedriver is installed;
CI installs Debian's chromium and chromium-driver (.ci/run)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from serve_helpers import make_index, running_server  # noqa: E402


def _browser() -> tuple[str, str] | str:
    """(chromium, chromedriver) paths, or why there are none."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    names = ("chromium", "chromium-browser", "google-chrome")
    chromium = next((p for p in map(shutil.which, names) if p), None)
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        return ("no headless browser: install Debian's chromium and chromium-driver "
                "(apt-get install chromium chromium-driver)")
    return chromium, driver


@pytest.mark.slow
def test_page_uploads_a_photo_and_shows_results_and_map(tmp_path):
    found = _browser()
    if isinstance(found, str):
        print(f"SKIPPED browser test: {found}")
        pytest.skip(found)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver_path = found
    idx, names, utm = make_index(tmp_path)
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    shot = tmp_path / "serve_page.png"
    with running_server(idx) as url:
        # An explicit driver path: Selenium Manager would otherwise try to download one.
        browser = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
        try:
            browser.set_page_load_timeout(60)
            browser.get(url + "/")
            wait = WebDriverWait(browser, 60)
            wait.until(ec.text_to_be_present_in_element((By.ID, "about"), "8 database images"))
            assert len(browser.find_elements(By.CSS_SELECTOR, "#map circle.db")) == 8
            browser.find_element(By.ID, "k").clear()
            browser.find_element(By.ID, "k").send_keys("3")
            browser.find_element(By.ID, "file").send_keys(str(Path(tmp_path / names[6]).resolve()))
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#results .match")) == 3)
            cards = browser.find_elements(By.CSS_SELECTOR, "#results .match")
            assert names[6] in cards[0].text and "#1" in cards[0].text
            # thumbnails of the database images loaded
            wait.until(lambda b: b.execute_script(
                "return [...document.querySelectorAll('#results img')]"
                ".every(i => i.complete && i.naturalWidth > 0)"))
            assert len(browser.find_elements(By.CSS_SELECTOR, "#map circle.match")) == 3
            assert len(browser.find_elements(By.CSS_SELECTOR, "#map path.estimate")) == 1
            assert "Estimated location: lat 40.4" in browser.find_element(By.ID, "estimate").text
            assert "3 matches" in browser.find_element(By.ID, "status").text
            browser.save_screenshot(str(shot))
            # A bad upload shows the service's reason on the page.
            bad = tmp_path / "notes.txt"
            bad.write_text("not a photo")
            browser.find_element(By.ID, "file").send_keys(str(bad))
            wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "not an image Pillow can read"))
            # the 400 of the bad upload is expected; tiles are unreachable offline
            errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"
                      and "localize" not in e["message"] and "tile.openstreetmap" not in e["message"]]
            assert not errors, errors
        finally:
            browser.quit()
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
