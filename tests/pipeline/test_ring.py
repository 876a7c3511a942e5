import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ophyd_scmos.pipeline.options import PipelineOptions
from ophyd_scmos.pipeline.ring import PAGE, SHM_DIR, FrameRing


def test_slots_are_page_aligned_views_of_one_segment():
    ring = FrameRing.create((100, 50), "<u2", 4)
    try:
        addresses = [ring.slot(i).__array_interface__["data"][0] for i in range(4)]
        assert all(a % PAGE == 0 for a in addresses)
        assert len(set(addresses)) == 4
        ring.slot(2)[:] = 7
        assert ring.slot(1).sum() == 0 and ring.slot(2).min() == 7
    finally:
        ring.close()


def test_another_process_sees_frames_and_metadata_by_name():
    ring = FrameRing.create((8, 8), "<u2", 3)
    try:
        ring.slot(1)[:] = np.arange(64, dtype="<u2").reshape(8, 8)
        ring.frame_number[1] = 41
        code = (
            "import json,sys; from ophyd_scmos.pipeline.ring import FrameRing, RingSpec;"
            "r = FrameRing.attach(RingSpec.from_json(json.loads(sys.argv[1])));"
            "print(int(r.slot(1).sum()), int(r.frame_number[1])); r.release_to(5); r.close()"
        )
        import json

        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps(ring.spec.to_json())],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert out == [str(sum(range(64))), "41"]
        assert ring.released == 5
        # the child's exit must not have removed the segment
        assert ring.slot(1)[0, 1] == 1
    finally:
        ring.close()


def test_close_removes_the_segment_and_is_idempotent():
    ring = FrameRing.create((4, 4), "<u2", 2)
    name = ring.spec.name
    ring.close()
    ring.close()
    with pytest.raises(FileNotFoundError):
        FrameRing.attach(ring.spec)
    assert name


def test_slots_for_fits_the_budget_and_never_below_two():
    assert PipelineOptions(ring_mb=64).slots_for((2048, 2048), "<u2") == 8
    assert PipelineOptions(ring_mb=1).slots_for((2048, 2048), "<u2") == 2


def test_too_few_slots_is_an_error():
    with pytest.raises(ValueError, match="at least 2 slots"):
        FrameRing.create((4, 4), "<u2", 1)


SMALL_SHM = """
import sys
from ophyd_scmos import SCMOSCamera, SimulatedSCMOS
cam = SCMOSCamera(name="cam", driver=SimulatedSCMOS(shape=(256, 256)), write_dir=sys.argv[1],
                  ring_mb=64)
try:
    cam.stage()
except MemoryError as exc:
    print("refused:", exc)
print("alive; files:", sorted(p.name for p in __import__("pathlib").Path(sys.argv[1]).iterdir()))
"""


def run_with_small_shm(code: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """Python `code` (`directory` its argv[1]) in a private mount namespace whose /dev/shm is
    an 8 MiB tmpfs; skips where the platform gives no such namespace."""
    unshare = ["unshare", "-m", "--propagation", "private"]
    probe = subprocess.run([*unshare, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here ({probe.stderr.strip()})")
    script = f'mount -t tmpfs -o size=8m tmpfs /dev/shm && exec {sys.executable} -c "$0" "$1"'
    return subprocess.run(
        [*unshare, "sh", "-c", script, code, str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_ring_larger_than_free_shared_memory_is_refused_before_it_kills(tmp_path):
    """Docker's 64 MB /dev/shm with a larger ring: touching the segment's pages would kill
    the interpreter with SIGBUS. Here /dev/shm is an 8 MiB tmpfs in a private mount namespace."""
    run = run_with_small_shm(SMALL_SHM, tmp_path)
    assert run.returncode == 0, run.stderr
    assert "refused: cannot make a 64 MiB frame ring in shared memory" in run.stdout
    assert "8 MiB free" in run.stdout and "ring_mb" in run.stdout
    assert "alive; files: []" in run.stdout  # no file is left behind either


def test_a_ring_beyond_the_file_size_limit_is_refused_saying_so(tmp_path):
    """`ulimit -f` below the ring's size (above what a new file needs): the advice is that
    limit, not a larger /dev/shm."""
    import resource

    limit = 32 << 20

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    run = subprocess.run(
        [sys.executable, "-c", SMALL_SHM, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=small_files,
    )
    assert run.returncode == 0, run.stderr
    assert "refused: cannot make a 64 MiB frame ring" in run.stdout
    assert "file-size limit (ulimit -f)" in run.stdout and "/dev/shm larger" not in run.stdout
    assert "alive; files: []" in run.stdout


def test_rings_left_by_processes_that_are_gone_are_removed():
    """A process killed with its whole group leaves its ring in /dev/shm: the next ring made
    on the machine removes it, and leaves the rings of living processes alone."""
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    orphan = SHM_DIR / f"scmos_{pid_max + 1}_0badc0de"  # a pid no process can have
    orphan.write_bytes(b"\0" * 4096)
    ring = FrameRing.create((4, 4), "<u2", 2)
    try:
        assert not orphan.exists()
        assert (SHM_DIR / ring.spec.name).exists()
        assert ring.spec.name.startswith(f"scmos_{os.getpid()}_")
    finally:
        ring.close()


def test_newest_reads_the_newest_whole_frame_and_drops_one_overwritten_while_read():
    ring = FrameRing.create((4, 6), "<u2", 3)
    try:
        assert ring.newest() is None  # nothing landed yet
        for number in (7, 8):
            ring.landing(number % 3)
            ring.slot(number % 3).fill(number)
            ring.landed(number % 3, number, 0.0)
        frame = ring.newest()
        assert frame is not None and frame.frame_number == 8 and frame.delivered == 2
        assert frame.shape == (4, 6) and (frame.image == 8).all()
        assert not np.shares_memory(frame.image, ring.slot(8 % 3))
        assert ring.newest(after=frame.delivered) is None  # nothing newer

        summed = ring.newest(read=lambda image: image.sum(axis=0))
        assert summed is not None and (summed.image == 32).all()

        def overwritten(image: np.ndarray) -> np.ndarray:
            ring.landing(8 % 3)  # the producer takes the slot back while the view reads it
            return image.copy()

        assert ring.newest(read=overwritten) is None
    finally:
        ring.close()
