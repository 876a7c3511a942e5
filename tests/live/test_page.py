"""The live view's page in a real headless Chromium, checked as a person sees it: the pixels
drawn on the page are the simulated camera's frame binned to the page and mapped through the
contrast the page shows; the frame number advances; the controls change the drawing; the
camera's settings, regions, mode, file and counters are on the page; a wrong token gets no
image. A screenshot of each test is kept in its temporary directory (live-view.png)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from ophyd_scmos.plans import movie
from tests.live.conftest import ROIS, FocusCamera

SNAPSHOT = """(() => {
  const canvas = document.getElementById("image");
  const rgba = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  const grey = new Uint8Array(rgba.length / 4);
  let coloured = 0;
  for (let i = 0; i < grey.length; i++) {
    grey[i] = rgba[4 * i];
    if (rgba[4 * i + 1] !== grey[i] || rgba[4 * i + 2] !== grey[i] || rgba[4 * i + 3] !== 255)
      coloured++;
  }
  let text = "";
  for (let i = 0; i < grey.length; i += 0x8000)
    text += String.fromCharCode(...grey.subarray(i, i + 0x8000));
  const view = window.liveView, rect = canvas.getBoundingClientRect();
  return { frame: view.frame, min: view.min, max: view.max, binning: view.binning,
           width: canvas.width, height: canvas.height, coloured,
           rect: [rect.left, rect.top, rect.width, rect.height],
           log: document.getElementById("log").checked, pixels: btoa(text) };
})()"""


@dataclass
class Drawn:
    """What the page's image shows: grey levels, and the frame and contrast it says."""

    frame: int
    low: float
    high: float
    binning: int
    log: bool
    grey: np.ndarray
    rect: tuple[float, float, float, float]  #: left, top, width, height on the page (CSS px)


def drawn(browser) -> Drawn:
    shot = browser.evaluate(SNAPSHOT)
    assert shot["coloured"] == 0, "every drawn pixel is an opaque grey"
    grey = np.frombuffer(base64.b64decode(shot["pixels"]), np.uint8)
    return Drawn(
        shot["frame"],
        shot["min"],
        shot["max"],
        shot["binning"],
        shot["log"],
        grey.reshape(shot["height"], shot["width"]),
        tuple(shot["rect"]),
    )


def grey_levels(values: np.ndarray, low: float, high: float, log: bool = False) -> np.ndarray:
    """The page's mapping, as its documentation says: 255 (v - min) / (max - min), or with
    log 255 ln(1 + v - min) / ln(1 + max - min); rounded half to even, clamped to 0..255."""
    if log:
        above = np.maximum(values - low, 0)
        levels = np.log1p(above) * (255 / np.log1p(high - low))
    else:
        levels = (values - low) * (255 / (high - low))
    return np.clip(np.rint(levels), 0, 255).astype(np.uint8)


def open_page(browser, url: str) -> None:
    browser.goto(url)
    browser.wait_for("window.liveView && window.liveView.draws >= 2")


def hold(browser, on: bool = True) -> None:
    """Tick "hold": the picture stays as it is (a frame on its way is not drawn)."""
    browser.evaluate(
        f"(() => {{ const box = document.getElementById('hold');"
        f" if (box.checked !== {str(on).lower()}) box.click(); }})()"
    )


def set_input(browser, element: str, value: object) -> None:
    """Type a value into a field as a person does: its input event follows."""
    browser.evaluate(
        f"(() => {{ const field = document.getElementById('{element}'); field.value = '{value}';"
        " field.dispatchEvent(new Event('input')); })()"
    )


def click(browser, element: str) -> None:
    browser.evaluate(f"document.getElementById('{element}').click()")


def texts(browser, *elements: str) -> tuple[str, ...]:
    """What several of the page's elements say at one moment (read one by one, the page could
    change between two of them)."""
    ids = json.dumps(elements)
    return tuple(browser.evaluate(f"{ids}.map(id => document.getElementById(id).textContent)"))


def text(browser, element: str) -> str:
    (said,) = texts(browser, element)
    return said


def screen(browser, tmp_path) -> np.ndarray:
    """The page as a person sees it (RGB), also kept as live-view.png."""
    png = browser.screenshot()
    (tmp_path / "live-view.png").write_bytes(png)
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize(
    ("camera", "factor"), [((256, 320), 1), ((1024, 1280), 2)], indirect=["camera"]
)
def test_the_page_draws_the_newest_frame_binned_to_the_page(
    camera, server, browser, tmp_path, factor
):
    open_page(browser, server.url)
    first = browser.evaluate("liveView.frame")
    browser.wait_for(f"liveView.frame > {first}")  # the frame number advances
    hold(browser)
    shown = drawn(browser)
    assert shown.binning == factor
    expected = camera.expected(shown.frame, factor)
    assert shown.grey.shape == expected.shape
    np.testing.assert_array_equal(shown.grey, grey_levels(expected, shown.low, shown.high))
    # Auto contrast: the 0.5 and 99.5 percentiles, to within a bin of the page's histogram.
    bin_width = (expected.max() - expected.min()) / 1024
    assert abs(shown.low - np.percentile(expected, 0.5)) <= 2 * bin_width
    assert abs(shown.high - np.percentile(expected, 99.5)) <= 2 * bin_width
    assert shown.grey.min() == 0 and shown.grey.max() == 255

    # The screenshot: each drawn pixel, sampled at its centre on the screen, away from the
    # regions drawn over the image.
    pixels = screen(browser, tmp_path)
    left, top, width, _ = shown.rect
    scale = width / shown.grey.shape[1]
    assert scale >= 1, "the page asked for at most its own size"
    rows, cols = np.mgrid[0 : shown.grey.shape[0] : 5, 0 : shown.grey.shape[1] : 5]
    covered = np.zeros(shown.grey.shape, bool)
    for x, y, w, h in ROIS.values():  # a margin for outlines and labels
        x0, y0 = max(0, x // factor - 3), max(0, y // factor - 3)
        covered[y0 : (y + h) // factor + 4, x0 : (x + w) // factor + 4] = True
    keep = ~covered[rows, cols]
    rows, cols = rows[keep], cols[keep]
    ys = (top + (rows + 0.5) * scale).astype(int)
    xs = (left + (cols + 0.5) * scale).astype(int)
    seen = pixels[ys, xs]
    assert (seen == shown.grey[rows, cols][:, None]).all(axis=1).mean() == 1.0


def test_the_contrast_controls_change_the_drawing(camera, server, browser, tmp_path):
    open_page(browser, server.url)
    hold(browser)
    auto = drawn(browser)
    expected = camera.expected(auto.frame, auto.binning)

    low, high = (float(v) for v in np.percentile(expected, [20, 60]).round())
    set_input(browser, "min", low)
    set_input(browser, "max", high)
    manual = drawn(browser)
    assert browser.evaluate("document.getElementById('auto').checked") is False
    assert (manual.frame, manual.low, manual.high) == (auto.frame, low, high)
    np.testing.assert_array_equal(manual.grey, grey_levels(expected, low, high))
    assert (manual.grey != auto.grey).mean() > 0.5
    assert (manual.grey == 255).mean() == pytest.approx((expected >= high).mean(), abs=0.01)

    click(browser, "log")
    logarithmic = drawn(browser)
    assert logarithmic.log and (logarithmic.low, logarithmic.high) == (low, high)
    expected_log = grey_levels(expected, low, high, log=True)
    # Where the exact level is a half (255 ln 3 / ln 9 = 127.5, say), the last bit of the
    # browser's log1p and of numpy's decides the rounding: one level either way.
    level = np.log1p(np.maximum(expected - low, 0)) * (255 / np.log1p(high - low))
    half = np.abs(level % 1 - 0.5) < 1e-9
    np.testing.assert_array_equal(logarithmic.grey[~half], expected_log[~half])
    assert np.abs(logarithmic.grey[half].astype(int) - expected_log[half]).max(initial=0) <= 1
    assert (logarithmic.grey > manual.grey).mean() > 0.3  # log lifts the darker half

    click(browser, "log")
    click(browser, "auto")
    again = drawn(browser)
    assert (again.low, again.high) == (auto.low, auto.high)
    np.testing.assert_array_equal(again.grey, auto.grey)
    screen(browser, tmp_path)


def test_the_page_shows_the_camera_its_regions_and_the_value_under_the_cursor(
    camera, server, browser, tmp_path
):
    open_page(browser, server.url)
    browser.wait_for("document.getElementById('settings').rows.length > 0")
    # Both rates are shown (how high depends on how loaded the machine is).
    browser.wait_for("parseFloat(document.getElementById('update-rate').textContent) > 0")
    browser.wait_for("parseFloat(document.getElementById('camera-rate').textContent) > 0")
    hold(browser)
    shown = drawn(browser)
    assert text(browser, "camera") == "cam"
    assert text(browser, "mode") == "focus" and text(browser, "file") == "no file"
    settings = browser.evaluate("document.getElementById('settings').innerText")
    assert "exposure time\t5 ms" in settings and "roi\tx 0, y 0, 320×256" in settings
    regions = text(browser, "regions")
    assert "spot: x 40, y 30, 64×48" in regions and "edge: x 200, y 150, 80×60" in regions
    assert text(browser, "frame-number") == str(shown.frame)

    # A person points at drawn pixel (row 100, column 150): the page names that frame pixel
    # and its value.
    left, top, width, _ = shown.rect
    scale = width / shown.grey.shape[1]
    browser.page(
        "Input.dispatchMouseEvent",
        type="mouseMoved",
        x=left + 150.5 * scale,
        y=top + 100.5 * scale,
    )
    cursor = browser.wait_for("liveView.cursor")
    value = camera.driver.expected_frame(shown.frame)[100, 150]
    assert cursor == {"x": 150, "y": 100, "value": int(value), "binning": 1}
    said = text(browser, "cursor")
    assert f"x 150, y 100value {value}sensor x 150, y 100" == said.replace("\n", "")
    screen(browser, tmp_path)


def test_a_wrong_token_gets_no_image(camera, server, browser, tmp_path):
    for address in (f"{server.base}/?token=wrong", f"{server.base}/"):
        browser.goto(address)
        assert "403" in browser.evaluate("document.body.innerText")
        assert browser.evaluate("document.querySelector('canvas') === null")
        assert browser.evaluate("typeof window.liveView") == "undefined"
    # The page's own requests carry its token: a wrong one gets no frame either.
    status = browser.evaluate(
        f"fetch('{server.base}/frame', {{headers: {{'X-Live-Token': 'wrong'}}}})"
        ".then(answer => answer.status)"
    )
    assert status == 403
    screen(browser, tmp_path)


def test_the_page_shows_a_recording_its_frames_file_and_counters(
    cam, driver, RE, browser, tmp_path
):
    cam.roi.set((0, 0, 320, 256))
    cam.rois["spot"] = (40, 30, 64, 48)
    cam.trigger_mode.set("internal")
    cam.acquire_period.set(0.01)
    open_page(browser, cam.live())
    assert text(browser, "mode") == "focus"
    left, top, width, _ = drawn(browser).rect
    scale = width / 320
    browser.page(
        "Input.dispatchMouseEvent", type="mouseMoved", x=left + 60.5 * scale, y=top + 45.5 * scale
    )
    seen: list[tuple[str, str, str]] = []
    recorded: list[Drawn] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(texts(browser, "mode", "file", "written"))
            if not recorded and seen[-1][0] == "recording" and seen[-1][2] not in ("—", "0"):
                recorded.append(drawn(browser))
                screen(browser, tmp_path)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        RE(movie(cam, frames=300))
        time.sleep(0.3)
    finally:
        done.set()
        watcher.join()
    recording = [(file, written) for mode, file, written in seen if mode == "recording"]
    assert recording, seen
    assert {file for file, _ in recording} == {cam.file_path.get()}
    assert max(int(written) for _, written in recording if written.isdigit()) > 0
    assert recorded, "no frame of the recording on the page"
    (shown,) = recorded
    expected = driver.expected_frame(shown.frame).astype(float)
    np.testing.assert_array_equal(shown.grey, grey_levels(expected, shown.low, shown.high))
    browser.wait_for(
        "document.getElementById('mode').textContent === 'focus' && "
        "document.getElementById('written').textContent === '—'"
    )


def test_a_uniform_frame_is_drawn_mid_grey_not_black(cam, driver, browser):
    """A saturated sensor (one value everywhere) has no contrast to stretch: auto contrast
    draws it mid-grey around its value; black would say "too dark" to someone focusing."""
    from ophyd_scmos.drivers.simulated import Spot

    with cam._live.settings_change():  # light that saturates every pixel of the frame
        driver.spot = Spot(32 + 48, 16 + 32, brightness=1e15, sigma=1000.0)
    open_page(browser, cam.live())
    browser.wait_for("window.liveView.min === 65534.5")
    shown = drawn(browser)
    assert (shown.low, shown.high) == (65534.5, 65535.5)
    assert shown.grey.min() >= 127 and shown.grey.max() <= 128


def test_the_page_says_why_focus_mode_stopped_on_its_own(cam, driver, browser):
    """The camera failed in focus mode: the page says so, with the camera's words, instead of
    FOCUS over a frame that no longer changes."""
    from ophyd_scmos.drivers.simulated import Spot

    def stage_x() -> float:
        raise RuntimeError("stage controller disconnected")

    open_page(browser, cam.live())
    assert text(browser, "mode") == "focus"
    with cam._live.settings_change():
        driver.spot = Spot(stage_x, 32.0)
    browser.wait_for("document.getElementById('mode').textContent === 'stopped'")
    assert "stage controller disconnected" in text(browser, "file")


def test_focus_camera_fixture_frames_are_the_simulated_ones(tmp_path):
    """The stand-in camera these tests watch delivers `SimulatedSCMOS.expected_frame`."""
    from ophyd_scmos.live.feed import LiveFeed

    camera = FocusCamera(tmp_path, (64, 96), rois={})
    feed = LiveFeed(camera.announcer.path)
    try:
        deadline = time.monotonic() + 10
        frame = feed.frame()
        while frame is None and time.monotonic() < deadline:
            time.sleep(0.01)
            frame = feed.frame()
        assert frame is not None
        np.testing.assert_array_equal(frame.image, camera.driver.expected_frame(frame.frame_number))
    finally:
        feed.close()
        camera.close()
