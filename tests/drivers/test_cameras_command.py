"""`ophyd-scmos cameras`, `driver_from_spec`, and what a machine without a driver's SDK says."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ophyd_scmos.cli import main
from ophyd_scmos.drivers import SimulatedSCMOS, driver_from_spec


def test_cameras_lists_every_driver_with_a_spec_that_opens_it(fake_gige, mm_demo_available, capsys):
    fake_gige.ensure()
    assert main(["cameras", "--address", fake_gige.address]) == 0
    out = capsys.readouterr().out
    specs = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "simulated" in specs
    assert "micromanager:DemoCamera:DCam" in specs
    assert fake_gige.serial in specs[f"genicam:{fake_gige.address}"]
    for spec in ("micromanager:DemoCamera:DCam", f"genicam:{fake_gige.address}"):
        driver = driver_from_spec(spec)
        driver.open()
        assert driver.sensor_shape[0] > 0
        driver.close()


def test_a_micromanager_folder_that_is_not_there_is_refused(tmp_path, capsys):
    """Not silently left out of the list, as if it held no camera."""
    assert main(["cameras", "--mm-path", str(tmp_path / "nope")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "--mm-path" in err and "no such folder" in err


def test_cameras_leaves_out_micromanagers_virtual_devices(mm_demo_available, capsys):
    from pymmcore_plus import CMMCorePlus

    # Its "Multi Camera" is of MMCore's camera type, yet combines other cameras.
    assert "Utilities" in CMMCorePlus().getDeviceAdapterNames()
    assert main(["cameras"]) == 0
    specs = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert "micromanager:DemoCamera:DCam" in specs
    assert not [spec for spec in specs if spec.startswith("micromanager:Utilities:")]


def test_a_bad_spec_names_the_forms_it_takes():
    assert isinstance(driver_from_spec("simulated"), SimulatedSCMOS)
    for spec in ("pco:1", "micromanager", "simulated:big"):
        with pytest.raises(ValueError, match="micromanager:Library:Device"):
            driver_from_spec(spec)


# Python with the SDK bindings made unimportable, as on a machine without them.
WITHOUT = "import sys; sys.modules['pymmcore_plus'] = sys.modules['gi'] = None\n"


def run_without_sdks(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT + code], capture_output=True, text=True, timeout=60
    )


def test_a_driver_without_its_library_says_what_to_install():
    result = run_without_sdks(
        "from ophyd_scmos.drivers import MissingLibrary, MicroManagerCamera, GenICamCamera\n"
        "for make in (lambda: MicroManagerCamera('DemoCamera:DCam'),\n"
        "             lambda: GenICamCamera('127.0.0.1')):\n"
        "    try:\n        make()\n    except MissingLibrary as exc:\n        print(exc)\n"
    )
    assert result.returncode == 0, result.stderr
    micromanager, genicam = result.stdout.splitlines()
    assert "pip install 'ophyd-scmos[micromanager]'" in micromanager
    assert "pip install 'ophyd-scmos[genicam]'" in genicam
    assert "apt-get install gir1.2-aravis-0.8" in genicam


def test_cameras_without_the_libraries_still_lists_the_simulated_camera():
    result = run_without_sdks("from ophyd_scmos.cli import main; sys.exit(main(['cameras']))")
    assert result.returncode == 0, result.stderr
    assert "simulated" in result.stdout
    assert "ophyd-scmos[micromanager]" in result.stderr
    assert "ophyd-scmos[genicam]" in result.stderr
