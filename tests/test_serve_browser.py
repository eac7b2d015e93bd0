"""The page of ``flowerfast serve`` in a real browser: headless Chromium driven by Selenium,
against a real server process. A photo chosen through the page's file input must show the class
``flowerfast predict`` gives it; a file that is not an image must show why; with an API key the
page asks for it once.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and Selenium (the
dev extra). Where they are missing the tests skip and say so, unless
``FLOWERFAST_REQUIRE_BROWSER=1`` (set by CI), where a missing browser is a failure. Both happen
in the :func:`chromium` fixture, never at import: collecting this module needs none of them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import invoke, sample_files
from tests.serving import ServerProcess

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVER = "chromedriver"
WAIT = 60


def browser_or_reason() -> tuple[str | None, str | None, str | None]:
    """``(browser, driver, None)``, or ``(None, None, why the tests cannot run here)``."""
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    packaged = Path("/usr/lib/chromium/chromedriver")  # where Debian's chromium-driver puts it
    driver = shutil.which(DRIVER) or (str(packaged) if packaged.exists() else None)
    try:
        import fastapi  # noqa: F401
        import selenium  # noqa: F401
    except ImportError as exc:
        return None, None, f"needs the dev and serve extras ({exc.name} is missing): pip install -e '.[dev]'"
    if browser is None or driver is None:
        return (
            None,
            None,
            (
                "needs headless Chromium and its driver: apt-get install chromium chromium-driver "
                "(Debian packages; .ci/run installs them)"
            ),
        )
    return browser, driver, None


def browser_required() -> bool:
    return os.environ.get("FLOWERFAST_REQUIRE_BROWSER") == "1"


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """The browser and its driver; where they cannot run, the test skips saying why, or fails
    under ``FLOWERFAST_REQUIRE_BROWSER=1``, where skipping would hide that the page went untested.
    Session-wide and used by every test (``pytestmark``), so it is settled before the tiny run
    is trained."""
    browser, driver, why_not = browser_or_reason()
    if why_not is not None:
        if browser_required():
            pytest.fail(f"FLOWERFAST_REQUIRE_BROWSER=1 but the browser test cannot run: {why_not}", pytrace=False)
        pytest.skip(why_not)
    return browser, driver


pytestmark = pytest.mark.usefixtures("chromium")


@pytest.fixture()
def browser(chromium, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1200,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, css: str, count: int = 1):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, css)) >= count)
    return driver.find_elements(By.CSS_SELECTOR, css)


def choose_files(driver, *paths: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "file-input").send_keys("\n".join(str(p) for p in paths))


def cli_prediction(runner, run_dir: Path, photo: Path) -> dict:
    result = invoke(runner, ["predict", run_dir, photo, "--json", "--device", "cpu", "--top-k", "5"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)[0]


def test_a_photo_chosen_on_the_page_shows_predicts_answer(run_dir, browser, runner, tmp_path):
    from selenium.webdriver.common.by import By

    photos = [sample_files("sunflower", 1)[0], sample_files("daisy", 1)[0]]
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("this is text")
    with ServerProcess(run_dir) as server:
        browser.get(server.wait_ready())
        wait_for(browser, "#drop:not([hidden])")
        assert not browser.find_element(By.ID, "key-form").is_displayed()
        assert browser.find_element(By.ID, "model-arch").text == "resnet18"
        assert browser.find_element(By.ID, "model-file").text == f"{run_dir.name}/best.safetensors"
        assert browser.find_element(By.ID, "model-size").text == "32 × 32 px"
        summary = json.loads((run_dir / "summary.json").read_text())
        accuracy = summary["best_valid_accuracy_rescored"] or summary["best_valid_accuracy"]
        assert browser.find_element(By.ID, "model-accuracy").text.startswith(f"{100 * accuracy:.1f}%")
        assert [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#model-classes .chip")] == summary["classes"]

        choose_files(browser, *photos, not_an_image)
        cards = wait_for(browser, ".card.done", 3)
        by_file = {card.get_attribute("data-file"): card for card in cards}
        for photo in photos:
            expected = cli_prediction(runner, run_dir, photo)
            card = by_file[photo.name]
            assert card.find_element(By.CSS_SELECTOR, ".predicted").text == expected["predicted"]
            bars = card.find_elements(By.CSS_SELECTOR, ".bar")
            assert [b.get_attribute("data-class") for b in bars] == [t["class"] for t in expected["top_k"]]
            shown = bars[0].find_element(By.CSS_SELECTOR, ".probability").text
            assert shown == f"{100 * expected['probability']:.1f}%"
            assert card.find_element(By.TAG_NAME, "img").get_property("naturalWidth") > 0  # the thumbnail
        failed = by_file["notes.jpg"]
        assert "failed" in failed.get_attribute("class").split()
        assert failed.find_element(By.CSS_SELECTOR, ".status").text == (
            "notes.jpg could not be read as an image: UnidentifiedImageError: not an image, or in a format "
            "Pillow cannot read"
        )
        refused = "/predict?top_k=5 - Failed to load resource: the server responded with a status of 422"
        problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and refused not in e["message"]]
        assert problems == []  # no script error, no resource refused by the page's security policy
        screenshot = tmp_path / "serve-page.png"
        assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
        if os.environ.get("FLOWERFAST_SCREENSHOT"):
            shutil.copy(screenshot, os.environ["FLOWERFAST_SCREENSHOT"])


def test_the_page_asks_for_the_api_key_once(run_dir, browser, runner):
    from selenium.webdriver.common.by import By

    photo = sample_files("tulip", 1)[0]
    with ServerProcess(run_dir, env={"FLOWERFAST_API_KEY": "open sesame"}) as server:
        browser.get(server.wait_ready())
        wait_for(browser, "#key-form:not([hidden])")
        assert not browser.find_element(By.ID, "drop").is_displayed()
        browser.find_element(By.ID, "api-key").send_keys("wrong key")
        browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
        wait_for(browser, "#key-error:not([hidden])")
        assert browser.find_element(By.ID, "key-error").text == "wrong API key"
        browser.find_element(By.ID, "api-key").send_keys("open sesame")
        browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
        wait_for(browser, "#drop:not([hidden])")
        choose_files(browser, photo)
        card = wait_for(browser, ".card.done")[0]
        assert card.get_attribute("data-file") == photo.name
        assert (
            card.find_element(By.CSS_SELECTOR, ".predicted").text == cli_prediction(runner, run_dir, photo)["predicted"]
        )
        browser.refresh()  # asked once: the key is kept for the tab
        wait_for(browser, "#drop:not([hidden])")
        assert not browser.find_element(By.ID, "key-form").is_displayed()


def test_the_page_says_unknown_and_shows_where_the_model_looked(lite_run, browser, runner, tmp_path):
    """A photo that is not a flower is answered "unknown" with the best guess; a flower's card
    draws its Grad-CAM heatmap in place of the photo on request."""
    pytest.importorskip("skimage", reason="the photo that is not a flower comes with scikit-image (the dev extra)")
    from selenium.webdriver.common.by import By

    from tests.not_flowers import write_not_flowers

    cat = write_not_flowers(tmp_path / "not-flowers")[0]
    flower = sample_files("sunflower", 1)[0]
    with ServerProcess(lite_run, "--min-confidence", "0.5") as server:
        browser.get(server.wait_ready())
        wait_for(browser, "#drop:not([hidden])")
        assert browser.find_element(By.ID, "limits").text.endswith("; unknown below 50.0% confidence")
        choose_files(browser, cat, flower)
        by_file = {c.get_attribute("data-file"): c for c in wait_for(browser, ".card.done", 2)}
        expected = cli_prediction(runner, lite_run, cat)
        unknown = by_file[cat.name]
        assert unknown.find_element(By.CSS_SELECTOR, ".predicted").text == "unknown"
        guess = f"best guess {expected['top_k'][0]['class']} at {100 * expected['probability']:.1f}%"
        assert expected["unfamiliar"]  # the cat is unlike every flower (whatever its top probability)
        assert unknown.find_element(By.CSS_SELECTOR, ".why").text == f"unlike the photos it was trained on: {guess}"
        card = by_file[flower.name]
        card.find_element(By.CSS_SELECTOR, "button.cam").click()
        heat = wait_for(browser, f'.card[data-file="{flower.name}"] img.heatmap')[0]
        browser.execute_script("return arguments[0].decode()", heat)
        assert heat.get_property("naturalWidth") == 128 and heat.get_property("naturalHeight") == 128
        assert card.find_elements(By.CSS_SELECTOR, "button.cam") == []
        problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert problems == []
