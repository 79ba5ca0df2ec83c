// entropy.cpp: shuffle filters and the block stream (docs/format.md, "Block stream").
#include "entropy.h"
#include "entropy_rans.h"

#include <htscodecs/rANS_static4x16.h>
#include <lz4.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "error.h"
#include "scratch.h"
#include "pixels.h"
#include "threads.h"

namespace redml {

namespace {

inline void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
inline uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

// Transposes an 8x8 bit matrix held in a 64-bit word (row r = byte r, column c = bit c).
inline uint64_t transpose8x8(uint64_t x) {
    uint64_t t;
    t = (x ^ (x >> 7)) & 0x00AA00AA00AA00AAULL;
    x = x ^ t ^ (t << 7);
    t = (x ^ (x >> 14)) & 0x0000CCCC0000CCCCULL;
    x = x ^ t ^ (t << 14);
    t = (x ^ (x >> 28)) & 0x00000000F0F0F0F0ULL;
    x = x ^ t ^ (t << 28);
    return x;
}

const uint32_t kRawFlag = 0x80000000u;

struct ZstdCtx {
    ZSTD_CCtx *c = nullptr;
    ZSTD_DCtx *d = nullptr;
    ~ZstdCtx() {
        ZSTD_freeCCtx(c);
        ZSTD_freeDCtx(d);
    }
};
thread_local ZstdCtx tls_zstd;

size_t block_bytes(const StreamSpec &spec) { return (size_t)spec.block_elems * (size_t)spec.elem; }

void shuffle(const StreamSpec &spec, const uint8_t *src, uint8_t *dst, size_t n) {
    if (spec.shuffle == REDML_SHUFFLE_BIT) bit_shuffle(src, dst, n, spec.elem);
    else if (spec.shuffle == REDML_SHUFFLE_BYTE) byte_shuffle(src, dst, n, spec.elem);
    else std::memcpy(dst, src, n);
}

void unshuffle(const StreamSpec &spec, const uint8_t *src, uint8_t *dst, size_t n) {
    if (spec.shuffle == REDML_SHUFFLE_BIT) bit_unshuffle(src, dst, n, spec.elem);
    else if (spec.shuffle == REDML_SHUFFLE_BYTE) byte_unshuffle(src, dst, n, spec.elem);
    else std::memcpy(dst, src, n);
}

// rANS order 0 with the 32-way interleaved layout (fast SIMD paths in htscodecs).
const int kRansOrder = RANS_ORDER_X32;

// rANS codes each byte plane of a shuffled block as its own stream (own frequency
// table); the last plane also carries the bytes that do not form a whole element.
size_t rans_planes(const StreamSpec &spec, size_t n) {
    size_t planes = spec.shuffle == REDML_SHUFFLE_BYTE ? (size_t)spec.elem : 1;
    return n / (size_t)spec.elem == 0 ? 1 : planes;
}
size_t plane_begin(size_t b, size_t planes, size_t n) { return planes == 1 ? 0 : b * (n / planes); }
size_t plane_end(size_t b, size_t planes, size_t n) { return b + 1 == planes ? n : (b + 1) * (n / planes); }

size_t rans_bound(const StreamSpec &spec, size_t n) {
    size_t planes = rans_planes(spec, n), total = 0;
    for (size_t b = 0; b < planes; b++)
        total += 4 + rans_compress_bound_4x16((unsigned)(plane_end(b, planes, n) - plane_begin(b, planes, n)), kRansOrder);
    return total;
}

// All n bytes equal: each byte equals its successor (memcmp is vectorized).
bool is_constant(const uint8_t *p, size_t n) { return n > 0 && std::memcmp(p, p + 1, n - 1) == 0; }

// A plane is stored as u32 length + rANS stream, or, when all its bytes are equal (the
// high bytes of small codes), as length 1 + that byte: a rANS stream is never 1 byte
// long, and an X32 stream would spend 128 bytes on state flushes alone. Planes over 1000
// bytes get the 32-state form (htscodecs' rule), written by our coder (the library's bytes).
size_t rans_compress_block(const StreamSpec &spec, const uint8_t *src, size_t n, uint8_t *dst, size_t cap) {
    size_t planes = rans_planes(spec, n), pos = 0;
    for (size_t b = 0; b < planes; b++) {
        size_t b0 = plane_begin(b, planes, n), len = plane_end(b, planes, n) - b0;
        if (pos + 5 > cap) return 0;
        if (is_constant(src + b0, len)) {
            put_u32(dst + pos, 1);
            dst[pos + 4] = src[b0];
            pos += 5;
            continue;
        }
        unsigned out_len = (unsigned)(cap - pos - 4);
        if (len > 1000) out_len = (unsigned)rans_encode_o0x32(src + b0, len, dst + pos + 4, cap - pos - 4);
        else if (!rans_compress_to_4x16((unsigned char *)src + b0, (unsigned)len, dst + pos + 4, &out_len, kRansOrder))
            return 0;
        if (out_len == 0) return 0;
        put_u32(dst + pos, out_len);
        pos += 4 + out_len;
    }
    return pos < n ? pos : 0;
}

// The byte planes of a rANS block of raw bytes stored in src[0, n), each checked against
// the block: its stream, or its constant byte (src nullptr), and its place in dst.
size_t read_planes(const StreamSpec &spec, const uint8_t *src, size_t n, uint8_t *dst, size_t raw, RansPlane *out) {
    size_t planes = rans_planes(spec, raw), pos = 0;
    check(planes <= (size_t)kRansMaxPlanes, REDML_E_CORRUPT, "too many rANS planes");
    for (size_t b = 0; b < planes; b++) {
        size_t b0 = plane_begin(b, planes, raw), len = plane_end(b, planes, raw) - b0;
        check(pos + 4 <= n, REDML_E_CORRUPT, "rANS block truncated");
        size_t clen = get_u32(src + pos);
        check(clen <= n - pos - 4, REDML_E_CORRUPT, "rANS plane length exceeds its block");
        if (clen == 1) out[b] = RansPlane{nullptr, 0, dst + b0, len, src[pos + 4]};  // constant plane
        else out[b] = RansPlane{src + pos + 4, clen, dst + b0, len, 0};
        pos += 4 + clen;
    }
    check(pos == n, REDML_E_CORRUPT, "rANS block has trailing bytes");
    return planes;
}

// The planes of a block: the constant ones filled, the rANS streams decoded together
// (rans_decode_o0x32), the library taking any other form.
void rans_decompress_block(const StreamSpec &spec, const uint8_t *src, size_t n, uint8_t *dst, size_t raw) {
    RansPlane planes[kRansMaxPlanes], coded[kRansMaxPlanes];
    const size_t count = read_planes(spec, src, n, dst, raw, planes);
    int ncoded = 0;
    for (size_t b = 0; b < count; b++) {
        if (planes[b].src) coded[ncoded++] = planes[b];
        else std::memset(planes[b].dst, planes[b].fill, planes[b].n);
    }
    const unsigned done = rans_decode_o0x32(coded, ncoded);
    for (int j = 0; j < ncoded; j++) {
        if (done >> j & 1) continue;
        const RansPlane &pl = coded[j];
        unsigned out_len = (unsigned)pl.n;
        unsigned char *r = rans_uncompress_to_4x16((unsigned char *)pl.src, (unsigned)pl.len, pl.dst, &out_len);
        check(r != nullptr && out_len == pl.n, REDML_E_CORRUPT, "rANS plane does not decode to its declared size");
    }
}

// A stored block of a stream: its bytes, and the raw bytes it decodes to.
struct StoredBlock {
    const uint8_t *src;
    size_t stored;
    uint8_t *dst;
    size_t raw;
};

// Compressed byte-shuffled rANS blocks of whole elements decoded straight into their
// elements where the CPU and the streams allow (rans_decode_elements); false otherwise.
bool rans_blocks_to_elements(const StreamSpec &spec, const StoredBlock *blk, int count) {
    if (spec.codec != REDML_CODEC_RANS || spec.shuffle != REDML_SHUFFLE_BYTE) return false;
    RansBlock rb[kRansMaxBlocks];
    for (int b = 0; b < count; b++) {
        if (blk[b].raw % (size_t)spec.elem != 0 || blk[b].raw < (size_t)spec.elem) return false;
        read_planes(spec, blk[b].src, blk[b].stored, blk[b].dst, blk[b].raw, rb[b].planes);  // (their dst unused)
        rb[b].n = blk[b].raw / (size_t)spec.elem;
        rb[b].dst = blk[b].dst;
    }
    return rans_decode_elements(rb, count, spec.elem);
}

// Compresses one shuffled block into dst (capacity cap); returns 0 if it does not shrink.
size_t compress_block(const StreamSpec &spec, const uint8_t *src, size_t n, uint8_t *dst, size_t cap) {
    if (spec.codec == REDML_CODEC_RANS) return rans_compress_block(spec, src, n, dst, cap);
    if (spec.codec == REDML_CODEC_LZ4) {
        int r = LZ4_compress_default((const char *)src, (char *)dst, (int)n, (int)cap);
        return r > 0 && (size_t)r < n ? (size_t)r : 0;
    }
    if (!tls_zstd.c) tls_zstd.c = ZSTD_createCCtx();
    check(tls_zstd.c != nullptr, REDML_E_NOMEM, "cannot create a zstd context");
    size_t r = ZSTD_compressCCtx(tls_zstd.c, dst, cap, src, n, spec.level);
    return !ZSTD_isError(r) && r < n ? r : 0;
}

void decompress_block(const StreamSpec &spec, const uint8_t *src, size_t n, uint8_t *dst, size_t raw) {
    if (spec.codec == REDML_CODEC_RANS) return rans_decompress_block(spec, src, n, dst, raw);
    if (spec.codec == REDML_CODEC_LZ4) {
        check(n <= (size_t)INT32_MAX, REDML_E_CORRUPT, "lz4 block too large");
        int r = LZ4_decompress_safe((const char *)src, (char *)dst, (int)n, (int)raw);
        check(r >= 0 && (size_t)r == raw, REDML_E_CORRUPT, "lz4 block does not decode to its declared size");
        return;
    }
    if (!tls_zstd.d) tls_zstd.d = ZSTD_createDCtx();
    check(tls_zstd.d != nullptr, REDML_E_NOMEM, "cannot create a zstd context");
    size_t r = ZSTD_decompressDCtx(tls_zstd.d, dst, raw, src, n);
    check(!ZSTD_isError(r) && r == raw, REDML_E_CORRUPT, "zstd block does not decode to its declared size");
}

// Per-thread block buffer, reused across blocks and frames (a fresh vector per block was
// an mmap, zeroing and page faults for every block of every frame).
struct BlockScratch {
    std::vector<uint8_t> shuffled;
    size_t held() const { return held_bytes(shuffled); }
};
BlockScratch &block_scratch() {
    thread_local BlockScratch sc;
    return sc;
}

size_t count_blocks(size_t raw_size, const StreamSpec &spec) {
    size_t bb = block_bytes(spec);
    return (raw_size + bb - 1) / bb;
}

// Room for one stored block of n bytes: its compressed bytes, or its raw bytes if they do
// not shrink.
size_t block_slot(const StreamSpec &spec, size_t n) {
    size_t cap = spec.codec == REDML_CODEC_RANS  ? rans_bound(spec, n)
                 : spec.codec == REDML_CODEC_LZ4 ? (size_t)LZ4_compressBound((int)n)
                                                 : ZSTD_compressBound(n);
    return std::max(cap, n);
}

}  // namespace

// The byte (un)shuffle of E-byte elements with E known at compile time: loops the
// compiler turns into vector shuffles (AVX2 where the CPU has it).
template <int E, bool Un>
REDML_ALWAYS_INLINE void byte_shuffle_body(const uint8_t *__restrict src, uint8_t *__restrict dst, size_t n) {
    for (size_t i = 0; i < n; i++)
        for (int b = 0; b < E; b++) {
            if (Un) dst[i * E + b] = src[(size_t)b * n + i];
            else dst[(size_t)b * n + i] = src[i * E + b];
        }
}
REDML_SIMD_CLONES((template <int E, bool Un>), void, byte_shuffle_fixed, (<E, Un>),
                  (const uint8_t *src, uint8_t *dst, size_t n), (src, dst, n), byte_shuffle_body<E, Un>(src, dst, n))

// Byte planes of n = nbytes / elem elements (Un: back to elements); the tail of fewer than
// elem bytes is copied as it is.
template <bool Un>
void byte_planes(const uint8_t *src, uint8_t *dst, size_t nbytes, int elem) {
    size_t n = nbytes / (size_t)elem;
    if (elem == 2) {
        byte_shuffle_fixed<2, Un>(src, dst, n);
    } else if (elem == 4) {
        byte_shuffle_fixed<4, Un>(src, dst, n);
    } else {
        for (int b = 0; b < elem; b++) {
            for (size_t i = 0; i < n; i++) {
                size_t element = i * (size_t)elem + b, plane = (size_t)b * n + i;
                if (Un) dst[element] = src[plane];
                else dst[plane] = src[element];
            }
        }
    }
    std::memcpy(dst + n * (size_t)elem, src + n * (size_t)elem, nbytes - n * (size_t)elem);
}

void byte_shuffle(const uint8_t *src, uint8_t *dst, size_t nbytes, int elem) {
    byte_planes<false>(src, dst, nbytes, elem);
}

void byte_unshuffle(const uint8_t *src, uint8_t *dst, size_t nbytes, int elem) {
    byte_planes<true>(src, dst, nbytes, elem);
}

// Bit plane p = 8*b + j holds bit j of byte b of every element, element i at bit (i % 8)
// of plane byte i / 8.
void bit_shuffle(const uint8_t *src, uint8_t *dst, size_t nbytes, int elem) {
    size_t n = nbytes / (size_t)elem;
    size_t groups = n / 8, plane_len = groups;
    for (int b = 0; b < elem; b++) {
        for (size_t g = 0; g < groups; g++) {
            const uint8_t *s = src + g * 8 * (size_t)elem + b;
            uint64_t x = 0;
            for (int i = 0; i < 8; i++) x |= (uint64_t)s[(size_t)i * elem] << (8 * i);
            x = transpose8x8(x);
            for (int j = 0; j < 8; j++) dst[(size_t)(8 * b + j) * plane_len + g] = (uint8_t)(x >> (8 * j));
        }
    }
    size_t done = groups * 8 * (size_t)elem;
    std::memcpy(dst + done, src + done, nbytes - done);
}

void bit_unshuffle(const uint8_t *src, uint8_t *dst, size_t nbytes, int elem) {
    size_t n = nbytes / (size_t)elem;
    size_t groups = n / 8, plane_len = groups;
    for (int b = 0; b < elem; b++) {
        for (size_t g = 0; g < groups; g++) {
            uint64_t x = 0;
            for (int j = 0; j < 8; j++) x |= (uint64_t)src[(size_t)(8 * b + j) * plane_len + g] << (8 * j);
            x = transpose8x8(x);
            uint8_t *d = dst + g * 8 * (size_t)elem + b;
            for (int i = 0; i < 8; i++) d[(size_t)i * elem] = (uint8_t)(x >> (8 * i));
        }
    }
    size_t done = groups * 8 * (size_t)elem;
    std::memcpy(dst + done, src + done, nbytes - done);
}

size_t stream_bound(size_t raw_size, const StreamSpec &spec) {
    size_t nblocks = count_blocks(raw_size, spec), bb = block_bytes(spec);
    if (nblocks == 0) return 4;
    // slots of whole blocks, then the last block's own
    return 4 + 4 * nblocks + (nblocks - 1) * block_slot(spec, bb) + block_slot(spec, raw_size - (nblocks - 1) * bb);
}

size_t encode_stream(const uint8_t *raw, size_t raw_size, const StreamSpec &spec, int nthreads, uint8_t *dst) {
    ReleaseIfLarge<BlockScratch> release{block_scratch(), kKeepBlockBytes};  // (huge block_elems)
    size_t nblocks = count_blocks(raw_size, spec);
    check(nblocks < kRawFlag, REDML_E_ARG, "stream too large");
    const size_t bb = block_bytes(spec), slot = block_slot(spec, bb);
    uint8_t *data = dst + 4 + 4 * nblocks;
    std::vector<size_t> stored(nblocks);
    // Block k is stored in its own slot of dst (blocks run in parallel), then moved down.
    parallel_for(nblocks, nthreads, [&](size_t k) {
        size_t off = k * bb, n = std::min(bb, raw_size - off);
        const uint8_t *src = raw + off;
        if (spec.shuffle != REDML_SHUFFLE_NONE) {
            uint8_t *shuffled = scratch(block_scratch().shuffled, n);
            shuffle(spec, src, shuffled, n);
            src = shuffled;
        }
        uint8_t *d = data + k * slot;
        size_t c = compress_block(spec, src, n, d, block_slot(spec, n));
        if (c == 0) {  // incompressible: the unshuffled bytes
            std::memcpy(d, raw + off, n);
            c = n;
        }
        stored[k] = c;
    });
    put_u32(dst, (uint32_t)nblocks);
    size_t pos = 0;
    for (size_t k = 0; k < nblocks; k++) {
        size_t n = std::min(bb, raw_size - k * bb);
        bool is_raw = stored[k] == n;  // compressed blocks are always shorter than n
        put_u32(dst + 4 + 4 * k, (uint32_t)stored[k] | (is_raw ? kRawFlag : 0u));
        std::memmove(data + pos, data + k * slot, stored[k]);  // never forwards: pos <= k * slot
        pos += stored[k];
    }
    return 4 + 4 * nblocks + pos;
}

void check_stream(const uint8_t *stored, size_t stored_size, size_t raw_size, const StreamSpec &spec) {
    size_t nblocks = count_blocks(raw_size, spec);
    check(stored_size >= 4, REDML_E_CORRUPT, "block stream truncated");
    check(get_u32(stored) == nblocks, REDML_E_CORRUPT, "block count does not match the declared size");
    check(stored_size >= 4 + 4 * nblocks, REDML_E_CORRUPT, "block table truncated");
    size_t bb = block_bytes(spec), total = 4 + 4 * nblocks;
    for (size_t k = 0; k < nblocks; k++) {
        uint32_t len = get_u32(stored + 4 + 4 * k);
        size_t n = std::min(bb, raw_size - k * bb);
        size_t clen = len & ~kRawFlag;
        if (len & kRawFlag) check(clen == n, REDML_E_CORRUPT, "raw block length mismatch");
        else check(clen > 0 && clen < n, REDML_E_CORRUPT, "compressed block length invalid");
        check(clen <= stored_size - total, REDML_E_CORRUPT, "block stream truncated");
        // What a block can decode to is checked against its bytes before the caller
        // allocates: a zstd frame states its content size; LZ4 expands at most 255-fold.
        // (rANS stores a constant byte plane in 5 bytes, whatever its length: a chunk that
        // large is valid, and memory stays bounded by the declared frame.)
        if (!(len & kRawFlag) && spec.codec == REDML_CODEC_ZSTD)
            check(ZSTD_getFrameContentSize(stored + total, clen) == n, REDML_E_CORRUPT,
                  "zstd block does not declare its raw size");
        if (!(len & kRawFlag) && spec.codec == REDML_CODEC_LZ4)
            check(n / 255 <= clen, REDML_E_CORRUPT, "lz4 block too short for its raw size");
        total += clen;
    }
    check(total == stored_size, REDML_E_CORRUPT, "block stream has trailing bytes");
}

void decode_stream(const uint8_t *stored, size_t stored_size, uint8_t *raw, size_t raw_size,
                   const StreamSpec &spec, int nthreads) {
    ReleaseIfLarge<BlockScratch> release{block_scratch(), kKeepBlockBytes};  // (huge block_elems)
    check_stream(stored, stored_size, raw_size, spec);
    size_t nblocks = count_blocks(raw_size, spec), bb = block_bytes(spec);
    std::vector<size_t> offsets(nblocks + 1);
    offsets[0] = 4 + 4 * nblocks;
    for (size_t k = 0; k < nblocks; k++) offsets[k + 1] = offsets[k] + (get_u32(stored + 4 + 4 * k) & ~kRawFlag);
    auto block = [&](size_t k) {
        const uint32_t len = get_u32(stored + 4 + 4 * k);
        return StoredBlock{stored + offsets[k], len & ~kRawFlag, raw + k * bb, std::min(bb, raw_size - k * bb)};
    };
    auto is_raw = [&](size_t k) { return (get_u32(stored + 4 + 4 * k) & kRawFlag) != 0; };
    // rANS blocks go two to a task where the threads have enough of them: the two blocks'
    // streams are independent chains the decoder interleaves.
    const size_t per_task = spec.codec == REDML_CODEC_RANS && nblocks >= 2 * (size_t)std::max(1, nthreads) ? 2 : 1;
    parallel_for((nblocks + per_task - 1) / per_task, nthreads, [&](size_t t) {
        const size_t k0 = t * per_task, k1 = std::min(nblocks, k0 + per_task);
        if (k1 - k0 == 2 && !is_raw(k0) && !is_raw(k0 + 1)) {
            const StoredBlock pair[2] = {block(k0), block(k0 + 1)};
            if (rans_blocks_to_elements(spec, pair, 2)) return;
        }
        for (size_t k = k0; k < k1; k++) {
            const StoredBlock b = block(k);
            if (is_raw(k)) {
                std::memcpy(b.dst, b.src, b.raw);
                continue;
            }
            if (rans_blocks_to_elements(spec, &b, 1)) continue;
            uint8_t *shuffled = scratch(block_scratch().shuffled, b.raw);
            decompress_block(spec, b.src, b.stored, shuffled, b.raw);
            unshuffle(spec, shuffled, b.dst, b.raw);
        }
    });
}

}  // namespace redml
