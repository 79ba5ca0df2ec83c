// codec.h: what the encoder (codec.cpp) and the decoder (decode.cpp, decode_lanes*.cpp) share:
// the chunk's per-type words, the tiles' predictions and coders (quantize.h's per-pixel rules
// with their per-tile constants), the row bands, the SIMD build that runs and the calling
// thread's work buffers. Internal to the core.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "background.h"
#include "pixels.h"
#include "quantize.h"
#include "scratch.h"
#include "threads.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the chunk format is little-endian");

namespace redml {

const uint32_t kRowsPerBand = 64;

const size_t kLanes = REDML_LANES;  // pixels coded together (a tile row is cut into such spans)
static_assert(REDML_LANES % REDML_RECON_LANES == 0, "a span holds whole blocks of the conditional lanes");

// The build of the codec's SIMD loops (encoder and decoder) that runs: pixels.h's
// simd_level (the best the CPU has, or the one a test forces).
#ifdef REDML_AVX512_DISPATCH
inline bool use_avx512() { return simd_level() == 3; }
#endif
#ifdef REDML_AVX2_DISPATCH
inline bool use_avx2() { return simd_level() >= 2; }
#endif

// Per-type storage: exact values and background codes are unsigned integers of the
// pixel's width (16 or 32 bits).
template <class T>
struct Storage {
    using Word = typename std::conditional<sizeof(T) == 2, uint16_t, uint32_t>::type;
    static constexpr bool is_float = std::is_floating_point<T>::value;
    static constexpr uint64_t sym_max = sizeof(T) == 2 ? 0xFFFFu : 0xFFFFFFFFu;

    static int64_t unzigzag(Word w) {
        if constexpr (sizeof(T) == 2) return redml_unzigzag16(w);
        else return redml_unzigzag32(w);
    }
    // Exact pixels: residual against the tile prediction, modulo 2^bits (always
    // invertible), or the raw bits of a float.
    static Word exact_word(T x, int64_t pred) {
        if constexpr (is_float) {
            uint32_t u;
            std::memcpy(&u, &x, 4);
            return u;
        } else {
            Word r = (Word)((Word)x - (Word)pred);
            if constexpr (sizeof(T) == 2) return redml_zigzag16((int16_t)r);
            else return redml_zigzag32((int32_t)r);
        }
    }
    static T from_exact_word(Word w, int64_t pred) {
        if constexpr (is_float) {
            T x;
            std::memcpy(&x, &w, 4);
            return x;
        } else {
            return (T)(Word)((Word)unzigzag(w) + (Word)pred);
        }
    }
    static int64_t lo() { return is_float ? 0 : (int64_t)std::numeric_limits<T>::lowest(); }
    static int64_t hi() { return is_float ? 0 : (int64_t)std::numeric_limits<T>::max(); }
};

// Integer prediction per tile (llround of the stored mean, clamped to the dtype),
// identical in encoder and decoder. Float frames do not use it (their means may be any
// finite float32, beyond the range of llround): 0.
template <class T>
int64_t tile_prediction(float mean) {
    if constexpr (std::is_floating_point<T>::value) return 0;
    else return std::min(std::max((int64_t)llround((double)mean), Storage<T>::lo()), Storage<T>::hi());
}

// Dither, code offset and phase of a background pixel (quantize.h), with the per-tile
// constants computed once per tile span.
template <class T>
struct TileCoder {
    double step, inv_step, mean;
    int64_t s_int;
    redml_offset_tile off;
    TileCoder(double step_, double mean_, int64_t pred)
        : step(step_), inv_step(1.0 / step_), mean(mean_), s_int(std::is_floating_point<T>::value ? 0 : (int64_t)step_) {
        if constexpr (!std::is_floating_point<T>::value) off = redml_offset_setup(pred, s_int);
    }
    struct Pixel {
        int64_t u_int = 0;
        double u_float = 0;
        int64_t base = 0;
        unsigned phase = 0;
    };
    Pixel at(uint32_t seed, size_t i) const {
        Pixel px;
        if constexpr (std::is_floating_point<T>::value) {
            if (step > 0) {
                px.u_float = redml_dither_float(seed, i, step);
                px.base = redml_offset_float(mean, px.u_float, step, &px.phase);
            }
        } else {
            px.u_int = s_int > 1 ? redml_dither_int(seed, i, s_int) : 0;
            px.base = redml_offset_int(&off, px.u_int, s_int, &px.phase);
        }
        return px;
    }
    // at() for the n pixels from i0 on of an integer tile with step > 1, one pass without
    // branches (vectorized: the pixel indices of a frame are below 2^27, 32-bit lanes). I: the
    // lane integer of u and base (int32_t where they fit: 16-bit pixels, small steps).
    template <class I>
    void int_lanes(uint32_t seed, uint32_t i0, size_t n, I *__restrict u, I *__restrict base,
                   uint8_t *__restrict phase) const {
        for (size_t j = 0; j < n; j++) {
            unsigned ph;
            const int64_t uj = redml_dither_int(seed, i0 + (uint32_t)j, s_int);
            u[j] = (I)uj;
            base[j] = (I)redml_offset_int(&off, uj, s_int, &ph);
            phase[j] = (uint8_t)ph;
        }
    }
};

// The tiles' integer predictions and coders (three divisions each: built once per frame, not
// per tile row), a band of tiles at a time (the encoder; the decoder takes them all at once):
// those of tiles [preds.size(), t1) appended, and coders up to t1 once some tile needs one
// (none where no pixel needs one: sparse mode; integer frames whose tiles are all lossless).
template <class T>
void extend_tile_coding(const BackgroundModel &m, size_t t1, bool coded, std::vector<int64_t> &preds,
                        std::vector<TileCoder<T>> &coders) {
    const size_t t0 = preds.size();
    for (size_t t = t0; t < t1; t++) preds.push_back(tile_prediction<T>(m.mean[t]));
    const bool needed = coded && (std::is_floating_point<T>::value ||
                                  std::any_of(m.step.begin() + t0, m.step.begin() + t1, [](float st) { return st != 1.0f; }));
    if (!needed) return;
    coders.reserve(m.step.size());
    for (size_t t = coders.size(); t < t1; t++) coders.emplace_back(m.step[t], m.mean[t], preds[t]);
}

// Whether every tile the rows [y0, y1) touch is a lossless integer tile (step 1): if not, the
// band's codes carry phases.
template <class T>
bool band_is_step1(const BackgroundModel &m, uint32_t y0, uint32_t y1) {
    if (std::is_floating_point<T>::value) return false;
    const TileGrid &g = m.grid;
    for (size_t t = (size_t)(y0 / g.tile) * g.cols; t < (size_t)((y1 - 1) / g.tile + 1) * g.cols; t++)
        if (m.step[t] != 1.0f) return false;
    return true;
}

template <class Fn>
void for_bands(uint32_t height, int nthreads, Fn fn) {
    for_row_bands(height, kRowsPerBand, nthreads, fn);
}

// Integer type of step-1 codes: 16-bit pixels' codes, predictions and residuals all fit
// 32-bit arithmetic (which vectorizes).
template <class T>
using Step1Int = typename std::conditional<sizeof(T) == 2, int32_t, int64_t>::type;

// The tile predictions spread over pixel row y (pred[x] = preds of x's tile).
template <class P>
void prediction_row(const std::vector<int64_t> &preds, const TileGrid &g, uint32_t y, P *pred) {
    const int64_t *p = preds.data() + (size_t)(y / g.tile) * g.cols;
    for (uint32_t x = 0; x < g.width; x++) pred[x] = (P)p[x / g.tile];
}

// Work buffers of one encode, kept by the calling thread across frames: no allocation,
// zeroing or page faults per frame once they have grown to the frame's size. Released
// after a frame above kKeepScratchBytes, so a one-off huge frame does not pin its memory.
struct EncodeScratch {
    std::vector<uint8_t> usable, exact, tags, background;
    std::vector<uint32_t> words;  // band outputs, then the streams (as Words)
    size_t held() const { return held_bytes(usable, exact, tags, background, words); }
};

// The calling thread's buffers (one set for every pixel type, encoder and decoder).
inline EncodeScratch &work_scratch() {
    thread_local EncodeScratch sc;
    return sc;
}

}  // namespace redml
