"""The demo in a real browser: Debian's headless Chromium driven by selenium, against uvicorn on loopback.

Two browser profiles of one user (two sessions), two tabs of one profile (one session, one cookie jar).
Screenshots go to ``test-artifacts/``; the "your sessions" screenshot also becomes ``docs/demo.png``
(the README's picture) when that file is missing or ``SESSIONMW_UPDATE_SCREENSHOT=1``.
Nothing is downloaded: the driver and browser paths are given, so Selenium Manager never runs.
Without chromium, chromedriver or selenium the test is skipped, unless ``SESSIONMW_TEST_REQUIRE``
names ``browser`` (or ``all``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import free_port, missing, stop_process, wait_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
DOCS_SCREENSHOT = ROOT / "docs" / "demo.png"
CHROMIUM = os.environ.get("SESSIONMW_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SESSIONMW_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROME_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1100,660",
)
WAIT = 15.0

SERVE = """
import sys, uvicorn
from sessionmw.demo import build_app
uvicorn.run(build_app(sys.argv[1], sys.argv[2]), host="127.0.0.1", port=int(sys.argv[3]), log_level="warning")
"""


def _find(path: str) -> str | None:
    if os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    return shutil.which(os.path.basename(path))


@pytest.fixture(scope="module")
def chrome_paths() -> tuple[str, str]:
    """The chromium and chromedriver binaries, or a skip (a failure when the browser is required)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing("browser", "selenium is not installed (pip install selenium)")
    browser, driver = _find(CHROMIUM), _find(CHROMEDRIVER)
    if browser is None or driver is None:
        missing("browser", "chromium or chromedriver is not installed (apt-get install chromium chromium-driver)")
    assert browser is not None and driver is not None
    return browser, driver


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo (FastAPI) served by uvicorn in a subprocess, on a temporary SQLite file."""
    tmp = tmp_path_factory.mktemp("demo")
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(ARTIFACTS / "browser-server.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, f"sqlite:///{tmp}/demo.db", "browser-test-secret", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(tmp),
        )
    try:
        if not wait_port(port, 30):
            pytest.fail(f"the demo did not start; see {ARTIFACTS / 'browser-server.log'}", pytrace=False)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


@pytest.fixture
def make_browser(chrome_paths: tuple[str, str]) -> Iterator[Callable[[], Any]]:
    """Start browsers, each with a fresh profile (its own cookie jar); quit them all at the end."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    started: list[Any] = []
    profiles: list[str] = []

    def start() -> Any:
        options = Options()
        options.binary_location = chrome_paths[0]
        for arg in CHROME_ARGS:
            options.add_argument(arg)
        profile = tempfile.mkdtemp(prefix="sessionmw-chromium-")
        profiles.append(profile)
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(executable_path=chrome_paths[1]), options=options)
        driver.set_page_load_timeout(WAIT * 2)
        started.append(driver)
        return driver

    yield start
    for driver in started:
        driver.quit()
    for profile in profiles:
        shutil.rmtree(profile, ignore_errors=True)


def shot(driver: Any, name: str) -> Path:
    """Save a screenshot as a test artefact."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"browser-{name}.png"
    assert driver.save_screenshot(str(path)), f"screenshot {name} failed"
    return path


def by_id(driver: Any, element_id: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def click_and_load(driver: Any, element_id: str) -> None:
    """Click a form button and wait until the next page (after the redirect) has loaded.

    The old page is marked with a script variable, which the next document does not have. (Waiting
    for the old <html> element to go stale raced with Chromium: asked about a node it was detaching,
    chromedriver answered "unknown error: Node with given id does not belong to the document".)
    """
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_script("window.sessionmwOldPage = true")
    by_id(driver, element_id).click()
    WebDriverWait(driver, WAIT, ignored_exceptions=(WebDriverException,)).until(
        lambda d: d.execute_script("return !window.sessionmwOldPage && document.readyState === 'complete'")
    )


def count(driver: Any) -> int:
    return int(by_id(driver, "count").text)


def user(driver: Any) -> str | None:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.ID, "user")
    return str(found[0].text) if found else None


def sign_in(driver: Any, base: str, name: str) -> None:
    driver.get(base + "/")
    by_id(driver, "login-name").send_keys(name)
    click_and_load(driver, "login")
    assert user(driver) == name


def session_rows(driver: Any) -> list[tuple[str, bool]]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "tr.session-row")
    return [(str(r.get_attribute("data-sid")), r.get_attribute("data-current") == "yes") for r in rows]


def test_demo_in_a_real_browser(demo_url: str, make_browser: Callable[[], Any]) -> None:
    first = make_browser()
    sign_in(first, demo_url, "alice")
    assert count(first) == 0
    click_and_load(first, "inc")
    assert count(first) == 1

    # A second tab of the same browser shares the cookie jar: the same session, the same counter.
    tab_one = first.current_window_handle
    first.switch_to.new_window("tab")
    first.get(demo_url + "/")
    assert user(first) == "alice" and count(first) == 1
    click_and_load(first, "inc")
    click_and_load(first, "inc")
    assert count(first) == 3
    shot(first, "1-counter-second-tab")
    first.switch_to.window(tab_one)
    first.refresh()
    assert count(first) == 3
    click_and_load(first, "inc")
    assert count(first) == 4

    # The read-only status page sees the same session.
    first.get(demo_url + "/status")
    assert by_id(first, "read-only").text == "yes" and by_id(first, "status-count").text == "4"

    # Another browser profile signed in as the same user: a second session of alice.
    second = make_browser()
    sign_in(second, demo_url, "alice")
    assert count(second) == 0

    first.get(demo_url + "/sessions")
    rows = session_rows(first)
    assert len(rows) == 2 and sum(current for _, current in rows) == 1, rows
    assert by_id(first, "session-count").text == "2"
    path = shot(first, "2-your-sessions")
    if not DOCS_SCREENSHOT.exists() or os.environ.get("SESSIONMW_UPDATE_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, DOCS_SCREENSHOT)

    # End the other session: the other browser's next page load is told, once, and is signed out.
    other = next(sid for sid, current in rows if not current)
    click_and_load(first, f"end-{other}")
    assert [current for _, current in session_rows(first)] == [True]
    assert "ended" in by_id(first, "notice").text
    # Nothing else to end: the button is disabled, and looks it.
    button = by_id(first, "end-others")
    assert not button.is_enabled() and button.text == "End all other sessions (0)"
    assert float(first.execute_script("return getComputedStyle(arguments[0]).opacity", button)) < 1
    assert first.execute_script("return getComputedStyle(arguments[0]).cursor", button) == "not-allowed"
    shot(first, "3-other-session-ended")
    second.get(demo_url + "/")
    assert user(second) is None
    assert "Your session was ended elsewhere" in by_id(second, "ended").text
    by_id(second, "login-name")  # the sign-in form is back
    shot(second, "4-other-browser-signed-out")
    assert [c["name"] for c in second.get_cookies()] == []  # the stale cookie is gone
    second.get(demo_url + "/")
    assert user(second) is None and not second.find_elements("id", "ended")  # told once

    # The cookie as the browser keeps it: prefixed name, Path=/, HttpOnly, never visible to scripts.
    cookies = {c["name"]: c for c in first.get_cookies()}
    assert set(cookies) == {"demo_session"}, cookies
    cookie = cookies["demo_session"]
    assert cookie["path"] == "/" and cookie["httpOnly"] is True and cookie.get("sameSite") == "Lax"
    assert "demo_session" not in first.execute_script("return document.cookie")

    # The admin page lists everyone, with the store's stats() and the lock waits heard so far.
    first.get(demo_url + "/admin")
    assert by_id(first, "stat-users").text == "1"
    assert "1 live session of 1 signed-in user" in first.find_element("css selector", "p").text
    from selenium.webdriver.common.by import By

    figures = {r.get_attribute("data-figure") for r in first.find_elements(By.CSS_SELECTOR, "#stats tr[data-figure]")}
    assert {"sessions", "users", "oldest"} <= figures, figures
    by_id(first, "lock-wait-count")
    shot(first, "5-admin")

    # An unknown URL is a page of the demo, not JSON.
    first.get(demo_url + "/no-such-page")
    assert first.find_element(By.TAG_NAME, "h1").text == "404 Not Found"
    by_id(first, "http-error")

    # Sign out: the session is destroyed and the cookie leaves the jar.
    first.get(demo_url + "/")
    click_and_load(first, "logout")
    assert user(first) is None and "Signed out" in by_id(first, "notice").text
    assert [c["name"] for c in first.get_cookies()] == []
    shot(first, "6-signed-out")
    first.get(demo_url + "/sessions")
    assert session_rows(first) == []


def test_slow_page_holds_the_lock_while_status_answers(demo_url: str, make_browser: Callable[[], Any]) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver = make_browser()
    sign_in(driver, demo_url, "bob")
    click_and_load(driver, "inc")
    counter_tab = driver.current_window_handle
    # Open the slow page in a tab of its own from a script: chromedriver waits for a pending
    # navigation of the tab it drives before its next command, so the slow page must not be one.
    driver.execute_script("window.open(arguments[0], '_blank')", demo_url + "/slow?t=4")
    WebDriverWait(driver, WAIT).until(lambda d: len(d.window_handles) == 2)
    slow_tab = next(h for h in driver.window_handles if h != counter_tab)
    driver.switch_to.new_window("tab")
    # The read-only status page answers while the slow page holds the lock, and says it does.
    deadline = time.monotonic() + WAIT
    while True:
        driver.get(demo_url + "/status")
        if driver.find_elements("id", "slow-holding") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "slow page of this session holds its lock" in by_id(driver, "slow-holding").text
    assert by_id(driver, "status-count").text == "1"

    # Increment on the counter tab meanwhile: the click waits for the lock, and the page says so.
    driver.switch_to.window(counter_tab)
    click_and_load(driver, "inc")
    assert count(driver) == 2
    waited = by_id(driver, "waited")
    assert "for the session lock on /increment: your slow page held the session" in waited.text, waited.text
    assert float(waited.get_attribute("data-seconds")) > 0
    shot(driver, "7-lock-wait-notice")
    driver.refresh()
    assert count(driver) == 2 and not driver.find_elements("id", "waited")  # told once

    driver.switch_to.window(slow_tab)
    WebDriverWait(driver, WAIT).until(lambda d: d.find_elements("id", "slept"))
    assert by_id(driver, "slept").text == "4"
    shot(driver, "8-slow-page")

    # The admin page's lock-wait panel lists the wait.
    driver.get(demo_url + "/admin")
    assert int(by_id(driver, "lock-wait-count").text) >= 1
    assert driver.find_elements("css selector", "#waits tr.wait-row[data-path='/increment']")
    shot(driver, "9-admin-lock-waits")
