"""The playground at `/`, driven in a real headless browser (Debian's chromium and chromedriver, by
selenium). On the real graph: a generation completes with live progress, the image appears with its
seed, which the page can reuse; an uploaded image is inpainted with an adapter and the refiner, as
the API would. Against the in-process app with the stub model (served by uvicorn, no Ray): the form
starts from the model's defaults within the schema's bounds, the browser refuses what the schema
refuses before any request, the API key is kept for the tab and brings the adapters, each service
keeps its own history, errors show at their field, music plays as it arrives. Screenshots go to
test-artifacts/."""

import base64
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from tests.helpers import StubGateway, make_app, served, stub_output

SCREENSHOTS = Path(__file__).parents[2] / "test-artifacts"
KEY = "sekret-key"


@pytest.fixture
def browser():
    driver_path = shutil.which("chromedriver")
    if driver_path is None or shutil.which("chromium") is None:
        if os.environ.get("CI"):
            pytest.fail("chromium and chromedriver are missing: `make test` installs them when run as root")
        pytest.skip("chromium/chromedriver are not installed (`make test` installs them when run as root)")
    options = webdriver.ChromeOptions()
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(argument)
    options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def open_page(browser: WebDriver, url: str, model_info: str = "loaded") -> WebDriverWait:
    """The page at `url`, its forms built and the model's defaults and adapters fetched (or, with keys
    on and no key, waiting for one: `model_info` "needs-key")."""
    browser.get(f"{url}/")
    wait = WebDriverWait(browser, 60)
    body = browser.find_element(By.TAG_NAME, "body")
    wait.until(lambda driver: body.get_attribute("data-ready") == "true")
    wait.until(lambda driver: body.get_attribute("data-model-info") == model_info)
    return wait


def fill(form: WebElement, values: dict[str, str]) -> None:
    for name, value in values.items():
        element = form.find_element(By.NAME, name)
        if element.get_attribute("type") != "file":
            element.clear()
        element.send_keys(value)


def wait_until_done(browser: WebDriver, wait: WebDriverWait, service: str) -> None:
    pane = browser.find_element(By.ID, f"pane-{service}")
    wait.until(lambda driver: pane.get_attribute("data-state") in ("done", "error"))
    assert pane.get_attribute("data-state") == "done", pane.text


def screenshot(browser: WebDriver, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(SCREENSHOTS / name))


def severe_errors(browser: WebDriver) -> list[dict]:
    """The page's own errors in the console (a refused request's network line is expected)."""
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and e["source"] != "network"]


@contextmanager
def stub_page(tmp_path: Path, **settings: object) -> Iterator[tuple[str, StubGateway]]:
    app, gateway = make_app(tmp_path, **settings)
    with served(app) as url:
        yield url, gateway


def keys_on(tmp_path: Path) -> dict[str, str]:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{KEY}\n")
    return {"api_keys_file": str(keys)}


def test_the_playground_generates_an_image_and_shows_its_seed(graph, browser):
    wait = open_page(browser, graph.url)
    form = browser.find_element(By.ID, "form-sdxl")
    steps = form.find_element(By.NAME, "num_inference_steps")
    assert (steps.get_attribute("min"), steps.get_attribute("max")) == ("1", "150")  # from the schema
    assert steps.get_attribute("placeholder") == "50"  # the request's default, shown
    defaults = httpx.get(f"{graph.url}/v1/sdxl/defaults").json()  # the model's own, filled in
    assert defaults["height"] == 256  # the tiny model's native size
    for name, value in defaults.items():
        assert form.find_element(By.NAME, name).get_attribute("value") == str(value), name
    fill(form, {"prompt": "a red fox", "height": "64", "width": "64", "num_inference_steps": "3"})
    browser.find_element(By.ID, "generate").click()
    image = wait.until(expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, "img.result")))
    assert image.get_attribute("src").startswith("data:image/png;base64,")
    wait_until_done(browser, wait, "sdxl")
    reuse = browser.find_element(By.CLASS_NAME, "reuse-seed")
    seed = reuse.get_attribute("data-seed")
    reuse.click()
    assert form.find_element(By.NAME, "seed").get_attribute("value") == seed
    screenshot(browser, "playground.png")


def test_the_playground_inpaints_an_uploaded_image_with_an_adapter_and_the_refiner(graph, browser, tmp_path):
    photo, mask = tmp_path / "photo.png", tmp_path / "mask.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(photo)
    Image.fromarray(np.where(np.arange(64) < 32, 255, 0).astype(np.uint8)[None].repeat(64, 0)).save(mask)
    wait = open_page(browser, graph.url)
    form = browser.find_element(By.ID, "form-sdxl")
    fields = {"prompt": "a gate", "num_inference_steps": "4", "seed": "5", "strength": "0.9"}
    fields |= {"image": str(photo), "mask_image": str(mask), "lora:ink": "0.5"}
    fill(form, fields)
    assert not form.find_element(By.NAME, "height").is_enabled()  # the image sets the size
    form.find_element(By.NAME, "refiner").click()
    browser.find_element(By.ID, "generate").click()
    image = wait.until(expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, "img.result")))
    body = {"prompt": "a gate", "num_inference_steps": 4, "seed": 5, "strength": 0.9, "refiner": {}}
    body |= {"image": png_of(photo), "mask_image": png_of(mask), "loras": [{"name": "ink", "scale": 0.5}]}
    direct = httpx.post(f"{graph.url}/v1/sdxl", json=body, timeout=120)
    assert direct.status_code == 200, direct.text
    assert image.get_attribute("src") == f"data:image/png;base64,{direct.json()['images'][0]['data']}"
    screenshot(browser, "playground-inpainting.png")


def png_of(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_the_form_starts_from_the_models_defaults_within_the_schemas_bounds(browser, tmp_path):
    with stub_page(tmp_path) as (url, gateway):
        open_page(browser, url)
        form = browser.find_element(By.ID, "form-sdxl")
        attributes = ("value", "min", "max", "step")
        for name, expected in {
            "height": ("256", "64", "2048", "8"),
            "width": ("256", "64", "2048", "8"),
            "num_inference_steps": ("8", "1", "150", "1"),
            "guidance_scale": ("", "0", "50", "any"),
        }.items():
            element = form.find_element(By.NAME, name)
            assert tuple(element.get_attribute(a) for a in attributes) == expected, name
        fill(form, {"prompt": "a kite"})
        browser.find_element(By.ID, "generate").click()
        wait_until_done(browser, WebDriverWait(browser, 30), "sdxl")
        (request,) = gateway.generated
        assert (request.height, request.width, request.num_inference_steps) == (256, 256, 8)


def test_a_height_off_the_schemas_steps_is_refused_in_the_browser_before_any_request(browser, tmp_path):
    with stub_page(tmp_path) as (url, gateway):
        open_page(browser, url)
        form = browser.find_element(By.ID, "form-sdxl")
        fill(form, {"prompt": "a kite", "height": "100"})
        browser.find_element(By.ID, "generate").click()
        height = form.find_element(By.NAME, "height")
        assert browser.execute_script("return arguments[0].validity.stepMismatch", height)
        assert browser.execute_script("return document.activeElement") == height  # reported at the field
        posts = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name).filter(n => n.endsWith('/v1/sdxl'))"
        )
        assert posts == [] and gateway.generated == []
        fill(form, {"height": "104", "num_inference_steps": "151"})  # over the schema's maximum
        browser.find_element(By.ID, "generate").click()
        steps = form.find_element(By.NAME, "num_inference_steps")
        assert browser.execute_script("return arguments[0].validity.rangeOverflow", steps)
        assert gateway.generated == []


def test_each_output_joins_its_services_history_newest_first(browser, tmp_path):
    with stub_page(tmp_path) as (url, gateway):
        wait = open_page(browser, url)
        form = browser.find_element(By.ID, "form-sdxl")
        # Seeds that the stub draws as distinct greys (its image for a seed is one grey level).
        prompts = {
            120: "a lighthouse at dusk, oil painting",
            200: "a red fox in fresh snow, soft morning light",
        }
        for seed, prompt in prompts.items():
            fill(form, {"prompt": prompt, "seed": str(seed), "guidance_scale": "6"})
            browser.find_element(By.ID, "generate").click()
            wait_until_done(browser, wait, "sdxl")
            browser.execute_script("document.getElementById('pane-sdxl').dataset.state = ''")
        form.find_element(By.TAG_NAME, "summary").click()  # "More parameters"
        fill(form, {"prompt": "two kites", "seed": "160", "num_images_per_prompt": "2"})
        form.find_element(By.TAG_NAME, "summary").click()
        browser.find_element(By.ID, "generate").click()
        wait_until_done(browser, wait, "sdxl")
        entries = browser.find_elements(By.CSS_SELECTOR, "#pane-sdxl .entry")
        assert [e.get_attribute("data-seed") for e in entries] == ["160", "161", "200", "120"]
        assert (
            "256×256" in entries[-1].text
            and "8 steps" in entries[-1].text
            and prompts[120] in entries[-1].text
        )
        download = entries[0].find_element(By.CSS_SELECTOR, "a.download")
        assert download.get_attribute("download") == "leap_ray-160.png"
        entries[2].find_element(By.CLASS_NAME, "reuse-seed").click()
        assert form.find_element(By.NAME, "seed").get_attribute("value") == "200"
        screenshot(browser, "playground-history.png")

        browser.find_element(By.CSS_SELECTOR, ".tab[data-service=musicgen]").click()
        assert not any(e.is_displayed() for e in browser.find_elements(By.CSS_SELECTOR, "img.result"))
        music = browser.find_element(By.ID, "form-musicgen")
        fill(music, {"prompt": "lo-fi beat with warm piano", "duration": "1", "seed": "3"})
        browser.find_element(By.ID, "generate").click()
        wait_until_done(browser, wait, "musicgen")
        audio = browser.find_element(By.CSS_SELECTOR, "audio.result")
        assert audio.is_displayed()
        screenshot(browser, "playground-music.png")

        browser.find_element(By.CSS_SELECTOR, ".tab[data-service=sdxl]").click()
        assert not audio.is_displayed()  # the track stays with the music
        assert len([e for e in browser.find_elements(By.CSS_SELECTOR, "img.result") if e.is_displayed()]) == 4
        assert len(gateway.generated) == 4
        assert severe_errors(browser) == []


def test_the_api_key_is_kept_for_the_tab_and_brings_the_adapters(browser, tmp_path):
    with stub_page(tmp_path, **keys_on(tmp_path)) as (url, _):
        open_page(browser, url, model_info="needs-key")
        key = browser.find_element(By.ID, "api-key")
        assert key.is_displayed()
        assert not browser.find_elements(By.NAME, "lora:ink")  # nothing to show without a key
        key.send_keys("wrong")
        body = browser.find_element(By.TAG_NAME, "body")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda driver: body.get_attribute("data-model-info") == "refused")
        assert "refused" in browser.find_element(By.ID, "key-status").text
        key.clear()
        key.send_keys(KEY)
        wait.until(lambda driver: body.get_attribute("data-model-info") == "loaded")
        assert browser.find_element(By.NAME, "lora:paper").is_displayed()
        assert browser.find_element(By.NAME, "height").get_attribute("value") == "256"

        open_page(browser, url)  # a reload: the key stays, and brings the adapters again
        assert browser.find_element(By.ID, "api-key").get_attribute("value") == KEY
        assert browser.find_element(By.NAME, "lora:ink").is_displayed()

        browser.switch_to.new_window("tab")  # a new tab starts without it
        open_page(browser, url, model_info="needs-key")
        assert browser.find_element(By.ID, "api-key").get_attribute("value") == ""


def test_a_server_error_is_shown_at_the_field_it_names_else_in_a_banner(browser, tmp_path):
    with stub_page(tmp_path) as (url, gateway):
        wait = open_page(browser, url)
        form = browser.find_element(By.ID, "form-sdxl")
        fill(form, {"prompt": "a kite", "strength": "0.5"})  # strength needs an image: the service says so
        browser.find_element(By.ID, "generate").click()
        field = form.find_element(By.CSS_SELECTOR, "[data-field=strength]")
        wait.until(lambda driver: "invalid" in field.get_attribute("class"))
        assert "acts only with an image" in field.find_element(By.CLASS_NAME, "field-error").text
        assert not browser.find_element(By.CSS_SELECTOR, "#pane-sdxl .banner").is_displayed()
        screenshot(browser, "playground-error.png")

        async def failing(service, request):
            raise RuntimeError("the model fell over")
            yield  # an async generator

        gateway.events = failing
        form.find_element(By.NAME, "strength").clear()
        browser.find_element(By.ID, "generate").click()
        banner = browser.find_element(By.CSS_SELECTOR, "#pane-sdxl .banner")
        wait.until(lambda driver: banner.is_displayed())
        assert "invalid" not in field.get_attribute("class")  # the last error only
        assert banner.text


def test_a_narrow_screen_gets_one_column_without_overflow(browser, tmp_path):
    browser.set_window_size(420, 1900)  # tall: the whole page in the screenshot
    with stub_page(tmp_path) as (url, _):
        wait = open_page(browser, url)
        fill(browser.find_element(By.ID, "form-sdxl"), {"prompt": "a paper crane", "seed": "140"})
        browser.find_element(By.ID, "generate").click()
        wait_until_done(browser, wait, "sdxl")
        composer = browser.find_element(By.CLASS_NAME, "composer").rect
        entry = browser.find_element(By.CSS_SELECTOR, "#pane-sdxl .entry").rect
        assert entry["y"] >= composer["y"] + composer["height"]  # results below the form
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        screenshot(browser, "playground-narrow.png")


def test_the_playground_plays_music_as_it_arrives_then_shows_the_track(browser, tmp_path):
    app, gateway = make_app(tmp_path)
    gateway.hold_s = 3.0  # the track itself comes 3 s after its last piece
    with served(app) as url:
        wait = open_page(browser, url)
        body = browser.find_element(By.TAG_NAME, "body")
        browser.find_element(By.CSS_SELECTOR, ".tab[data-service=musicgen]").click()
        form = browser.find_element(By.ID, "form-musicgen")
        fill(form, {"prompt": "lo-fi", "duration": "2.3", "seed": "5"})
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda driver: body.get_attribute("data-scheduled-samples") == str(round(2.3 * 32_000)))
        assert not browser.find_elements(By.CSS_SELECTOR, "audio.result")  # scheduled before the track came
        live = browser.find_element(By.CSS_SELECTOR, "#pane-musicgen .live")
        assert live.is_displayed() and "Playing as it is generated" in live.text
        progress = live.find_element(By.TAG_NAME, "progress")
        assert float(progress.get_attribute("value")) == pytest.approx(2.3, abs=0.01)
        screenshot(browser, "playground-music-live.png")
        audio = wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "audio.result")))
        assert float(body.get_attribute("data-scheduled-seconds")) == pytest.approx(2.3, abs=1e-4)  # no gaps
        (request,) = gateway.generated
        assert request.stream  # the page's Accept: text/event-stream asks the model for audio
        track = base64.b64encode(stub_output(request).audio).decode()
        assert audio.get_attribute("src") == f"data:audio/wav;base64,{track}"
        assert not live.is_displayed()
        assert severe_errors(browser) == []
