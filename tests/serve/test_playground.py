"""The playground at `/`, driven in a real headless browser (Debian's chromium and chromedriver, by
selenium). On the real graph: a generation completes with live progress, the image appears with its
seed, which the page can reuse; an uploaded image is inpainted with an adapter and the refiner, as
the API would. Against the in-process app with the stub model (served by uvicorn, no Ray): the form
starts from the model's defaults within the schema's bounds, the browser refuses what the schema
refuses before any request, the API key is kept for the tab and brings the adapters, each service
keeps its own history, errors show at their field, music plays as it arrives, the model's defaults are
asked again only after a failure that may pass, and Stop and the progress stay in view on a laptop and
a phone. Screenshots go to test-artifacts/."""

import asyncio
import base64
import dataclasses
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver import ActionChains
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from leap_ray.api.progress import StepProgress
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


def screenshot(browser: WebDriver, name: str, *, from_top: bool = True) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    if from_top:
        browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(SCREENSHOTS / name))


def media_data_uri(browser: WebDriver, media: WebElement) -> str:
    """An output's bytes as a data URI of their media type (the page holds them as object URLs)."""
    return browser.execute_async_script(
        "const [media, done] = arguments;"
        "fetch(media.src).then(r => r.blob()).then(blob => {"
        "  const reader = new FileReader(); reader.onload = () => done(reader.result); reader.readAsDataURL(blob);"
        "}).catch(error => done(`unreadable: ${error}`))",
        media,
    )


def spy_on_posts(browser: WebDriver) -> None:
    """Records the path of every POST the page starts (`posted()`), from the moment it is called: a
    request refused in the browser leaves it empty (resource timings appear only once answered)."""
    browser.execute_script(
        "window.__posts = []; const fetch_ = window.fetch;"
        "window.fetch = (path, options = {}) => {"
        "  if (options.method === 'POST') window.__posts.push(String(path)); return fetch_(path, options); }"
    )


def posted(browser: WebDriver) -> list[str]:
    return browser.execute_script("return window.__posts")


def severe_errors(browser: WebDriver) -> list[dict]:
    """The page's own errors in the console (a refused request's network line is expected)."""
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and e["source"] != "network"]


@contextmanager
def stub_page(tmp_path: Path, **settings: object) -> Iterator[tuple[str, StubGateway]]:
    app, gateway = make_app(tmp_path, **settings)
    with served(app) as url:
        yield url, gateway


def with_adapters(gateway: StubGateway, *names: str) -> None:
    """The stub's SDXL model offers these adapters besides its own."""
    spec = gateway._spec

    async def offering(service: str) -> object:
        found = await spec(service)
        return dataclasses.replace(found, loras=(*found.loras, *names)) if service == "sdxl" else found

    gateway._spec = offering


def in_view(browser: WebDriver, element: WebElement) -> bool:
    return browser.execute_script(
        "const r = arguments[0].getBoundingClientRect(); return r.top >= 0 && r.bottom <= window.innerHeight",
        element,
    )


def keys_on(tmp_path: Path) -> dict[str, str]:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{KEY}\n")
    return {"api_keys_file": str(keys)}


PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}


def make_history(browser: WebDriver, wait: WebDriverWait, count: int) -> None:
    """`count` images in the SDXL history, generated one after the other."""
    form = browser.find_element(By.ID, "form-sdxl")
    for take in range(count):
        fill(form, {"prompt": f"a red fox in snow, take {take}", "seed": str(10 * take + 5)})
        browser.execute_script("document.getElementById('generate').click()")  # wherever it is scrolled to
        wait_until_done(browser, wait, "sdxl")
        browser.execute_script("document.getElementById('pane-sdxl').dataset.state = ''")


def overlap(browser: WebDriver, one: WebElement, other: WebElement) -> bool:
    """Whether the two are drawn over each other within the screen."""
    return browser.execute_script(
        "const [a, b] = [arguments[0], arguments[1]].map(e => e.getBoundingClientRect());"
        "const top = Math.max(a.top, b.top, 0), bottom = Math.min(a.bottom, b.bottom, innerHeight);"
        "return bottom > top && Math.max(a.left, b.left) < Math.min(a.right, b.right)",
        one,
        other,
    )


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
    assert media_data_uri(browser, image).startswith("data:image/png;base64,")
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
    assert media_data_uri(browser, image) == f"data:image/png;base64,{direct.json()['images'][0]['data']}"
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
            "lora:ink": ("", "-4", "4", "any"),  # LoraChoice.scale's bounds
        }.items():
            element = form.find_element(By.NAME, name)
            assert tuple(element.get_attribute(a) for a in attributes) == expected, name
        hint = "#form-musicgen [data-field=duration] .hint"  # above 0, not from 0
        assert browser.execute_script(f"return document.querySelector('{hint}').textContent") == "> 0 – 60"
        fill(form, {"prompt": "a kite"})
        browser.find_element(By.ID, "generate").click()
        wait_until_done(browser, WebDriverWait(browser, 30), "sdxl")
        (request,) = gateway.generated
        assert (request.height, request.width, request.num_inference_steps) == (256, 256, 8)


def test_a_height_off_the_schemas_steps_is_refused_in_the_browser_before_any_request(browser, tmp_path):
    with stub_page(tmp_path) as (url, gateway):
        open_page(browser, url)
        form = browser.find_element(By.ID, "form-sdxl")
        spy_on_posts(browser)
        fill(form, {"prompt": "a kite", "height": "100"})
        browser.find_element(By.ID, "generate").click()
        height = form.find_element(By.NAME, "height")
        assert browser.execute_script("return arguments[0].validity.stepMismatch", height)
        assert browser.execute_script("return document.activeElement") == height  # reported at the field
        fill(form, {"height": "104", "num_inference_steps": "151"})  # over the schema's maximum
        browser.find_element(By.ID, "generate").click()
        steps = form.find_element(By.NAME, "num_inference_steps")
        assert browser.execute_script("return arguments[0].validity.rangeOverflow", steps)
        assert posted(browser) == []
        fill(form, {"num_inference_steps": "3"})  # the spy sees what is sent
        browser.find_element(By.ID, "generate").click()
        wait_until_done(browser, WebDriverWait(browser, 30), "sdxl")
        assert posted(browser) == ["v1/sdxl"] and len(gateway.generated) == 1


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
        for part in ("#auth label", "#key-status"):  # the key area keeps to one line
            assert browser.find_element(By.CSS_SELECTOR, part).rect["height"] < 24, part
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
        screenshot(browser, "playground-error.png", from_top=False)  # where the page took the reader

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
    phone = {
        "width": 390,
        "height": 1900,
        "deviceScaleFactor": 1,
        "mobile": True,
    }  # tall: the whole page shown
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", phone)
    with stub_page(tmp_path) as (url, gateway):
        with_adapters(gateway, "papercut_SDXL_TheLastBen_with_a_long_name")  # no space to wrap at
        wait = open_page(browser, url)
        fill(browser.find_element(By.ID, "form-sdxl"), {"prompt": "a paper crane", "seed": "140"})
        browser.find_element(By.ID, "generate").click()
        wait_until_done(browser, wait, "sdxl")
        composer = browser.find_element(By.CLASS_NAME, "composer").rect
        entry = browser.find_element(By.CSS_SELECTOR, "#pane-sdxl .entry").rect
        assert entry["y"] >= composer["y"] + composer["height"]  # results below the form
        # clientWidth: the page's width without a scrollbar (innerWidth counts it).
        assert browser.execute_script(
            "return document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        )
        screenshot(browser, "playground-narrow.png")
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", phone | {"height": 844})
        screenshot(browser, "playground-phone.png")


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
        assert media_data_uri(browser, audio) == f"data:audio/wav;base64,{track}"
        assert not live.is_displayed()
        assert severe_errors(browser) == []


def test_an_image_started_while_music_streams_leaves_the_track_to_finish(browser, tmp_path):
    app, gateway = make_app(tmp_path)
    stub_events = gateway.events

    async def slow_music(service, request):
        async for event in stub_events(service, request):
            if service == "musicgen":
                await asyncio.sleep(0.4)  # pieces still arrive after the image has started
            yield event

    gateway.events = slow_music
    with served(app) as url:
        wait = open_page(browser, url)
        body = browser.find_element(By.TAG_NAME, "body")
        browser.find_element(By.CSS_SELECTOR, ".tab[data-service=musicgen]").click()
        fill(browser.find_element(By.ID, "form-musicgen"), {"prompt": "lo-fi", "duration": "3", "seed": "5"})
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda driver: int(body.get_attribute("data-scheduled-samples") or 0) > 0)
        browser.find_element(By.CSS_SELECTOR, ".tab[data-service=sdxl]").click()
        fill(browser.find_element(By.ID, "form-sdxl"), {"prompt": "a kite", "seed": "7"})
        browser.find_element(By.ID, "generate").click()
        wait_until_done(browser, wait, "sdxl")
        music = browser.find_element(By.ID, "pane-musicgen")
        assert music.get_attribute("data-state") == "running"  # the two overlapped
        wait_until_done(browser, wait, "musicgen")
        assert body.get_attribute("data-scheduled-samples") == str(3 * 32_000)  # every piece played
        for service in ("sdxl", "musicgen"):
            assert len(browser.find_elements(By.CSS_SELECTOR, f"#pane-{service} .entry")) == 1, service
        assert severe_errors(browser) == []


def test_a_double_press_with_an_image_attached_is_one_generation(browser, tmp_path):
    photo = tmp_path / "photo.png"  # read by the page asynchronously, as every attached file
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(photo)
    with stub_page(tmp_path) as (url, gateway):
        gateway.hold_s = 1.0
        wait = open_page(browser, url)
        form = browser.find_element(By.ID, "form-sdxl")
        fill(form, {"prompt": "a gate", "image": str(photo), "seed": "1"})
        generate = browser.find_element(By.ID, "generate")
        ActionChains(browser).double_click(generate).perform()
        wait_until_done(browser, wait, "sdxl")
        assert len(gateway.generated) == 1 and generate.text == "Generate"

        browser.execute_script("document.getElementById('pane-sdxl').dataset.state = ''")
        prompt = form.find_element(By.NAME, "prompt")
        for _ in range(2):  # Ctrl+Enter twice: it starts, never stops
            ActionChains(browser).key_down(Keys.CONTROL).send_keys_to_element(prompt, Keys.ENTER).key_up(
                Keys.CONTROL
            ).perform()
        wait_until_done(browser, wait, "sdxl")
        assert len(gateway.generated) == 2
        assert len(browser.find_elements(By.CSS_SELECTOR, "#pane-sdxl .entry")) == 2


def test_the_models_defaults_are_asked_again_while_the_model_loads(browser, tmp_path):
    with stub_page(tmp_path) as (url, gateway):
        spec, failures = gateway._spec, [4]  # the first two tries of both routes

        async def loading(service: str) -> object:
            if service == "sdxl" and failures[0]:
                failures[0] -= 1
                raise TimeoutError  # answered 503 with Retry-After, as while a replica loads
            return await spec(service)

        gateway._spec = loading
        browser.get(f"{url}/")
        body = browser.find_element(By.TAG_NAME, "body")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda driver: body.get_attribute("data-model-info") == "retrying")
        note = browser.find_element(By.ID, "model-note")
        assert note.is_displayed() and "Model loading" in note.text
        form = browser.find_element(By.ID, "form-sdxl")
        assert form.find_element(By.NAME, "height").get_attribute("value") == ""
        wait.until(lambda driver: body.get_attribute("data-model-info") == "loaded")
        assert failures == [0] and not note.is_displayed()
        assert form.find_element(By.NAME, "height").get_attribute("value") == "256"
        assert form.find_element(By.NAME, "num_inference_steps").get_attribute("value") == "8"
        assert form.find_element(By.NAME, "lora:ink").is_displayed()


def test_the_models_defaults_are_not_asked_again_after_a_failure_that_lasts(browser, tmp_path):
    with stub_page(tmp_path) as (url, gateway):
        asked = []

        async def broken(service: str) -> object:
            asked.append(service)
            raise RuntimeError("a bug")  # answered 500 internal_error: asking again changes nothing

        gateway._spec = broken
        browser.get(f"{url}/")
        body = browser.find_element(By.TAG_NAME, "body")
        WebDriverWait(browser, 30).until(lambda driver: body.get_attribute("data-model-info") == "failed")
        note = browser.find_element(By.ID, "model-note")
        assert note.is_displayed() and note.text == "Couldn't load the model's defaults (HTTP 500)."
        time.sleep(4)  # a retry would have come after 1 s, and again 2 s later
        assert asked == ["sdxl", "sdxl"]  # once by each route: the defaults and the adapters
        assert body.get_attribute("data-model-info") == "failed"


def test_a_proxys_502_is_asked_again_and_the_note_names_the_route(browser, tmp_path):
    """A load balancer in front of the service answers 502 while its pods restart: it passes."""
    gone_once = """
        const realFetch = window.fetch;
        let refused = 0;
        window.fetch = (path, options) => String(path).endsWith("v1/sdxl/adapters") && refused++ < 1
            ? Promise.resolve(new Response("bad gateway", {status: 502}))
            : realFetch(path, options);
    """
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": gone_once})
    with stub_page(tmp_path) as (url, _):
        browser.get(f"{url}/")
        body = browser.find_element(By.TAG_NAME, "body")
        note = browser.find_element(By.ID, "model-note")
        WebDriverWait(browser, 10).until(lambda driver: note.text.startswith("The service is restarting"))
        WebDriverWait(browser, 10).until(lambda driver: body.get_attribute("data-model-info") == "loaded")
        assert browser.find_element(By.NAME, "lora:ink").is_displayed()


def test_a_stream_that_ends_without_a_result_is_an_error(browser, tmp_path):
    with stub_page(tmp_path) as (url, gateway):

        async def cut_short(service, request):
            gateway.generated.append(request)
            for step in range(1, 4):
                yield StepProgress(step=step, total=8, timestep=1.0, preview=None)

        gateway.events = cut_short
        open_page(browser, url)
        fill(browser.find_element(By.ID, "form-sdxl"), {"prompt": "a kite"})
        browser.find_element(By.ID, "generate").click()
        pane = browser.find_element(By.ID, "pane-sdxl")
        WebDriverWait(browser, 15).until(lambda driver: pane.get_attribute("data-state") != "running")
        assert pane.get_attribute("data-state") == "error"
        assert "The stream ended before a result" in pane.find_element(By.CLASS_NAME, "banner").text
        assert not pane.find_element(By.CLASS_NAME, "live").is_displayed()
        assert browser.find_element(By.ID, "generate").text == "Generate"


def test_sizes_step_by_8_from_an_operators_minimum_off_the_multiple(browser, tmp_path):
    app, _ = make_app(tmp_path)
    request = app.openapi()["components"]["schemas"]["SDXLRequest"]["properties"]
    for side in ("height", "width"):  # the schema under LEAP_RAY_SDXL__MIN_SIZE=100
        request[side]["minimum"] = 100
    with served(app) as url:
        open_page(browser, url)
        form = browser.find_element(By.ID, "form-sdxl")
        height = form.find_element(By.NAME, "height")
        for value, valid in {"104": True, "256": True, "108": False, "100": False, "96": False}.items():
            fill(form, {"height": value})
            assert browser.execute_script("return arguments[0].checkValidity()", height) is valid, value


def test_the_progress_stays_in_view_on_a_laptop_screen(browser, tmp_path):
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
    )
    with stub_page(tmp_path) as (url, gateway):
        wait = open_page(browser, url)
        make_history(browser, wait, 10)  # the results are taller than the screen
        browser.execute_script("window.scrollTo(0, 0)")
        gateway.hold_s = 10.0
        fill(browser.find_element(By.ID, "form-sdxl"), {"prompt": "a red fox", "seed": "9"})
        generate = browser.find_element(By.ID, "generate")
        assert in_view(browser, generate)  # pressed where it is, with no scrolling
        generate.click()
        progress = browser.find_element(By.CSS_SELECTOR, "#pane-sdxl progress")
        wait.until(lambda driver: progress.get_attribute("value") == "8")
        assert in_view(browser, progress)
        browser.execute_script("window.scrollTo(0, document.documentElement.scrollHeight)")  # to the oldest
        assert browser.execute_script("return scrollY") > 800
        assert in_view(browser, progress)
        screenshot(browser, "playground-generating-1280x800.png", from_top=False)
        # The form's Stop scrolled away with the form; the live card's own is beside the progress.
        stop = browser.find_element(By.CSS_SELECTOR, "#pane-sdxl .live .stop-live")
        assert in_view(browser, stop) and not in_view(browser, generate)
        stop.click()  # a real click: nothing lies over it
        pane = browser.find_element(By.ID, "pane-sdxl")
        wait.until(lambda driver: pane.get_attribute("data-state") == "stopped")
        assert generate.text == "Generate"


def test_on_a_phone_stop_stays_in_reach_and_the_progress_leaves_the_history_uncovered(browser, tmp_path):
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    with stub_page(tmp_path) as (url, gateway):
        wait = open_page(browser, url)
        make_history(browser, wait, 4)
        gateway.hold_s = 10.0
        browser.execute_script("document.getElementById('generate').click()")
        progress = browser.find_element(By.CSS_SELECTOR, "#pane-sdxl progress")
        wait.until(lambda driver: progress.get_attribute("value") == "8")
        entries = browser.find_elements(By.CSS_SELECTOR, "#pane-sdxl .entry")
        # Watching the results, scrolled down to them.
        browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", entries[1])
        live = browser.find_element(By.CSS_SELECTOR, "#pane-sdxl .live")
        assert not any(overlap(browser, live, entry) for entry in entries)
        stop = browser.find_element(By.ID, "generate")
        assert stop.text == "Stop" and in_view(browser, stop)
        screenshot(browser, "playground-phone-generating.png", from_top=False)
        stop.click()  # a real click: nothing lies over it
        pane = browser.find_element(By.ID, "pane-sdxl")
        wait.until(lambda driver: pane.get_attribute("data-state") == "stopped")
        # At the page's end, the oldest entry clears the bar pinned over the screen's bottom.
        browser.execute_script("window.scrollTo(0, document.documentElement.scrollHeight)")
        actions = browser.find_element(By.CLASS_NAME, "actions")
        assert not overlap(browser, actions, entries[-1])


def test_tabs_progress_and_field_errors_are_wired_for_assistive_technology(browser, tmp_path):
    with stub_page(tmp_path) as (url, _):
        wait = open_page(browser, url)
        tabs = browser.find_elements(By.CSS_SELECTOR, "[role=tablist] [role=tab]")
        for tab in tabs:
            selected = tab.get_attribute("aria-selected") == "true"
            assert tab.get_attribute("tabindex") == ("0" if selected else "-1")
            for panel in [browser.find_element(By.ID, i) for i in tab.get_attribute("aria-controls").split()]:
                assert panel.get_attribute("role") == "tabpanel"
                assert panel.get_attribute("aria-labelledby") == tab.get_attribute("id")
                assert panel.is_displayed() == selected
        tabs[0].click()
        tabs[0].send_keys(Keys.ARROW_RIGHT)
        assert tabs[1].get_attribute("aria-selected") == "true"
        assert browser.switch_to.active_element == tabs[1]
        assert browser.find_element(By.ID, "form-musicgen").is_displayed()
        tabs[1].send_keys(Keys.ARROW_RIGHT)  # around to the first
        assert tabs[0].get_attribute("aria-selected") == "true"
        for live in browser.find_elements(By.CLASS_NAME, "live"):
            assert live.find_element(By.TAG_NAME, "progress").get_attribute("aria-label")
            status = live.find_element(By.CLASS_NAME, "status")
            assert (status.get_attribute("role"), status.get_attribute("aria-live")) == ("status", "polite")

        form = browser.find_element(By.ID, "form-sdxl")
        fill(form, {"prompt": "a kite", "strength": "0.5"})  # strength needs an image: the service says so
        browser.find_element(By.ID, "generate").click()
        strength = form.find_element(By.NAME, "strength")
        wait.until(lambda driver: strength.get_attribute("aria-invalid") == "true")
        error = browser.find_element(By.ID, strength.get_attribute("aria-describedby"))
        assert "acts only with an image" in error.text
        assert browser.switch_to.active_element == strength  # focus moved to the field to fix
        strength.send_keys("1")
        assert strength.get_attribute("aria-invalid") is None and not error.is_displayed()
        hint = form.find_element(By.CSS_SELECTOR, "[data-field=height] .hint")
        assert hint.value_of_css_property("color") == "rgba(93, 102, 121, 1)"  # 5:1 on white and greys


def test_a_track_keeps_its_media_type_and_clear_frees_the_history_keeping_the_focus(browser, tmp_path):
    with stub_page(tmp_path) as (url, gateway):
        wait = open_page(browser, url)
        browser.find_element(By.CSS_SELECTOR, ".tab[data-service=musicgen]").click()
        form = browser.find_element(By.ID, "form-musicgen")
        fill(form, {"prompt": "lo-fi", "duration": "1", "seed": "3"})
        form.find_element(By.TAG_NAME, "summary").click()  # "More parameters"
        Select(form.find_element(By.NAME, "format")).select_by_value("mp3")
        browser.find_element(By.ID, "generate").click()
        wait_until_done(browser, wait, "musicgen")
        audio = browser.find_element(By.CSS_SELECTOR, "audio.result")
        (request,) = gateway.generated
        track = base64.b64encode(stub_output(request).audio).decode()
        assert media_data_uri(browser, audio) == f"data:audio/mpeg;base64,{track}"  # the service's type
        src = audio.get_attribute("src")
        assert src.startswith("blob:")  # held once, as bytes
        assert browser.find_element(By.CSS_SELECTOR, "#pane-musicgen a.download").get_attribute("href") == src
        browser.find_element(By.CSS_SELECTOR, "#pane-musicgen .clear").send_keys(Keys.ENTER)
        assert not browser.find_elements(By.CSS_SELECTOR, "audio.result")
        # The button hides itself: the focus goes to its pane's heading, not back to the page's start.
        assert browser.switch_to.active_element == browser.find_element(By.CSS_SELECTOR, "#pane-musicgen h2")
        freed = "const [src, done] = arguments; fetch(src).then(() => done(false), () => done(true))"
        assert browser.execute_async_script(freed, src)
