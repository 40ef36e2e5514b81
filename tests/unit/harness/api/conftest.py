"""A real API server on a free loopback port, in a thread, over a temporary home; boto3
clients signed for two accounts (and one with a wrong secret)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from harness.api.accounts import Account
from harness.api.server import make_server

A = Account("111111111111", "AKIDAAAAAAAAAAAAAAAA", "secret-a")
B = Account("222222222222", "AKIDBBBBBBBBBBBBBBBB", "secret-b")


@pytest.fixture
def api(amilab_home: Path) -> Iterator[dict[str, Any]]:
    server = make_server("127.0.0.1", 0, {a.access_key_id: a for a in (A, B)})
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    def client(account: Account = A, secret: str | None = None, service: str = "ec2") -> Any:
        return boto3.client(
            service, endpoint_url=url, region_name="us-east-1",
            aws_access_key_id=account.access_key_id,
            aws_secret_access_key=secret or account.secret_access_key,
            config=Config(retries={"max_attempts": 1}),
        )  # fmt: skip

    try:
        yield {"url": url, "client": client, "server": server, "home": amilab_home}
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
