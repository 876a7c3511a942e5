"""GenICam cameras (GigE Vision, USB3 Vision) through Aravis.

Aravis speaks the GenICam standards directly, with no vendor SDK, so one driver covers the
machine-vision style cameras labs also use. Settings map onto the standard feature names
(SFNC): ``ExposureTime``, ``BinningHorizontal``/``Vertical``, ``Width``/``Height``/``Offset``
(in binned pixels, as the standard says), ``PixelFormat`` ``Mono16`` or ``Mono12``, and
``TriggerSource`` ``Software`` for software triggers and a ``Line`` input (``trigger_line``)
for external ones.

Frame numbers come from the GenICam block (frame) id of each buffer, so a frame the camera or
the network lost, that Aravis had no free buffer for, or that arrived incomplete, shows as a
gap and is reported in `FrameInfo.missed_before`; 16-bit GigE Vision ids wrap from 65535 to 1
and are unwrapped. A frame arriving after a later one was delivered stays counted as missed,
so frame numbers only increase. With software triggers, a frame that arrived incomplete is
exposed again instead (`retaken_frames`): it is no loss, and takes no frame number.

Software triggers are sent one at a time, each when the previous triggered frame has arrived:
cameras ignore (or merge) a trigger that comes while they are still exposing.

A camera that stops answering (unplugged, powered off, network down) is noticed when no frame
has come for `liveness` seconds: a register read then fails and `read_into` raises
`CameraError` instead of timing out forever.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time
from dataclasses import replace
from typing import Any

import numpy as np

from ._common import DriverBase, MissingLibrary
from .base import ROI, CameraError, CameraLimits, CameraSettings, FrameInfo, TriggerMode

logger = logging.getLogger(__name__)

__all__ = ["GenICamCamera", "list_cameras"]

INSTALL = (
    "the GenICam driver needs Aravis and PyGObject: on Debian or Ubuntu "
    "`sudo apt-get install gir1.2-aravis-0.8 aravis-tools libgirepository1.0-dev "
    "libcairo2-dev pkg-config`, then pip install 'ophyd-scmos[genicam]'"
)
_FORMATS = {16: "Mono16", 12: "Mono12"}  # both unpacked into 16-bit pixels
_BINNINGS = (1, 2, 4)
# s; the longest acquire_period for a camera whose lowest frame rate is 0 (no bound).
MAX_PERIOD = 3600.0
_POP_SLICE = 0.05  # s; a blocked reader looks at `stop` this often
_WRAP = 0xFFFF  # 16-bit GigE Vision block ids go 1..65535, then 1 again


def _aravis() -> tuple[Any, Any]:
    try:
        import gi

        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis, GLib
    except (ImportError, ValueError) as exc:  # ValueError: gi without the Aravis typelib
        raise MissingLibrary(f"{INSTALL} ({exc})") from exc
    return Aravis, GLib


class GenICamCamera(DriverBase):
    """A GenICam camera with the `CameraDriver` interface.

    `camera`: the camera's Aravis id (as `ophyd-scmos cameras` lists it, e.g.
    ``"Basler-21234567"``) or its IP address (needed where broadcast discovery does not reach
    it); None takes the first camera found. `buffer_frames`: frame buffers queued for the
    stream (more ride out longer reader stalls). `liveness`: seconds without a frame before the
    camera is checked for life. `trigger_line`: the input that triggers frames in EXTERNAL mode
    (``TriggerSource``, e.g. ``"Line1"``); None takes the camera's first ``Line`` source.
    `frame_retention`: seconds a frame may wait for its missing (resent) packets before it
    counts as incomplete. Aravis's 0.1 s is short for a busy acquisition computer, whose
    scheduler may keep the stream's receiving thread from the CPU for longer.
    `packet_socket`: let Aravis read a GigE stream through a raw packet socket where it may
    (as root). Off by default: Aravis 0.8 opens that socket for all of the computer's traffic
    and filters it to the stream's port only milliseconds later, and reads what came meanwhile
    as frames (empty ones, broken ones, and ids that make it drop the camera's next frame as
    late). Off, the stream is a UDP socket with a buffer of `buffer_frames` frames.
    `missed_frames` counts the gaps in the block ids, and incomplete buffers; with software
    triggers an incomplete frame is triggered again and counted in `retaken_frames` instead.
    """

    def __init__(
        self,
        camera: str | None = None,
        *,
        buffer_frames: int = 16,
        liveness: float = 1.0,
        trigger_line: str | None = None,
        frame_retention: float = 0.5,
        packet_socket: bool = False,
    ) -> None:
        if buffer_frames < 2:
            raise ValueError(f"buffer_frames must be >= 2; got {buffer_frames!r}")
        if not liveness > 0:
            raise ValueError(f"liveness must be > 0 s; got {liveness!r}")
        if not 0 < frame_retention <= 60:
            raise ValueError(f"frame_retention must be > 0 and <= 60 s; got {frame_retention!r}")
        super().__init__(f"GenICam camera {camera or '(first found)'}")
        self._aravis, self._glib = _aravis()
        self._name = camera
        self._buffer_frames = int(buffer_frames)
        self._liveness = float(liveness)
        self._trigger_line = trigger_line
        self._frame_retention = float(frame_retention)
        self._packet_socket = bool(packet_socket)
        #: what Aravis hands back unfilled: a packet it could not read as a frame (CLEARED;
        #: PAYLOAD_NOT_SUPPORTED from Aravis 0.8.30), not a frame the camera sent
        self._unfilled = {
            getattr(self._aravis.BufferStatus, name)
            for name in ("CLEARED", "PAYLOAD_NOT_SUPPORTED")
            if hasattr(self._aravis.BufferStatus, name)
        }
        self._lines: tuple[str, ...] = ()  # the camera's trigger inputs
        self._cam: Any = None
        self._device: Any = None
        self._stream: Any = None
        self._wall0 = 0.0
        self._owed = 0  # software triggers not yet sent
        self._outstanding = False  # a sent trigger whose frame has not arrived
        self._last_id: int | None = None
        self._last_number = -1
        self._pending_missed = 0
        self._incomplete_first = 0  #: frames that came incomplete before the first whole one
        self._retaking = 0  #: incomplete frames triggered again since the last whole one
        self._retaken_total = 0  #: `retaken_frames`
        self._stamp0: tuple[int, float] | None = None  # (camera ns, s since start) of frame 0
        self._alive_at = 0.0
        self._gone = False  # the camera stopped answering: talking to it would only time out

    # -- description -------------------------------------------------------------------------

    @property
    def camera(self) -> Any:
        """The `Aravis.Camera` (None before `open`), for features this driver does not set."""
        return self._cam

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Connect (taking control of the camera) and set 16-bit mono, binning 1, full sensor."""
        with self._lock:
            if self._cam is not None:
                return
            try:
                cam = self._aravis.Camera.new(self._name)
            except self._glib.Error as exc:
                raise CameraError(
                    f"cannot open GenICam camera {self._name or '(first found)'!r}: "
                    f"{exc.message}; `ophyd-scmos cameras` lists the cameras Aravis sees"
                ) from exc
            try:
                self._prepare(cam)
            except self._glib.Error as exc:
                # A GigE Vision camera takes one controller: another's writes go unanswered.
                held = (
                    "; the camera answers reads but not writes: another program may control "
                    "it (another session, `ophyd-scmos acquire`, a viewer such as arv-viewer):"
                    " close it there first"
                    if "timeout" in exc.message
                    else ""
                )
                raise CameraError(
                    f"cannot set up GenICam camera {self._name!r}: {exc.message}{held}"
                ) from exc
            self._cam, self._device = cam, cam.get_device()
            self._gone = False

    def _prepare(self, cam: Any) -> None:
        formats = cam.dup_available_pixel_formats_as_strings()
        bit_depths = tuple(d for d, f in sorted(_FORMATS.items()) if f in formats)
        if not bit_depths:
            raise CameraError(
                f"GenICam camera {self._name!r} offers pixel formats {formats}: ophyd-scmos "
                "needs Mono16 or Mono12"
            )
        depth = max(bit_depths)
        cam.set_pixel_format_from_string(_FORMATS[depth])
        binnings = [1]
        if cam.is_binning_available():
            xb, yb = cam.get_x_binning_bounds(), cam.get_y_binning_bounds()
            step = cam.get_x_binning_increment()
            for b in _BINNINGS[1:]:
                if xb.min <= b <= xb.max and yb.min <= b <= yb.max and (b - xb.min) % step == 0:
                    binnings.append(b)
            cam.set_binning(1, 1)
        width, height = cam.get_sensor_size()
        self._sensor = (height, width)
        cam.set_region(0, 0, width, height)
        self._model = f"{cam.get_vendor_name()} {cam.get_model_name()} ({cam.get_device_id()})"
        sources = (
            cam.dup_available_trigger_sources() if cam.is_feature_available("TriggerSource") else []
        )
        self._lines = tuple(source for source in sources if source.startswith("Line"))
        exposure_us, rate = cam.get_exposure_time_bounds(), cam.get_frame_rate_bounds()
        self._limits = CameraLimits(
            exposure_range=(exposure_us.min / 1e6, exposure_us.max / 1e6),
            period_range=(
                1 / rate.max if rate.max > 0 else 0.0,
                1 / rate.min if rate.min > 0 else MAX_PERIOD,
            ),
            binnings=tuple(binnings),
            bit_depths=bit_depths,
            refused_trigger_modes=self._refused_trigger_modes(),
        )
        self._settings = CameraSettings(
            exposure_time=cam.get_exposure_time() / 1e6, bit_depth=depth
        )

    def _refused_trigger_modes(self) -> dict[TriggerMode, str]:
        if self._external_line() is not None:
            return {}
        return {
            TriggerMode.EXTERNAL: f"needs a trigger input: {self._model} offers "
            f"{list(self._lines) or 'no Line trigger source'}"
            + (f", not {self._trigger_line!r}" if self._trigger_line else "")
        }

    def _close(self) -> None:
        """Give up control of the camera."""
        held = [self._cam, self._device]  # the last references: dropping releases control
        self._cam = self._device = None
        self._drop(held)

    def _drop(self, held: list) -> None:
        """Let Aravis objects go. With the camera gone their finalizers wait out GigE Vision
        timeouts (5-10 s), and PyGObject runs them holding the GIL, which would freeze every
        thread (the RunEngine too): then a thread drops them, through ctypes, without the GIL."""
        if not self._gone:
            held.clear()
            return
        gobject = ctypes.CDLL(ctypes.util.find_library("gobject-2.0"))
        gobject.g_object_ref.argtypes = gobject.g_object_unref.argtypes = [ctypes.c_void_p]
        get = ctypes.pythonapi.PyCapsule_GetPointer
        get.argtypes, get.restype = [ctypes.py_object, ctypes.c_char_p], ctypes.c_void_p
        pointers = [get(obj.__gpointer__, None) for obj in held if obj is not None]
        for pointer in pointers:
            gobject.g_object_ref(pointer)  # ours now: dropping the wrappers finalizes nothing
        held.clear()

        def unref() -> None:
            for pointer in pointers:
                gobject.g_object_unref(pointer)

        threading.Thread(target=unref, name="aravis-release", daemon=True).start()

    def _apply(self, s: CameraSettings, roi: ROI) -> CameraSettings:
        if self._gone:  # each register write would wait out its timeout, then fail
            raise CameraError(f"GenICam camera {self._model} stopped answering")
        cam, b = self._cam, s.binning
        cam.set_pixel_format_from_string(_FORMATS[s.bit_depth])
        if len(self.limits.binnings) > 1:
            cam.set_binning(b, b)
        region = roi.binned(b)
        cam.set_region(*region)
        got = cam.get_region()
        if (got.x, got.y, got.width, got.height) != region:
            raise RuntimeError(
                f"the camera set region {(got.x, got.y, got.width, got.height)} (binned x, y, "
                f"width, height), not {region}: check its offset and size increments"
            )
        cam.set_exposure_time(s.exposure_time * 1e6)
        # Cameras round the exposure to their clock: record what the camera will use.
        return replace(s, exposure_time=cam.get_exposure_time() / 1e6)

    def _set_back_changes(self) -> None:
        """Features changed since `configure` through `camera` (or another tool) are set
        back, and said, so that the run takes what its documents record."""
        cam, s = self._cam, self._settings
        roi, b = self._roi_of(s), s.binning
        got, binning = cam.get_region(), cam.get_binning()
        now = {
            "exposure": f"{cam.get_exposure_time():g} us",
            "pixel format": cam.get_pixel_format_as_string(),
            "region": (got.x, got.y, got.width, got.height),
            "binning": (binning.dx, binning.dy) if len(self.limits.binnings) > 1 else None,
        }
        recorded = {
            "exposure": f"{s.exposure_time * 1e6:g} us",
            "pixel format": _FORMATS[s.bit_depth],
            "region": roi.binned(b),
            "binning": (b, b) if len(self.limits.binnings) > 1 else None,
        }
        self._set_back(self._model, now, recorded)

    def _start(self) -> None:
        cam, s = self._cam, self._settings
        rows, cols = self.frame_shape
        try:
            self._set_back_changes()
            payload = cam.get_payload()
            if payload != rows * cols * 2:
                raise CameraError(
                    f"camera {self._model} sends {payload}-byte frames, expected "
                    f"{rows}x{cols} 16-bit pixels: were its settings changed elsewhere?"
                )
            if s.trigger_mode is TriggerMode.SOFTWARE:
                cam.set_trigger("Software")
            elif s.trigger_mode is TriggerMode.EXTERNAL:
                cam.set_trigger(self._external_line())
            else:
                cam.clear_triggers()
                shortest = self.limits.period_range[0]
                cam.set_frame_rate(1 / max(s.acquire_period or s.exposure_time, shortest))
            cam.set_acquisition_mode(self._aravis.AcquisitionMode.CONTINUOUS)
            gige = isinstance(self._device, self._aravis.GvDevice)
            if gige and not self._packet_socket:
                self._device.set_stream_options(self._aravis.GvStreamOption.PACKET_SOCKET_DISABLED)
            stream = cam.create_stream(None, None)
            if gige:
                stream.set_property("frame-retention", round(self._frame_retention * 1e6))
                # Aravis's own UDP buffer holds one frame; the kernel caps this at rmem_max.
                stream.set_property("socket-buffer", self._aravis.GvStreamSocketBuffer.FIXED)
                stream.set_property(
                    "socket-buffer-size", min(payload * self._buffer_frames, 64 << 20)
                )
            for _ in range(self._buffer_frames):
                stream.push_buffer(self._aravis.Buffer.new_allocate(payload))
            cam.start_acquisition()
        except self._glib.Error as exc:
            raise CameraError(f"camera {self._model} did not start: {exc.message}") from exc
        self._stream = stream
        self._alive_at = time.monotonic()
        self._wall0 = time.time()  # Aravis stamps arrivals on the wall clock
        self._owed, self._outstanding = 0, False
        self._last_id, self._last_number = None, -1
        self._pending_missed = self._incomplete_first = self._retaking = self._retaken_total = 0
        self._stamp0 = None

    def _stop(self) -> None:
        """A reader blocked in `read_into` gets CameraError within ~50 ms."""
        held, self._stream = [self._stream], None  # a stream exists while acquiring
        acquiring = held[0] is not None
        self._drop(held)
        self._owed, self._outstanding = 0, False
        if acquiring and self._cam is not None and not self._gone:
            try:
                self._cam.stop_acquisition()
            except self._glib.Error as exc:
                raise CameraError(f"camera {self._model} failed to stop: {exc.message}") from exc

    # -- acquisition -------------------------------------------------------------------------

    def _external_line(self) -> str | None:
        if self._trigger_line is None:
            return self._lines[0] if self._lines else None
        return self._trigger_line if self._trigger_line in self._lines else None

    def software_trigger(self, frames: int = 1) -> None:
        """Ask for `frames` more frames; triggers go out one per arrived frame."""
        with self._lock:
            self._check_trigger(frames, TriggerMode.SOFTWARE, "software_trigger")
            self._owed += frames
            if not self._outstanding:
                self._fire()

    def _fire(self) -> None:
        """Send the next owed trigger (lock held)."""
        if not self._owed:
            self._outstanding = False
            return
        try:
            self._cam.software_trigger()
        except self._glib.Error as exc:
            raise CameraError(f"camera {self._model} refused a trigger: {exc.message}") from exc
        self._owed -= 1
        self._outstanding = True

    def _read(self, out: np.ndarray, timeout: float) -> FrameInfo:
        """Wait for the next complete frame and copy it into `out` (uint16, `frame_shape`)."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            with self._lock:
                self._require_open()
                if self._gone:
                    raise CameraError(f"GenICam camera {self._model} stopped answering")
                if not self._running:
                    raise CameraError("camera stopped")
                stream = self._stream
            wait = min(max(deadline - time.monotonic(), 0.0), _POP_SLICE)
            buffer = stream.timeout_pop_buffer(int(wait * 1e6))
            now = time.monotonic()
            if buffer is None:
                del stream  # an error raised here must not hold the stream: see `_drop`
                if now - self._alive_at > self._liveness:
                    self._check_alive()
                    self._alive_at = now
                if now >= deadline:
                    raise TimeoutError(f"no frame within {timeout} s")
                continue
            self._alive_at = now
            try:
                info = self._accept(buffer, out)
            finally:
                stream.push_buffer(buffer)
            if info is not None:
                return info

    def _accept(self, buffer: Any, out: np.ndarray) -> FrameInfo | None:
        """Number one arrived buffer; copy it into `out` if complete, else count it missed."""
        with self._lock:
            if not self._running:
                raise CameraError("camera stopped")
            status = buffer.get_status()
            if status in self._unfilled:
                # No frame the camera sent, so neither a frame lost nor one to ask for again:
                # a trigger sent for it would expose a frame a later point takes for its own.
                return None
            complete = status == self._aravis.BufferStatus.SUCCESS
            software = self._settings.trigger_mode is TriggerMode.SOFTWARE
            retake = software and not complete
            if software:
                # A frame that came incomplete is exposed again, so its point gets a whole
                # one (no later frame may come to show its gap: the point would wait for ever).
                self._owed += retake
                self._fire()  # before the copy, so the camera exposes while we copy
            if retake:
                # Its id may be garbage: the next whole frame's gap leaves it out.
                self._retaking += 1
                self._retaken_total += 1
                if self._retaken_total == 1:
                    logger.warning(
                        "camera %s: a frame arrived incomplete (packets lost on the link) and "
                        "is exposed again; retaken_frames counts them",
                        self._model,
                    )
                return None
            if not complete:
                # Its id may be garbage: the next complete frame's gap counts it, or, before
                # the first, the frames counted here.
                self._incomplete_first += self._last_id is None
                return None
            fid = buffer.get_frame_id()
            if self._last_id is None:
                number = self._incomplete_first  # the camera's frames before it came broken
                self._lose(number)
            else:
                delta = fid - self._last_id
                if delta < -(_WRAP // 2) and self._last_id <= _WRAP:
                    delta += _WRAP  # far backwards: the 16-bit id wrapped
                if delta <= 0:
                    return None  # a late (reordered) or repeated frame, already counted missed
                lost = max(0, delta - 1 - self._retaking)
                number = self._last_number + 1 + lost
                self._lose(lost)
            self._last_id, self._last_number, self._retaking = fid, number, 0
            missed, self._pending_missed = self._pending_missed, 0
        data = buffer.get_data()
        if len(data) != out.nbytes:
            raise CameraError(
                f"camera {self._model} sent {len(data)} bytes, expected {out.nbytes}: were its "
                "settings changed elsewhere?"
            )
        np.copyto(out, np.frombuffer(data, "<u2").reshape(out.shape))
        stamp_ns = buffer.get_timestamp()
        if self._stamp0 is None:
            # Place the camera's clock on ours at the first frame, when it reached the host.
            self._stamp0 = (stamp_ns, buffer.get_system_timestamp() / 1e9 - self._wall0)
        ns0, s0 = self._stamp0
        return FrameInfo(number, s0 + (stamp_ns - ns0) / 1e9, missed)

    @property
    def retaken_frames(self) -> int:
        """Software-triggered frames that arrived incomplete and were exposed again, since
        the last `start`: not lost, so in no frame number or `missed_frames`."""
        return self._retaken_total

    def _lose(self, frames: int) -> None:
        """Count frames lost, to report on the next frame delivered (lock held)."""
        self._pending_missed += frames
        self._missed_total += frames

    def _check_alive(self) -> None:
        """Read a bootstrap register: fails (after the GVCP retries) if the camera is gone."""
        try:
            self._device.read_register(0)
        except self._glib.Error as exc:
            self._gone = True
            raise CameraError(
                f"GenICam camera {self._model} stopped answering: {exc.message}. Is it "
                "unplugged, powered off, or its network down?"
            ) from exc

    # -- internals ---------------------------------------------------------------------------

    def _require_open(self) -> Any:
        if self._cam is None:
            raise CameraError("camera is closed; call open() first")
        return self._cam


def list_cameras() -> list[tuple[str, str]]:
    """Cameras Aravis discovers: (id, "vendor model at address"). GigE cameras on another
    subnet, or Aravis's fake GigE camera, answer only when opened by address."""
    aravis, _ = _aravis()
    aravis.update_device_list()
    found = []
    for i in range(aravis.get_n_devices()):
        where = aravis.get_device_address(i) or aravis.get_device_physical_id(i)
        found.append(
            (
                aravis.get_device_id(i),
                f"{aravis.get_device_vendor(i)} {aravis.get_device_model(i)} at {where}",
            )
        )
    return found
