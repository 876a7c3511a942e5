"""What is in a run, for people (``ophyd-scmos runs``, ``ophyd-scmos show``): cheap
summaries from the catalog, and statistics of a camera's HDF5 file.

The catalog knows a run's images only as arrays and the paths of their files; the writer's
counts, frame-number gaps and the camera clock are in the file (`ophyd_scmos.pipeline.layout`).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ophyd_scmos.catalog.embedded import PathLike
from ophyd_scmos.files import local_path

if TYPE_CHECKING:
    import numpy as np

__all__ = ["FileStats", "RunSummary", "file_stats", "probe", "summarize"]


@dataclass
class RunSummary:
    """A run and its images as the catalog knows them: cheap, no frame is read."""

    uid: str
    scan_id: int | None
    plan_name: str | None
    start_time: float
    exit_status: str | None  #: None while the run is going on
    stream: str | None  #: where the images are; None for a run without images
    key: str | None
    shape: tuple[int, ...]  #: as the catalog replays it: (events, frames per event, H, W)
    dtype: str | None
    file: str | None  #: the file the frames are in (of a run without images: its statistics)
    #: each camera's file, `file` first: where its images are read from, or for a camera
    #: without any (statistics only) where its configuration names it
    cameras: dict[str, str] = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return math.prod(self.shape[:-2]) if self.shape else 0


def summarize(run: Any, key: str | None = None) -> RunSummary:
    """Summarize `run` and its image `key`, a data key or "stream/key" (default: its first
    image)."""
    start, stop = run.metadata["start"], run.metadata.get("stop") or {}
    images = list(image_nodes(run))
    found = next((n for n in images if key in (None, n[1], f"{n[0]}/{n[1]}")), None)
    if found is None and key is not None:
        raise KeyError(f"run {start['uid']} has no image {key!r}")
    stream, key, node = found or (None, None, None)
    cameras: dict[str, str] = {}
    for image_stream, image_key, image in sorted(images, key=lambda n: n[2] is not node):
        device = run[image_stream].metadata["data_keys"][image_key].get("object_name")
        paths = node_files(image)
        if device and paths:
            cameras.setdefault(device, paths[0])
    for device, path in configured_files(run):
        cameras.setdefault(device, path)
    files = node_files(node) if node is not None else list(cameras.values())
    return RunSummary(
        uid=start["uid"],
        scan_id=start.get("scan_id"),
        plan_name=start.get("plan_name"),
        start_time=start["time"],
        exit_status=stop.get("exit_status"),
        stream=stream,
        key=key,
        shape=() if node is None else tuple(node.shape),
        dtype=None if node is None else node.dtype.str,
        file=files[0] if files else None,
        cameras=cameras,
    )


#: the camera's configuration signal that names its file (`SCMOSCamera.file_path`)
FILE_PATH_SIGNAL = "file_path"

#: an image's metadata naming its run (the start's uid), which its file records too: the
#: catalog's reader refuses a file that records another run's frames
IMAGE_RUN = "run_start"


def configured_files(run: Any) -> Iterator[tuple[str, str]]:
    """(device, path) of each file the cameras of `run` wrote, as its descriptors'
    configurations name it (a camera's ``file_path``): where a run has no images, its
    statistics are there."""
    for name in run:
        for device, config in run[name].metadata.get("configuration", {}).items():
            path = config.get("data", {}).get(f"{device}_{FILE_PATH_SIGNAL}")
            if isinstance(path, str) and path:
                yield device, path


def image_nodes(run: Any) -> Iterator[tuple[str, str, Any]]:
    """(stream, data key, array client) of each image (external array) in a run, the primary
    stream first."""
    for stream in sorted(run, key=lambda name: (name != "primary", name)):
        events = run[stream]
        for key, info in events.metadata.get("data_keys", {}).items():
            if info.get("external") and len(info.get("shape") or ()) >= 2:
                try:
                    node = events[key]
                except KeyError:  # not written yet: a run going on
                    continue
                yield stream, key, node


def node_files(node: Any) -> list[str]:
    """The local paths of the files an array client's data is in."""
    return [
        str(local_path(asset.data_uri))
        for source in node.data_sources()
        for asset in source.assets
        if asset.data_uri.startswith("file:")
    ]


def probe(node: Any) -> None:
    """Read an image's last frame through the catalog, to learn at once whether the catalog
    can read its file: raises with the catalog's reason if it cannot (a file outside a
    server's readable storage, missing, truncated).

    Tiled's client retries a server's "500 Internal Server Error" for up to 45 s, which is
    also how a plain Tiled server answers all of these: the probe turns the retries off.
    """
    if math.prod(node.shape):
        with _no_retries():
            node[-1]


@contextlib.contextmanager
def _no_retries() -> Iterator[None]:
    """Turn off Tiled's client retries (process-wide, for as long as this lasts)."""
    import stamina

    active = stamina.is_active()
    stamina.set_active(False)
    try:
        yield
    finally:
        stamina.set_active(active)


@dataclass
class FileStats:
    """What a camera's HDF5 file (our layout, `ophyd_scmos.pipeline.layout`) says about its
    frames: how they are stored, which are missing, and how regularly they came."""

    path: str
    size: int  #: bytes of the file on disk
    frames: int  #: frames recorded (in a file without images: their numbers, times, statistics)
    frame_shape: tuple[int, ...]  #: () in a file without images
    dtype: str  #: "" in a file without images
    raw_bytes: int  #: the frames uncompressed
    stored_bytes: int  #: the frames as stored
    filters: list[str]  #: the HDF5 filters (compression) of the frame dataset
    compression: str | None  #: the codec the camera was set to (`compression`), if recorded
    #: The writer's counts and verdict (`layout.Outcome`); None until a writer closes the file.
    frames_written: int | None
    frames_dropped: int | None
    frames_missed: int | None
    complete: bool | None
    run: str | None  #: the run (its start's uid) the file says its frames are of, if told
    #: frame numbers lost (dropped or missed), as (first, last) ranges. A complete file whose
    #: writer recorded no loss has none, even where numbers are absent: those frames were
    #: never to be recorded (`skipped_frames`: a camera in internal or external trigger mode
    #: runs on between a step scan's points) or were cut when a paused plan rewound, and
    #: their points taken again (`rewound_frames`, software triggers). Where both happened,
    #: or writing did not end as planned, every absent number is listed.
    gaps: list[tuple[int, int]]
    rewound_frames: int  #: absent frame numbers that were cut, not lost
    skipped_frames: int  #: absent frame numbers the camera took between points, not lost
    #: seconds between consecutive frames (by number), camera clock
    intervals: np.ndarray = field(repr=False)

    @property
    def compression_ratio(self) -> float:
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else float("nan")

    @property
    def missing_frames(self) -> int:
        """Frames lost, by their numbers."""
        absent = sum(last - first + 1 for first, last in self.gaps)
        return absent - self.rewound_frames - self.skipped_frames if self.gaps else 0


def file_stats(path: PathLike) -> FileStats:
    """Read the statistics of a camera file, written or being written (SWMR).

    Raises `MissingFile` (a FileNotFoundError) where there is no such file, `UnreadableFile`
    where it is cut short or not HDF5, KeyError where it is not a camera file.
    """
    import h5py
    import numpy as np

    from ophyd_scmos.pipeline import layout
    from ophyd_scmos.pipeline.recovery import check_readable

    superblock = check_readable(path)
    # locking=False: a writer that still holds the file must not make this read fail; SWMR
    # while it is written (a plain open is refused).
    with h5py.File(path, "r", locking=False, swmr=superblock.open_for_writing) as f:
        data = f.get(layout.DATA)  # None in a file of statistics without images
        frames = layout.stored_frames(f)
        outcome = layout.Outcome.read(f)  # None until a writer closes the file
        # Per-frame metadata grows in steps ahead of the frames: only the first `frames` count.
        numbers = f[layout.FRAME_NUMBER][:frames]
        times = f[layout.TIMESTAMP][:frames]
        absent = _gaps(numbers)
        # The counts are whole only where writing ended as planned: a writer that outlived
        # the acquiring process, say, never learnt what the camera missed.
        lost = None
        if outcome is not None and outcome.complete:
            lost = outcome.frames_dropped + outcome.frames_missed
        not_lost = 0 if lost is None else max(0, sum(b - a + 1 for a, b in absent) - lost)
        # Software triggers take exactly a point's frames: an absent one was cut. Otherwise
        # the camera runs on between points and the frames between are read and skipped.
        between_points = f[layout.ENTRY].attrs.get("trigger_mode", "software") != "software"
        skipped, rewound = (not_lost, 0) if between_points else (0, not_lost)
        frame_shape: tuple[int, ...] = ()
        dtype, raw_bytes, stored_bytes, filters = "", 0, 0, []
        if data is not None:
            plist = data.id.get_create_plist()
            filters = [
                plist.get_filter(i)[3].decode(errors="replace").split(";")[0]
                for i in range(plist.get_nfilters())
            ]
            frame_shape, dtype = tuple(data.shape[1:]), data.dtype.str
            raw_bytes = frames * int(np.prod(frame_shape)) * data.dtype.itemsize
            stored_bytes = data.id.get_storage_size()
        stats = FileStats(
            path=str(path),
            size=os.stat(path).st_size,
            frames=frames,
            frame_shape=frame_shape,
            dtype=dtype,
            raw_bytes=raw_bytes,
            stored_bytes=stored_bytes,
            filters=filters,
            compression=f[layout.ENTRY].attrs.get("compression"),
            frames_written=None if outcome is None else outcome.frames_written,
            frames_dropped=None if outcome is None else outcome.frames_dropped,
            frames_missed=None if outcome is None else outcome.frames_missed,
            complete=None if outcome is None else outcome.complete,
            run=None if outcome is None else outcome.run,
            gaps=[] if lost == 0 else absent,
            rewound_frames=rewound,
            skipped_frames=skipped,
            intervals=np.diff(times)[np.diff(numbers) == 1],
        )
    return stats


def _gaps(numbers: np.ndarray) -> list[tuple[int, int]]:
    import numpy as np

    jumps = np.flatnonzero(np.diff(numbers) > 1)
    return [(int(numbers[i]) + 1, int(numbers[i + 1]) - 1) for i in jumps]
