// internal.h: what the Python binding uses beyond the public C API (redml.h, redml_spots.h,
// redml_jungfrau.h): the learned spot finder's convolution, the still indexer, the acquisition
// indicators' frame levels, the reflection prediction, the codec's per-pixel hash
// (for reference implementations in tests), the rANS decoder's build selection (tests)
// and the encoder's stage timer (for
// benchmarks/speed.py). Not part of the ABI.
#pragma once
#include "conv.h"      // conv3x3_leaky
#include "entropy_rans.h"  // rans_force_simd (tests: every SIMD build of the rANS decoder)
#include "index.h"     // index_still (the known-cell still indexer)
#include "lattice.h"   // predict_reflections (the codec uses it too: lattice_chunk.h)
#include "lattice_chunk.h"  // lattice_model_from_doubles (the encoder's lattice records)
#include "levels.h"    // frame_levels (redml_reduce/acquire/indicators.py)
#include "quantize.h"  // redml_uniform
#include "spots.h"     // spots_force_simd (tests: every SIMD build of the spot finder)
#include "stages.h"    // stage_times

namespace redml {
// Test hook: the build of the codec decoder's SIMD loops (0 the best the CPU has, 1 portable,
// 2 AVX2, 3 AVX-512, 4 AVX-512 with VBMI2's 16-bit expansion; a build the CPU lacks falls back
// to the next one down).
void codec_force_simd(int level);
}  // namespace redml
