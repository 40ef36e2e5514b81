#!/usr/bin/env python3
"""Metadata-service benchmark (issue 5, item 5): what amilab adds per request, on the host.

  serve   `amilab imds serve` (the CLI, as tool authors run it): requests/s of GET
          meta-data/kernel-id over fresh connections (EC2's `Connection: close`), from
          --clients client processes, beside a bare socketserver on the same framework, in
          its own process too, that answers a constant (the ceiling of Python's socketserver
          here), and a bare blocking accept/recv/send loop (the ceiling of Python here).
          Median of --rounds rounds, the servers taking turns.
          Also the same with an IMDSv2 token (http_tokens: required: one HMAC per request).
  conn    the guest path on the host: slirp's `cmd:` starts one process per guest
          connection. Median and p95 wall time of one exchange through the netcat relay to
          the harness's server thread (what launches use), through the stand-alone
          `imds_cgi.py` (the fallback without it, and runners), socat as the same relay, and
          `/bin/true` (an
          exec doing nothing, the floor of any per-connection process).

  guest   with --guest: boots an image (by default the debian-pv recipe, built into a
          temporary AMILAB_HOME) three times: as launches do (netcat relay, slirp in a QEMU of
          its own), with slirp inside the guest's QEMU (one process, as before), and with
          imds_cgi.py per connection; and times, inside each, `curl` of meta-data/kernel-id beside
          the same `curl` against a closed local port (the guest's own process cost),
          alternating, and their difference: what a metadata request costs a guest beyond
          its own curl (target ≤ 20 ms median). Also curl's own clock for the exchange: its
          connect time holds slirp's spawn of the per-connection process (QEMU forks twice
          through glib, then execs) before slirp answers the SYN.

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

from harness.imds import protocol as imds_cgi  # noqa: E402
from harness.imds.document import InstanceMetadata, write_document  # noqa: E402

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


def _exchange(cmd: list[str], cwd: Path) -> tuple[float, bytes]:
    """One connection as slirp's `cmd:` makes it: a socket as stdin, stdout and stderr."""
    ours, theirs = socket.socketpair()
    t = time.perf_counter()
    with ours:
        proc = subprocess.Popen(cmd, cwd=cwd, stdin=theirs, stdout=theirs, stderr=theirs)
        theirs.close()
        data = b""
        try:
            ours.sendall(REQUEST)
            while chunk := ours.recv(4096):
                data += chunk
        except (ConnectionResetError, BrokenPipeError):  # /bin/true leaves it unread
            pass
    elapsed = time.perf_counter() - t
    proc.wait()
    return elapsed, data


def _p95(xs: list[float]) -> float:
    return sorted(xs)[max(0, int(len(xs) * 0.95) - 1)]


def bench_cgi(tmp: Path, runs: int) -> dict[str, float]:
    """The per-connection process on the host: the netcat relay the harness uses
    (to a server thread, here in this process as in the harness), socat doing the same, the
    stand-alone `imds_cgi.py` (the fallback, and what runners use), and `/bin/true` (an
    exec that does nothing: the floor of any per-connection process)."""
    import threading

    from harness.imds.document import document
    from harness.imds.server import MetadataServer
    from harness.launch.steps import IMDS_SOCKET, StartMetadataService

    md = InstanceMetadata(
        ami_id="ami-0123456789abcdef0",
        instance_id="i-0123456789abcdef0",
        kernel_id="aki-0123456789abcdef0",
    )
    doc = write_document(md, tmp / "metadata.marshal")
    server = MetadataServer.unix(document(md), tmp / IMDS_SOCKET)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    relay = StartMetadataService.relay_command()
    if relay is None:
        raise SystemExit("bench: nc.openbsd is missing (netcat-openbsd): run scripts/setup.sh")
    cgi_cmd = [sys.executable, "-I", "-S", imds_cgi.__file__, str(doc)]
    # socat as the same relay, the peer the netcat relay replaced (measured slower here)
    socat = ["socat", "-lf", "relay.log", "FD:0,shut-down", f"UNIX-CONNECT:{IMDS_SOCKET}"]
    commands = {
        "relay": relay.split(" "),
        "socat": socat,
        "cgi": cgi_cmd,
        "exec": ["/bin/true"],
    }
    times: dict[str, list[float]] = {k: [] for k in commands}
    try:
        for name in ("relay", "socat", "cgi"):
            _, out = _exchange(commands[name], tmp)
            assert out.endswith(b"aki-0123456789abcdef0"), (name, out)
        for _ in range(runs):  # interleaved, so all see the same machine load
            for name, cmd in commands.items():
                times[name].append(_exchange(cmd, tmp)[0])
    finally:
        server.stop()
        thread.join()
    out: dict[str, float] = {}
    for name, xs in times.items():
        out[f"{name}_median_ms"] = statistics.median(xs) * 1000
        out[f"{name}_p95_ms"] = _p95(xs) * 1000
    out["relay_sequential_rps"] = 1 / statistics.median(times["relay"])
    out["cgi_over_relay"] = statistics.median(times["cgi"]) / statistics.median(times["relay"])
    out["socat_over_relay"] = statistics.median(times["socat"]) / statistics.median(times["relay"])
    return out


# Inside the guest: bash's $EPOCHREALTIME brackets each curl without a process of its own,
# so a figure is the whole curl (fork, exec, connect, exchange) as a guest tool pays it. The
# two URLs alternate, so a burst of host load falls on both sides of a pair alike.
GUEST_LOOP = (
    "bash -c 'for i in $(seq {n}); do for u in {a} {b}; do s=$EPOCHREALTIME; "
    'curl -s -o /dev/null $u; e=$EPOCHREALTIME; echo "$s $e"; done; done\''
)


def _guest_pairs(ssh: object, a: str, b: str, n: int) -> tuple[list[float], list[float]]:
    from harness.launch.ssh import run

    out = run(ssh, GUEST_LOOP.format(n=n, a=a, b=b), timeout=900).output  # type: ignore[arg-type]
    times = []
    for line in out.splitlines():
        start, _, end = line.partition(" ")
        times.append(float(end.replace(",", ".")) - float(start.replace(",", ".")))
    return times[0::2], times[1::2]


# curl's own clock for one exchange: the TCP handshake (slirp answers the SYN only after
# it has spawned the per-connection process: QEMU forks, glib forks again, exec), the first
# byte of the answer, and the end.
PHASES_LOOP = (
    "for i in $(seq {n}); do curl -s -o /dev/null "
    "-w '%{{time_connect}} %{{time_starttransfer}} %{{time_total}}\\n' {url}; done"
)


def _guest_phases(ssh: object, url: str, n: int) -> dict[str, list[float]]:
    from harness.launch.ssh import run

    out = run(ssh, PHASES_LOOP.format(n=n, url=url), timeout=600).output  # type: ignore[arg-type]
    rows = [[float(x) for x in line.split()] for line in out.splitlines() if line.strip()]
    return {
        "connect": [r[0] for r in rows],
        "first_byte": [r[1] for r in rows],
        "total": [r[2] for r in rows],
    }


def bench_guest(
    home: Path | None, image: str | None, runs: int, modes: tuple[str, ...]
) -> dict[str, float]:
    """Boot the image (building the default debian-pv recipe into a temporary AMILAB_HOME
    when none is given) once per GUEST_MODES entry and time curl inside each: the metadata
    service vs a closed port."""
    import os

    from builder.images.registry import Registry
    from builder.steps import Step, run_steps
    from harness.launch import accel
    from harness.launch.plan import make_plan
    from harness.launch.steps import LAUNCH_STEPS, Instance, LaunchOptions, WaitForSsh

    out: dict[str, float] = {}
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
        accelerator = accel.choose("auto")
        out["guest_accelerator"] = accelerator.name  # type: ignore[assignment]

        class Measure(Step[Instance]):
            name = "measure"

            def __init__(self) -> None:
                self.result: dict[str, list[float]] = {}

            def run(self, s: Instance) -> None:
                metadata = "http://169.254.169.254/latest/meta-data/kernel-id"
                closed = "http://127.0.0.1:9/"  # discard port: nothing listens, refused
                _guest_pairs(s.ssh, metadata, closed, 3)  # warm the page cache for curl
                svc, shut = _guest_pairs(s.ssh, metadata, closed, runs)
                self.result["service"], self.result["closed"] = svc, shut
                self.result.update(_guest_phases(s.ssh, metadata, max(10, runs // 4)))

        for mode in modes:
            options = LaunchOptions(
                accelerator=accelerator,
                imds_relay=mode != "cgi",
                split_network=mode != "relay-one-qemu",
            )
            inst = Instance(make_plan(record), options)
            measure = Measure()
            run_steps([cls() for cls in LAUNCH_STEPS] + [WaitForSsh(), measure], inst)
            result = measure.result
            svc, closed = result["service"], result["closed"]
            paired = statistics.median(x - y for x, y in zip(svc, closed, strict=True))
            out |= {
                f"guest_{mode}_curl_imds_median_ms": statistics.median(svc) * 1000,
                f"guest_{mode}_curl_imds_p95_ms": _p95(svc) * 1000,
                f"guest_{mode}_curl_closed_median_ms": statistics.median(closed) * 1000,
                f"guest_{mode}_curl_closed_p95_ms": _p95(closed) * 1000,
                f"guest_{mode}_added_median_ms": (
                    statistics.median(svc) - statistics.median(closed)
                )
                * 1000,
                f"guest_{mode}_added_paired_median_ms": paired * 1000,
                f"guest_{mode}_pairs": len(svc),
                f"guest_{mode}_connect_median_ms": statistics.median(result["connect"]) * 1000,
                f"guest_{mode}_first_byte_median_ms": statistics.median(result["first_byte"])
                * 1000,
                f"guest_{mode}_exchange_median_ms": statistics.median(result["total"]) * 1000,
            }
    return out


# relay: what launches use (netcat relay; slirp in a QEMU of its own); relay-one-qemu: the
# same with slirp inside the guest's QEMU; cgi: imds_cgi.py per connection, slirp apart
GUEST_MODES = ("relay", "relay-one-qemu", "cgi")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="per load run (default 3)")
    ap.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    ap.add_argument("--rounds", type=int, default=3, help="load rounds (default 3)")
    ap.add_argument("--runs", type=int, default=40, help="per-connection runs (default 40)")
    ap.add_argument("--guest", action="store_true", help="also time curl inside a guest")
    ap.add_argument("--guest-runs", type=int, help="curl pairs per guest (default: --runs)")
    ap.add_argument("--home", type=Path, help="AMILAB_HOME holding --image (else a build)")
    ap.add_argument("--image", help="AMI id or name to boot for --guest (default debian-pv)")
    ap.add_argument(
        "--guest-modes",
        default=",".join(GUEST_MODES),
        help=f"comma-separated, of {','.join(GUEST_MODES)} (default: all)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="amilab-bench-imds-") as t:
        tmp = Path(t)
        result = bench_serve(tmp, args.seconds, args.clients, args.rounds) | bench_cgi(
            tmp, args.runs
        )
    if args.guest:
        modes = tuple(m for m in args.guest_modes.split(",") if m)
        if not modes or set(modes) - set(GUEST_MODES):
            raise SystemExit(f"bench: --guest-modes: choose from {','.join(GUEST_MODES)}")
        result |= bench_guest(args.home, args.image, args.guest_runs or args.runs, modes)
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
    for name, label in (
        ("relay", "nc -U relay → server"),
        ("socat", "socat relay → server"),
        ("cgi", "imds_cgi.py (fallback)"),
        ("exec", "/bin/true (exec floor)"),
    ):
        print(
            f"conn  {label:24s} median {result[name + '_median_ms']:6.1f} ms"
            f"  p95 {result[name + '_p95_ms']:6.1f} ms"
        )
    print(f"      socat / nc relay      {result['socat_over_relay']:8.2f}")
    print(f"      cgi / nc relay        {result['cgi_over_relay']:8.2f}")
    if args.guest:
        r = result
        for mode in modes:
            g = f"guest_{mode}_"
            print(f"guest [{mode}] ({r['guest_accelerator']})")
            print(
                f"guest curl kernel-id         median {r[g + 'curl_imds_median_ms']:6.1f} ms"
                f"  p95 {r[g + 'curl_imds_p95_ms']:6.1f} ms"
            )
            print(
                f"guest curl closed port       median {r[g + 'curl_closed_median_ms']:6.1f} ms"
                f"  p95 {r[g + 'curl_closed_p95_ms']:6.1f} ms"
            )
            print(
                f"      amilab adds           median {r[g + 'added_median_ms']:6.1f} ms"
                "   (target: ≤ 20 ms)"
            )
            print(
                f"      median of paired diff  {r[g + 'added_paired_median_ms']:6.1f} ms"
                f"   ({r[g + 'pairs']} pairs)"
            )
            print(
                f"      curl's clock: connect {r[g + 'connect_median_ms']:.1f} ms (slirp "
                f"spawns the process before its SYN-ACK), first byte "
                f"{r[g + 'first_byte_median_ms']:.1f} ms, done "
                f"{r[g + 'exchange_median_ms']:.1f} ms (medians)"
            )
    return 0


def _round(value: object) -> object:
    return round(value, 3) if isinstance(value, float) else value


if __name__ == "__main__":
    sys.exit(main())
