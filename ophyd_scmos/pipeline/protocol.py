"""What the acquiring process and the writer process say to each other, named once.

The writer is started as ``python -m ophyd_scmos.pipeline`` and lives as long as the camera
that started it, writing one run's file after another. Commands go to its stdin as
fixed-size records (`RECORD`: an `Op` and its argument), served in order; `Op.OPEN` is
followed by the file's `WriterConfig` as JSON, `Op.RUN` by the uid of the run the file's
frames are of. It answers on stdout with one JSON `WriterStatus` per line.
"""

from __future__ import annotations

import base64
import enum
import json
from dataclasses import dataclass, field
from typing import Any, TypedDict, cast

import numpy as np

from ophyd_scmos.pipeline.options import PipelineOptions
from ophyd_scmos.pipeline.ring import RingSpec
from ophyd_scmos.pipeline.stats import STATS, Region

#: one command: 16 bytes, little-endian
RECORD = np.dtype([("op", "<i8"), ("arg", "<i8")])


class Op(enum.IntEnum):
    """Commands to the writer; the argument's meaning is given with each."""

    FRAME = 1  #: a frame is in this ring slot: append it
    FINISH = 2  #: keep this many frames (-1: all), close the file, exit
    DROPPED = 3  #: frames dropped from a full ring so far (recorded in the file)
    MISSED = 4  #: frames the camera lost so far (recorded in the file)
    TRUNCATE = 5  #: cut the file to this many frames now; answered with `truncated`
    FLUSH = 6  #: flush as soon as the file holds this many frames: someone waits for them
    OPEN = 7  #: start a run's file: its `WriterConfig` follows, this many bytes of JSON
    #: as FLUSH, and with every statistic stored: a movie's last page points at them
    SETTLE = 9
    #: the run (its start's uid) the file's frames are of, kept in the file's outcome: this
    #: many bytes of it follow
    RUN = 10


class State(str, enum.Enum):
    """The writer's state, on every status line."""

    OPEN = "open"  #: the file exists; frames may come
    PROGRESS = "progress"
    CLOSED = "closed"  #: the file is closed and on disk; the next one may be opened
    ERROR = "error"  #: writing failed; what could be kept is closed; the process exits


class WriterStatus(TypedDict, total=False):
    """One status line. `state` and `written` are on every line."""

    state: str  #: a `State` value
    written: int  #: frames in the file and flushed: they survive a killed writer
    path: str  #: with `open`
    truncated: int  #: the answer to `Op.TRUNCATE`
    complete: bool  #: with `closed`
    error: str  #: with `error`: what failed, naming the file
    stats_from: int  #: with `stats`: the file index of its first frame
    #: statistics of the frames written since the last line (`encode_stats`)
    stats: str
    stored: int  #: a file with statistics: frames whose statistics are in it (they lag)


def encode_stats(values: np.ndarray) -> str:
    """Frames' statistics, [frame][region][stat], as a status line carries them: the
    float64 values' bytes in base64 (exact, and a fifth of the time of JSON's numbers for
    the writer to send and the acquiring process to read, at every event of a step scan)."""
    return base64.b64encode(values.astype("<f8", copy=False).tobytes()).decode("ascii")


def decode_stats(text: str, regions: int) -> np.ndarray:
    """`encode_stats`'s values, (frames, `regions` with the whole frame's, stats)."""
    values = np.frombuffer(base64.b64decode(text), "<f8")
    return values.reshape(-1, regions, len(STATS))


@dataclass(frozen=True)
class WriterConfig:
    """All a writer process needs: the file, the ring to attach, how to write."""

    path: str
    ring: RingSpec
    options: PipelineOptions = field(default_factory=PipelineOptions)
    attrs: dict[str, Any] = field(default_factory=dict)  #: recorded on /entry
    #: regions whose statistics are computed besides the whole frame's; None: no statistics
    regions: dict[str, Region] | None = None
    #: False: the frames are not stored, only their numbers, timestamps and statistics
    images: bool = True

    def __post_init__(self) -> None:
        if not self.images and self.regions is None:
            raise ValueError(
                f"{self.path}: a file without images needs statistics (regions), or it would "
                "keep nothing of the frames"
            )

    def to_json(self) -> str:
        return json.dumps(
            {
                "path": self.path,
                "ring": self.ring.to_json(),
                "options": self.options.to_dict(),
                "attrs": self.attrs,
                "regions": self.regions,
                "images": self.images,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> WriterConfig:
        d = json.loads(text)
        regions = d["regions"]
        return cls(
            d["path"],
            RingSpec.from_json(d["ring"]),
            PipelineOptions(**d["options"]),
            d["attrs"],
            None if regions is None else {k: cast(Region, tuple(v)) for k, v in regions.items()},
            d["images"],
        )


def encode(op: Op, arg: int) -> bytes:
    return np.array([(op, arg)], RECORD).tobytes()


def encode_open(config: WriterConfig) -> bytes:
    """`Op.OPEN` and the file's configuration after it."""
    payload = config.to_json().encode()
    return encode(Op.OPEN, len(payload)) + payload


def encode_run(uid: str) -> bytes:
    """`Op.RUN` and the run's uid after it."""
    payload = uid.encode()
    return encode(Op.RUN, len(payload)) + payload
