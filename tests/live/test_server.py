"""The live view's server, over HTTP: the token, the frames (binned, checked pixel for pixel
against the simulated camera's), the camera's state, and how the server starts and ends."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from ophyd_scmos.live.server import MAX_CONNECTIONS, MAX_SIDE, bin_frame, binning_for
from tests.live.conftest import ROIS, FocusCamera, LiveServer

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1: no proxy


def get(url: str, **headers: str) -> tuple[int, bytes]:
    try:
        with _OPENER.open(urllib.request.Request(url, headers=headers), timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as refused:
        with refused:
            return refused.code, refused.read()


def decode(body: bytes) -> tuple[dict, np.ndarray]:
    """A frame's body: uint32 length, JSON header, zeros to 4 bytes, little-endian pixels."""
    (length,) = struct.unpack_from("<I", body)
    header = json.loads(body[4 : 4 + length])
    start = 4 + length + (-(4 + length) % 4)
    pixels = np.frombuffer(body[start:], np.dtype(header["dtype"])).reshape(header["shape"])
    return header, pixels


@pytest.mark.parametrize("path", ["/", "/state", "/frame"])
def test_every_route_refuses_a_wrong_or_missing_token(server, path):
    base = server.base + path
    assert get(base)[0] == 403
    assert get(f"{base}?token=not-{server.token}")[0] == 403
    assert get(base, **{"X-Live-Token": server.token[:-1]})[0] == 403
    refused = get(f"{base}?token={server.token}x")
    assert refused[0] == 403 and b"frame" not in refused[1] and b"<canvas" not in refused[1]
    assert get(f"{base}?token={server.token}")[0] == 200
    assert get(base, **{"X-Live-Token": server.token})[0] == 200


def test_the_page_is_served_with_the_token(server):
    status, page = get(server.url)
    assert status == 200
    assert b'<canvas id="image">' in page and b"window.liveView" in page


@pytest.mark.parametrize(
    ("width", "height", "factor", "dtype"),
    [(320, 256, 1, "<u2"), (2000, 2000, 1, "<u2"), (160, 128, 2, "<f4"), (100, 100, 4, "<f4")],
)
def test_a_frame_comes_binned_to_the_size_asked(camera, server, width, height, factor, dtype):
    status, body = get(f"{server.base}/frame?token={server.token}&width={width}&height={height}")
    assert status == 200
    header, pixels = decode(body)
    assert (header["binning"], header["dtype"]) == (factor, dtype)
    assert header["frame_shape"] == [256, 320]
    assert header["shape"] == [256 // factor, 320 // factor] == list(pixels.shape)
    # Exact: the means of 4 or 16 uint16 values are exact in float32.
    np.testing.assert_array_equal(pixels, camera.expected(header["frame_number"], factor))
    assert header["mode"] == "focus" and header["file"] is None
    assert header["ring"] == camera.ring.spec.name
    assert 0 <= time.time() - header["host_time"] < 5
    assert header["counters"]["delivered"] >= header["delivered"] >= 1


def test_a_frame_request_waits_for_a_newer_frame_or_says_there_is_none(camera, server):
    frame = f"{server.base}/frame?token={server.token}&width=64&height=64"
    first, _ = decode(get(frame)[1])
    after_first = f"{frame}&after={first['delivered']}&ring={first['ring']}"
    for _ in range(30):  # none newer within a second (204) only on a loaded machine: again
        status, body = get(after_first)
        if status != 204:
            break
    newer, _ = decode(body)
    assert newer["delivered"] > first["delivered"]
    assert newer["frame_number"] > first["frame_number"]
    # A ring the page knows no more (the camera made another): any frame at once.
    other, _ = decode(get(f"{frame}&after={10**9}&ring=gone")[1])
    assert other["ring"] == camera.ring.spec.name
    camera.loop.stop()  # no frame comes: after a second, "none" (204) and the page asks again
    latest = camera.ring.header[1]
    started = time.monotonic()
    status, body = get(f"{frame}&after={latest}&ring={first['ring']}")
    assert (status, body) == (204, b"")
    assert 0.9 < time.monotonic() - started < 15
    assert get(f"{frame}&after=many")[0] == 400


def test_clients_that_never_read_are_held_to_a_number(camera, server):
    """Each holds the full frame it asked for until it reads it: beyond MAX_CONNECTIONS,
    the server refuses at once (503), and serves again once they are gone."""
    request = f"GET /frame?token={server.token}&width={MAX_SIDE}&height={MAX_SIDE} HTTP/1.1"
    host, port = server.base.removeprefix("http://").split(":")
    frame = f"{server.base}/frame?token={server.token}&width=64&height=64"
    stuck: list[socket.socket] = []
    try:
        # Each waits for its answer to begin before the next connects: the server counts the
        # connections it has accepted, also those whose requests it has not read yet.
        while True:
            client = socket.create_connection((host, int(port)), timeout=10)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.sendall(f"{request}\r\nHost: {host}\r\n\r\n".encode())
            if client.recv(12, socket.MSG_PEEK) == b"HTTP/1.1 503":
                client.close()
                break
            stuck.append(client)
            assert len(stuck) <= MAX_CONNECTIONS
        # (one fewer where a connection of the server's start was still open)
        assert len(stuck) >= MAX_CONNECTIONS - 1 and get(frame)[0] == 503
    finally:
        for client in stuck:
            client.close()
    for _ in range(100):
        status, _ = get(frame)
        if status == 200:
            break
        time.sleep(0.05)
    assert status == 200


def test_the_state_is_the_cameras_announcement_with_its_counters(camera, server):
    status, body = get(f"{server.base}/state?token={server.token}")
    state = json.loads(body)
    assert status == 200
    assert state["camera"] == "cam" and state["mode"] == "focus" and state["alive"] is True
    assert state["rois"] == ROIS and state["sensor_shape"] == [256, 320]
    assert state["settings"]["exposure_time"] == 0.005
    assert set(state["counters"]) == {
        *("acquired", "dropped", "missed", "written", "delivered", "ring_fill")
    }


def test_the_server_prints_one_line_then_lets_go_of_its_stdout(server):
    assert server.started["pid"] == server.process.pid
    assert server.url.startswith("http://127.0.0.1:") and server.url.endswith(server.token)
    stdout = server.process.stdout
    assert select.select([stdout], [], [], 10)[0], "stdout still open"
    assert stdout.read() == b""  # the pipe is closed on its side: it never writes again
    assert server.process.poll() is None


def test_the_server_ends_when_its_camera_process_is_gone(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    announcement = tmp_path / "camera.json"
    announcement.write_text(json.dumps({"camera": "cam", "mode": "idle", "pid": gone.pid}))
    server = LiveServer(announcement, "t0ken")
    try:
        assert server.process.wait(10) == 0
        assert "the camera's process is gone" in server.log_path.read_text()
        assert announcement.exists()  # the directory is not its own: no --own-directory
    finally:
        server.close()


def test_sigterm_ends_the_server(camera):
    server = LiveServer(camera.announcer.path, "t0ken")
    try:
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(10) in (0, -signal.SIGTERM)
    finally:
        server.close()


def test_the_server_refuses_to_start_without_a_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OPHYD_SCMOS_LIVE_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-m", "ophyd_scmos.live", str(tmp_path / "camera.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "OPHYD_SCMOS_LIVE_TOKEN is not set" in done.stderr and done.stdout == ""


@pytest.mark.parametrize("factor", [1, 2, 3, 4, 5])
def test_binning_is_the_block_mean_leaving_out_what_fills_no_block(factor):
    frame = np.random.default_rng(factor).integers(0, 65536, (103, 131), dtype=np.uint16)
    rows, cols = 103 // factor, 131 // factor
    blocks = frame[: rows * factor, : cols * factor].reshape(rows, factor, cols, factor)
    binned = bin_frame(frame, factor)
    np.testing.assert_allclose(binned, blocks.mean(axis=(1, 3)), rtol=1e-6)
    assert not np.shares_memory(binned, frame)  # read out of a ring slot: never the slot


@pytest.mark.parametrize("factor", [256, 257, 512])
def test_binning_a_bright_frame_by_a_large_factor_is_exact(factor):
    """A window squashed to a few pixels bins a whole frame into one: its sums pass 2**32."""
    frame = np.full((600, 520), 65535, np.uint16)
    np.testing.assert_array_equal(bin_frame(frame, factor), 65535)


def test_the_binning_factor_is_the_smallest_that_fits_and_keeps_a_row():
    assert binning_for((2048, 2048), 1024, 1024) == 2
    assert binning_for((2048, 2048), 1023, 2048) == 3
    assert binning_for((256, 320), 320, 256) == 1
    assert binning_for((256, 320), 319, 4000) == 2
    assert binning_for((1, 2048), 1024, 700) == 1  # a line ROI keeps its row
    assert binning_for((3, 5000), 1024, 700) == 3  # a few rows keep one
    assert binning_for((2048, 2048), 0, 0) == 2048


def test_a_frame_taller_than_wide_comes_in_its_own_shape(tmp_path):
    """The frame's header says its shape: the page draws a new ROI's frame as it is."""
    other = tmp_path / "other"
    other.mkdir()
    camera = FocusCamera(other, (96, 64), rois={})
    server = LiveServer(camera.announcer.path, "t0ken")
    try:
        header, pixels = decode(get(f"{server.base}/frame?token=t0ken")[1])
        assert header["shape"] == [96, 64] and header["binning"] == 1
        np.testing.assert_array_equal(pixels, camera.expected(header["frame_number"], 1))
    finally:
        server.close()
        camera.close()
