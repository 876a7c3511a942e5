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


def test_a_ring_larger_than_free_shared_memory_is_refused_before_it_kills(tmp_path):
    """Docker's 64 MB /dev/shm with a larger ring: touching the segment's pages would kill
    the interpreter with SIGBUS. Here /dev/shm is an 8 MiB tmpfs in a private mount namespace."""
    script = f'mount -t tmpfs -o size=8m tmpfs /dev/shm && exec {sys.executable} -c "$0" "$1"'
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here ({probe.stderr.strip()})")
    run = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, SMALL_SHM, tmp_path],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "refused: cannot make a 64 MiB frame ring in shared memory" in run.stdout
    assert "8 MiB free" in run.stdout and "ring_mb" in run.stdout
    assert "alive; files: []" in run.stdout  # no file is left behind either


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
