// entropy_rans.h: the decoder of the rANS streams the block stream stores (docs/format.md,
// "Block stream"): htscodecs' rANS Nx16 format, order 0, 32 interleaved states.
#pragma once
#include <cstddef>
#include <cstdint>

namespace redml {

// One rANS stream of a block's byte plane and where its n bytes go.
struct RansPlane {
    const uint8_t *src;  // nullptr: a constant plane, n times `fill`
    size_t len;
    uint8_t *dst;
    size_t n;
    uint8_t fill;
};
const int kRansMaxPlanes = 4;  // a block of 4-byte elements has 4 byte planes

// Decodes those of the count <= kRansMaxPlanes streams that are the order-0, 32-state form
// with their size (what the encoder writes for planes over 1000 bytes), together (their
// dependency chains interleaved); returns the mask of the streams decoded (bit j: plane
// j), the caller hands the others to htscodecs. Throws redml::Error on a corrupt stream.
unsigned rans_decode_o0x32(const RansPlane *planes, int count);

// A block of n elements of elem bytes: its elem byte planes (constant or rANS streams of n
// bytes each) and where its elements go.
struct RansBlock {
    RansPlane planes[kRansMaxPlanes];
    size_t n;
    uint8_t *dst;
};
const int kRansMaxBlocks = 2;

// Decodes the count <= kRansMaxBlocks blocks of elem (1, 2 or 4) byte planes straight into
// their elements: the byte unshuffle done in the decoder's registers, the blocks' streams
// decoded in turn (independent chains). Returns false, having written nothing, where the
// CPU lacks AVX-512 or a stream is not the order-0, 32-state form (the caller decodes the
// planes one by one and unshuffles: the same bytes). Throws redml::Error on a corrupt stream.
bool rans_decode_elements(const RansBlock *blocks, int count, int elem);

// Encodes src[0, n), n > 1000 bytes (planes of that size are given the 32-state form), as
// htscodecs' rans_compress_to_4x16 with RANS_ORDER_X32 does, byte for byte: the order-0
// 32-state stream, or the stored form where that is not smaller, into dst (room for cap
// bytes; rans_compress_bound_4x16(n, RANS_ORDER_X32) always suffice). Returns its size, 0
// where it does not fit.
size_t rans_encode_o0x32(const uint8_t *src, size_t n, uint8_t *dst, size_t cap);

// Which build of the decoding and encoding loops runs (tests: every build decodes, and
// encodes, to the same bytes): 0 the CPU's best, 1 portable, 2 AVX2, 3 AVX-512 (a build
// the CPU lacks falls back).
void rans_force_simd(int level);

}  // namespace redml
