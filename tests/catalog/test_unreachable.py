"""The commands that open a catalog server, when it cannot be reached (a wrong URL, the server
down): one line naming the URL, exit 2, no traceback, and `acquire` takes no frame.

The connection is really refused: the port is one just bound and closed. A refused connection
is said at once, before Tiled's client (which would retry it for about 25 s) is made; where
the client is reached anyway, it tries once here (`stamina`'s testing mode).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import stamina

from ophyd_scmos.catalog import CatalogUnavailable, open_catalog
from ophyd_scmos.cli import main

SAYS = "cannot reach the catalog at {url} ("
CHECK = "): check that its server is running and that the URL is right\n"


@pytest.fixture
def url() -> Iterator[str]:
    """A server's URL that refuses connections, tried once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with stamina.set_testing(True, attempts=1):
        yield f"http://127.0.0.1:{port}"


def one_line(err: str, command: str, url: str) -> bool:
    return (
        err.count("\n") == 1
        and err.startswith(f"ophyd-scmos {command}: " + SAYS.format(url=url))
        and err.endswith(CHECK)
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["runs", "--catalog", "{url}"],
        ["show", "-1", "--catalog", "{url}", "--no-png"],
        ["sync", "--to", "{url}"],
        ["recover", "--catalog", "{url}", "run.h5"],
        ["demo", "--catalog", "{url}", "--num", "3"],
    ],
    ids=["runs", "show", "sync", "recover", "demo"],
)
def test_a_catalog_command_on_a_server_that_does_not_answer_is_one_line_and_exit_2(
    url: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([arg.format(url=url) for arg in argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and one_line(err, argv[0], url), err


def test_the_catalog_named_by_the_environment_is_named_too(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPHYD_SCMOS_CATALOG", url)
    assert main(["runs"]) == 2
    assert one_line(capsys.readouterr().err, "runs", url)


def test_acquire_on_a_server_that_does_not_answer_takes_no_frame_and_makes_no_file(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    config = tmp_path / "lab.toml"
    config.write_text(
        f'[data]\ndir = "{data}"\n[catalog]\nurl = "{url}"\n'
        "[cameras.cam]\noptions = { shape = [256, 320] }\nroi = [0, 0, 64, 64]\nring_mb = 4\n"
    )
    assert main(["acquire", "--config", str(config), "--num", "3"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and one_line(err, "acquire", url), err
    assert not any(data.rglob("*"))


def test_a_refused_connection_is_said_before_tileds_client_retries_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tiled.client

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    def client(*args: object, **kwargs: object) -> None:
        raise AssertionError("Tiled's client was made: it retries a refused connection ~25 s")

    monkeypatch.setattr(tiled.client, "from_uri", client)
    with pytest.raises(CatalogUnavailable, match="Connection refused") as refused:
        open_catalog(url)
    assert str(refused.value).startswith(SAYS.format(url=url))


def test_a_catalog_reached_through_a_proxy_is_left_to_tileds_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where a proxy carries the request, a direct connection says nothing: the client,
    which goes through the proxy, is made and tries (here: once)."""
    import tiled.client

    made = []
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example.org:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setattr(tiled.client, "from_uri", lambda *args, **kwargs: made.append(args))
    open_catalog("http://127.0.0.1:1")
    assert made == [("http://127.0.0.1:1",)]
