"""The local servers that these tests start stop seconds after the test run, not minutes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ophyd_scmos.catalog.local_server import IDLE_ENV


@pytest.fixture(scope="session", autouse=True)
def servers_stop_soon_after_the_tests() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(IDLE_ENV, "5")
        yield
