"""Starting the server from the command line: accounts, the socket, one line saying where."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from builder.errors import BadInput
from harness.api import accounts as accounts_mod
from harness.api.actions import imports
from harness.api.server import make_server


def serve(
    *, bind: str, port: int, accounts_file: Path | None, s3_endpoint: str | None,
    log: bool = False,
) -> None:  # fmt: skip
    if accounts_file is None:
        accounts_file = accounts_mod.default_accounts_file()
        accounts_mod.ensure_default(accounts_file)
    accounts = accounts_mod.load(accounts_file)
    if not 0 <= port <= 65535:
        raise BadInput(f"--port {port}: must be 0-65535")
    try:
        server = make_server(bind, port, accounts, {"s3_endpoint": s3_endpoint, "log": log})
    except OSError as e:
        raise BadInput(f"--bind {bind} --port {port}: {e.strerror}") from None
    host, real_port = server.server_address[:2]
    print(f"amilab api: serving EC2 at http://{host}:{real_port}/ for "
          f"{len(accounts)} account(s) of {accounts_file}", flush=True)  # fmt: skip

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        imports.stop_all()  # their threads die with this process: leave nothing half-made
        print("amilab api: stopped", file=sys.stderr, flush=True)
