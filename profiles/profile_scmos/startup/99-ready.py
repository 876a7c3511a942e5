"""Say what this session holds and how to start, so nobody has to read the startup files."""

for _name, _cam in cameras.items():  # noqa: F821 - from 20-cameras.py
    _rows, _cols = _cam.driver.frame_shape
    print(
        f"{_name:8s} {_cam.driver.model}, {_cols}x{_rows}, exposure "
        f"{_cam.exposure_time.get() * 1e3:g} ms, {_cam.trigger_mode.get()} trigger -> "
        f"{_cam.write_dir}"
    )
if _simulated:  # noqa: F821 - from 25-sample.py
    print(
        "sample   motor_x, motor_y move a hidden sample: "
        f"RE(bp.scan([{_simulated[0]}], motor_x, -2, 2, 41)), docs/align.md"  # noqa: F821
    )
print(f"catalog  {lab.catalog.describe()}")  # noqa: F821 - from 00-config.py
print(f"config   {lab.source}")  # noqa: F821
_first = next(iter(cameras))  # noqa: F821
print(
    f"try      RE(count([{_first}], num=10))   RE(movie({_first}, seconds=10))   "
    f'catalog[-1]["primary"]["{_first}_image"][0]'
)
