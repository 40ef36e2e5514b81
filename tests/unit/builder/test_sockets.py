"""builder.sockets: Unix socket paths beyond sun_path's length."""

from __future__ import annotations

from pathlib import Path

from builder.sockets import unix_path


def test_long_socket_paths(tmp_path: Path) -> None:
    import socket

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "qmp.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(unix_path(path))
        server.listen(1)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(unix_path(path))
    assert path.exists()
