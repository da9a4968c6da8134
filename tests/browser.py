"""Headless Chromium for UI tests: Debian's chromium and chromedriver, driven by Selenium, with the flags
this machine's closed network needs (no background connections, no first-run, fresh profile)."""

import contextlib
import shutil
import tempfile
import time

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@contextlib.contextmanager
def chromium(width: int = 1600, height: int = 1000):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    assert not missing, f"{missing} not installed: scripts/test.sh installs Debian's chromium and chromium-driver"
    with tempfile.TemporaryDirectory() as profile:
        o = webdriver.ChromeOptions()
        o.binary_location = CHROMIUM
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", f"--window-size={width},{height}", f"--user-data-dir={profile}"):
            o.add_argument(a)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=o)
        try:
            yield driver
        finally:
            driver.quit()


def wait_for_text(driver, needles, seconds: float = 60) -> str:
    """The page's visible text once every needle is in it (the UI renders asynchronously)."""
    deadline = time.time() + seconds
    while True:
        text = driver.find_element("tag name", "body").text
        missing = [n for n in needles if n not in text]
        if not missing:
            time.sleep(1)  # let charts finish drawing before a screenshot
            return text
        if time.time() > deadline:
            raise AssertionError(f"the page at {driver.current_url} never showed {missing}; it shows:\n{text[:2000]}")
        time.sleep(0.5)


def click_text(driver, text: str, within=None) -> None:
    """Clicks the first visible element (inside `within`, if given) whose own text is exactly `text`."""
    root = within if within is not None else driver
    for el in root.find_elements("xpath", f".//*[normalize-space(text())='{text}']"):
        if el.is_displayed():
            el.click()
            return
    raise AssertionError(f"nothing labelled {text!r} to click at {driver.current_url}")


def container_of(driver, text: str):
    """The smallest element holding an element whose own text is `text` and the page's search box for it
    (e.g. a dropdown menu: its 'Reset to defaults' link and its 'Search columns' input)."""
    return driver.find_element("xpath", f"//*[normalize-space(text())='{text}']/ancestor::*[.//input][1]")
