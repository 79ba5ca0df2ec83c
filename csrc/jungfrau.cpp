// jungfrau.cpp: JUNGFRAU raw frames -> photons (redml_jf_convert in redml_jungfrau.h). One threaded
// pass over the raw words, fused with masking, pedestal tracking and module assembly; the
// per-pixel rule is csrc/jungfrau.h (shared with the GPU path).
#include <array>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <limits>
#include <vector>

#ifdef __x86_64__
#include <immintrin.h>
#endif

#include "error.h"
#include "jungfrau.h"
#include "pixels.h"
#include "redml_jungfrau.h"
#include "scratch.h"
#include "threads.h"

namespace redml {
namespace {

const uint32_t kRowsPerTask = 64;
// A task's band of rows never straddles two modules nor holds a chip-border row inside.
static_assert(REDML_JF_CHIP % kRowsPerTask == 0, "bands must tile the chips");
const uint64_t kMaxPixels = 1ull << 27;

struct Frame {
    const uint16_t *raw;
    uint32_t width;
    size_t n;
    const float *pedestal, *gain, *ped0;
    const uint8_t *mask;
    float *track;
    float inv_energy, alpha, threshold;
    const redml_jf_module *modules;
    uint32_t out_width;
    float *kev;
    uint8_t *status;
};

// Output offset of assembled pixel (r, c) of module m.
inline int64_t out_offset(const redml_jf_module &m, int r, int c, uint32_t out_width) {
    return (int64_t)(m.origin_y + r * m.slow_y + c * m.fast_y) * out_width + (m.origin_x + r * m.slow_x + c * m.fast_x);
}

// ---- G0 pixels in vector lanes (the AVX2 and AVX-512 builds; the portable build runs the
// scalar rule) ----
// Both builds compute every lane with the scalar rule's float operations in the same order
// (the division kept: a reciprocal would move some counts across a rounding edge), rounding
// half away from zero as trunc(v) + (|v - trunc(v)| >= 0.5 ? sign(v) : 0), which equals the
// scalar trunc(v +- 0.5) exactly, and store them as T; with kExtras also the keV, the status
// (G0) and the tracked pedestal (redml_jf_track's operations). A lane that is masked, not G0,
// has a non-finite gain, or whose count is non-finite or beyond (lo, hi) is then redone by
// slow(x, x + 1), the scalar rule, over everything the lanes stored (its tracked pedestal was
// stored unchanged).
// They return where the scalar tail starts.

// The row's pointers and constants for the lanes.
struct LaneRow {
    const uint16_t *raw;
    const float *ped0, *gain;
    const uint8_t *mask;
    float *e, *track;  // null where not wanted
    uint8_t *status;
    uint32_t width;
    float inv_energy, alpha, threshold;
};

// Redoes the lanes of group x whose bit in `fine` is clear.
template <class Slow>
REDML_ALWAYS_INLINE void redo_lanes(uint32_t x, uint32_t fine, uint32_t all, Slow &slow) {
    for (uint32_t bad = ~fine & all; bad; bad &= bad - 1) {
        const uint32_t k = (uint32_t)__builtin_ctz(bad);
        slow(x + k, x + k + 1);
    }
}

#ifdef REDML_AVX2_DISPATCH
template <class T, bool kMask, bool kExtras, class Slow>
REDML_TARGET_AVX2 uint32_t g0_groups_avx2(const LaneRow &w, int32_t lo, int32_t hi, T *v, Slow slow) {
    const __m256 inv = _mm256_set1_ps(w.inv_energy), half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    const __m256 sign = _mm256_set1_ps(-0.0f), vlo = _mm256_set1_ps((float)lo), vhi = _mm256_set1_ps((float)hi);
    const __m256 alpha = _mm256_set1_ps(w.alpha), threshold = _mm256_set1_ps(w.threshold);
    const __m256 inf = _mm256_set1_ps(INFINITY);
    const __m256i lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m128i stage_bits = _mm_set1_epi16((short)0xC000), zero = _mm_setzero_si128();
    uint32_t x = 0;
    for (; x + 8 <= w.width; x += 8) {
        const __m128i words = _mm_loadu_si128((const __m128i *)(w.raw + x));
        // G0 lanes: stage bits clear (the words are then the ADC values)
        const __m128i g0 = _mm_cmpeq_epi16(_mm_and_si128(words, stage_bits), zero);
        uint32_t fine = (uint32_t)_mm_movemask_epi8(_mm_packs_epi16(g0, zero));
        if (kMask) fine &= (uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_loadl_epi64((const __m128i *)(w.mask + x)), zero));
        const __m256 adc = _mm256_cvtepi32_ps(_mm256_cvtepu16_epi32(words)), ped = _mm256_loadu_ps(w.ped0 + x);
        const __m256 gain = _mm256_loadu_ps(w.gain + x);
        const __m256 e = _mm256_div_ps(_mm256_sub_ps(adc, ped), gain);
        const __m256 p = _mm256_mul_ps(e, inv);
        const __m256 t = _mm256_round_ps(p, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        const __m256 frac = _mm256_andnot_ps(sign, _mm256_sub_ps(p, t));  // NaN for infinities
        const __m256 away = _mm256_or_ps(one, _mm256_and_ps(p, sign));     // +-1, the sign of p
        const __m256 r = _mm256_add_ps(t, _mm256_and_ps(_mm256_cmp_ps(frac, half, _CMP_GE_OQ), away));
        // lo < r < hi, false for NaN; (float)hi of int32 is 2^31, and no float lies in [hi, 2^31)
        const __m256 inside = _mm256_and_ps(_mm256_cmp_ps(r, vlo, _CMP_GT_OQ), _mm256_cmp_ps(r, vhi, _CMP_LT_OQ));
        const __m256 finite_gain = _mm256_cmp_ps(_mm256_andnot_ps(sign, gain), inf, _CMP_LT_OQ);
        fine &= (uint32_t)_mm256_movemask_ps(_mm256_and_ps(inside, finite_gain));
        const __m256i q = _mm256_cvttps_epi32(r);
        if constexpr (sizeof(T) == 2)  // inside lanes lie within int16: no saturation in the pack
            _mm_storeu_si128((__m128i *)(v + x), _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)));
        else
            _mm256_storeu_si256((__m256i *)(v + x), q);
        if (kExtras) {
            if (w.e) _mm256_storeu_ps(w.e + x, e);
            if (w.status) _mm_storel_epi64((__m128i *)(w.status + x), zero);  // REDML_JF_G0
            if (w.track) {  // fine lanes with |photons| < threshold move; the others keep their pedestal
                const __m256i fine_lanes = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)fine), lane_bits), lane_bits);
                const __m256 dark = _mm256_and_ps(_mm256_castsi256_ps(fine_lanes),
                                                  _mm256_cmp_ps(_mm256_andnot_ps(sign, p), threshold, _CMP_LT_OQ));
                const __m256 moved = _mm256_add_ps(ped, _mm256_mul_ps(_mm256_sub_ps(adc, ped), alpha));
                _mm256_storeu_ps(w.track + x, _mm256_blendv_ps(ped, moved, dark));
            }
        }
        redo_lanes(x, fine, 0xFFu, slow);
    }
    return x;
}
#endif

#ifdef REDML_AVX512_DISPATCH
// (GCC 12's AVX-512 headers start some intrinsics from a self-initialized `__Y = __Y`, which
// -Wmaybe-uninitialized reports at every use: a false alarm, silenced here.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
template <class T, bool kMask, bool kExtras, class Slow>
REDML_TARGET_AVX512 uint32_t g0_groups_avx512(const LaneRow &w, int32_t lo, int32_t hi, T *v, Slow slow) {
    const __m512 inv = _mm512_set1_ps(w.inv_energy), half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
    const __m512 sign = _mm512_set1_ps(-0.0f), vlo = _mm512_set1_ps((float)lo), vhi = _mm512_set1_ps((float)hi);
    const __m512 alpha = _mm512_set1_ps(w.alpha), threshold = _mm512_set1_ps(w.threshold);
    const __m256i stage_bits = _mm256_set1_epi16((short)0xC000);
    uint32_t x = 0;
    for (; x + 16 <= w.width; x += 16) {
        const __m256i words = _mm256_loadu_si256((const __m256i *)(w.raw + x));
        __mmask16 fine = _mm256_testn_epi16_mask(words, stage_bits);  // G0 lanes
        if (kMask) {
            const __m128i m = _mm_loadu_si128((const __m128i *)(w.mask + x));
            fine &= _mm_testn_epi8_mask(m, m);
        }
        const __m512 adc = _mm512_cvtepi32_ps(_mm512_cvtepu16_epi32(words)), ped = _mm512_loadu_ps(w.ped0 + x);
        const __m512 gain = _mm512_loadu_ps(w.gain + x);
        const __m512 e = _mm512_div_ps(_mm512_sub_ps(adc, ped), gain);
        fine &= ~_mm512_fpclass_ps_mask(gain, 0x18);  // not an infinite gain (+inf 0x08, -inf 0x10)
        const __m512 p = _mm512_mul_ps(e, inv);
        const __m512 t = _mm512_roundscale_ps(p, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        const __m512 frac = _mm512_andnot_ps(sign, _mm512_sub_ps(p, t));  // NaN for infinities
        const __m512 away = _mm512_or_ps(one, _mm512_and_ps(p, sign));     // +-1, the sign of p
        const __m512 r = _mm512_mask_add_ps(t, _mm512_cmp_ps_mask(frac, half, _CMP_GE_OQ), t, away);
        fine &= _mm512_cmp_ps_mask(r, vlo, _CMP_GT_OQ) & _mm512_cmp_ps_mask(r, vhi, _CMP_LT_OQ);  // as AVX2
        const __m512i q = _mm512_cvttps_epi32(r);
        if constexpr (sizeof(T) == 2)
            _mm256_storeu_si256((__m256i *)(v + x), _mm512_cvtepi32_epi16(q));
        else
            _mm512_storeu_si512((void *)(v + x), q);
        if (kExtras) {
            if (w.e) _mm512_storeu_ps(w.e + x, e);
            if (w.status) _mm_storeu_si128((__m128i *)(w.status + x), _mm_setzero_si128());  // REDML_JF_G0
            if (w.track) {  // as AVX2: the other lanes' pedestals are left as they are
                const __mmask16 dark = fine & _mm512_cmp_ps_mask(_mm512_andnot_ps(sign, p), threshold, _CMP_LT_OQ);
                _mm512_mask_storeu_ps(w.track + x, dark, _mm512_add_ps(ped, _mm512_mul_ps(_mm512_sub_ps(adc, ped), alpha)));
            }
        }
        redo_lanes(x, fine, 0xFFFFu, slow);
    }
    return x;
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

// Converts raw row y into v[] (photons or markers) and, when the frame wants them, e[] (keV),
// the status map and the tracked pedestal; counts the statuses other than G0. The G0 lanes
// of the SIMD build simd_level() names, the scalar rule for the rest.
template <class T, bool kMask, bool kExtras>
void convert_row(const Frame &f, uint32_t y, T *v, float *e, uint64_t *counts) {
    constexpr int32_t lo = std::numeric_limits<T>::min(), hi = std::numeric_limits<T>::max();
    // Locals, not f's fields: the stores below must not force reloads.
    const size_t row = (size_t)y * f.width, n = f.n;
    const uint16_t *raw = f.raw + row;
    const float *ped0 = f.ped0, *pedestal = f.pedestal, *gain = f.gain;
    const uint8_t *mask = f.mask;
    const float inv_energy = f.inv_energy;
    const uint32_t width = f.width;
    auto pixels = [&](uint32_t x0, uint32_t x1) {
        for (uint32_t x = x0; x < x1; x++) {
            const size_t i = row + x;
            float ex;
            int32_t px;
            const int s = redml_jf_pixel(raw[x], kMask ? mask[i] : 0, ped0, pedestal, gain, i, n, inv_energy, lo, hi,
                                         &px, &ex);
            v[x] = (T)px;
            if (s != REDML_JF_G0) counts[s]++;  // G0 (most pixels) by difference: no chain of increments
            if (kExtras) {
                if (e) e[x] = ex;
                if (f.status) f.status[i] = (uint8_t)s;
                if (f.track) f.track[i] = redml_jf_track(f.track[i], raw[x], s, ex, inv_energy, f.alpha, f.threshold);
            }
        }
    };
    const LaneRow lanes{raw,
                        ped0 + row,
                        gain + row,
                        kMask ? mask + row : nullptr,
                        e,
                        kExtras && f.track ? f.track + row : nullptr,
                        kExtras && f.status ? f.status + row : nullptr,
                        width,
                        inv_energy,
                        f.alpha,
                        f.threshold};
    uint32_t x0 = 0;
    switch (simd_level()) {
#ifdef REDML_AVX512_DISPATCH
        case 3: x0 = g0_groups_avx512<T, kMask, kExtras>(lanes, lo, hi, v, pixels); break;
#endif
#ifdef REDML_AVX2_DISPATCH
        case 2: x0 = g0_groups_avx2<T, kMask, kExtras>(lanes, lo, hi, v, pixels); break;
#endif
        default: break;
    }
    pixels(x0, width);
}

// ---- assembly: whole pixels copied from the band to their module's place ----

// dst[x * dst_step + y] = src[y * src_step + x] for y < ny, x < nx: a band's columns written
// as output rows. In 16-byte blocks (8 x 8 two-byte or 4 x 4 four-byte elements) transposed in
// SSE2 registers (every x86-64 CPU has them), the last block of each axis moved back to end at
// the edge (it rewrites a few elements with the same values).
template <class E>
REDML_ALWAYS_INLINE void transpose_block(const E *src, ptrdiff_t src_step, E *dst, int64_t dst_step) {
#ifdef __SSE2__
    static_assert(sizeof(E) == 2 || sizeof(E) == 4, "two- or four-byte elements");
    auto load = [&](int k) { return _mm_loadu_si128((const __m128i *)(src + k * src_step)); };
    auto store = [&](int k, __m128i a) { _mm_storeu_si128((__m128i *)(dst + k * dst_step), a); };
    if constexpr (sizeof(E) == 2) {
        const __m128i a0 = load(0), a1 = load(1), a2 = load(2), a3 = load(3);
        const __m128i a4 = load(4), a5 = load(5), a6 = load(6), a7 = load(7);
        // pairs of rows interleaved, then pairs of pairs, then halves: column k in register k
        const __m128i b0 = _mm_unpacklo_epi16(a0, a1), b1 = _mm_unpackhi_epi16(a0, a1);
        const __m128i b2 = _mm_unpacklo_epi16(a2, a3), b3 = _mm_unpackhi_epi16(a2, a3);
        const __m128i b4 = _mm_unpacklo_epi16(a4, a5), b5 = _mm_unpackhi_epi16(a4, a5);
        const __m128i b6 = _mm_unpacklo_epi16(a6, a7), b7 = _mm_unpackhi_epi16(a6, a7);
        const __m128i c0 = _mm_unpacklo_epi32(b0, b2), c1 = _mm_unpackhi_epi32(b0, b2);
        const __m128i c2 = _mm_unpacklo_epi32(b1, b3), c3 = _mm_unpackhi_epi32(b1, b3);
        const __m128i c4 = _mm_unpacklo_epi32(b4, b6), c5 = _mm_unpackhi_epi32(b4, b6);
        const __m128i c6 = _mm_unpacklo_epi32(b5, b7), c7 = _mm_unpackhi_epi32(b5, b7);
        store(0, _mm_unpacklo_epi64(c0, c4));
        store(1, _mm_unpackhi_epi64(c0, c4));
        store(2, _mm_unpacklo_epi64(c1, c5));
        store(3, _mm_unpackhi_epi64(c1, c5));
        store(4, _mm_unpacklo_epi64(c2, c6));
        store(5, _mm_unpackhi_epi64(c2, c6));
        store(6, _mm_unpacklo_epi64(c3, c7));
        store(7, _mm_unpackhi_epi64(c3, c7));
    } else {
        const __m128i a0 = load(0), a1 = load(1), a2 = load(2), a3 = load(3);
        const __m128i b0 = _mm_unpacklo_epi32(a0, a1), b1 = _mm_unpackhi_epi32(a0, a1);
        const __m128i b2 = _mm_unpacklo_epi32(a2, a3), b3 = _mm_unpackhi_epi32(a2, a3);
        store(0, _mm_unpacklo_epi64(b0, b2));
        store(1, _mm_unpackhi_epi64(b0, b2));
        store(2, _mm_unpacklo_epi64(b1, b3));
        store(3, _mm_unpackhi_epi64(b1, b3));
    }
#endif
}

template <class E>
void transpose_rows(const E *src, ptrdiff_t src_step, uint32_t ny, uint32_t nx, E *dst, int64_t dst_step) {
#ifdef __SSE2__
    constexpr uint32_t B = 16 / sizeof(E);
    if (ny >= B && nx >= B) {
        // x outer: each output row fills its cache lines in order; the band's rows stay in L1
        for (uint32_t x = 0;; x = std::min(x + B, nx - B)) {
            for (uint32_t y = 0;; y = std::min(y + B, ny - B)) {
                transpose_block(src + y * src_step + x, src_step, dst + x * dst_step + y, dst_step);
                if (y == ny - B) break;
            }
            if (x == nx - B) break;
        }
        return;
    }
#endif
    for (uint32_t x = 0; x < nx; x++)
        for (uint32_t y = 0; y < ny; y++) dst[x * dst_step + y] = src[y * src_step + x];
}

// dst[x * dst_step] = src[x] for x < n, dst_step = +-1: a band's row written along an output row.
template <class E>
void copy_row(const E *src, uint32_t n, E *dst, int64_t dst_step) {
    if (dst_step == 1) {
        std::memcpy(dst, src, n * sizeof(E));
        return;
    }
    for (uint32_t x = 0; x < n; x++) dst[-(int64_t)x] = src[x];
}

// Writes rows ya..ya+ny of a chip (band columns xa..xa+nx, band row k at k * stride) to
// their module's place, o the output offset of the first: transposed where raw columns are
// output rows (col_step = +-out_width), as rows otherwise (col_step = +-1).
template <class E>
void place_whole(const E *band, size_t stride, uint32_t ny, uint32_t nx, E *out, int64_t o, int64_t row_step,
                 int64_t col_step) {
    if (col_step == 1 || col_step == -1) {
        for (uint32_t y = 0; y < ny; y++) copy_row(band + y * stride, nx, out + o + (int64_t)y * row_step, col_step);
    } else if (row_step == 1) {
        transpose_rows(band, (ptrdiff_t)stride, ny, nx, out + o, col_step);
    } else {  // row_step -1: the band's rows in reverse order, written from the row's lowest address
        transpose_rows(band + (ny - 1) * stride, -(ptrdiff_t)stride, ny, nx, out + o - (ny - 1), col_step);
    }
}

// Writes the converted rows [y0, y1) of a module (v and e hold them, row k at k * stride) into
// their module's place, chip-border pixels split over 2 (4 at chip corners) output pixels.
template <class T>
void place_band(const Frame &f, uint32_t y0, uint32_t y1, const T *v, const float *e, size_t stride, T *photons,
                int32_t lo, int32_t hi) {
    const uint32_t width = f.width;
    float *kev = f.kev;
    const redml_jf_module &m = f.modules[y0 / REDML_JF_MODULE_ROWS];
    const int64_t row_step = (int64_t)m.slow_y * f.out_width + m.slow_x;  // next assembled row
    const int64_t col_step = (int64_t)m.fast_y * f.out_width + m.fast_x;  // next assembled column
    auto split = [&](uint32_t y, uint32_t x) {  // any pixel, split or not
        int row_extra, col_extra;
        const int r = redml_jf_expand((int)(y % REDML_JF_MODULE_ROWS), 2, &row_extra);
        const int c = redml_jf_expand((int)x, 4, &col_extra);
        const int nrows = row_extra ? 2 : 1, ncols = col_extra ? 2 : 1, k = nrows * ncols;
        const int64_t o = out_offset(m, r, c, f.out_width);
        const size_t i = (size_t)(y - y0) * stride + x;
        for (int a = 0, part = 0; a < nrows; a++)
            for (int b = 0; b < ncols; b++, part++) {
                const int64_t oo = o + a * row_extra * row_step + b * col_extra * col_step;
                if (photons) photons[oo] = (T)redml_jf_split(v[i], k, part, lo, hi);
                if (kev) kev[oo] = e[i] / (float)k;
            }
    };
    auto border = [](uint32_t p, uint32_t n) {  // a chip-border row or column of a module side of n
        return (p % REDML_JF_CHIP == 0 && p > 0) || (p % REDML_JF_CHIP == REDML_JF_CHIP - 1 && p < n - 1);
    };
    for (uint32_t y = y0; y < y1; y++) {
        if (border(y % REDML_JF_MODULE_ROWS, REDML_JF_MODULE_ROWS)) {  // chip-border row: every pixel split
            for (uint32_t x = 0; x < width; x++) split(y, x);
        } else {  // chip-border columns
            for (uint32_t x = REDML_JF_CHIP - 1; x + 1 < width; x += REDML_JF_CHIP) {
                split(y, x);
                split(y, x + 1);
            }
        }
    }
    // Whole pixels: the band's rows minus a chip-border row at either end (a band of 32 rows
    // lies in one chip row otherwise), the chips' columns minus their border columns.
    const uint32_t ya = y0 + border(y0 % REDML_JF_MODULE_ROWS, REDML_JF_MODULE_ROWS);
    const uint32_t yb = y1 - border((y1 - 1) % REDML_JF_MODULE_ROWS, REDML_JF_MODULE_ROWS);
    if (ya >= yb) return;
    const int ra = (int)(ya % REDML_JF_MODULE_ROWS) + 2 * (int)((ya % REDML_JF_MODULE_ROWS) / REDML_JF_CHIP);
    const int chips = REDML_JF_MODULE_COLS / REDML_JF_CHIP;
    for (int chip = 0; chip < chips; chip++) {
        const uint32_t xa = chip * REDML_JF_CHIP + (chip > 0), xb = (chip + 1) * REDML_JF_CHIP - (chip < chips - 1);
        const int64_t o = out_offset(m, ra, (int)xa + 2 * chip, f.out_width);  // pixel (ya, xa)
        const size_t i = (size_t)(ya - y0) * stride + xa;
        if (photons) place_whole(v + i, stride, yb - ya, xb - xa, photons, o, row_step, col_step);
        if (kev) place_whole(e + i, stride, yb - ya, xb - xa, kev, o, row_step, col_step);
    }
}

template <class T>
struct BandScratch {
    std::vector<T> v;
    std::vector<float> e;
    size_t held() const { return held_bytes(v, e); }
};

template <class T>
void convert_band(const Frame &f, T *photons, uint32_t y0, uint32_t y1, uint64_t *task_counts) {
    const int32_t lo = std::numeric_limits<T>::min(), hi = std::numeric_limits<T>::max();
    // Row stride padded by a cache line: the band is read down its columns for transposed
    // modules, and rows 4 KiB apart would all fall into the same L1 set.
    const size_t width = f.width, rows = y1 - y0, stride = width + 64 / sizeof(T);
    // The band's rows, kept by the thread across bands and frames (every element read is
    // written first); the raw layout (no modules) converts straight into the outputs.
    thread_local BandScratch<T> sc;
    ReleaseIfLarge<BandScratch<T>> release{sc};
    const bool direct = !f.modules;
    T *v = direct && photons ? nullptr : scratch(sc.v, rows * stride);
    float *e = f.kev && !direct ? scratch(sc.e, rows * stride) : nullptr;
    uint64_t counts[REDML_JF_NSTATUS] = {0};
    const bool extras = f.kev || f.status || f.track;
    for (uint32_t y = y0; y < y1; y++) {
        T *vy = v ? v + (y - y0) * stride : photons + (size_t)y * width;
        float *ey = !f.kev ? nullptr : direct ? f.kev + (size_t)y * width : e + (y - y0) * stride;
        if (f.mask) {
            if (extras) convert_row<T, true, true>(f, y, vy, ey, counts);
            else convert_row<T, true, false>(f, y, vy, ey, counts);
        } else {
            if (extras) convert_row<T, false, true>(f, y, vy, ey, counts);
            else convert_row<T, false, false>(f, y, vy, ey, counts);
        }
    }
    if (!direct) place_band<T>(f, y0, y1, v, e, stride, photons, lo, hi);
    counts[REDML_JF_G0] = (uint64_t)rows * width;
    for (int s = 1; s < REDML_JF_NSTATUS; s++) counts[REDML_JF_G0] -= counts[s];
    for (int s = 0; s < REDML_JF_NSTATUS; s++) task_counts[s] = counts[s];
}

bool unit_axis(int32_t dy, int32_t dx) { return (dy == 0) != (dx == 0) && dy >= -1 && dy <= 1 && dx >= -1 && dx <= 1; }

void check_module(const redml_jf_module &m, uint32_t out_height, uint32_t out_width) {
    check(unit_axis(m.fast_y, m.fast_x) && unit_axis(m.slow_y, m.slow_x) && m.fast_y * m.slow_y + m.fast_x * m.slow_x == 0,
          REDML_E_ARG, "module axes must be perpendicular unit steps along the image axes");
    for (int r : {0, REDML_JF_ASM_ROWS - 1})
        for (int c : {0, REDML_JF_ASM_COLS - 1}) {
            int64_t y = (int64_t)m.origin_y + (int64_t)r * m.slow_y + (int64_t)c * m.fast_y;
            int64_t x = (int64_t)m.origin_x + (int64_t)r * m.slow_x + (int64_t)c * m.fast_x;
            check(y >= 0 && y < out_height && x >= 0 && x < out_width, REDML_E_ARG, "a module lies outside the image");
        }
}

template <class T>
void fill_gaps(T *photons, float *kev, const uint32_t *gap, size_t n_gap, int nthreads) {
    const size_t per = 1 << 16;
    parallel_for((n_gap + per - 1) / per, nthreads, [&](size_t t) {
        for (size_t k = t * per; k < std::min(n_gap, (t + 1) * per); k++) {
            if (photons) photons[gap[k]] = std::numeric_limits<T>::min();
            if (kev) kev[gap[k]] = NAN;
        }
    });
}

}  // namespace
}  // namespace redml

using namespace redml;

extern "C" redml_status redml_jf_convert(const uint16_t *raw, uint32_t height, uint32_t width, const float *pedestal,
                                         const float *gain, const uint8_t *mask, float *track_g0,
                                         const redml_jf_module *modules, uint32_t n_modules, const uint32_t *gap_index,
                                         size_t n_gap, uint32_t out_height, uint32_t out_width,
                                         const redml_jf_params *p, void *photons, float *kev, uint8_t *status,
                                         uint64_t counts[REDML_JF_NSTATUS]) {
    return guarded([&] {
        check(raw && pedestal && gain && p, REDML_E_ARG, "null argument");
        check(height >= 1 && width >= 1 && (uint64_t)height * width <= kMaxPixels, REDML_E_ARG,
              "frame shape out of range (at most 2^27 pixels)");
        check(p->out_dtype == REDML_INT16 || p->out_dtype == REDML_INT32, REDML_E_ARG,
              "photons are int16 or int32");
        check(std::isfinite(p->energy_keV) && p->energy_keV > 0, REDML_E_ARG, "the photon energy must be > 0");
        if (track_g0)
            check(p->track_alpha > 0 && p->track_alpha <= 1 && std::isfinite(p->track_threshold) &&
                      p->track_threshold >= 0,
                  REDML_E_ARG, "tracking needs 0 < alpha <= 1 and a threshold >= 0");
        check(out_height >= 1 && out_width >= 1 && (uint64_t)out_height * out_width <= kMaxPixels, REDML_E_ARG,
              "output shape out of range");
        if (modules) {
            check(n_modules >= 1 && height == (uint64_t)n_modules * REDML_JF_MODULE_ROWS &&
                      width == REDML_JF_MODULE_COLS,
                  REDML_E_ARG, "an assembled frame needs n_modules x 512 x 1024 raw words");
            for (uint32_t k = 0; k < n_modules; k++) check_module(modules[k], out_height, out_width);
            check(gap_index || n_gap == 0, REDML_E_ARG, "null gap_index");
            uint32_t last = 0;  // the largest index (a reduction that vectorizes, not a check per index)
            for (size_t k = 0; k < n_gap; k++) last = std::max(last, gap_index[k]);
            check(n_gap == 0 || last < (uint64_t)out_height * out_width, REDML_E_ARG, "gap index outside the image");
        } else {
            check(out_height == height && out_width == width, REDML_E_ARG,
                  "without modules the output has the raw frame's shape");
        }
        const int nthreads = resolve_threads(p->nthreads);
        Frame f{raw, width, (size_t)height * width, pedestal, gain, track_g0 ? track_g0 : pedestal, mask, track_g0,
                1.0f / p->energy_keV, p->track_alpha, p->track_threshold, modules, out_width, kev, status};
        const size_t ntasks = (height + kRowsPerTask - 1) / kRowsPerTask;
        std::vector<std::array<uint64_t, REDML_JF_NSTATUS>> task_counts(ntasks);
        auto run = [&](auto *out) {
            using T = std::remove_pointer_t<decltype(out)>;
            if (modules) fill_gaps(out, kev, gap_index, n_gap, nthreads);
            for_row_bands(height, kRowsPerTask, nthreads, [&](size_t t, uint32_t y0, uint32_t y1) {
                task_counts[t].fill(0);
                convert_band<T>(f, out, y0, y1, task_counts[t].data());
            });
        };
        if (p->out_dtype == REDML_INT16) run((int16_t *)photons);
        else run((int32_t *)photons);
        if (counts) {
            for (int s = 0; s < REDML_JF_NSTATUS; s++) counts[s] = 0;
            for (auto &c : task_counts)
                for (int s = 0; s < REDML_JF_NSTATUS; s++) counts[s] += c[s];
        }
    });
}
