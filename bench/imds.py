#!/usr/bin/env python3
"""Metadata-service benchmark (issue 5, item 5): what amilab adds per request, on the host.

  serve   `amilab imds serve` (the CLI, as tool authors run it): requests/s of GET
          meta-data/kernel-id over fresh connections (EC2's `Connection: close`), from
          --clients client processes, beside a bare socketserver on the same framework, in
          its own process too, that answers a constant (the ceiling of Python's socketserver
          here), and a bare blocking accept/recv/send loop (the ceiling of Python here).
          Median of --rounds rounds, the servers taking turns.
          Also the same with an IMDSv2 token (http_tokens: required: one HMAC per request).
  cgi     the guest path: slirp's `cmd:` starts `python3 -I -S imds_cgi.py DOC` per guest
          connection. Median and p95 wall time of one exchange, beside `python3 -I -S -c pass`
          fed the same bytes (the interpreter's own start-up), and their difference (what
          amilab adds per guest request on the host; target ≤ 20 ms).

  guest   with --guest: boots an image (by default the debian-pv recipe, built into a
          temporary AMILAB_HOME) and times, inside it, `curl` of meta-data/kernel-id beside
          the same `curl` against a closed local port (the guest's own process cost), and
          their difference: what amilab adds per guest request (target ≤ 20 ms median).

Target (issue 5): host ≥ 2,000 requests/s.

Usage: .venv/bin/python bench/imds.py [--seconds S] [--clients N] [--runs N]
                                      [--guest [--home DIR] [--image AMI]] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness import imds_cgi  # noqa: E402
from harness.metadata import InstanceMetadata, write_document  # noqa: E402

AMILAB = Path(sys.executable).with_name("amilab")
REQUEST = b"GET /latest/meta-data/kernel-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"
CONFIG = "ami_id: ami-0123456789abcdef0\ninstance_id: i-0123456789abcdef0\n"
CONFIG += "kernel_id: aki-0123456789abcdef0\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"bench: nothing listens on {port}")


def _fetch(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(request)
        data = b""
        while chunk := c.recv(4096):
            data += chunk
    return data


def _client(port: int, request: bytes, seconds: float, out: multiprocessing.Queue) -> None:
    done = errors = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if _fetch(port, request).startswith(b"HTTP/1.1 200"):
            done += 1
        else:
            errors += 1
    out.put((done, errors))


def _load(port: int, request: bytes, seconds: float, clients: int) -> float:
    """Requests/s from `clients` processes, each one connection at a time."""
    q: multiprocessing.Queue = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(target=_client, args=(port, request, seconds, q))
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    errors = sum(e for _, e in results)
    if errors:
        raise SystemExit(f"bench: {errors} requests failed on port {port}")
    return sum(d for d, _ in results) / seconds


# The peer: the same framework (threading socketserver, a thread per connection) in its own
# process as amilab's is, answering a constant: no lookup, no headers parsed.
PEER = """
import socketserver, sys
class H(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.recv(4096)
        self.request.sendall(
            b"HTTP/1.1 200 OK\\r\\nContent-Length: 21\\r\\n\\r\\naki-0123456789abcdef0")
class S(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def _amilab_serve(config: Path) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    cmd = [str(AMILAB), "imds", "serve", "--port", str(port), "--config", str(config)]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    _wait_listening(port)
    return proc, port


# The ceiling: one blocking accept/recv/send/close loop, no parsing, no protection from a
# slow client (what amilab's non-blocking loop does with a real answer).
LOOP = """
import socket, sys
s = socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=256)
while True:
    c, _ = s.accept()
    c.recv(4096)
    c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 21\\r\\n\\r\\naki-0123456789abcdef0")
    c.close()
"""


def _peer_serve(code: str) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", code, str(port)])
    _wait_listening(port)
    return proc, port


def bench_serve(tmp: Path, seconds: float, clients: int, rounds: int) -> dict[str, float]:
    """Median of `rounds` rounds, the three servers taking turns so that load from anything
    else on the machine falls on all of them alike."""
    (tmp / "v1.yaml").write_text(CONFIG)
    (tmp / "v2.yaml").write_text(CONFIG + "http_tokens: required\n")
    samples: dict[str, list[float]] = {
        "peer_rps": [],
        "loop_rps": [],
        "amilab_v1_rps": [],
        "amilab_v2_rps": [],
    }
    for _ in range(rounds):
        for name in samples:
            if name in ("peer_rps", "loop_rps"):
                proc, port = _peer_serve(PEER if name == "peer_rps" else LOOP)
            else:
                proc, port = _amilab_serve(tmp / f"{name.split('_')[1]}.yaml")
            try:
                request = REQUEST
                if name == "amilab_v2_rps":
                    put = b"PUT /latest/api/token HTTP/1.1\r\n"
                    put += b"X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n"
                    token = _fetch(port, put).partition(b"\r\n\r\n")[2]
                    request = REQUEST[:-2] + b"X-aws-ec2-metadata-token: " + token + b"\r\n\r\n"
                samples[name].append(_load(port, request, seconds, clients))
            finally:
                proc.terminate()
                proc.wait()
    return {k: statistics.median(v) for k, v in samples.items()}


def _exchange(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, input=REQUEST, capture_output=True, check=True)
    return time.perf_counter() - t


def bench_cgi(tmp: Path, runs: int) -> dict[str, float]:
    md = InstanceMetadata(
        ami_id="ami-0123456789abcdef0",
        instance_id="i-0123456789abcdef0",
        kernel_id="aki-0123456789abcdef0",
    )
    doc = write_document(md, tmp / "metadata.marshal")
    python = sys.executable
    service = [python, "-I", "-S", imds_cgi.__file__, str(doc)]
    bare = [python, "-I", "-S", "-c", "pass"]
    out = subprocess.run(service, input=REQUEST, capture_output=True, check=True).stdout
    assert out.endswith(b"aki-0123456789abcdef0"), out
    svc, base = [], []
    for _ in range(runs):  # alternating, so both see the same machine load
        svc.append(_exchange(service))
        base.append(_exchange(bare))

    def p95(xs: list[float]) -> float:
        return sorted(xs)[max(0, int(len(xs) * 0.95) - 1)]

    return {
        "cgi_median_ms": statistics.median(svc) * 1000,
        "cgi_p95_ms": p95(svc) * 1000,
        "python_median_ms": statistics.median(base) * 1000,
        "python_p95_ms": p95(base) * 1000,
        "cgi_added_median_ms": (statistics.median(svc) - statistics.median(base)) * 1000,
        "cgi_sequential_rps": 1 / statistics.median(svc),
    }


# Inside the guest: bash's $EPOCHREALTIME brackets each curl without a process of its own,
# so a figure is the whole curl (fork, exec, connect, exchange) as a guest tool pays it.
GUEST_LOOP = (
    "bash -c 'for i in $(seq {n}); do s=$EPOCHREALTIME; curl -s -o /dev/null {url}; "
    'e=$EPOCHREALTIME; echo "$s $e"; done\''
)


def _guest_times(ssh: object, url: str, n: int) -> list[float]:
    from harness.ssh import run

    out = run(ssh, GUEST_LOOP.format(n=n, url=url), timeout=600).output  # type: ignore[arg-type]
    times = []
    for line in out.splitlines():
        start, _, end = line.partition(" ")
        times.append(float(end.replace(",", ".")) - float(start.replace(",", ".")))
    return times


def bench_guest(home: Path | None, image: str | None, runs: int) -> dict[str, float]:
    """Boot the image (building the default debian-pv recipe into a temporary AMILAB_HOME
    when none is given) and time curl inside it: the metadata service vs a closed port."""
    import os

    from builder.registry import Registry
    from harness import accel
    from harness.launch import LAUNCH_STEPS, Instance, LaunchOptions, WaitForSsh
    from harness.pipeline import Step, run_steps
    from harness.plan import make_plan

    with tempfile.TemporaryDirectory(prefix="amilab-bench-imds-home-") as t:
        if home is None:
            home = Path(t)
            cmd = [str(AMILAB), "build", str(ROOT / "build.yaml"), "--json"]
            cmd += ["--image", image or "debian-pv"]
            env = {**os.environ, "AMILAB_HOME": str(home)}
            built = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if built.returncode != 0:
                raise SystemExit(f"bench: build failed:\n{built.stderr[-3000:]}")
            images = json.loads(built.stdout)["Images"]
            image = next(i["ImageId"] for i in images if i["ImageType"] == "machine")
        os.environ["AMILAB_HOME"] = str(home)
        record = Registry().find(image or "debian-pv")
        result: dict[str, list[float]] = {}

        class Measure(Step[Instance]):
            name = "measure"

            def run(self, s: Instance) -> None:
                metadata = "http://169.254.169.254/latest/meta-data/kernel-id"
                closed = "http://127.0.0.1:9/"  # discard port: nothing listens, refused
                _guest_times(s.ssh, metadata, 3)  # warm the page cache for curl
                result["service"], result["closed"] = [], []
                for _ in range(runs // 10 or 1):  # interleaved, so load falls on both
                    result["service"] += _guest_times(s.ssh, metadata, 10)
                    result["closed"] += _guest_times(s.ssh, closed, 10)

        inst = Instance(make_plan(record), LaunchOptions(accelerator=accel.choose("auto")))
        run_steps([cls() for cls in LAUNCH_STEPS] + [WaitForSsh(), Measure()], inst)

    def p95(xs: list[float]) -> float:
        return sorted(xs)[max(0, int(len(xs) * 0.95) - 1)]

    svc, closed = result["service"], result["closed"]
    return {
        "guest_accelerator": inst.options.accelerator.name,  # type: ignore[dict-item]
        "guest_curl_imds_median_ms": statistics.median(svc) * 1000,
        "guest_curl_imds_p95_ms": p95(svc) * 1000,
        "guest_curl_closed_median_ms": statistics.median(closed) * 1000,
        "guest_curl_closed_p95_ms": p95(closed) * 1000,
        "guest_added_median_ms": (statistics.median(svc) - statistics.median(closed)) * 1000,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="per load run (default 3)")
    ap.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    ap.add_argument("--rounds", type=int, default=3, help="load rounds (default 3)")
    ap.add_argument("--runs", type=int, default=40, help="per-connection runs (default 40)")
    ap.add_argument("--guest", action="store_true", help="also time curl inside a guest")
    ap.add_argument("--home", type=Path, help="AMILAB_HOME holding --image (else a build)")
    ap.add_argument("--image", help="AMI id or name to boot for --guest (default debian-pv)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="amilab-bench-imds-") as t:
        tmp = Path(t)
        result = bench_serve(tmp, args.seconds, args.clients, args.rounds) | bench_cgi(
            tmp, args.runs
        )
    if args.guest:
        result |= bench_guest(args.home, args.image, args.runs)
    result["serve_vs_peer"] = result["amilab_v1_rps"] / result["peer_rps"]
    result["serve_vs_loop"] = result["amilab_v1_rps"] / result["loop_rps"]
    if args.json:
        print(json.dumps({k: _round(v) for k, v in result.items()}, indent=1))
        return 0
    print(f"host  amilab imds serve     {result['amilab_v1_rps']:8.0f} req/s (IMDSv1)")
    print(f"host  amilab imds serve     {result['amilab_v2_rps']:8.0f} req/s (IMDSv2 token)")
    print(f"host  bare socketserver     {result['peer_rps']:8.0f} req/s (constant answer)")
    print(f"host  bare accept loop      {result['loop_rps']:8.0f} req/s (constant answer)")
    print(f"      amilab / socketserver {result['serve_vs_peer']:8.2f}")
    print(f"      amilab / accept loop  {result['serve_vs_loop']:8.2f}   (target: ≥ 2000 req/s)")
    print(
        f"cgi   imds_cgi exchange     median {result['cgi_median_ms']:6.1f} ms"
        f"  p95 {result['cgi_p95_ms']:6.1f} ms"
    )
    print(
        f"cgi   python -I -S -c pass  median {result['python_median_ms']:6.1f} ms"
        f"  p95 {result['python_p95_ms']:6.1f} ms"
    )
    print(f"      amilab adds           median {result['cgi_added_median_ms']:6.1f} ms")
    if args.guest:
        r = result
        print(
            f"guest curl kernel-id         median {r['guest_curl_imds_median_ms']:6.1f} ms"
            f"  p95 {r['guest_curl_imds_p95_ms']:6.1f} ms  ({r['guest_accelerator']})"
        )
        print(
            f"guest curl closed port       median {r['guest_curl_closed_median_ms']:6.1f} ms"
            f"  p95 {r['guest_curl_closed_p95_ms']:6.1f} ms"
        )
        print(
            f"      amilab adds           median {r['guest_added_median_ms']:6.1f} ms"
            "   (target: ≤ 20 ms)"
        )
    return 0


def _round(value: object) -> object:
    return round(value, 3) if isinstance(value, float) else value


if __name__ == "__main__":
    sys.exit(main())
