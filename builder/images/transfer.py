"""One-pass streaming for bundles and stored objects: gzip, AES-128-CBC, digests, threads.

The disk is read once and every stage works on the same chunks. Compression is the slow
stage, so it runs in a thread of its own while the caller's thread encrypts, hashes and
writes; hashlib, the gzip codecs and OpenSSL's AES all release the GIL on large buffers, so
the two threads really use both cores. The gzip codec is ISA-L's (python-isal) when it is
installed: level 1 compresses a Debian root filesystem about ten times faster than zlib's
default level for a few percent more output, and its output is ordinary gzip.
"""

from __future__ import annotations

import queue
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from builder.errors import BadInput

try:  # ISA-L: the fastest deflate available; zlib-ng next; the standard library last
    from isal import isal_zlib as _gz

    GZIP_LEVEL = 1
    GZIP_CODEC = "isal"
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        from zlib_ng import zlib_ng as _gz

        GZIP_LEVEL = 1
        GZIP_CODEC = "zlib-ng"
    except ImportError:
        _gz = zlib  # type: ignore[assignment]
        GZIP_LEVEL = 1
        GZIP_CODEC = "zlib"

_GZIP_WBITS = 31  # gzip header and trailer, as `gzip` writes and reads
_DEPTH = 8  # chunks in flight between the threads (each up to a few MiB)
_DONE = object()


# The gzip header amilab writes: no name, no time (so equal input gives equal output), OS
# "unknown". Written by hand rather than by the codec, whose XFL/OS bytes differ between
# ISA-L, zlib-ng and zlib, so that a reader of amilab's own objects can demand these exact
# bytes and no byte of an object goes unchecked.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_crc32 = getattr(_gz, "crc32", zlib.crc32)


class GzipWriter:
    """gzip of a stream: GZIP_HEADER, raw deflate, then CRC32 and size (RFC 1952)."""

    def __init__(self, level: int = GZIP_LEVEL) -> None:
        self._c = _gz.compressobj(level, _gz.DEFLATED, -15)
        self._crc = 0
        self._size = 0
        self._started = False

    def compress(self, data: bytes) -> bytes:
        self._crc = _crc32(data, self._crc)
        self._size += len(data)
        out = self._c.compress(data)
        if not self._started:
            self._started = True
            return GZIP_HEADER + out
        return out

    def flush(self) -> bytes:
        head = b"" if self._started else GZIP_HEADER
        tail = self._crc.to_bytes(4, "little") + (self._size & 0xFFFFFFFF).to_bytes(4, "little")
        return head + self._c.flush() + tail


class GunzipStage:
    """Decompresses one gzip member; anything after its end, or an early end, is corrupt.

    `strict` (amilab's own objects) demands GZIP_HEADER byte for byte and checks the CRC32
    and size itself; otherwise any gzip header is accepted, as `gunzip` does (bundles made
    by other tools)."""

    def __init__(self, what: str, strict: bool = False) -> None:
        self._what = what
        self._strict = strict
        self._d = _gz.decompressobj(-15 if strict else _GZIP_WBITS)
        self._head = bytearray()
        self._tail = bytearray()
        self._crc = 0
        self._size = 0

    def feed(self, data: bytes) -> bytes:
        if self._strict and len(self._head) < len(GZIP_HEADER):
            need = len(GZIP_HEADER) - len(self._head)
            self._head += data[:need]
            data = data[need:]
            if self._head != GZIP_HEADER[: len(self._head)]:
                raise BadInput(f"{self._what}: not an amilab gzip stream (corrupt header)")
        if self._d.eof:
            self._trailing(data)
            return b""
        try:
            out = self._d.decompress(data)
        except (zlib.error, _gz.error) as e:
            raise BadInput(f"{self._what}: corrupt compressed data ({e})") from e
        if self._strict:
            self._crc = _crc32(out, self._crc)
            self._size += len(out)
        if self._d.eof:
            self._trailing(self._d.unused_data)
        return out

    def _trailing(self, data: bytes) -> None:
        if not self._strict:
            if data:
                raise BadInput(f"{self._what}: data after the end of the compressed stream")
            return
        self._tail += data
        if len(self._tail) > 8:
            raise BadInput(f"{self._what}: data after the end of the compressed stream")

    def close(self) -> bytes:
        if not self._d.eof or (self._strict and len(self._tail) < 8):
            raise BadInput(f"{self._what}: compressed stream ends early (truncated)")
        if self._strict:
            crc = int.from_bytes(self._tail[:4], "little")
            size = int.from_bytes(self._tail[4:8], "little")
            if crc != self._crc or size != self._size & 0xFFFFFFFF:
                raise BadInput(f"{self._what}: CRC32 or size of the data does not match (corrupt)")
        return b""


class AesCbcEncrypt:
    """AES-128-CBC with PKCS#7 padding: what `openssl enc -aes-128-cbc -K -iv` writes."""

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        self._pad = padding.PKCS7(128).padder()

    def update(self, data: bytes) -> bytes:
        return self._enc.update(self._pad.update(data))

    def finalize(self) -> bytes:
        return self._enc.update(self._pad.finalize()) + self._enc.finalize()


class AesCbcDecrypt:
    def __init__(self, key: bytes, iv: bytes, what: str) -> None:
        self._dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        self._unpad = padding.PKCS7(128).unpadder()
        self._what = what

    def update(self, data: bytes) -> bytes:
        return self._unpad.update(self._dec.update(data))

    def finalize(self) -> bytes:
        try:
            return self._unpad.update(self._dec.finalize()) + self._unpad.finalize()
        except ValueError as e:  # bad padding: wrong key or a damaged last block
            raise BadInput(f"{self._what}: decryption failed (wrong key or corrupt data)") from e


def compressed(chunks: Iterable[bytes], on_plain: Callable[[bytes], None]) -> Iterator[bytes]:
    """gzip of `chunks`, each plain chunk shown to `on_plain` first (for its digest)."""
    comp = GzipWriter()
    try:
        for chunk in chunks:
            on_plain(chunk)
            out = comp.compress(chunk)
            if out:
                yield out
    finally:
        _close(chunks)
    yield comp.flush()


_INFLATE_STEP = 1 << 20  # compressed bytes per inflate call: keeps its output cache-sized


def decompressed(chunks: Iterable[bytes], gunzip: GunzipStage) -> Iterator[bytes]:
    """The plain stream of compressed `chunks` (gunzip.close() is the caller's, at the end)."""
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            for i in range(0, len(view), _INFLATE_STEP):
                out = gunzip.feed(view[i : i + _INFLATE_STEP])
                if out:
                    yield out
    finally:
        _close(chunks)


def _close(stage: object) -> None:
    """Stop an upstream stage now (its worker thread with it), not whenever it is collected."""
    close = getattr(stage, "close", None)
    if close:
        close()


def threaded(source: Iterable[bytes]) -> Iterator[bytes]:
    """What `source` yields, produced ahead in a worker thread of its own.

    Stacking these gives one thread per stage (e.g. read+decrypt, inflate, write), which
    is what lets a two-core machine overlap them. An error in the worker is raised here;
    closing this generator (or an error downstream) stops the worker and joins it."""
    q: queue.Queue[Any] = queue.Queue(maxsize=_DEPTH)
    stop = threading.Event()
    failure: list[BaseException] = []

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for chunk in source:
                if not put(chunk):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consuming thread
            failure.append(e)
        put(_DONE)

    worker = threading.Thread(target=work, name="amilab-stage", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                break
            yield item
    finally:
        stop.set()
        worker.join()
        _close(source)
    if failure:
        raise failure[0]


def pipe(source: Iterable[bytes], sink: Callable[[bytes], None]) -> None:
    """Runs `source` in a worker thread and feeds what it yields to `sink` in this one;
    an error on either side stops both and is raised here."""
    stage = threaded(source)
    try:
        for item in stage:
            sink(item)
    finally:
        stage.close()
