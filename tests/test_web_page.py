"""The web page at ``/`` in a real headless Chromium (Selenium) against the real server.

Needs Debian's Chromium and its driver: ``apt-get install -y chromium chromium-driver``.
"""

from __future__ import annotations

import os
import re
import shutil

import httpx
import pytest
from PIL import Image, ImageDraw
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from testkit.drawing import noise
from testkit.serving import running_server

pytestmark = [pytest.mark.server, pytest.mark.timeout(600)]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
MAX_IMAGE_BYTES = 200_000
QUESTION = "What colour is the circle?"
WAIT_S = 60

# Dispatches a paste (ClipboardEvent) or drop (DragEvent) carrying a 16-byte "kind.png"; returns the caption.
SYNTHETIC_IMAGE_EVENT = """const [kind, done] = arguments, data = new DataTransfer();
data.items.add(new File([new Uint8Array(16)], `${kind}.png`, {type: "image/png"}));
const init = {bubbles: true, cancelable: true, [kind === "paste" ? "clipboardData" : "dataTransfer"]: data};
document.body.dispatchEvent(kind === "paste" ? new ClipboardEvent("paste", init) : new DragEvent("drop", init));
done(document.getElementById("preview-caption").textContent);"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("web"), ARR_COC_MAX_IMAGE_BYTES=str(MAX_IMAGE_BYTES)) as server:
        yield server


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: install them with `apt-get install -y chromium chromium-driver`")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never reach the network
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
        "--window-size=1280,1400",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture(scope="module")
def circle_png(tmp_path_factory):
    image = Image.new("RGB", (448, 336), (128, 128, 128))
    ImageDraw.Draw(image).ellipse([150, 90, 300, 240], fill=(220, 30, 30))
    path = tmp_path_factory.mktemp("images") / "circle.png"
    image.save(path)
    return path


def open_page(driver, server):
    driver.get(server.url + "/")
    WebDriverWait(driver, WAIT_S).until(lambda d: Select(d.find_element(By.ID, "variant")).options)
    return driver


def ask(driver, image_path, question=QUESTION):
    driver.find_element(By.ID, "image-input").send_keys(str(image_path))
    field = driver.find_element(By.ID, "question")
    field.clear()
    field.send_keys(question)
    driver.find_element(By.ID, "ask").click()


def wait_answered(driver):
    """Wait for the streamed answer, the kept-token line and the heatmap; return the answer text."""
    wait = WebDriverWait(driver, WAIT_S)
    wait.until(lambda d: "kept" in d.find_element(By.ID, "kept").text)
    heatmap = driver.find_element(By.ID, "heatmap")
    wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", heatmap) > 0)
    assert heatmap.get_attribute("src").startswith("data:image/png;base64,")
    return driver.find_element(By.ID, "answer").text


def test_page_says_when_the_arr_coc_variants_have_no_trained_scorer(driver, tmp_path):
    """A random-weight testbed with no scorer: a notice names the command that trains one, the page picks the
    deployment's training-free default, and the arr-coc options say their scorer is untrained."""
    with running_server(tmp_path, ARR_COC_TESTBED_FAMILY="qwen2.5-vl") as untrained:
        open_page(driver, untrained)
        notice = driver.find_element(By.ID, "notice")
        WebDriverWait(driver, WAIT_S).until(lambda d: notice.is_displayed())
        assert "no trained relevance scorer" in notice.text and "arr-coc distill-scorer" in notice.text
        variants = Select(driver.find_element(By.ID, "variant"))
        assert variants.first_selected_option.get_attribute("value") == "divprune-25"
        labels = {option.get_attribute("value"): option.text for option in variants.options}
        assert labels["arr-coc-25"] == "arr-coc-25 (untrained scorer)" and labels["divprune-25"] == "divprune-25"


def test_page_shows_the_traffic_split_and_answers_from_this_browsers_side(driver, tmp_path, circle_png):
    """With ARR_COC_TRAFFIC the page says so, offers the split as the variant to ask (naming none), and one
    browser keeps one side of it; each answer line says its variant and its cost."""
    with running_server(tmp_path, ARR_COC_TRAFFIC="arr-coc-25=0.5,full=0.5") as split:
        open_page(driver, split)
        traffic = driver.find_element(By.ID, "traffic")
        WebDriverWait(driver, WAIT_S).until(lambda d: traffic.is_displayed())
        assert "arr-coc-25 50% · full 50%" in traffic.text
        variants = Select(driver.find_element(By.ID, "variant"))
        assert variants.first_selected_option.get_attribute("value") == ""
        assert variants.first_selected_option.text.startswith("traffic split")
        sides = []
        for _ in range(2):
            ask(driver, circle_png)
            wait_answered(driver)
            kept = driver.find_element(By.ID, "kept").text
            assert re.search(r"cost \$\d+\.\d{4} per 1,000 such answers", kept), kept
            sides.append(kept.split(":")[0])
            open_page(driver, split)
        user = driver.execute_script("return localStorage.getItem('arr-coc-user')")
        expected = httpx.post(
            split.url + "/answer",
            files={"image": ("circle.png", circle_png.read_bytes(), "image/png")},
            data={"question": QUESTION, "max_new_tokens": "2"},
            headers={"X-Arr-Coc-User": user},
            timeout=120,
        ).json()["variant"]
        assert sides == [expected, expected]


def test_page_loads_and_lists_the_variants(driver, server):
    open_page(driver, server)
    assert "ARR-COC" in driver.title
    variants = Select(driver.find_element(By.ID, "variant"))
    names = [option.get_attribute("value") for option in variants.options]
    assert "arr-coc-25" in names and "full" in names
    assert variants.first_selected_option.get_attribute("value") == "arr-coc-25"
    budget = driver.find_element(By.ID, "budget")
    assert budget.get_attribute("placeholder") == "variant's own: 0.25"  # from /v1/models
    variants.select_by_value("arr-coc-auto")
    assert budget.get_attribute("placeholder") == "variant's own: auto"
    variants.select_by_value("arr-coc-25")
    assert not driver.find_element(By.ID, "error").is_displayed()
    assert not driver.find_element(By.ID, "notice").is_displayed()  # the shipped model has its trained scorer
    for kind in ("paste", "drop"):  # a pasted or dropped image becomes the preview
        assert driver.execute_async_script(SYNTHETIC_IMAGE_EVENT, kind) == f"{kind}.png (16 bytes)"
        assert driver.find_element(By.ID, "preview").is_displayed()
    # the API key is kept for the tab (sessionStorage), across a reload
    driver.find_element(By.ID, "api-key").send_keys("secret-key\t")
    open_page(driver, server)
    assert driver.find_element(By.ID, "api-key").get_attribute("value") == "secret-key"
    driver.execute_script("sessionStorage.clear()")


def test_ask_streams_the_answer_and_shows_the_heatmap(driver, server, circle_png, tmp_path):
    open_page(driver, server)
    ask(driver, circle_png)
    answer = wait_answered(driver)
    assert answer.strip()
    kept = driver.find_element(By.ID, "kept").text
    assert "kept 48 / 192" in kept and "25.0%" in kept, kept
    stages = [cell.text for cell in driver.find_elements(By.CSS_SELECTOR, "#timings tbody td:first-child")]
    assert {"relevance", "vision", "prefill", "decode"} <= set(stages), stages
    ms = [cell.text for cell in driver.find_elements(By.CSS_SELECTOR, "#timings tbody td.ms")]
    assert ms and all(re.fullmatch(r"\d+\.\d", text) for text in ms), ms  # milliseconds, one decimal
    # greedy decoding: the same request to POST /answer gives the same text
    files = {"image": ("circle.png", circle_png.read_bytes(), "image/png")}
    data = {"question": QUESTION, "variant": "arr-coc-25", "max_new_tokens": "32"}
    response = httpx.post(server.url + "/answer", files=files, data=data, timeout=120)
    assert response.status_code == 200, response.text
    assert answer == response.json()["answer"].strip()

    screenshot = tmp_path / "page.png"
    assert driver.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000
    with Image.open(screenshot) as shot:
        assert shot.width >= 800 and shot.height >= 600


def test_an_oversized_image_shows_the_error_and_the_next_request_works(driver, server, circle_png, tmp_path):
    big = tmp_path / "noise.png"
    noise(600, 600, seed=1).save(big)
    assert big.stat().st_size > MAX_IMAGE_BYTES
    open_page(driver, server)
    ask(driver, big)
    error = driver.find_element(By.ID, "error")
    WebDriverWait(driver, WAIT_S).until(lambda d: error.is_displayed() and "413" in error.text)
    assert error.get_attribute("role") == "alert"
    assert "image_too_large" in error.text or "request_too_large" in error.text, error.text
    assert driver.find_element(By.ID, "ask").is_enabled() and not driver.find_element(By.ID, "heatmap").is_displayed()

    ask(driver, circle_png)
    assert wait_answered(driver).strip()
    assert not error.is_displayed() and error.text == ""
