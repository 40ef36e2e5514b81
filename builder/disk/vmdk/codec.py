"""Grain compression: zlib streams (RFC 1950) as VMDK's compressAlgorithm 1 requires.

libdeflate (the `deflate` package) compresses about 3x faster than zlib at the same level
with slightly smaller output, inflates about 2.5x faster, and releases the GIL, so grains
can be compressed on all cores by threads. zlib is the fallback when it is missing.
"""

from __future__ import annotations

import zlib

try:
    import deflate as _libdeflate
except ImportError:  # pragma: no cover - the package is a declared dependency
    _libdeflate = None

# Level 6 is what qemu-img uses (zlib's default); libdeflate's level 6 output is no larger.
LEVEL = 6


class InflateError(ValueError):
    """A compressed grain is not a valid zlib stream or inflates past its limit."""


def compress(data: bytes | memoryview, level: int = LEVEL) -> bytes:
    if _libdeflate is not None:
        return _libdeflate.zlib_compress(data, level)
    return zlib.compress(data, level)


def inflate(data: bytes, limit: int) -> bytes:
    """Inflate one zlib stream to at most `limit` bytes; anything beyond is an error, so a
    hostile grain can never make more than `limit` bytes of memory."""
    if _libdeflate is not None:
        try:
            return _libdeflate.zlib_decompress(data, limit)
        except _libdeflate.DeflateError as e:
            # libdeflate cannot tell "too long" from "corrupt": ask zlib, bounded, which.
            raise InflateError(_explain(data, limit) or str(e)) from None
    return _zlib_inflate(data, limit)


def _zlib_inflate(data: bytes, limit: int) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit)
    except zlib.error as e:
        raise InflateError(f"not a valid zlib stream ({e})") from None
    if d.unconsumed_tail:
        raise InflateError(f"inflates past {limit} bytes")
    if not d.eof:
        raise InflateError("zlib stream is truncated")
    return out


def _explain(data: bytes, limit: int) -> str | None:
    try:
        _zlib_inflate(data, limit)
    except InflateError as e:
        return str(e)
    return None
