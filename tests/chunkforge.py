"""Taking chunks apart and forging new ones with valid checksums (docs/format.md), for the
hostile-input tests: a forged chunk passes every checksum, so only the decoder's own
checks stand between it and the host."""
from __future__ import annotations

import ctypes
import ctypes.util
import struct
from dataclasses import dataclass, field

import numpy as np

import redml_reduce as rr

HEADER = struct.Struct("<4sBBBBBBHIIfffIIQII")  # 56 bytes
ENTRY = struct.Struct("<HBBBBHQQQ")  # 32 bytes
FIELDS = ("magic", "version", "dtype", "mode", "codec", "recon", "nsec", "tile", "height", "width", "q", "gain",
          "mu_min", "seed", "block_elems", "n_exact", "header_size", "reserved")
RAW_FLAG = 0x80000000
MODEL, MASK, VALUES, CODES = 1, 2, 3, 4  # section types

_xxh = None


def xxh3(data: bytes) -> int:
    global _xxh
    if _xxh is None:
        _xxh = ctypes.CDLL(ctypes.util.find_library("xxhash"))
        _xxh.XXH3_64bits.restype = ctypes.c_uint64
        _xxh.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    return _xxh.XXH3_64bits(bytes(data), len(data))


@dataclass
class Section:
    type: int
    flags: int
    shuffle: int
    elem: int
    raw_size: int
    data: bytes
    reserved8: int = 0
    reserved16: int = 0


@dataclass
class Chunk:
    header: dict
    sections: list = field(default_factory=list)

    @classmethod
    def parse(cls, chunk: bytes) -> "Chunk":
        h = dict(zip(FIELDS, HEADER.unpack_from(chunk, 0)))
        pos = 56 + 32 * h["nsec"] + 8
        secs = []
        for i in range(h["nsec"]):
            t, fl, sh, el, z8, z16, raw, stored, _ = ENTRY.unpack_from(chunk, 56 + 32 * i)
            secs.append(Section(t, fl, sh, el, raw, chunk[pos:pos + stored], z8, z16))
            pos += stored
        return cls(h, secs)

    def build(self, fix_counts: bool = True) -> bytes:
        """Serializes with every checksum recomputed (and nsec/header_size made consistent
        unless fix_counts is False)."""
        h = dict(self.header)
        if fix_counts:
            h["nsec"] = len(self.sections)
            h["header_size"] = 56 + 32 * len(self.sections) + 8
        out = bytearray(HEADER.pack(*(h[k] for k in FIELDS)))
        for s in self.sections:
            out += ENTRY.pack(s.type, s.flags, s.shuffle, s.elem, s.reserved8, s.reserved16, s.raw_size,
                              len(s.data), xxh3(s.data))
        out += struct.pack("<Q", xxh3(out))
        for s in self.sections:
            out += s.data
        return bytes(out)

    def find(self, type_: int) -> Section:
        return next(s for s in self.sections if s.type == type_)


def repair_checksums(chunk: bytes) -> bytes:
    """Recomputes the checksums of a (possibly mutated) chunk as far as its bytes go, as
    the fuzz targets do."""
    c = bytearray(chunk)
    if len(c) < 64 or c[:4] != b"RDML":
        return bytes(chunk)
    nsec = c[9]
    hsize = 56 + 32 * nsec + 8
    if len(c) < hsize:
        return bytes(chunk)
    pos = hsize
    for i in range(nsec):
        e = 56 + 32 * i
        stored = struct.unpack_from("<Q", c, e + 16)[0]
        if stored > len(c) - pos:
            break
        struct.pack_into("<Q", c, e + 24, xxh3(c[pos:pos + stored]))
        pos += stored
    struct.pack_into("<Q", c, hsize - 8, xxh3(c[:hsize - 8]))
    return bytes(c)


def block_stream(raw_size: int, block_bytes: int, block: bytes = b"\0", raw: bool = False) -> bytes:
    """A block stream (docs/format.md) whose every block is `block`: a table that passes
    the size checks but bytes that do not hold what the table declares."""
    nb = -(-raw_size // block_bytes)
    lens = []
    for k in range(nb):
        n = min(block_bytes, raw_size - k * block_bytes)
        lens.append((n | RAW_FLAG) if raw else len(block))
    body = b"".join((b"\0" * (lens[k] & ~RAW_FLAG)) if raw else block for k in range(nb))
    return struct.pack("<I", nb) + struct.pack(f"<{nb}I", *lens) + body


def raw_stream(data: bytes) -> bytes:
    """One raw (uncompressed) block holding `data`."""
    return struct.pack("<II", 1, len(data) | RAW_FLAG) + data


def runs(*lengths: int) -> bytes:
    """LEB128 run lengths of an exact mask."""
    out = bytearray()
    for v in lengths:
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


# ---- chunks that declare more than they hold (hostile-input tests, benchmarks/hostile.py) ----

def hostile_chunks(codec):
    """Small chunks (< 2 kB) that declare a 2^27-pixel frame and sections as large as the
    format allows, backed by block tables whose blocks cannot hold that much."""
    h, w = 1 << 14, 1 << 13
    n = h * w
    base = Chunk.parse(rr.encode(np.zeros((64, 64), np.uint16), "sparse", codec=codec, block_elems=1 << 24))
    base.header.update(height=h, width=w, tile=65535)
    model_ok = raw_stream(struct.pack("<ff", 0.0, 1.0))
    mask_ok = raw_stream(runs(n))
    fake = b"\x28\xb5\x2f\xfd\0" if codec == "zstd" else (b"\0" * 5 if codec == "rans" else b"\0")

    def chunk(model=None, mask=None, values=None, tile=65535, n_exact=0):
        c = Chunk.parse(base.build())
        c.header.update(tile=tile, n_exact=n_exact)
        m = c.find(MODEL)
        m.raw_size, m.data = model or (8, model_ok)
        k = c.find(MASK)
        k.raw_size, k.data = mask or (len(runs(n)), mask_ok)
        v = c.find(VALUES)
        v.raw_size, v.data = values or (0, struct.pack("<I", 0))
        return c.build()

    yield "mask declared 10x the frame", chunk(mask=(10 * n + 10, block_stream(10 * n + 10, 1 << 24, fake)))
    if codec != "rans":  # a rANS plane of 5 bytes may hold a constant plane of any length (valid)
        yield "mask at the frame bound", chunk(mask=(n + 1, block_stream(n + 1, 1 << 24, fake)))
        yield "model of 2^27 tiles", chunk(model=(8 * n, block_stream(8 * n, 4 << 24, fake)), tile=1)
        yield "values of 2^27 words", chunk(values=(2 * n, block_stream(2 * n, 2 << 24, fake)), n_exact=n)
    yield "model raw 2^63", chunk(model=(1 << 63, block_stream(1 << 24, 4 << 24, fake)))
    yield "values raw 2^64-1", chunk(values=(2**64 - 1, block_stream(1 << 24, 2 << 24, fake)), n_exact=n)


def big_valid_chunk(dtype=np.uint32):
    """A valid sparse chunk of 2^14 x 2^13 pixels (constant, one tile) in a few hundred bytes."""
    n = 1 << 27
    c = Chunk.parse(rr.encode(np.zeros((64, 64), dtype), "sparse", block_elems=1 << 24))
    c.header.update(height=1 << 14, width=1 << 13, tile=65535)
    m, k = c.find(MODEL), c.find(MASK)
    m.raw_size, m.data = 8, raw_stream(struct.pack("<ff", 0.0, 1.0))
    k.raw_size, k.data = len(runs(n)), raw_stream(runs(n))
    return c.build()
