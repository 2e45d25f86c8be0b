"""The playground at `/`, driven in a real headless browser (Debian's chromium and chromedriver, by
selenium): its form is built from /openapi.json, a generation completes with live progress, the image
appears with its seed, which the page can reuse; a screenshot is saved. Music plays as it arrives
(against the in-process app with the stub model, served by uvicorn: no Ray)."""

import base64
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from tests.helpers import make_app, served, stub_output

SCREENSHOTS = Path(__file__).parents[2] / "test-artifacts"


@pytest.fixture
def browser():
    driver_path = shutil.which("chromedriver")
    if driver_path is None or shutil.which("chromium") is None:
        if os.environ.get("CI"):
            pytest.fail("chromium and chromedriver are missing: `make test` installs them when run as root")
        pytest.skip("chromium/chromedriver are not installed (`make test` installs them when run as root)")
    options = webdriver.ChromeOptions()
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600"):
        options.add_argument(argument)
    options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def test_the_playground_generates_an_image_and_shows_its_seed(graph, browser):
    browser.get(f"{graph.url}/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda driver: driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    form = browser.find_element(By.ID, "form-sdxl")
    steps = form.find_element(By.NAME, "num_inference_steps")
    assert (steps.get_attribute("min"), steps.get_attribute("placeholder")) == ("1", "50")  # from the spec
    for name, value in {
        "prompt": "a red fox",
        "height": "64",
        "width": "64",
        "num_inference_steps": "3",
    }.items():
        element = form.find_element(By.NAME, name)
        element.clear()
        element.send_keys(value)
    browser.find_element(By.ID, "generate").click()
    image = wait.until(expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, "img.result")))
    assert image.get_attribute("src").startswith("data:image/png;base64,")
    assert browser.find_element(By.ID, "progress").text == "done"
    reuse = browser.find_element(By.CLASS_NAME, "reuse-seed")
    seed = reuse.text.split()[1].rstrip(":")
    reuse.click()
    assert form.find_element(By.NAME, "seed").get_attribute("value") == seed
    SCREENSHOTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOTS / "playground.png"))


def test_the_playground_inpaints_an_uploaded_image_with_an_adapter_and_the_refiner(graph, browser, tmp_path):
    photo, mask = tmp_path / "photo.png", tmp_path / "mask.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(photo)
    Image.fromarray(np.where(np.arange(64) < 32, 255, 0).astype(np.uint8)[None].repeat(64, 0)).save(mask)
    browser.get(f"{graph.url}/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda driver: driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    form = browser.find_element(By.ID, "form-sdxl")
    fields = {"prompt": "a gate", "num_inference_steps": "4", "seed": "5", "strength": "0.9"}
    fields |= {"image": str(photo), "mask_image": str(mask), "lora:ink": "0.5"}
    for name, value in fields.items():
        form.find_element(By.NAME, name).send_keys(value)
    form.find_element(By.NAME, "refiner").click()
    browser.find_element(By.ID, "generate").click()
    image = wait.until(expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, "img.result")))
    body = {"prompt": "a gate", "num_inference_steps": 4, "seed": 5, "strength": 0.9, "refiner": {}}
    body |= {"image": png_of(photo), "mask_image": png_of(mask), "loras": [{"name": "ink", "scale": 0.5}]}
    direct = httpx.post(f"{graph.url}/v1/sdxl", json=body, timeout=120)
    assert direct.status_code == 200, direct.text
    assert image.get_attribute("src") == f"data:image/png;base64,{direct.json()['images'][0]['data']}"
    SCREENSHOTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOTS / "playground-inpainting.png"))


def png_of(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_the_playground_plays_music_as_it_arrives_then_shows_the_track(browser, tmp_path):
    app, gateway = make_app(tmp_path)
    gateway.hold_s = 3.0  # the track itself comes 3 s after its last piece
    with served(app) as url:
        browser.get(f"{url}/")
        wait = WebDriverWait(browser, 60)
        body = browser.find_element(By.TAG_NAME, "body")
        wait.until(lambda driver: body.get_attribute("data-ready") == "true")
        browser.find_element(By.CSS_SELECTOR, "[name=service][value=musicgen]").click()
        form = browser.find_element(By.ID, "form-musicgen")
        for name, value in {"prompt": "lo-fi", "duration": "2.3", "seed": "5"}.items():
            form.find_element(By.NAME, name).send_keys(value)
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda driver: body.get_attribute("data-scheduled-samples") == str(round(2.3 * 32_000)))
        assert not browser.find_elements(By.CSS_SELECTOR, "audio.result")  # scheduled before the track came
        audio = wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "audio.result")))
        assert float(body.get_attribute("data-scheduled-seconds")) == pytest.approx(2.3, abs=1e-4)  # no gaps
        (request,) = gateway.generated
        assert request.stream  # the page's Accept: text/event-stream asks the model for audio
        track = base64.b64encode(stub_output(request).audio).decode()
        assert audio.get_attribute("src") == f"data:audio/wav;base64,{track}"
        errors = [
            e for e in browser.get_log("browser") if e["level"] == "SEVERE" and e["source"] != "network"
        ]
        assert errors == [], errors
