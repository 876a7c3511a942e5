import subprocess
import sys

import numpy as np
import pytest

from ophyd_scmos.pipeline.options import PipelineOptions
from ophyd_scmos.pipeline.ring import PAGE, FrameRing


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
