"""Making a run file whose writer was killed open again: a close cut short is finished, a file
cut short is refused and left as it is. Real files from the writer process."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest

from ophyd_scmos.cli import main
from ophyd_scmos.drivers import SimulatedSCMOS
from ophyd_scmos.pipeline import FrameStream, layout
from ophyd_scmos.pipeline.recovery import (
    UnreadableFile,
    check_readable,
    finish_close,
    lookup3,
    read_superblock,
)
from tests.conftest import expected_frames

FRAMES = 20


@pytest.fixture
def run_file(camera: SimulatedSCMOS, tmp_path: Path) -> Path:
    """A run's file, closed by its writer."""
    path = tmp_path / "run.h5"
    stream = FrameStream(camera, path)
    stream.open()
    camera.software_trigger(FRAMES)
    stream.wait(FRAMES, timeout=30)
    stream.close()
    return path


def record_length(path: Path, end_of_file: int, flags: int | None = None) -> None:
    """Write `end_of_file` into the v3 superblock, as HDF5's close does before it sets the
    file's length: a writer killed between the two leaves the file this short. `flags`: its
    consistency flags too (5: open for writing, by a SWMR writer)."""
    with open(path, "r+b") as f:
        block = bytearray(f.read(48))
        offsets = block[9]
        if flags is not None:
            block[11] = flags
        at = 12 + 2 * offsets  # base and extension addresses, then the end of file
        block[at : at + offsets] = end_of_file.to_bytes(offsets, "little")
        size = 12 + 4 * offsets
        block[size : size + 4] = struct.pack("<I", lookup3(bytes(block[:size])))
        f.seek(0)
        f.write(block[: size + 4])


def test_a_close_cut_short_is_finished_and_every_frame_reads(
    run_file: Path, camera: SimulatedSCMOS, capsys: pytest.CaptureFixture[str]
) -> None:
    size = os.path.getsize(run_file)
    record_length(run_file, size + 933)  # the writer recorded space it never wrote
    with pytest.raises(OSError, match="truncated file"):
        h5py.File(run_file, "r")

    assert main(["recover", str(run_file)]) == 0
    out = capsys.readouterr().out
    assert f"{run_file}: finished the close its writer was killed in; {FRAMES} frames" in out
    assert os.path.getsize(run_file) == size + 933 == read_superblock(run_file).end_of_file
    check_readable(run_file)  # what the catalog checks before it reads
    with h5py.File(run_file, "r") as f:
        np.testing.assert_array_equal(f[layout.DATA][()], expected_frames(camera, FRAMES))
        assert f[layout.ENTRY].attrs["frames_written"] == FRAMES
    assert finish_close(run_file) is False  # nothing left to do


def test_a_file_cut_short_is_refused_and_left_as_it_is(run_file: Path) -> None:
    """What is missing holds data (a copy that stopped early): zeros must not stand in."""
    with h5py.File(run_file, "r") as f:
        last_chunk = f[layout.DATA].id.get_chunk_info(FRAMES - 1)
    cut = last_chunk.byte_offset + last_chunk.size // 2  # into the last frame
    size = os.path.getsize(run_file)
    record_length(run_file, size)
    with open(run_file, "r+b") as f:  # the tail after the cut, as the copy never wrote it
        f.truncate(cut)
    with pytest.raises(UnreadableFile, match="what is missing holds data"):
        finish_close(run_file)
    assert os.path.getsize(run_file) == cut


def test_a_file_left_open_for_writing_and_cut_short_is_refused_where_nothing_writes_it(
    run_file: Path,
) -> None:
    """A power cut: the writer's flag stays, and the file's tail never reached the disk.
    Skipping every check of a file open for writing, the catalog's SWMR reads served the
    missing frames as zeros."""
    size = os.path.getsize(run_file)
    record_length(run_file, size, flags=5)
    assert check_readable(run_file).open_for_writing  # whole: read as one being written
    with open(run_file, "r+b") as f:
        f.truncate(size * 6 // 10)
    with pytest.raises(UnreadableFile, match="open for writing, and no process here writes it"):
        check_readable(run_file)
    with open(run_file, "r+b"):  # a writer here holds it: it may be recording yet
        assert check_readable(run_file).open_for_writing


def test_a_file_whose_metadata_was_cut_is_refused(run_file: Path) -> None:
    size = os.path.getsize(run_file)
    with open(run_file, "r+b") as f:
        f.truncate(size - 64)  # the last metadata the close wrote
    with pytest.raises(UnreadableFile, match="truncated"):
        finish_close(run_file)
    assert os.path.getsize(run_file) == size - 64
