// decode_lanes.h: the decoder's loops over a span of pixels (a pixel row, or one tile's part
// of it), kLanes pixels at a time: step-1 codes, the coded pixels' dither, offset, phase and
// reconstruction (quantize.h's per-pixel rules), the sparse rounding. One body each, compiled
// once per SIMD target, each build in its own translation unit (decode_lanes_target.h,
// included by decode_lanes_portable.cpp, decode_lanes_avx2.cpp, decode_lanes_avx512.cpp);
// decode.cpp calls the build the CPU has. Internal to the core.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "background.h"
#include "codec.h"
#include "error.h"
#include "pixels.h"
#include "quantize.h"
#include "redml.h"

namespace redml {

const size_t kWordSlack = 64;  // spare bytes after the decoder's words (expand_words_vbmi2 reads 32 16-bit words at a time)

// out[j] = unzigzag(codes[j]) + pred[j] for j < n; whether all lie in [lo, T's max].
template <class T>
REDML_ALWAYS_INLINE bool decode_codes_body(const typename Storage<T>::Word *__restrict codes, T *__restrict out,
                                           size_t n, const Step1Int<T> *__restrict pred, int64_t lo) {
    using A = Step1Int<T>;
    A kmin = std::numeric_limits<A>::max(), kmax = std::numeric_limits<A>::min();
    for (size_t j = 0; j < n; j++) {
        const A z = (A)codes[j];
        const A k = ((z >> 1) ^ -(z & 1)) + pred[j];
        kmin = std::min(kmin, k);
        kmax = std::max(kmax, k);
        out[j] = (T)k;
    }
    return n == 0 || ((int64_t)kmin >= lo && (int64_t)kmax <= Storage<T>::hi());
}

#ifdef REDML_AVX512_DISPATCH
// CodeReader::read_span with AVX-512 (and POPCNT, which every AVX-512 CPU has), for n <= 64
// pixels: slot_masks gives each slot's pixels as a bit mask (one byte compare for all of them)
// and their count; expand_slots then puts each slot's next words at its pixels' places, 16
// pixels a vector (vpexpandd), a fixed number of steps (no branch on the data), all kLanes
// places (those from n on hold no word). It loads 16 words where a slot needs fewer: the
// word buffer ends with kWordSlack spare bytes.
#define REDML_TARGET_AVX512_POPCNT __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,popcnt")))
inline REDML_TARGET_AVX512_POPCNT void slot_masks(const uint8_t *slot, size_t n, uint64_t *mask, size_t *count) {
    const __mmask64 valid = n >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << n) - 1);
    const __m512i v = _mm512_maskz_loadu_epi8(valid, slot);
    for (unsigned p = 0; p <= REDML_PHASES; p++) {
        mask[p] = _mm512_mask_cmpeq_epi8_mask(valid, v, _mm512_set1_epi8((char)p));
        count[p] = (size_t)_mm_popcnt_u64(mask[p]);
    }
}
template <class Word>
REDML_TARGET_AVX512_POPCNT void expand_slots(const uint64_t *mask, const Word *const *from, Word *w) {
    static_assert(kLanes == 64, "four vectors of 16 pixels");
    __m512i acc[4];
    for (unsigned q = 0; q < 4; q++) acc[q] = _mm512_setzero_si512();
    for (unsigned p = 0; p <= REDML_PHASES; p++) {
        const Word *src = from[p];
        for (unsigned q = 0; q < 4; q++) {
            const __mmask16 k = (__mmask16)(mask[p] >> (16 * q));
            if constexpr (sizeof(Word) == 2)  // 16 words read, those of k used (the buffer has room: kWordSlack)
                acc[q] = _mm512_mask_expand_epi32(
                    acc[q], k, _mm512_maskz_cvtepu16_epi32((__mmask16)0xFFFF, _mm256_loadu_si256((const __m256i *)src)));
            else
                acc[q] = _mm512_mask_expandloadu_epi32(acc[q], k, src);
            src += _mm_popcnt_u32(k);
        }
    }
    for (unsigned q = 0; q < 4; q++) {
        if constexpr (sizeof(Word) == 2) _mm512_mask_cvtepi32_storeu_epi16(w + 16 * q, (__mmask16)0xFFFF, acc[q]);
        else _mm512_storeu_si512(w + 16 * q, acc[q]);
    }
}

// expand_slots for 16-bit words on CPUs with AVX512-VBMI2: vpexpandw puts 32 words a vector in
// place, without widening them to 32 bits and back (half the expansions). It loads 32 words
// where a slot needs fewer (kWordSlack). Taken where the CPU has it unless a test forces a
// level below 4 (codec_force_simd: level 3 keeps expand_slots, so both forms stay tested).
#define REDML_TARGET_AVX512_VBMI2 \
    __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512vbmi2,popcnt")))
inline bool use_vbmi2() {
    const int forced = forced_simd_level().load(std::memory_order_relaxed);
    return use_avx512() && cpu_has_avx512_vbmi2() && (forced == 0 || forced >= 4);
}
inline REDML_TARGET_AVX512_VBMI2 void expand_words_vbmi2(const uint64_t *mask, const uint16_t *const *from,
                                                         uint16_t *w) {
    static_assert(kLanes == 64, "two vectors of 32 pixels");
    static_assert(kWordSlack >= 32 * sizeof(uint16_t), "a 32-word load past a stream's last word stays in the slack");
    __m512i acc[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
    for (unsigned p = 0; p <= REDML_PHASES; p++) {
        const uint16_t *src = from[p];
        for (unsigned q = 0; q < 2; q++) {
            const __mmask32 k = (__mmask32)(mask[p] >> (32 * q));
            acc[q] = _mm512_mask_expand_epi16(acc[q], k, _mm512_loadu_si512(src));
            src += _mm_popcnt_u32(k);
        }
    }
    _mm512_storeu_si512(w, acc[0]);
    _mm512_storeu_si512(w + 32, acc[1]);
}
#endif

// Where a band's reconstruction reads: the exact values and each phase's codes, with
// the read positions (every code read is checked against its stream's length).
template <class T>
struct CodeReader {
    using Word = typename Storage<T>::Word;
    static constexpr uint8_t kExact = REDML_PHASES;  // the slot of an exact pixel (read_span)
    const Word *values;
    size_t vi;
    const Word *const *codes;
    const size_t *count;
    size_t *ci;
    Word next_code(unsigned phase) {
        check(ci[phase] < count[phase], REDML_E_CORRUPT, "background code stream length does not match its phase");
        return codes[phase][ci[phase]++];
    }
    // The words of n <= kLanes pixels in raster order into w: slot[j] = the pixel's phase, or
    // kExact for an exact pixel (its value). The nine read counters of the span live in one
    // register, 7 bits each (no counter in memory); each stream's length is checked once for
    // the span, before the reads.
    // (Inlined into each build's span loop: it keeps the words in registers.)
    REDML_ALWAYS_INLINE void read_span(const uint8_t *__restrict slot, size_t n, Word *__restrict w) {
        static_assert(REDML_PHASES == 8 && kLanes < 128, "nine 7-bit counters in 64 bits");
#ifdef REDML_AVX512_DISPATCH
        static_assert(kLanes <= 64 && kLanes % 16 == 0, "a span's slots in one 64-bit mask, 16 words a vector");
        if (use_avx512()) {
            uint64_t mask[REDML_PHASES + 1];
            size_t used[REDML_PHASES + 1];
            const Word *from[REDML_PHASES + 1];
            slot_masks(slot, n, mask, used);
            for (unsigned p = 0; p < REDML_PHASES; p++) {
                check(used[p] <= count[p] - ci[p], REDML_E_CORRUPT, "background code stream length does not match its phase");
                from[p] = codes[p] + ci[p];
                ci[p] += used[p];
            }
            from[kExact] = values + vi;
            vi += used[kExact];
            if constexpr (sizeof(Word) == 2) {
                if (use_vbmi2()) return expand_words_vbmi2(mask, from, w);
            }
            expand_slots(mask, from, w);
            return;
        }
#endif
        uint8_t rank[kLanes];
        uint64_t packed = 0;
        for (size_t j = 0; j < n; j++) {
            const unsigned sh = 7u * slot[j];
            rank[j] = (uint8_t)((packed >> sh) & 127);
            packed += (uint64_t)1 << sh;
        }
        const Word *src[REDML_PHASES + 1];
        for (unsigned p = 0; p < REDML_PHASES; p++) {
            const size_t used = (packed >> (7 * p)) & 127;
            check(used <= count[p] - ci[p], REDML_E_CORRUPT, "background code stream length does not match its phase");
            src[p] = codes[p] + ci[p];
            ci[p] += used;
        }
        src[kExact] = values + vi;
        vi += (packed >> (7 * kExact)) & 127;
        for (size_t j = 0; j < n; j++) w[j] = src[slot[j]][rank[j]];
    }
};

// Conditional reconstruction of n <= kLanes pixels (exact ones: a = b = 0), in blocks of
// REDML_RECON_LANES, in arithmetic R (quantize.h, redml_recon_conditional_lanes): the fast
// form where it decides, the reference elsewhere (from the model at the pixels, lambda: the
// doubles; lam: as R). a, b, lam and uni (the uniform of stream 6, draw, or 5, mean) hold n
// values (a partial last block is padded with empty bins). Each build calls it through one
// function per form (Tgt::conditional_lanes, decode_lanes_target.h), not inlined into every
// span loop: its unrolled widths are the bulk of the decoder's code.
template <bool draw, class R>
REDML_ALWAYS_INLINE void conditional_lanes_body(const R *a, const R *b, const R *lam, const R *uni, const double *lambda,
                                           size_t n, int64_t width, uint32_t seed, uint32_t i0, R *res) {
    using K = typename std::conditional<sizeof(R) == 4, int32_t, int64_t>::type;  // flags in R's lanes
    const size_t L = REDML_RECON_LANES;
    const R tol = sizeof(R) == 4 ? (R)REDML_FAST_TOL_FLOAT : (R)REDML_FAST_TOL;
    for (size_t c = 0; c < n; c += L) {
        const size_t m = std::min(L, n - c);
        R ba[L], bb[L], bl[L], bu[L];
        K ok[L];
        const R *pa = a + c, *pb = b + c, *pl = lam + c, *pu = uni + c;
        if (m < L) {  // a partial block: the lanes from m on take empty bins [0, 0]
            for (size_t j = 0; j < L; j++) {
                ba[j] = j < m ? a[c + j] : 0;
                bb[j] = j < m ? b[c + j] : 0;
                bl[j] = j < m ? lam[c + j] : 1;
                bu[j] = j < m ? uni[c + j] : 0;
            }
            pa = ba, pb = bb, pl = bl, pu = bu;
        }
        switch (width) {  // the narrow bins of a few counts per pixel with the width a constant (unrolled)
#define REDML_WIDTH_CASE(w) \
    case w: redml_recon_conditional_lanes<R, K>(pa, pb, pl, pu, w, draw, tol, res + c, ok); break;
            REDML_WIDTH_CASE(2) REDML_WIDTH_CASE(3) REDML_WIDTH_CASE(4) REDML_WIDTH_CASE(5)
#undef REDML_WIDTH_CASE
            default:
                redml_recon_conditional_lanes<R, K>(pa, pb, pl, pu, (int)std::min<int64_t>(width, kLanes), draw, tol,
                                                    res + c, ok);
        }
        K all_ok = 1;
        for (size_t j = 0; j < L; j++) all_ok &= ok[j];
        if (!all_ok)  // rare: a decision too close to call, or a bin outside the fast form's domain
            for (size_t j = 0; j < m; j++)
                if (!ok[j])
                    res[c + j] = (R)redml_recon_conditional((int64_t)pa[j], (int64_t)pb[j], lambda[c + j], draw, seed,
                                                            i0 + (uint32_t)(c + j));
    }
}

// Whole numbers of a bin to double and back: through 32-bit integers for 16-bit pixels (their
// bins, once checked, lie within +-2^22: one vector instruction without AVX-512), 64-bit others.
template <class T>
using BinInt = typename std::conditional<sizeof(T) == 2, int32_t, int64_t>::type;

// out[j] = res[j] where exact[j] is 0, for j < n (restrict: a select that vectorizes).
template <class T, class R>
REDML_ALWAYS_INLINE void select_coded(const uint8_t *__restrict exact, const R *__restrict res, size_t n,
                                      T *__restrict out) {
    for (size_t j = 0; j < n; j++) {
        const T v = (T)(BinInt<T>)res[j];
        out[j] = exact[j] ? out[j] : v;
    }
}

// The conditional reconstruction (draw or mean) of the coded pixels among n <= kLanes, bins
// lo..hi (exact pixels: 0..0), with the model at the pixels (lambda), in arithmetic R, into out.
template <class T, class R, class Tgt, class I>
REDML_ALWAYS_INLINE void conditional_span(const I *lo, const I *hi, const double *lambda, const uint8_t *exact,
                                          size_t n, int64_t width, bool draw, uint32_t seed, uint32_t i0, T *out) {
    R a[kLanes], b[kLanes], lam[kLanes], uni[kLanes], res[kLanes];
    const uint32_t stream = draw ? 6 : 5;
    for (size_t j = 0; j < n; j++) {
        a[j] = (R)lo[j], b[j] = (R)hi[j], lam[j] = (R)lambda[j];
        uni[j] = (R)redml_hash(seed, i0 + (uint32_t)j, stream) * (R)0x1p-32;  // redml_uniform, in R
    }
    if (draw) Tgt::template conditional_lanes<true, R>(a, b, lam, uni, lambda, n, width, seed, i0, res);
    else Tgt::template conditional_lanes<false, R>(a, b, lam, uni, lambda, n, width, seed, i0, res);
    select_coded<T, R>(exact, res, n, out);
}

// Decodes n <= kLanes pixels from frame index i0 on, in one row of one coded float tile
// (pixel by pixel).
template <class T>
REDML_ALWAYS_INLINE void decode_float_lanes(const TileCoder<T> &tc, int64_t pred, const uint8_t *exact, T *out,
                                            uint32_t i0, size_t n, uint32_t seed, CodeReader<T> &rd) {
    using S = Storage<T>;
    for (size_t j = 0; j < n; j++) {
        if (exact[j]) {
            out[j] = S::from_exact_word(rd.values[rd.vi++], pred);
            continue;
        }
        auto px = tc.at(seed, i0 + j);
        const auto sym = rd.next_code(px.phase);
        check(tc.step > 0, REDML_E_CORRUPT, "background pixel in a lossless float tile");
        out[j] = redml_recon_float(sym, tc.step, px.u_float, px.base);
    }
}

// Lane integers of a coded integer tile (int_lanes, the bins, the midpoints): 32 bits for
// 16-bit pixels in tiles of steps up to kNarrowStep (offsets |k| <= 2^16 + 2^15, so k*s and
// the bins stay within +-2^31: twice the lanes a vector), 64 bits otherwise.
const int64_t kNarrowStep = (int64_t)1 << 14;
static_assert(kNarrowStep < (1 << 16), "narrow steps: redml_mulhi32's narrow form");

// The per-tile constants of the coded integer tiles (TileCoder) spread over the pixel columns
// of a tile row, each column its tile's: whole pixel rows then decode kLanes pixels at a time
// across tile boundaries (tiles are narrower than the lanes). The step, the prediction's
// remainder and the phase multipliers are below 2^32 (steps are at most 2^21 + 1): 32-bit
// columns, whose lane products are 32-bit ones.
struct ColumnCoders {
    std::vector<int64_t> pred, pred_q;
    std::vector<uint32_t> s, pred_r, mul_hi, mul_lo;
    template <class T>
    void set(const std::vector<TileCoder<T>> &coders, const std::vector<int64_t> &preds, const TileGrid &g,
             uint32_t ty) {
        for (auto *v : {&pred, &pred_q}) v->resize(g.width);
        for (auto *v : {&s, &pred_r, &mul_hi, &mul_lo}) v->resize(g.width);
        for (uint32_t x = 0; x < g.width; x++) {
            const size_t t = (size_t)ty * g.cols + x / g.tile;
            const TileCoder<T> &tc = coders[t];
            s[x] = (uint32_t)tc.s_int, pred[x] = preds[t], pred_q[x] = tc.off.pred_q;
            pred_r[x] = (uint32_t)tc.off.pred_r, mul_hi[x] = tc.off.phase_mul_hi, mul_lo[x] = tc.off.phase_mul_lo;
        }
    }
    // The constants from column x on.
    struct View {
        const int64_t *pred, *pred_q;
        const uint32_t *s, *pred_r, *mul_hi, *mul_lo;
        View at(size_t x) const { return {pred + x, pred_q + x, s + x, pred_r + x, mul_hi + x, mul_lo + x}; }
    };
    View view() const { return {pred.data(), pred_q.data(), s.data(), pred_r.data(), mul_hi.data(), mul_lo.data()}; }
};

// The constants of decode_int_lanes' pixels: each column its own (Columns: a whole pixel row
// across tiles), or one tile's for all (OneTile: constants the compiler hoists out of the loop,
// scalar multipliers; the per-column loads cost int32 frames a fifth of their decode time).
struct Columns {
    ColumnCoders::View v;
    uint32_t s(size_t j) const { return v.s[j]; }
    int64_t pred(size_t j) const { return v.pred[j]; }
    int64_t pred_q(size_t j) const { return v.pred_q[j]; }
    uint32_t pred_r(size_t j) const { return v.pred_r[j]; }
    uint32_t mul_hi(size_t j) const { return v.mul_hi[j]; }
    uint32_t mul_lo(size_t j) const { return v.mul_lo[j]; }
    Columns at(size_t c) const { return {v.at(c)}; }
    int64_t widest(size_t m) const { return *std::max_element(v.s, v.s + m); }
};
struct OneTile {
    int64_t s_, pred_;
    redml_offset_tile off_;
    uint32_t s(size_t) const { return (uint32_t)s_; }
    int64_t pred(size_t) const { return pred_; }
    int64_t pred_q(size_t) const { return off_.pred_q; }
    uint32_t pred_r(size_t) const { return (uint32_t)off_.pred_r; }
    uint32_t mul_hi(size_t) const { return off_.phase_mul_hi; }
    uint32_t mul_lo(size_t) const { return off_.phase_mul_lo; }
    OneTile at(size_t) const { return *this; }
    int64_t widest(size_t) const { return s_; }
};

// Decodes n <= kLanes pixels from frame index i0 on, in one pixel row of coded integer tiles
// (step > 1; cv: each pixel's tile constants): the dither, offset and phase of every pixel in
// one branch-free pass (TileCoder::at's), the exact values and symbols read in raster order
// (CodeReader::read_span), then the reconstruction of the coded pixels (lambda: the model at
// the pixels, for the conditional reconstructions; width: the widest bin among them).
template <class T, class I, class Tgt, class C>
REDML_ALWAYS_INLINE void decode_int_lanes(const C &cv, const uint8_t *__restrict exact,
                                          T *__restrict out, uint32_t i0, size_t n, int64_t width,
                                          const double *lambda, int recon, uint32_t seed, CodeReader<T> &rd) {
    using S = Storage<T>;
    I u[kLanes], k[kLanes], s[kLanes];
    uint8_t slot[kLanes];
    typename S::Word w[kLanes];
    // steps up to kNarrowStep: 32-bit products only in the AVX-512 build (which would otherwise
    // take 64-bit lane products, vpmullq; AVX2 and SSE2 widen with one 32 x 32-bit product)
    const int narrow = Tgt::kAvx512 && sizeof(I) == 4;
    for (size_t j = 0; j < n; j++) {    // redml_dither_int and redml_offset_int, in 32-bit lanes
        unsigned ph;
        const uint32_t sj = cv.s(j), uj = redml_dither_u32(seed, i0 + (uint32_t)j, sj, narrow);
        const uint32_t wrap = redml_offset_wrap32(cv.pred_r(j), uj, sj, cv.mul_hi(j), cv.mul_lo(j), narrow, &ph);
        u[j] = (I)uj;
        k[j] = (I)cv.pred_q(j) + (I)wrap;
        s[j] = (I)sj;
        slot[j] = exact[j] ? CodeReader<T>::kExact : (uint8_t)ph;
    }
    rd.read_span(slot, n, w);
    for (size_t j = 0; j < n; j++) {  // k: the offset, then the bin; exact pixels: their value
        const I coded = exact[j] == 0;
        out[j] = S::from_exact_word(w[j], cv.pred(j));  // (the coded ones are replaced below)
        k[j] += coded * (I)S::unzigzag(w[j]);
    }
    const I top = (I)S::hi();
    if (recon == REDML_RECON_MEAN || recon == REDML_RECON_DRAW) {
        I lo[kLanes], hi[kLanes], bad = 0, highest = 0;
        for (size_t j = 0; j < n; j++) {  // bins [max(k*s - u, 0), k*s - u + s - 1]; exact: [0, 0]
            const I coded = exact[j] == 0, first = k[j] * s[j] - u[j], last = first + s[j] - 1;
            bad |= coded & ((I)(last < 0) | (I)(last > top));
            lo[j] = coded * (first > 0 ? first : 0);
            hi[j] = coded * last;
            highest = std::max(highest, hi[j]);
        }
        check(!bad, REDML_E_CORRUPT, "decoded value out of range");
        // float arithmetic (twice the lanes) where the whole span stays in its range: the narrow
        // bins of a few counts per pixel
        const double bound = redml_fast_float_bound((int)std::min<int64_t>(width, REDML_FAST_BIN));
        int fits = width <= REDML_FAST_BIN && (double)highest <= bound;
        for (size_t j = 0; j < n; j++) fits &= redml_fast_float_fits(lambda[j], bound);
        const bool draw = recon == REDML_RECON_DRAW;
        if (fits) conditional_span<T, float, Tgt>(lo, hi, lambda, exact, n, width, draw, seed, i0, out);
        else conditional_span<T, double, Tgt>(lo, hi, lambda, exact, n, width, draw, seed, i0, out);
        return;
    }
    const I bottom = (I)S::lo();
    bool in_range = true;
    for (size_t j = 0; j < n; j++) {  // the midpoint of the bin
        k[j] = k[j] * s[j] - u[j] + (s[j] - 1) / 2;
        in_range &= (exact[j] != 0) | ((k[j] >= bottom) & (k[j] <= top));
    }
    check(in_range, REDML_E_CORRUPT, "decoded value out of range");
    for (size_t j = 0; j < n; j++) out[j] = exact[j] ? out[j] : (T)k[j];  // (a select: vectorizes)
}

// The coded pixels of n pixels of one pixel row (float: of one tile, tc; integers: their tile
// constants, cv: Columns or OneTile), kLanes at a time (inlined into each target's build).
template <class T, class Tgt, class C>
REDML_ALWAYS_INLINE void decode_coded_span_body(const TileCoder<T> &tc, const C &cv, int64_t pred,
                                                const uint8_t *exact, T *out, uint32_t i0, size_t n,
                                                const double *lambda, int recon, uint32_t seed, CodeReader<T> &rd) {
    for (size_t c = 0; c < n; c += kLanes) {
        const size_t m = std::min(kLanes, n - c);
        const double *lam = lambda ? lambda + c : nullptr;
        const uint32_t i = i0 + (uint32_t)c;
        if constexpr (Storage<T>::is_float) {
            decode_float_lanes<T>(tc, pred, exact + c, out + c, i, m, seed, rd);
        } else {
            const int64_t width = cv.at(c).widest(m);  // the widest bin of the block
            if constexpr (sizeof(T) == 2) {  // (32-bit lanes: 16-bit pixels only)
                if (width <= kNarrowStep) {
                    decode_int_lanes<T, int32_t, Tgt>(cv.at(c), exact + c, out + c, i, m, width, lam, recon, seed, rd);
                    continue;
                }
            }
            decode_int_lanes<T, int64_t, Tgt>(cv.at(c), exact + c, out + c, i, m, width, lam, recon, seed, rd);
        }
    }
}

// Sparse chunks with the dither reconstruction: the model at the n pixels of a row from frame
// index i0 on, rounded without bias (redml_dithered_round, then clipped to T's maximum: the
// model is >= 0 and its whole numbers exact, so min(hi, floor(v + u)) = floor(min(v + u, hi)),
// a truncation that vectorizes); float pixels take the model as it is.
template <class T>
REDML_ALWAYS_INLINE void sparse_dither_body(const double *__restrict lambda, size_t n, uint32_t i0, uint32_t seed,
                                            T *__restrict out) {
    using Trunc = typename std::conditional<sizeof(T) == 4 && std::is_unsigned<T>::value, int64_t, int32_t>::type;
    const double top = (double)Storage<T>::hi();
    for (size_t j = 0; j < n; j++) {
        const double v = lambda[j] > 0.0 ? lambda[j] : 0.0;
        if constexpr (Storage<T>::is_float) {
            out[j] = (T)v;
        } else {
            const double f = v + redml_uniform(seed, i0 + (uint32_t)j, 2);
            out[j] = (T)(Trunc)(f < top ? f : top);
        }
    }
}


// The parameters of decode_coded_span (a template of T, the pixel type, and C: Columns or OneTile).
#define REDML_SPAN_PARAMS                                                                                        \
    const TileCoder<T> &tc, const C &cv, int64_t pred, const uint8_t *exact, T *out, uint32_t i0, size_t n,     \
        const double *lambda, int recon, uint32_t seed, CodeReader<T> &rd
#define REDML_SPAN_ARGS tc, cv, pred, exact, out, i0, n, lambda, recon, seed, rd

// The entry points of one build (namespace NS, functions compiled with the target attribute
// TARGET), defined and instantiated for every pixel type by decode_lanes_target.h:
//   decode_codes: decode_codes_body; decode_coded_span: decode_coded_span_body;
//   sparse_dither: sparse_dither_body.
#define REDML_DECODE_LANES_ENTRIES(NS, TARGET)                                                                    \
    namespace NS {                                                                                                \
    template <class T>                                                                                            \
    TARGET bool decode_codes(const typename Storage<T>::Word *codes, T *out, size_t n, const Step1Int<T> *pred,   \
                             int64_t lo);                                                                         \
    template <class T, class C>                                                                                   \
    TARGET void decode_coded_span(REDML_SPAN_PARAMS);                                                             \
    template <class T>                                                                                            \
    TARGET void sparse_dither(const double *lambda, size_t n, uint32_t i0, uint32_t seed, T *out);                \
    }

REDML_DECODE_LANES_ENTRIES(lanes_portable, )
#ifdef REDML_AVX2_DISPATCH
REDML_DECODE_LANES_ENTRIES(lanes_avx2, REDML_TARGET_AVX2)
#endif
#ifdef REDML_AVX512_DISPATCH
REDML_DECODE_LANES_ENTRIES(lanes_avx512, REDML_TARGET_AVX512)
#endif

}  // namespace redml
