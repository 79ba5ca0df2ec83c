// entropy_rans.h: the decoder of the rANS streams the block stream stores (docs/format.md,
// "Block stream"): htscodecs' rANS Nx16 format, order 0, 32 interleaved states.
#pragma once
#include <cstddef>
#include <cstdint>

namespace redml {

// Decodes the rANS stream src[0, len) into exactly n bytes at dst if it is the order-0,
// 32-state form with its size (what the encoder writes for planes over 1000 bytes);
// returns false, having written nothing, for any other form (the caller hands those to
// htscodecs). Throws redml::Error if the stream is corrupt.
bool rans_decode_o0x32(const uint8_t *src, size_t len, uint8_t *dst, size_t n);

// Which build of the decoding loop runs (tests: every build decodes to the same bytes):
// 0 the CPU's best, 1 portable, 2 AVX2, 3 AVX-512 (a build the CPU lacks falls back).
void rans_force_simd(int level);

}  // namespace redml
