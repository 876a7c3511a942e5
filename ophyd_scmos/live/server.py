"""The live view's web server: a process of its own that serves the page and the camera's
newest frames, binned to the page's size.

It only reads (`LiveFeed`: the announcement file and a best-effort copy of the newest frame),
so the camera never waits for it; the camera never talks to it after reading the first line
it prints. Every request needs the access token (the `token` query parameter or the
`X-Live-Token` header); the token comes in the environment, never on the command line,
where other users would see it.

A frame goes to the page as one binary body: a little-endian uint32 length, that many bytes
of JSON (frame number, counters, shape, binning, dtype, ...), zeros to a multiple of 4, then
the pixels, row-major little-endian: uint16 as taken, or float32 block means where binned.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ophyd_scmos.live.feed import LiveFeed, NewestFrame
from ophyd_scmos.live.view import TOKEN_ENV

__all__ = ["FrameSource", "bin_frame", "binning_for", "create_app", "encode_frame", "main"]

LONG_POLL = 1.0  #: seconds a frame request waits for a frame newer than the page's
POLL_INTERVAL = 0.01  #: seconds between looks at the ring while waiting: 1 / MAX_UPDATES / 5
#: frames a second the server reads out of the ring at most: more than a person follows,
#: and each read of a full frame takes memory bandwidth the camera's pipeline shares
MAX_UPDATES = 20.0
ALIVE_CHECK = 1.0  #: seconds between checks that the camera's process is still there
TOKEN_HEADER = "x-live-token"
MAX_SIDE = 8192  #: the largest size, each way, a page may ask for
#: connections served at once (a page keeps one or two); more are answered 503 at once: each
#: holds the frame it was sent until its client reads it, which a stuck client never does
MAX_CONNECTIONS = 32
NO_STORE = {"Cache-Control": "no-store"}


def binning_for(shape: tuple[int, int], width: int, height: int) -> int:
    """The smallest integer factor that bins a frame of `shape` (rows, columns) to at most
    `width` x `height` pixels, but no larger than its shorter side: a frame of a row or a
    few (a line ROI) keeps a row, drawn wider than asked, rather than none."""
    rows, cols = shape
    return max(1, min(rows, cols, max(-(-rows // max(1, height)), -(-cols // max(1, width)))))


def bin_frame(image: np.ndarray, factor: int) -> np.ndarray:
    """Block means of `factor` x `factor` pixels, as float32 (a copy of the frame for 1). The
    last rows and columns that do not fill a block are left out (fewer than `factor`).

    Strided sums are exact: into uint32 up to a factor of 256 (256 x 256 x 65535 < 2**32),
    into uint64 beyond. The first two rows (then columns) of each block are added with the
    wider type as the output's, which numpy does without a cast of each input: a 2048x2048
    frame bins in ~5 ms, a reshape-mean takes ~50."""
    if factor == 1:
        return image.copy()
    rows, cols = (n // factor * factor for n in image.shape)
    whole = image[:rows, :cols]
    wide = np.uint32 if factor <= 256 else np.uint64
    by_rows = np.add(whole[0::factor], whole[1::factor], dtype=wide)
    for k in range(2, factor):
        by_rows += whole[k::factor]
    sums = np.add(by_rows[:, 0::factor], by_rows[:, 1::factor])
    for k in range(2, factor):
        sums += by_rows[:, k::factor]
    means = sums.astype(np.float32)
    means *= np.float32(1 / factor**2)
    return means


def encode_frame(header: dict[str, Any], pixels: np.ndarray) -> bytes:
    """The frame's body for the page (see the module's docstring)."""
    text = json.dumps(header).encode()
    pad = -(4 + len(text)) % 4
    data = np.ascontiguousarray(pixels, pixels.dtype.newbyteorder("<"))
    return b"".join((struct.pack("<I", len(text)), text, b"\0" * pad, data.data))


class FrameSource:
    """The camera as the server sees it: one `LiveFeed`, read by one thread at a time (the
    requests' threads)."""

    def __init__(self, feed: LiveFeed) -> None:
        self.feed = feed
        self._lock = threading.Lock()
        self._last_read = 0.0  #: time.monotonic() of the last frame read

    def state(self) -> dict[str, Any]:
        """The camera's announcement with its counters, and whether it is still there."""
        with self._lock:
            state = dict(self.feed.state())
            state["counters"] = self.feed.counters()
            state["alive"] = self.feed.camera_alive()
        return state

    def camera_alive(self) -> bool:
        """Whether the camera's process is still there; meanwhile, let go of a ring it
        removed (`LiveFeed.let_go`)."""
        with self._lock:
            self.feed.let_go()
            return self.feed.camera_alive()

    def next_frame(
        self,
        after: int,
        ring: str | None,
        timeout: float,
        read: Callable[[np.ndarray], np.ndarray] = np.copy,
    ) -> NewestFrame | None:
        """The newest frame (`read` of it) if newer than the `after`-th of `ring`, waiting up
        to `timeout` seconds for one; None if none came."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                wait = self._last_read + 1 / MAX_UPDATES - time.monotonic()
                frame = self.feed.frame(after, ring, read) if wait <= 0 else None
                if frame is not None:
                    self._last_read = time.monotonic()
            if frame is not None or time.monotonic() >= deadline:
                return frame
            time.sleep(min(max(wait, POLL_INTERVAL), max(0.0, deadline - time.monotonic())))

    def binned_frame(
        self, after: int, ring: str | None, width: int, height: int, timeout: float
    ) -> bytes | None:
        """The next frame (`next_frame`) binned to at most `width` x `height`, encoded for
        the page with the camera's counters, mode and file."""

        def binned(image: np.ndarray) -> np.ndarray:
            """Bin straight out of the ring: a full frame is read once, never copied."""
            return bin_frame(image, binning_for(image.shape, width, height))

        frame = self.next_frame(after, ring, timeout, binned)
        if frame is None:
            return None
        factor, pixels = binning_for(frame.shape, width, height), frame.image
        if pixels.dtype not in (np.uint16, np.float32):
            pixels = pixels.astype(np.float32)
        with self._lock:
            state, counters = self.feed.state(), self.feed.counters()
        header = {
            "frame_number": frame.frame_number,
            "delivered": frame.delivered,
            "ring": frame.ring,
            "host_time": frame.host_time,
            "frame_shape": list(frame.shape),
            "shape": list(pixels.shape),
            "binning": factor,
            "dtype": pixels.dtype.newbyteorder("<").str,
            "counters": counters,
            "mode": state.get("mode"),
            "file": state.get("file"),
        }
        return encode_frame(header, pixels)


class TokenGate:
    """Refuses every HTTP request without the access token (403)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.token = app, token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            request = Request(scope)
            given = request.query_params.get("token") or request.headers.get(TOKEN_HEADER, "")
            if not secrets.compare_digest(given.encode(), self.token):
                refusal = PlainTextResponse(
                    "403: this live view needs the token from its address (?token=...)",
                    status_code=403,
                    headers=NO_STORE,
                )
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def page_html() -> str:
    return resources.files("ophyd_scmos.live").joinpath("page.html").read_text(encoding="utf-8")


def create_app(source: FrameSource, token: str) -> ASGIApp:
    """The page at /, the newest frame at /frame, the camera's state at /state."""
    page = page_html()

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers=NO_STORE)

    async def state(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(source.state), headers=NO_STORE)

    async def frame(request: Request) -> Response:
        query = request.query_params
        try:
            after = int(query.get("after", 0))
            width = min(MAX_SIDE, max(1, int(query.get("width", 1024))))
            height = min(MAX_SIDE, max(1, int(query.get("height", 1024))))
        except ValueError:
            return PlainTextResponse(
                "after, width and height must be integers", status_code=400, headers=NO_STORE
            )
        body = await run_in_threadpool(
            source.binned_frame, after, query.get("ring"), width, height, LONG_POLL
        )
        if body is None:  # no newer frame yet: the page asks again
            return Response(status_code=204, headers=NO_STORE)
        return Response(body, media_type="application/octet-stream", headers=NO_STORE)

    routes = [Route("/", index), Route("/state", state), Route("/frame", frame)]
    return TokenGate(Starlette(routes=routes), token)


def page_url(host: str, port: int, token: str) -> str:
    """The page's address; a server on every interface gives this computer's name."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/?token={token}"


async def serve(source: FrameSource, token: str, sock: socket.socket) -> None:
    """Serve until SIGTERM or SIGINT, or until the camera's process is gone. Prints the
    page's address once it listens, then lets go of stdout."""
    import uvicorn

    config = uvicorn.Config(
        create_app(source, token),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
        limit_concurrency=MAX_CONNECTIONS,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serving.done():
            await serving  # its error, or it was asked to stop as it started
            return
        await asyncio.sleep(0.01)
    host, port = sock.getsockname()[:2]
    announce_ready(page_url(host, port, token))
    while not serving.done():
        await asyncio.wait({serving}, timeout=ALIVE_CHECK)
        if not serving.done() and not await run_in_threadpool(source.camera_alive):
            print("the camera's process is gone: the live view stops", file=sys.stderr)
            server.should_exit = True
    await serving


def announce_ready(url: str) -> None:
    """One JSON line for the camera, then stdout goes to /dev/null: the camera reads that
    one line and nothing more, and a full pipe must never hold this process up."""
    sys.stdout.write(json.dumps({"url": url, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def listen(host: str, port: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ophyd_scmos.live",
        description="Serve a camera's live view (started by the camera: cam.live()). The "
        f"access token comes in ${TOKEN_ENV}.",
    )
    parser.add_argument("announcement", type=Path, help="the camera's announcement file")
    parser.add_argument("--host", default="127.0.0.1", help="default: this computer only")
    parser.add_argument("--port", type=int, default=0, help="default 0: a free port")
    parser.add_argument(
        "--own-directory",
        action="store_true",
        help="the announcement's directory is this view's: remove it on leaving once the "
        "camera's process is gone (a killed camera removes nothing)",
    )
    args = parser.parse_args(argv)
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        parser.exit(2, f"{parser.prog}: ${TOKEN_ENV} is not set: no access token\n")
    try:
        sock = listen(args.host, args.port)
    except OSError as exc:
        parser.exit(2, f"{parser.prog}: cannot listen on {args.host}:{args.port}: {exc}\n")
    feed = LiveFeed(args.announcement)
    try:
        with sock, contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(FrameSource(feed), token, sock))
    finally:
        feed.close()
        if args.own_directory and not feed.camera_alive():  # else the camera removes it
            shutil.rmtree(args.announcement.parent, ignore_errors=True)
    return 0
