"""The operator console in a real browser: headless Chromium (Debian's package, driven by Selenium)
on a `speakerid serve` process, with Chromium's fake capture device playing real speech of one
eval-speech speaker as the microphone. The operator signs in, enrolls the speaker to Complete from
the microphone, identifies them from a recording and live (over the WebSocket route), sees a refused
sample's reason, and deletes a speaker. A revoked key sends the console back to its sign-in form,
saying why, on a reload and mid-session. A second tenant of a few hundred speakers (rows inserted
directly) is listed a page at a time, searched, and skipped past with the section links.

The screenshot of the signed-in console is kept in the test's tmp folder (docs/console.png is one).
"""

from __future__ import annotations

import re
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import create_engine, insert

from devtools.browser import chromium, chromium_paths, missing_reason
from devtools.clips import load_clip, manifest, silence_flac
from devtools.server import LocalServer, local_server
from devtools.sets import EVAL_SPEECH
from service.storage.repository import SqlStore
from service.storage.tables import Speaker
from tests.conftest import needs_speech
from tests.databases import in_ci, tenant_of_key

pytestmark = [pytest.mark.slow, needs_speech]

SPEAKER = "ls-3080"  # ten clips, 104 s: three 15 s recordings and an 8 s one never overlap
ANSWER_S = 180.0  # a recording plus the model on two shared cores


@pytest.fixture(scope="module")
def microphone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One speaker's clips end to end, with short pauses, as a 16 kHz 16-bit WAV."""
    clips = [load_clip(c.path) for c in manifest() if c.speaker == SPEAKER]
    rate = clips[0].sample_rate
    pause = np.zeros(rate // 4, dtype=np.int16)
    samples = np.concatenate([part for clip in clips for part in (clip.samples, pause)])
    path = tmp_path_factory.mktemp("microphone") / f"{SPEAKER}.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    if chromium_paths() is None:
        if in_ci():
            pytest.fail(f"{missing_reason()}; CI must run the browser test")
        pytest.skip(missing_reason())
    with local_server(tmp_path_factory.mktemp("console-server"), tenant="console", ready=True) as s:
        yield s


@pytest.fixture(scope="module")
def browser(
    server: LocalServer, microphone: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebDriver]:
    driver = chromium(microphone, log=tmp_path_factory.mktemp("chromedriver") / "chromedriver.log")
    try:
        yield driver
    finally:
        driver.quit()


def wait_for_text(driver: WebDriver, selector: str, *texts: str, within_s: float = ANSWER_S) -> str:
    """The text of `selector` once it contains one of `texts`; on time out, the text it has."""
    element = driver.find_element(By.CSS_SELECTOR, selector)
    try:
        WebDriverWait(driver, within_s, poll_frequency=0.25).until(
            lambda _: any(t in element.text for t in texts)
        )
    except TimeoutException:
        pytest.fail(f"{selector} never said any of {texts}: {element.text!r}")
    return str(element.text)


def sign_in(driver: WebDriver, server: LocalServer, key: str | None = None) -> None:
    driver.get(f"{server.url}/console")  # redirected to /console/
    key_field = driver.find_element(By.ID, "api-key")
    key_field.send_keys("sk_not_a_key", Keys.ENTER)  # the keyboard alone signs in
    assert "not accepted" in wait_for_text(driver, "#sign-in-status", "not accepted", within_s=30)
    key_field.clear()
    key_field.send_keys(key or server.key, Keys.ENTER)
    WebDriverWait(driver, 30).until(expected_conditions.visibility_of_element_located((By.ID, "work")))
    # Focus moves to what appeared (once the list is in), for keyboard and screen-reader users.
    WebDriverWait(driver, 30).until(
        lambda d: d.switch_to.active_element.get_attribute("id") == "speakers-title"
    )
    assert driver.execute_script("return sessionStorage.getItem('speakerid.apiKey')") == (key or server.key)


def record(driver: WebDriver, form: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f"#{form}-form [data-action=record]").click()


def test_enroll_from_the_microphone_to_complete_then_identify(
    browser: WebDriver, server: LocalServer, tmp_path: Path
) -> None:
    sign_in(browser, server)
    # No one enrolled yet: the voice is unknown, and the console says there is no one to compare with.
    record(browser, "identify")
    first = wait_for_text(browser, "#identify-form .result", "Unknown", "Identified", "Refused")
    assert "no enrolled speakers to compare with" in first and "Score" not in first, first
    browser.find_element(By.ID, "enroll-speaker").send_keys("carol")
    said = []
    for _ in range(5):
        record(browser, "enroll")
        said.append(wait_for_text(browser, "#enroll-form .result", "Complete", "Sample accepted", "Refused"))
        if said[-1].startswith("Complete"):
            break
    assert said[-1].startswith("Complete"), said
    row = browser.find_element(By.CSS_SELECTOR, "#speaker-table tr[data-speaker=carol]")
    assert "complete" in row.text and "100%" in row.text, row.text

    record(browser, "identify")
    result = wait_for_text(browser, "#identify-form .result", "Identified", "Unknown", "Refused")
    assert result.startswith("Identified: carol"), result
    assert "against threshold" in result
    candidates = browser.find_elements(By.CSS_SELECTOR, "#identify-form .candidates td:first-child")
    assert candidates and candidates[0].text == "carol"

    browser.find_element(By.ID, "verify-speaker").send_keys("carol")
    record(browser, "verify")
    verdict = wait_for_text(browser, "#verify-form .result", "Match", "No match", "Refused")
    assert verdict.startswith("Match: this is carol"), verdict

    # Live: the microphone, as 16 kHz PCM frames on the WebSocket route, until an answer names carol.
    browser.find_element(By.ID, "live-start").click()
    wait_for_text(browser, "#live", "carol", "refused", "closed")
    answers = browser.find_element(By.ID, "live-answers").text
    assert re.search(r"\d+\.\d-\d+\.\d s: carol", answers), answers
    assert "error" not in (browser.find_element(By.ID, "live-status").get_attribute("data-kind") or "")
    browser.find_element(By.ID, "live-stop").click()
    assert "Stopped" in wait_for_text(browser, "#live-status", "Stopped", within_s=10)
    assert browser.find_element(By.ID, "live-start").is_enabled()

    # The whole page in one picture: the window as tall as the page.
    height = browser.execute_script("window.scrollTo(0, 0); return document.documentElement.scrollHeight")
    browser.set_window_size(1280, int(height) + 120)
    browser.save_screenshot(str(tmp_path / "console.png"))
    browser.set_window_size(1280, 900)
    assert (tmp_path / "console.png").stat().st_size > 10_000


def test_a_refused_sample_shows_the_reason_and_a_delete_asks_first(
    browser: WebDriver, server: LocalServer, tmp_path: Path
) -> None:
    if not browser.find_elements(By.CSS_SELECTOR, "#work:not([hidden])"):
        sign_in(browser, server)
    silent = tmp_path / "silence.flac"
    silent.write_bytes(silence_flac(6.0))
    speaker = browser.find_element(By.ID, "enroll-speaker")
    speaker.clear()
    speaker.send_keys("dave")
    browser.find_element(By.ID, "enroll-file").send_keys(str(silent))
    browser.find_element(By.CSS_SELECTOR, "#enroll-form [data-action=file]").click()
    refused = wait_for_text(browser, "#enroll-form .result", "Refused", "accepted", "Complete")
    assert refused.startswith("Refused (4"), refused
    assert "speech" in refused.lower(), refused  # the service's reason, as it gave it
    assert not browser.find_elements(By.CSS_SELECTOR, "#speaker-table tr[data-speaker=dave]")

    # A file upload is accepted, then its speaker deleted, once the confirmation says yes.
    erin = max((c for c in manifest() if c.speaker == "ls-2609"), key=lambda c: c.duration_s)
    speaker.clear()
    speaker.send_keys("erin")
    browser.find_element(By.ID, "enroll-file").send_keys(str(EVAL_SPEECH / erin.path))
    browser.find_element(By.CSS_SELECTOR, "#enroll-form [data-action=file]").click()
    accepted = wait_for_text(browser, "#enroll-form .result", "Refused", "accepted", "Complete")
    assert accepted.startswith("Sample accepted - erin: 1 sample(s)"), accepted
    delete = "#speaker-table tr[data-speaker=erin] button"
    browser.find_element(By.CSS_SELECTOR, delete).click()
    browser.switch_to.alert.dismiss()  # "no": nothing is deleted
    assert browser.find_elements(By.CSS_SELECTOR, delete)
    browser.find_element(By.CSS_SELECTOR, delete).click()
    browser.switch_to.alert.accept()
    assert "Deleted erin" in wait_for_text(browser, "#speakers-status", "Deleted", "Could not", within_s=30)
    assert not browser.find_elements(By.CSS_SELECTOR, "#speaker-table tr[data-speaker=erin]")


def test_on_a_phone_screen_nothing_is_wider_than_the_screen(browser: WebDriver, server: LocalServer) -> None:
    if not browser.find_elements(By.CSS_SELECTOR, "#work:not([hidden])"):
        sign_in(browser, server)
    assert_fits_a_phone(browser)


def assert_fits_a_phone(browser: WebDriver) -> None:
    # A phone's viewport (headless windows are never narrower than 500 px).
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True},
    )
    try:
        widths = browser.execute_script(
            "const d = document.documentElement; return [innerWidth, d.scrollWidth, d.clientWidth]"
        )
        assert widths[0] == 390, widths
        assert widths[1] <= widths[2], f"the page is wider than a 390 px screen: {widths}"
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


CROWD = 230  # speakers of a second tenant: four full pages of 50 and one of 30
PAGE = 50


def test_a_revoked_key_signs_the_console_out_and_says_why(browser: WebDriver, server: LocalServer) -> None:
    engine = create_engine(server.env()["SPK_DATABASE_URL"])
    try:
        store = SqlStore(engine)
        keys = [store.create_key("console") for _ in range(2)]  # (key id, key), as `speakerid keys create`
        browser.get(f"{server.url}/console/")
        browser.execute_script("sessionStorage.clear()")  # whoever an earlier test signed in
        sign_in(browser, server, keys[0][1])
        # A reload while the service does not answer: the page says so and keeps the key for the next.
        browser.execute_cdp_cmd("Network.enable", {})
        browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/v1/speakers*"]})
        browser.refresh()
        wait_for_text(browser, "#sign-in-status", "Could not sign in again", within_s=30)
        assert browser.execute_script("return sessionStorage.getItem('speakerid.apiKey')") == keys[0][1]
        browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})
        browser.refresh()
        WebDriverWait(browser, 30).until(expected_conditions.visibility_of_element_located((By.ID, "work")))
        # Revoked between visits: the reload signs in with the tab's key, is refused, and says so.
        assert store.revoke_key(keys[0][0])
        browser.refresh()
        wait_for_text(browser, "#sign-in-status", "no longer accepted", within_s=30)
        assert not browser.find_element(By.ID, "work").is_displayed()
        assert browser.execute_script("return sessionStorage.getItem('speakerid.apiKey')") is None
        # Revoked while signed in: the next call the page makes (here a refresh of the list) signs out.
        sign_in(browser, server, keys[1][1])
        assert store.revoke_key(keys[1][0])
        browser.find_element(By.ID, "refresh").click()
        wait_for_text(browser, "#sign-in-status", "no longer accepted", within_s=30)
        assert browser.find_element(By.ID, "sign-in").is_displayed()
        assert not browser.find_element(By.ID, "work").is_displayed()
        assert browser.execute_script("return sessionStorage.getItem('speakerid.apiKey')") is None
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def crowd_key(server: LocalServer) -> str:
    """A key of a second tenant with CROWD speakers, caller-000 to caller-229, inserted as rows in
    one statement (no audio, no model: the list shows them as enrolling, with no samples)."""
    engine = create_engine(server.env()["SPK_DATABASE_URL"])
    try:
        _, key = SqlStore(engine).create_key("crowd")  # as `speakerid keys create`, without its start-up
        tenant = tenant_of_key(engine, key)
        with engine.begin() as conn:
            rows = [{"tenant_id": tenant, "external_id": f"caller-{i:03d}"} for i in range(CROWD)]
            conn.execute(insert(Speaker), rows)
    finally:
        engine.dispose()
    return key


def listed(driver: WebDriver, count: str) -> list[str]:
    """The speaker ids on the page once the count says `count`."""
    assert count in wait_for_text(driver, "#speaker-count", count, within_s=30)
    rows = driver.find_elements(By.CSS_SELECTOR, "#speaker-table tbody tr")
    return [str(r.get_attribute("data-speaker")) for r in rows]


def tab_stops_before(driver: WebDriver, selector: str) -> int:
    """How many Tab stops the keyboard passes, from the top of the page, before `selector`."""
    return int(
        driver.execute_script(
            "const stops = [...document.querySelectorAll("
            "'a[href], button, input, select, textarea, [tabindex]:not([tabindex=\"-1\"])')]"
            ".filter((e) => !e.disabled && e.offsetParent !== null);"
            "return stops.indexOf(document.querySelector(arguments[0]));",
            selector,
        )
    )


def test_a_crowded_tenant_is_listed_a_page_at_a_time_searched_and_skipped_past(
    browser: WebDriver, server: LocalServer, crowd_key: str
) -> None:
    browser.get(f"{server.url}/console/")
    browser.execute_script("sessionStorage.clear()")  # whoever an earlier test signed in
    sign_in(browser, server, crowd_key)
    ids = [f"caller-{i:03d}" for i in range(CROWD)]
    assert listed(browser, f"Speakers 1-50 of {CROWD}") == ids[:PAGE]  # one page, not 230 rows

    # The section links reach the forms past the list: the Enroll link is a few Tab stops from the
    # top, and following it with the keyboard puts the focus on the Enroll form.
    assert 0 <= tab_stops_before(browser, "#sections a[href='#enroll']") <= 3
    assert tab_stops_before(browser, "#enroll-speaker") <= PAGE + 12  # a page of Delete buttons at most
    browser.find_element(By.CSS_SELECTOR, "#sections a[href='#enroll']").send_keys(Keys.ENTER)
    assert browser.switch_to.active_element.get_attribute("id") == "enroll"
    ActionChains(browser).send_keys(Keys.TAB).perform()
    assert browser.switch_to.active_element.get_attribute("id") == "enroll-speaker"

    # Next shows the next ids; on the last page Next is off and the focus is on Previous.
    next_page = browser.find_element(By.ID, "page-next")
    next_page.click()
    assert listed(browser, f"Speakers 51-100 of {CROWD}") == ids[PAGE : 2 * PAGE]
    for first in (101, 151):
        next_page.click()
        listed(browser, f"Speakers {first}-{first + PAGE - 1} of {CROWD}")
    next_page.send_keys(Keys.ENTER)
    assert listed(browser, f"Speakers 201-230 of {CROWD}") == ids[200:]
    assert not next_page.is_enabled()
    assert browser.switch_to.active_element.get_attribute("id") == "page-previous"
    assert_fits_a_phone(browser)  # a full page, the search box and the pager on a phone

    # The search narrows the list (any case, anywhere in the id) and starts at its first page.
    browser.find_element(By.ID, "speaker-search").send_keys("Caller-21")
    assert listed(browser, '10 speakers matching "Caller-21"') == ids[210:220]
    assert not next_page.is_enabled()
    browser.find_element(By.ID, "speaker-search").send_keys(Keys.BACKSPACE * 9, "nobody")
    assert listed(browser, 'No speaker ids contain "nobody"') == []
    browser.find_element(By.ID, "speaker-search").clear()
    browser.find_element(By.ID, "speaker-search").send_keys(Keys.ENTER)  # an empty search: everyone
    assert listed(browser, f"Speakers 1-50 of {CROWD}") == ids[:PAGE]
    browser.find_element(By.ID, "sign-out").click()
