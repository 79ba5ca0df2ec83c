// codec.cpp: the encoder's pipeline of one frame and the encoding side of the C API of redml.h
// (the decoder: decode.cpp).
//
//   mask (special values, user mask) -> background (tile model) -> spots (ROI)
//   -> quantize (quantize.h) -> entropy (entropy.cpp) -> container (container.cpp)
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <type_traits>
#include <vector>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "background.h"
#include "codec.h"
#include "container.h"
#include "encoder.h"
#include "internal.h"
#include "entropy.h"
#include "error.h"
#include "lattice_chunk.h"
#include "pixels.h"
#include "quantize.h"
#include "redml.h"
#include "scratch.h"
#include "spots.h"
#include "stages.h"
#include "threads.h"

namespace redml {

namespace {

// ---- exact-pixel map as LEB128 run lengths (first run: not exact) ----

void put_varint(std::vector<uint8_t> &out, uint64_t v) {
    while (v >= 0x80) {
        out.push_back((uint8_t)(v | 0x80));
        v >>= 7;
    }
    out.push_back((uint8_t)v);
}

// The runs of a map fed in consecutive pieces (the encoder's bands, while they are in
// cache): a run may go on into the next piece.
class RunWriter {
  public:
    // Adds exact[i, end) (the piece after the previous one).
    void feed(const uint8_t *exact, size_t i, size_t end) {
        while (i < end) {
            const size_t j = byte_run_end(exact, i, end, cur_);
            if (j == end) return;  // the run goes on
            put_varint(out_, j - start_);
            start_ = i = j;
            cur_ = !cur_;
        }
    }
    // The runs of the n pixels fed.
    std::vector<uint8_t> finish(size_t n) {
        if (start_ < n) put_varint(out_, n - start_);
        return std::move(out_);
    }

  private:
    std::vector<uint8_t> out_;
    bool cur_ = false;  // the first run: not exact (empty where pixel 0 is)
    size_t start_ = 0;
};

std::vector<uint8_t> encode_runs(const uint8_t *exact, size_t n) {
    RunWriter w;
    w.feed(exact, 0, n);
    return w.finish(n);
}

// Concatenates vectors of words into one (little-endian) byte buffer, in one copy.
template <class W>
std::vector<uint8_t> concat_bytes(const std::vector<const std::vector<W> *> &parts) {
    size_t n = 0;
    for (const std::vector<W> *part : parts) n += part->size();
    std::vector<uint8_t> b(n * sizeof(W));
    size_t pos = 0;
    for (const std::vector<W> *part : parts) {
        if (!part->empty()) std::memcpy(b.data() + pos, part->data(), part->size() * sizeof(W));
        pos += part->size() * sizeof(W);
    }
    return b;
}

void validate_params(const redml_params &p) {
    check(p.mode == REDML_MODE_LOSSLESS || p.mode == REDML_MODE_QUANTIZED || p.mode == REDML_MODE_SPARSE,
          REDML_E_ARG, "mode must be lossless, quantized or sparse");
    check(std::isfinite(p.q) && p.q >= 0, REDML_E_ARG, "q must be a finite number >= 0");
    check(std::isfinite(p.gain) && p.gain > 0, REDML_E_ARG, "gain must be a finite number > 0");
    check(std::isfinite(p.mu_min) && p.mu_min >= 0, REDML_E_ARG, "mu_min must be a finite number >= 0");
    check(p.codec == REDML_CODEC_LZ4 || p.codec == REDML_CODEC_ZSTD || p.codec == REDML_CODEC_RANS, REDML_E_ARG,
          "codec must be rans, lz4 or zstd");
    check(p.codec != REDML_CODEC_RANS || p.shuffle != REDML_SHUFFLE_BIT, REDML_E_ARG,
          "rans codes byte planes: use the byte shuffle (or none)");
    check(p.shuffle >= REDML_SHUFFLE_NONE && p.shuffle <= REDML_SHUFFLE_BIT, REDML_E_ARG, "unknown shuffle");
    check(redml_recon_allowed(p.mode, p.recon, 0, 0), REDML_E_ARG,
          "reconstruction not defined for this mode (Poisson: sparse only; mean and draw: quantized only)");
    check(p.markers >= REDML_MARKERS_NEGATIVE && p.markers <= REDML_MARKERS_GAPS, REDML_E_ARG,
          "markers must be negative, extremes or gaps");
    check(std::isfinite(p.read_noise) && (p.read_noise >= 0 || p.read_noise == -1.0f), REDML_E_ARG,
          "read_noise must be a finite number >= 0 or auto (-1)");
    check(p.read_noise == 0 || integrating(p), REDML_E_ARG,
          "read_noise models integrating detectors: set markers (negative values are noise there)");
    check(!conditional_recon(p) || integrating(p) || p.gain == 1.0f, REDML_E_ARG,
          "the mean and draw reconstructions of photon counts need gain 1 (integrating data: set markers and read_noise)");
    check(!conditional_recon(p) || !integrating(p) || p.read_noise != 0, REDML_E_ARG,
          "the mean and draw reconstructions of integrating data need read_noise > 0 or auto");
    check(p.tile >= 1 && p.tile <= kMaxTile, REDML_E_ARG, "tile must be in [1, 1024]");
    check(p.block_elems >= 256 && p.block_elems <= (1u << 24) && p.block_elems % 8 == 0, REDML_E_ARG,
          "block_elems must be a multiple of 8 in [256, 2^24]");
    check(std::isfinite(p.roi_snr) && p.roi_snr > 0, REDML_E_ARG, "roi_snr must be a finite number > 0");
    check(p.level >= -7 && p.level <= 22, REDML_E_ARG, "zstd level must be in [-7, 22]");
}


// ---------------------------------------------------------------- encoder

// The chunk being written, kept by the calling thread apart from the work buffers (their
// limit stays for them: a Pilatus 6M int32 frame's fill 100 MB).
struct ChunkScratch {
    std::vector<uint8_t> chunk[2];  // the chunk kept so far, and the one a second codec tries
    size_t held() const { return held_bytes(chunk[0], chunk[1]); }
};

ChunkScratch &chunk_scratch() {  // the calling thread's, one for every pixel type
    thread_local ChunkScratch sc;
    return sc;
}


// The model the conditional reconstructions decode from: tile means of the background
// pixels only (ROI pixels left out: spot signal in a tile would raise its mean, and every
// background pixel decoded from it, so integrated intensities would come out low), and a
// tile without background pixels (ROI, gaps) takes its neighbours' mean, so interpolation
// near it does not pull towards 0.
template <class T>
BackgroundModel fit_background_model_outside_roi(const T *f, const uint8_t *usable, const uint8_t *exact,
                                                 uint32_t H, uint32_t W,
                                                 const redml_params &p, int nt) {
    const size_t N = (size_t)H * W;
    std::vector<uint8_t> &buffer = work_scratch().background;
    uint8_t *background = scratch(buffer, N);
    for (size_t i = 0; i < N; i++) background[i] = usable[i] & (exact[i] == 0);
    TileGrid g(H, W, p.tile);
    BackgroundModel m = fit_background(f, background, g, p, nt);
    std::vector<uint8_t> known(g.count(), 0);
    for (uint32_t y = 0; y < H; y++)
        for (uint32_t tx = 0; tx < g.cols; tx++) {  // a tile is known if any of its pixels is background
            const size_t x0 = (size_t)tx * g.tile, len = std::min<size_t>(g.tile, W - x0);
            uint8_t &k = known[(size_t)(y / g.tile) * g.cols + tx];
            k |= byte_run_end(background + (size_t)y * W + x0, 0, len, false) < len;
        }
    for (bool changed = true; changed;) {  // grow the known tiles into the empty ones
        changed = false;
        std::vector<uint8_t> next = known;
        for (uint32_t ty = 0; ty < g.rows; ty++)
            for (uint32_t tx = 0; tx < g.cols; tx++) {
                size_t t = (size_t)ty * g.cols + tx;
                if (known[t]) continue;
                double sum = 0;
                int n = 0;
                for (int dy = -1; dy <= 1; dy++)
                    for (int dx = -1; dx <= 1; dx++) {
                        int64_t yy = (int64_t)ty + dy, xx = (int64_t)tx + dx;
                        if (yy < 0 || xx < 0 || yy >= g.rows || xx >= g.cols) continue;
                        size_t u = (size_t)yy * g.cols + (size_t)xx;
                        if (known[u]) sum += m.mean[u], n++;
                    }
                if (n) {
                    m.mean[t] = (float)(sum / n);
                    m.step[t] = tile_step<T>(m.mean[t], p);
                    next[t] = 1;
                    changed = true;
                }
            }
        known.swap(next);
    }
    return m;
}

// The encoder's step-1 predictions: the pixel type for 16-bit pixels (predictions are clamped
// to the dtype), whose codes it computes in 16-bit lanes.
template <class T>
using EncodePred = typename std::conditional<sizeof(T) == 2, T, int64_t>::type;


// The codes of n step-1 pixels, written as if none were kept exactly; whether none is
// (then they are the span's codes). A loop without stores that depend on the data, so it
// vectorizes (32-bit arithmetic for 16-bit pixels, where residuals fit).
template <class T>
REDML_ALWAYS_INLINE bool step1_codes_body(const T *__restrict f, const uint8_t *__restrict exact,
                                          const uint8_t *__restrict usable, size_t n,
                                          const EncodePred<T> *__restrict pred,
                                          typename Storage<T>::Word *__restrict codes) {
    using S = Storage<T>;
    if constexpr (sizeof(T) == 2) {
        // 16-bit lanes: the residual modulo 2^16, its zigzag code, and whether the true
        // residual overflows 16 bits (then its code would be above 0xFFFF): the sign rule of
        // a signed subtraction, on values offset by 2^15 for unsigned pixels.
        const uint16_t offset = std::is_signed<T>::value ? 0 : 0x8000;
        uint16_t keep = 0;  // bit 15: some pixel kept (one 16-bit reduction: it vectorizes)
        for (size_t i = 0; i < n; i++) {
            const uint16_t x = (uint16_t)f[i], q = (uint16_t)pred[i], d = (uint16_t)(x - q);
            keep |= (uint16_t)((x ^ q) & (x ^ offset ^ d));
            keep |= (uint16_t)(((exact[i] != 0) | (usable[i] == 0)) << 15);
            codes[i] = (uint16_t)((uint16_t)(d << 1) ^ (uint16_t)((int16_t)d >> 15));
        }
        return !(keep & 0x8000);
    }
    using A = Step1Int<T>;
    using U = typename std::make_unsigned<A>::type;
    int keep = 0;
    for (size_t i = 0; i < n; i++) {
        const A d = (A)f[i] - pred[i];
        const U z = ((U)d << 1) ^ (U)(d >> (8 * sizeof(A) - 1));
        keep |= (exact[i] != 0) | (usable[i] == 0) | (z > (U)S::sym_max);
        codes[i] = (typename S::Word)z;
    }
    return !keep;
}

// Step-1 pixels: chunks without an exactly kept pixel (the usual ones) vectorized, the
// others compacted run by run, counters in registers. One body compiled per target and
// dispatched once per span (a call per 64-pixel chunk cost as much as the chunk's work).
template <class T>
REDML_ALWAYS_INLINE void step1_span_body(const T *__restrict f, uint8_t *__restrict exact,
                                         const uint8_t *__restrict usable, size_t n, const EncodePred<T> *pred,
                                         typename Storage<T>::Word *__restrict vals,
                                         typename Storage<T>::Word *__restrict codes, size_t *nv_io, size_t *nc_io) {
    using S = Storage<T>;
    using Word = typename S::Word;
    const size_t kChunk = 64;
    size_t nv = *nv_io, nc = *nc_io;
    for (size_t c0 = 0; c0 < n; c0 += kChunk) {
        const size_t c1 = std::min(n, c0 + kChunk);
        const bool none_kept = c1 - c0 == kChunk  // (a constant count: the full chunks' loop unrolled)
                                   ? step1_codes_body<T>(f + c0, exact + c0, usable + c0, kChunk, pred + c0, codes + nc)
                                   : step1_codes_body<T>(f + c0, exact + c0, usable + c0, c1 - c0, pred + c0, codes + nc);
        if (none_kept) {
            nc += c1 - c0;
            continue;
        }
        // Some pixel kept: which ones (a loop that vectorizes), then the runs of coded pixels
        // moved down over the kept ones (their codes are written from nc on) and each kept
        // pixel's exact value appended (few runs a chunk: spots and gaps are clustered).
        uint8_t kept[kChunk];
        const size_t m = c1 - c0;
        for (size_t i = 0; i < m; i++) {
            const uint64_t z = redml_zigzag64((int64_t)f[c0 + i] - (int64_t)pred[c0 + i]);
            kept[i] = (exact[c0 + i] != 0) | (usable[c0 + i] == 0) | (z > S::sym_max);
        }
        size_t w = nc;
        for (size_t i = 0; i < m;) {
            const size_t coded_end = byte_run_end(kept, i, m, false);
            if (w != nc + i) std::memmove(codes + w, codes + nc + i, (coded_end - i) * sizeof(Word));
            w += coded_end - i;
            for (i = coded_end; i < m && kept[i]; i++) {
                vals[nv++] = S::exact_word(f[c0 + i], pred[c0 + i]);
                exact[c0 + i] = 1;
            }
        }
        nc = w;
    }
    *nv_io = nv;
    *nc_io = nc;
}

REDML_SIMD_CLONES((template <class T>), void, step1_span, (<T>),
                  (const T *f, uint8_t *exact, const uint8_t *usable, size_t n, const EncodePred<T> *pred,
                   typename Storage<T>::Word *vals, typename Storage<T>::Word *codes, size_t *nv, size_t *nc),
                  (f, exact, usable, n, pred, vals, codes, nv, nc),
                  step1_span_body<T>(f, exact, usable, n, pred, vals, codes, nv, nc))

// The symbol of a background pixel, or false (store it exactly): the midpoint quantizer or
// the bins of the conditional reconstructions, for photon counts or integrating data
// (noise: negative values are noise, no low-count rule). Inlined: the lane loops of
// quantize_int_span compile it for their target (a call into SSE code from AVX-512 code
// costs a state transition per pixel).
template <class T>
REDML_ALWAYS_INLINE bool code_int(int64_t x, const TileCoder<T> &tc, const typename TileCoder<T>::Pixel &px, bool noise,
                                  bool conditional, uint64_t *sym) {
    using S = Storage<T>;
    if (conditional)
        return noise ? redml_quantize_bin_rn(x, tc.s_int, tc.inv_step, px.u_int, px.base, S::sym_max, sym)
                     : redml_quantize_bin(x, tc.s_int, tc.inv_step, px.u_int, px.base, S::hi(), S::sym_max, sym);
    return noise ? redml_quantize_int_rn(x, tc.s_int, tc.inv_step, px.u_int, px.base, S::lo(), S::hi(), S::sym_max, sym)
                 : redml_quantize_int(x, tc.s_int, tc.inv_step, px.u_int, px.base, S::lo(), S::hi(), S::sym_max, sym);
}
template <class T>
bool code_float(float x, const TileCoder<T> &tc, const typename TileCoder<T>::Pixel &px, bool noise, bool conditional,
                uint32_t *sym) {
    if (conditional) return redml_bin_float_sym(x, tc.step, px.u_float, px.base, sym);
    return noise ? redml_quantize_float_rn(x, tc.step, px.u_float, px.base, sym)
                 : redml_quantize_float(x, tc.step, px.u_float, px.base, sym);
}

// Appends one pixel of a quantized span without branches: its symbol and phase to the codes
// (keep = false), else its exact value (residual against pred) to the values; marks it in exact.
template <class T>
REDML_ALWAYS_INLINE void append_pixel(bool keep, uint64_t sym, uint8_t phase, T x, int64_t pred, uint8_t *exact,
                                      typename Storage<T>::Word *__restrict vals,
                                      typename Storage<T>::Word *__restrict codes, uint8_t *__restrict tags,
                                      size_t &nv, size_t &nc) {
    codes[nc] = (typename Storage<T>::Word)sym;
    tags[nc] = phase;
    vals[nv] = Storage<T>::exact_word(x, pred);
    nc += !keep;
    nv += keep;
    *exact = keep;
}

// The symbol of 16-bit pixel x of a step-s tile (1 < s < 2^22) in 32-bit arithmetic, for the
// lane loops: whether it is coded (else stored exactly). code_int's rules (quantize.h) in
// int32: x + u < 2^23, and the bin offset k - base stays far inside 32 bits (|x - pred| < 2^17).
template <class T, bool kNoise, bool kConditional>
REDML_ALWAYS_INLINE bool code_int16(int32_t x, int32_t s, float inv_s, int32_t u, int32_t base, uint32_t *sym) {
    using S = Storage<T>;
    const int32_t k = redml_floordiv_small(x + u, s, inv_s);
    if (kConditional)
        return redml_bin_code<int32_t, uint32_t>(x, k, s, u, base, (int32_t)S::hi(), (uint32_t)S::sym_max, !kNoise, sym);
    return redml_midpoint_code<int32_t, uint32_t>(x, k, s, u, base, (int32_t)S::lo(), (int32_t)S::hi(),
                                                  (uint32_t)S::sym_max, !kNoise, sym);
}

// quantize_int_span_body for 16-bit pixels: dither, offset, phase and symbol of kLanes pixels
// in one branch-free pass of 32-bit lanes (vectorized), then the branch-free append.
template <class T, bool kNoise, bool kConditional>
REDML_ALWAYS_INLINE void quantize_int16_span(const TileCoder<T> &tc, const T *__restrict f, uint8_t *__restrict exact,
                                             const uint8_t *__restrict usable, uint32_t i0, size_t n, int64_t pred,
                                             uint32_t seed, typename Storage<T>::Word *__restrict vals,
                                             typename Storage<T>::Word *__restrict codes, uint8_t *__restrict tags,
                                             size_t *nv_io, size_t *nc_io) {
    const int32_t s = (int32_t)tc.s_int, pred_q = (int32_t)tc.off.pred_q, pred_r = (int32_t)tc.off.pred_r;
    const uint32_t mul_hi = tc.off.phase_mul_hi, mul_lo = tc.off.phase_mul_lo;
    const float inv_s = 1.0f / (float)s;
    size_t nv = *nv_io, nc = *nc_io;
    for (size_t c = 0; c < n; c += kLanes) {
        const size_t m = std::min(kLanes, n - c);
        uint32_t sym[kLanes];
        uint8_t phase[kLanes], coded[kLanes];
        for (size_t j = 0; j < m; j++) {
            const size_t i = c + j;
            const int32_t u = (int32_t)redml_dither_int(seed, i0 + (uint32_t)i, s);
            uint32_t ph;
            const int32_t base = redml_offset_as<int32_t>(pred_q, pred_r, mul_hi, mul_lo, u, s, &ph);
            phase[j] = (uint8_t)ph;
            const bool ok = code_int16<T, kNoise, kConditional>((int32_t)f[i], s, inv_s, u, base, &sym[j]);
            coded[j] = ok & (exact[i] == 0) & (usable[i] != 0);
        }
        for (size_t j = 0; j < m; j++)
            append_pixel<T>(!coded[j], sym[j], phase[j], f[c + j], pred, exact + c + j, vals, codes, tags, nv, nc);
    }
    *nv_io = nv;
    *nc_io = nc;
}

// Quantizes n pixels of one row of an integer tile with step > 1 (quantize.h), kLanes at
// a time: the dither, offset and phase of every pixel in one vectorized pass, then each
// pixel's symbol (with its phase in tags) or exact value, appended without branches.
template <class T>
REDML_ALWAYS_INLINE void quantize_int_span_body(const TileCoder<T> &tc, const T *__restrict f, uint8_t *__restrict exact,
                                                const uint8_t *__restrict usable, uint32_t i0, size_t n, int64_t pred,
                                                bool noise, bool conditional, uint32_t seed, typename Storage<T>::Word *__restrict vals,
                                                typename Storage<T>::Word *__restrict codes, uint8_t *__restrict tags,
                                                size_t *nv_io, size_t *nc_io) {
    if constexpr (sizeof(T) == 2) {  // 32-bit lanes (steps of 16-bit data are below 2^22)
        // (no lambda here: it would be compiled for the default target, not this body's)
        if (noise && conditional)
            quantize_int16_span<T, true, true>(tc, f, exact, usable, i0, n, pred, seed, vals, codes, tags, nv_io, nc_io);
        else if (noise)
            quantize_int16_span<T, true, false>(tc, f, exact, usable, i0, n, pred, seed, vals, codes, tags, nv_io, nc_io);
        else if (conditional)
            quantize_int16_span<T, false, true>(tc, f, exact, usable, i0, n, pred, seed, vals, codes, tags, nv_io, nc_io);
        else
            quantize_int16_span<T, false, false>(tc, f, exact, usable, i0, n, pred, seed, vals, codes, tags, nv_io, nc_io);
        return;
    }
    size_t nv = *nv_io, nc = *nc_io;
    for (size_t c = 0; c < n; c += kLanes) {
        const size_t m = std::min(kLanes, n - c);
        int64_t u[kLanes], base[kLanes];
        uint8_t phase[kLanes];
        tc.int_lanes(seed, i0 + (uint32_t)c, m, u, base, phase);
        for (size_t j = 0; j < m; j++) {
            const size_t i = c + j;
            uint64_t sym = 0;
            bool keep = exact[i] || !usable[i];
            if (!keep) {
                typename TileCoder<T>::Pixel px;
                px.u_int = u[j];
                px.base = base[j];
                keep = !code_int((int64_t)f[i], tc, px, noise, conditional, &sym);
            }
            append_pixel<T>(keep, sym, phase[j], f[i], pred, exact + i, vals, codes, tags, nv, nc);
        }
    }
    *nv_io = nv;
    *nc_io = nc;
}

REDML_SIMD_CLONES((template <class T>), void, quantize_int_span, (<T>),
                  (const TileCoder<T> &tc, const T *f, uint8_t *exact, const uint8_t *usable, uint32_t i0, size_t n,
                   int64_t pred, bool noise, bool conditional, uint32_t seed, typename Storage<T>::Word *vals,
                   typename Storage<T>::Word *codes, uint8_t *tags, size_t *nv, size_t *nc),
                  (tc, f, exact, usable, i0, n, pred, noise, conditional, seed, vals, codes, tags, nv, nc),
                  quantize_int_span_body<T>(tc, f, exact, usable, i0, n, pred, noise, conditional, seed, vals, codes,
                                            tags, nv, nc))

struct BandCounts {
    size_t values = 0, codes = 0;
    bool tagged = false;  // codes carry their phases in tags (else all are phase 0)
};

// Quantizes the rows [y0, y1) into the band's exact values and codes (codes[j] of phase
// tags[j], tags written only where some tile of the band is not lossless); marks every
// exactly stored pixel in `exact`.
template <class T>
BandCounts quantize_band(const T *f, uint8_t *exact, const uint8_t *usable, uint32_t y0, uint32_t y1,
                                        uint32_t W, const BackgroundModel &model, const std::vector<int64_t> &preds,
                                        const std::vector<TileCoder<T>> &coders, const redml_params &p, bool coded,
                                        bool conditional,
                                        typename Storage<T>::Word *vals, typename Storage<T>::Word *codes,
                                        uint8_t *tags) {
    using S = Storage<T>;
    using Word = typename S::Word;
    const TileGrid &g = model.grid;
    const bool noise = integrating(p);
    size_t nv = 0, nc = 0;
    const bool tagged = !band_is_step1<T>(model, y0, y1);
    std::vector<EncodePred<T>> pred_row(S::is_float ? 0 : W);
    for (uint32_t y = y0; y < y1; y++) {
        if (!S::is_float && (y == y0 || y % g.tile == 0)) prediction_row(preds, g, y, pred_row.data());
        if (!tagged && coded) {  // all tiles lossless: the whole row at once
            const size_t i0 = (size_t)y * W;
            step1_span(f + i0, exact + i0, usable + i0, W, pred_row.data(), vals, codes, &nv, &nc);
            continue;
        }
        for (uint32_t tx = 0; tx < g.cols; tx++) {
            const size_t t = (size_t)(y / g.tile) * g.cols + tx;
            const int64_t pred = preds[t];
            const size_t i0 = (size_t)y * W + (size_t)tx * g.tile;
            const size_t i1 = (size_t)y * W + std::min<size_t>(W, (size_t)(tx + 1) * g.tile);
            if (!S::is_float && coded && model.step[t] == 1.0f) {
                // Step 1 (lossless tile): no dither, one bin per value, phase 0, and the
                // code is the zigzag residual against the prediction (redml_quantize_int
                // and redml_quantize_bin reduce to this).
                if (tagged) std::memset(tags + nc, 0, i1 - i0);
                step1_span(f + i0, exact + i0, usable + i0, i1 - i0, pred_row.data() + (i0 - (size_t)y * W), vals, codes,
                           &nv, &nc);
                continue;
            }
            if constexpr (!S::is_float) {
                if (coded) {
                    quantize_int_span<T>(coders[t], f + i0, exact + i0, usable + i0, (uint32_t)i0, i1 - i0, pred,
                                         noise, conditional, p.seed, vals, codes, tags, &nv, &nc);
                    continue;
                }
            }
            for (size_t i = i0; i < i1; i++) {
                bool keep = exact[i] || !usable[i];
                if (!keep && coded) {
                    const TileCoder<T> &tc = coders[t];
                    auto px = tc.at(p.seed, i);
                    if constexpr (S::is_float) {
                        uint32_t sym = 0;
                        keep = !(tc.step > 0 && code_float(f[i], tc, px, noise, conditional, &sym));
                        if (!keep) codes[nc] = sym, tags[nc++] = (uint8_t)px.phase;
                    } else {
                        uint64_t sym = 0;
                        keep = !code_int((int64_t)f[i], tc, px, noise, conditional, &sym);
                        if (!keep) codes[nc] = (Word)sym, tags[nc++] = (uint8_t)px.phase;
                    }
                }
                if (keep) vals[nv++] = S::exact_word(f[i], pred);
                exact[i] = keep;
            }
        }
    }
    return {nv, nc, tagged};
}

// The codecs an encoder tries (codec, zstd level), the smaller chunk kept: the one asked
// for, and for sparse chunks asked in rANS (the default) zstd too. A sparse chunk is mostly
// exact values, with long runs that rANS's order-0 coder cannot use (detector gaps and
// markers, stored as their difference from the tile's prediction: constant along a tile's
// row; spot pixels in raster runs): zstd makes them 3.7x (Pilatus 6M) and 3.3x (JUNGFRAU
// 1M) smaller, 10% on frames without markers; rANS stays ahead where exact values are
// noise without runs (a region kept whole). Level 12: 10% smaller than level 1 at a cost
// the spot search dwarfs (above it the encode time grows, 2x at 19, for 7% more).
struct ChunkCodec {
    redml_codec codec;
    int level;
};
std::vector<ChunkCodec> chunk_codecs(const redml_params &p) {
    if (p.mode == REDML_MODE_SPARSE && p.codec == REDML_CODEC_RANS)
        return {{REDML_CODEC_RANS, p.level}, {REDML_CODEC_ZSTD, std::max(p.level, 12)}};
    return {{p.codec, p.level}};
}

// Codes of each phase among a band's tags[0, n), in its first half (first) and in all (all,
// added to): the halves counted in one loop, two independent chains of counter updates
// (one chain waits on each store of a counter to the next code of its phase).
void band_phase_counts(const uint8_t *tags, size_t n, size_t *first, size_t *all) {
    const size_t half = n / 2;
    size_t second[REDML_PHASES] = {0};
    for (size_t j = 0; j < half; j++) {
        first[tags[j]]++;
        second[tags[half + j]]++;
    }
    if (n % 2) second[tags[n - 1]]++;
    for (int ph = 0; ph < REDML_PHASES; ph++) all[ph] += first[ph] + second[ph];
}

// A band's codes into their phase streams (pos[ph]: where its codes of phase ph go; first: the
// counts of its first half), the two halves in one loop as band_phase_counts does.
template <class Word>
void scatter_band_phases(const Word *__restrict codes, const uint8_t *__restrict tags, size_t n, const size_t *first,
                         const size_t *pos, Word *__restrict streams) {
    const size_t half = n / 2;
    size_t a[REDML_PHASES], b[REDML_PHASES];
    for (int ph = 0; ph < REDML_PHASES; ph++) a[ph] = pos[ph], b[ph] = pos[ph] + first[ph];
    for (size_t j = 0; j < half; j++) {
        streams[a[tags[j]]++] = codes[j];
        streams[b[tags[half + j]]++] = codes[half + j];
    }
    if (n % 2) streams[b[tags[n - 1]]++] = codes[n - 1];
}

// The settings with the read noise the encoder uses: estimated from the frame's usable
// pixels where it is auto (< 0) in quantized and sparse mode (there only for the ROI's
// spot finder and the pixels above the model: sparse chunks do not store it), 0 in
// lossless mode.
template <class T>
redml_params with_read_noise(const T *f, const uint8_t *usable, uint32_t H, uint32_t W, const redml_params &p_in,
                             int nt) {
    redml_params p = p_in;
    if (p.read_noise < 0)
        p.read_noise = p.mode != REDML_MODE_LOSSLESS
                           ? (float)estimate_read_noise(f, usable, TileGrid(H, W, p.tile), p, nt)
                           : 0.0f;
    return p;
}

// Sparse mode on integrating data: the pixels more than roi_snr sigma above the model
// (the finder's variance, gain * model + read_noise^2) join the exact region, as pyFAI's
// sparsify keeps its pixels. At a fraction of a photon per pixel with read noise, the
// finder's spots leave out the weak reflections, whose signal is a few isolated photons:
// the model alone loses them (DIALS: mean dsig of the weak ones -0.84 on simulated
// JUNGFRAU stills). Then their neighbours more than kGrowSigmas above the model join too:
// a reflection's photons cluster where the background's tail pixels are alone, so its
// pixels under the cut are kept at a fraction of the cost of a lower cut everywhere
// (simulated JUNGFRAU stills, DIALS: the weak reflections' lost foreground -0.33 -> -0.20
// sigma for 14% more bytes; a cut at 2.5 sigma everywhere cost 65% more bytes for less).
// The model is then refitted on the pixels left (encode_frame), so that the pixels kept
// and the model under them keep the background's sum. work: n pixels of scratch.
const double kGrowSigmas = 2.0;

template <class T>
void mark_above_model(const T *f, const uint8_t *usable, const BackgroundModel &model, const redml_params &p,
                      uint32_t H, uint32_t W, int nt, uint8_t *exact, uint8_t *work) {
    const TileGrid &g = model.grid;
    std::vector<BilinearAxis> cols(W);
    for (uint32_t x = 0; x < W; x++) cols[x] = bilinear_axis(x, g.tile, g.cols);
    const double rn2 = (double)p.read_noise * p.read_noise, k = p.roi_snr;
    // work[i]: 2 exact already or above the cut (the seeds), 1 more than kGrowSigmas sigma
    // above the model, else 0
    for_bands(H, nt, [&](size_t, uint32_t y0, uint32_t y1) {
        for (uint32_t y = y0; y < y1; y++) {
            const BilinearAxis r = bilinear_axis(y, g.tile, g.rows);
            for (uint32_t x = 0; x < W; x++) {
                const size_t i = (size_t)y * W + x;
                work[i] = exact[i] ? 2 : 0;
                if (exact[i] || !usable[i]) continue;
                const double v = bilinear_at(model, r, cols[x]);
                const double var = p.gain * std::max(v, 0.0) + rn2;
                const double d = (double)f[i] - v;
                if (var > 0 && d > 0) work[i] = d * d > k * k * var ? 2 : d * d > kGrowSigmas * kGrowSigmas * var ? 1 : 0;
            }
        }
    });
    // the seeds, and the pixels of level 1 next to one (reads work, writes exact)
    for_bands(H, nt, [&](size_t, uint32_t y0, uint32_t y1) {
        for (uint32_t y = y0; y < y1; y++) {
            const uint32_t ya = y > 0 ? y - 1 : y, yb = y + 1 < H ? y + 1 : y;
            for (uint32_t x = 0; x < W; x++) {
                const size_t i = (size_t)y * W + x;
                if (work[i] == 2) exact[i] = 1;
                if (work[i] != 1) continue;
                const uint32_t xa = x > 0 ? x - 1 : x, xb = x + 1 < W ? x + 1 : x;
                for (uint32_t yy = ya; yy <= yb && !exact[i]; yy++)
                    for (uint32_t xx = xa; xx <= xb; xx++)
                        if (work[(size_t)yy * W + xx] == 2) {
                            exact[i] = 1;
                            break;
                        }
            }
        }
    });
}

// Sparse mode: each tile mean rounded to a power of two at most half its standard
// error (the noise sigma over the square root of the tile's pixels), which it cannot resolve
// anyway: the low mantissa bits become zeros, and the model, most of a blank or weak frame's
// chunk (77% on simulated 1 photon/px stills), 2.6x smaller. The rounding error, at most
// a quarter of the standard error (adding 2% to the model noise variance), averages out
// over tiles.
void round_sparse_means(BackgroundModel &model, const redml_params &p) {
    const double n = (double)model.grid.tile * model.grid.tile;
    for (float &mean : model.mean) {
        const double se = model_sigma(std::max((double)mean, 0.0), p) / std::sqrt(n);
        if (!(se > 0) || !std::isfinite(mean)) continue;
        const double quantum = std::ldexp(1.0, (int)std::floor(std::log2(se / 2)));
        mean = (float)(std::nearbyint(mean / quantum) * quantum);
    }
}

template <class T>
void encode_frame(const T *f, uint32_t H, uint32_t W, const uint8_t *roi_in, const uint8_t *mask_in,
                  const redml_params &p_in, SpotRequest *spots, void **out, size_t *out_size,
                  const LatticeRequest *lattice) {
    using S = Storage<T>;
    using Word = typename S::Word;
    const int nt = resolve_threads(p_in.nthreads);
    const size_t N = (size_t)H * W;
    stage_begin();
    EncodeScratch &sc = work_scratch();
    ReleaseIfLarge<EncodeScratch> release{sc};

    // mask: pixels the model must ignore and that are always stored exactly
    uint8_t *usable = scratch(sc.usable, N);
    for_bands(H, nt, [&](size_t, uint32_t y0, uint32_t y1) {
        const size_t i0 = (size_t)y0 * W;
        usable_pixels(f + i0, mask_in ? mask_in + i0 : nullptr, usable + i0, (size_t)(y1 - y0) * W, p_in.markers);
    });
    stage_mark("mask");
    const redml_params p = with_read_noise(f, usable, H, W, p_in, nt);
    const bool conditional = conditional_recon(p);
    check(!conditional || !S::is_float || integrating(p), REDML_E_ARG,
          "the mean and draw reconstructions of float data need integrating data (markers, read_noise)");
    // spots
    // Lossless mode is the quantized path with every step 1: keeping spots and special
    // pixels (gaps, saturation) apart from the background still pays (at 0.05 photons/px
    // the background stream alone is 15% smaller than one stream with the spots in it).
    uint8_t *exact = scratch(sc.exact, N);
    if (roi_in) std::memcpy(exact, roi_in, N);
    else if (spots) {
        // the finder ignores its own markers: the map above unless they differ from the
        // codec's; then the tags buffer, not needed before quantization, holds its own
        const uint8_t *finder_usable = usable;
        if (spots->fp.markers != p.markers) {
            uint8_t *own = scratch(sc.tags, N);
            usable_pixels(f, mask_in, own, N, spots->fp.markers);
            finder_usable = own;
        }
        spots->peaks = find_spots(f, finder_usable, H, W, spots->fp, exact, nt, p.roi_margin);
        stage_mark("roi dilation");
    } else {
        FinderParams fp;
        fp.gain = p.gain;
        fp.read_noise = p.read_noise;  // as estimated (integrating data), else 0
        fp.markers = p.markers;
        fp.sigma_s = p.roi_snr;
        fp.mask_all_strong = true;
        fp.masked_pixels_neutral = true;
        find_spots(f, usable, H, W, fp, exact, nt, p.roi_margin);
        stage_mark("roi dilation");
    }
    // the lattice's discs: exact, stored as the crystal models (the mask's runs leave them out)
    std::vector<uint8_t> lattice_map;
    uint64_t lattice_hash = 0;
    if (lattice) {
        lattice_map.resize(N);
        lattice_hash = lattice_region(lattice->crystals, lattice->n, H, W, lattice_map.data(), REDML_E_ARG);
        for (size_t i = 0; i < N; i++) exact[i] |= lattice_map[i];
        stage_mark("lattice region");
    }
    // background model and quantization. With one thread the model's tile rows are fitted band
    // by band, each just before its band is quantized, while its pixels are in cache (the
    // conditional reconstructions' model fills tiles from their neighbours: all of it first).
    const TileGrid grid(H, W, p.tile);
    const bool fused = nt == 1 && !conditional && p.mode != REDML_MODE_SPARSE;  // (sparse: its model adjusted first)
    BackgroundModel model = conditional ? fit_background_model_outside_roi(f, usable, exact, H, W, p, nt)
                            : fused     ? unfitted_background<T>(grid)
                                        : fit_background(f, usable, grid, p, nt);
    if (p.mode == REDML_MODE_SPARSE && integrating(p) && !roi_in) {
        mark_above_model(f, usable, model, p, H, W, nt, exact, scratch(sc.tags, N));  // (tags: free until quantized)
        // refitted on the pixels it stands for: the clip of the first fit left in some
        // that are now exact, which would be counted twice (+0.03 photon/px at 0.3)
        model = fit_background_model_outside_roi(f, usable, exact, H, W, p, nt);
        stage_mark("sparse: pixels above the model");
    }
    if (p.mode == REDML_MODE_SPARSE) round_sparse_means(model, p);
    const bool coded = p.mode != REDML_MODE_SPARSE;  // background goes to the code stream
    std::vector<int64_t> preds;
    std::vector<TileCoder<T>> coders;
    uint32_t fitted_rows = 0;  // tile rows with their model, predictions and coders
    auto complete_tile_rows = [&](uint32_t ty1) {
        if (ty1 <= fitted_rows) return;
        if (fused) fit_tile_rows(f, usable, p, fitted_rows, ty1, model, 1);
        extend_tile_coding<T>(model, (size_t)ty1 * grid.cols, coded, preds, coders);
        fitted_rows = ty1;
    };
    if (!fused) {
        complete_tile_rows(grid.rows);
        stage_mark("background model");
    }
    // quantize, band by band: each band writes its exact values and codes (with their
    // phases) into its own slice of the frame-sized work buffers
    const size_t nbands = (H + kRowsPerBand - 1) / kRowsPerBand;
    Word *words = (Word *)scratch(sc.words, (3 * N * sizeof(Word) + 3) / 4);
    Word *band_vals = words, *band_codes = words + N, *streams = words + 2 * N;
    uint8_t *tags = scratch(sc.tags, N);
    std::vector<size_t> nv(nbands), nc(nbands);
    std::vector<uint8_t> tagged(nbands), in_order(nbands, 0);
    std::vector<size_t> band_phase((nbands + 1) * REDML_PHASES, 0);  // codes of each phase per band
    std::vector<size_t> first_half(nbands * REDML_PHASES, 0);         // ... in the band's first half
    // With one thread the bands run in order: while every code so far is of phase 0 (lossless
    // tiles, or no codes), each band writes its values and codes right after the previous
    // band's, into their streams, and nothing is moved afterwards.
    bool still_in_order = nt == 1;
    size_t nv_before = 0, nc_before = 0;  // (in order) values and codes of the bands before
    // With one thread, the exact map's runs band by band while the band is in cache (the
    // lattice's runs leave its discs out: after all bands).
    const bool runs_in_bands = nt == 1 && !lattice;
    RunWriter band_runs;
    for_bands(H, nt, [&](size_t b, uint32_t y0, uint32_t y1) {
        if (fused) {
            complete_tile_rows((y1 - 1) / grid.tile + 1);
            stage_mark("background model");  // (the stages alternate: each adds up its bands)
        }
        const size_t o = (size_t)y0 * W;
        if (still_in_order) still_in_order = !(coded && !band_is_step1<T>(model, y0, y1));  // (one thread only)
        in_order[b] = still_in_order;
        Word *vals = in_order[b] ? band_vals + nv_before : band_vals + o;
        Word *codes = in_order[b] ? streams + nc_before : band_codes + o;
        const BandCounts counts = quantize_band(f, exact, usable, y0, y1, W, model, preds, coders, p, coded, conditional,
                                                vals, codes, tags + o);
        nv[b] = counts.values;
        nc[b] = counts.codes;
        if (in_order[b]) nv_before += counts.values, nc_before += counts.codes;
        tagged[b] = counts.tagged;
        size_t *ph = &band_phase[(b + 1) * REDML_PHASES];
        if (!counts.tagged) ph[0] = counts.codes;
        else band_phase_counts(tags + o, counts.codes, &first_half[b * REDML_PHASES], ph);
        if (runs_in_bands) band_runs.feed(exact, o, (size_t)y1 * W);
        if (fused) stage_mark("quantize");
    });
    stage_mark("quantize");
    // streams: the exact values in raster order, then each phase's codes in raster order
    size_t n_exact = 0;
    for (size_t b = 0; b < nbands; b++) {  // values moved down in place (never forwards)
        const Word *from = in_order[b] ? band_vals + n_exact : band_vals + (size_t)b * kRowsPerBand * W;
        if (from != band_vals + n_exact) std::memmove(band_vals + n_exact, from, nv[b] * sizeof(Word));
        n_exact += nv[b];
    }
    size_t phase_start[REDML_PHASES + 1] = {0};
    for (int ph = 0; ph < REDML_PHASES; ph++) {
        size_t total = 0;
        for (size_t b = 0; b < nbands; b++) {  // band_phase becomes each band's start within the phase
            size_t n = band_phase[(b + 1) * REDML_PHASES + ph];
            band_phase[b * REDML_PHASES + ph] = total;
            total += n;
        }
        phase_start[ph + 1] = phase_start[ph] + total;
    }
    if (coded && nbands > 0 && !in_order[nbands - 1])
        for_bands(H, nt, [&](size_t b, uint32_t y0, uint32_t) {
            if (in_order[b]) return;  // its codes, all of phase 0, are in place at the start of the stream
            const size_t o = (size_t)y0 * W;
            size_t pos[REDML_PHASES];
            for (int ph = 0; ph < REDML_PHASES; ph++) pos[ph] = phase_start[ph] + band_phase[b * REDML_PHASES + ph];
            if (!tagged[b]) std::memcpy(streams + pos[0], band_codes + o, nc[b] * sizeof(Word));
            else scatter_band_phases(band_codes + o, tags + o, nc[b], &first_half[b * REDML_PHASES], pos, streams);
        });

    // entropy + container
    ChunkHeader h;
    h.dtype = dtype_of<T>();
    h.mode = p.mode;
    h.codec = p.codec;
    h.recon = p.recon;
    h.tile = p.tile;
    h.height = H;
    h.width = W;
    h.q = p.mode == REDML_MODE_QUANTIZED ? p.q : 0.0f;
    h.gain = p.gain;
    h.mu_min = p.mu_min;
    // what the decoder's model needs: the conditional reconstructions' and the sparse noisy
    // background's read noise (integrating data)
    h.read_noise = (conditional || p.mode == REDML_MODE_SPARSE) && integrating(p) ? p.read_noise : 0.0f;
    h.seed = p.seed;
    h.block_elems = p.block_elems;
    h.n_exact = n_exact;

    struct Pending {
        uint16_t type;
        redml_shuffle shuffle;
        uint8_t elem;
        const uint8_t *raw;
        size_t size;
    };
    const std::vector<uint8_t> model_bytes = concat_bytes<float>({&model.mean, &model.step});
    if (lattice)  // the runs: the exact pixels outside the discs (the decoder paints those)
        for (size_t i = 0; i < N; i++) lattice_map[i] = (exact[i] != 0) & (lattice_map[i] == 0);
    const std::vector<uint8_t> runs =
        runs_in_bands ? band_runs.finish(N) : encode_runs(lattice ? lattice_map.data() : exact, N);
    const std::vector<uint8_t> lattice_bytes =
        lattice ? write_lattice_section(lattice->crystals, lattice->n, lattice_hash) : std::vector<uint8_t>();
    std::vector<Pending> pending;
    pending.push_back({SECTION_MODEL, REDML_SHUFFLE_BYTE, 4, model_bytes.data(), model_bytes.size()});
    pending.push_back({SECTION_EXACT_MASK, REDML_SHUFFLE_NONE, 1, runs.data(), runs.size()});
    if (lattice)
        pending.push_back({SECTION_LATTICE, REDML_SHUFFLE_NONE, 1, lattice_bytes.data(), lattice_bytes.size()});
    pending.push_back({SECTION_EXACT_VALUES, p.shuffle, (uint8_t)sizeof(Word), (const uint8_t *)band_vals,
                       n_exact * sizeof(Word)});
    if (coded)
        for (int ph = 0; ph < REDML_PHASES; ph++)
            pending.push_back({SECTION_BACKGROUND_CODES, p.shuffle, (uint8_t)sizeof(Word),
                               (const uint8_t *)(streams + phase_start[ph]),
                               (phase_start[ph + 1] - phase_start[ph]) * sizeof(Word)});
    stage_mark("runs + streams");
    // The chunk is written in place into a buffer of its largest possible size, kept by the
    // thread (a fresh one was page faults and zeroing each frame), then copied once into
    // the caller's buffer.
    ChunkScratch &csc = chunk_scratch();
    ReleaseIfLarge<ChunkScratch> release_chunk{csc};
    std::vector<Section> sections(pending.size());
    size_t pos = 0;
    uint8_t *chunk = nullptr;
    int kept = 1;  // which of the thread's two buffers holds the chunk kept so far
    for (const ChunkCodec &cc : chunk_codecs(p)) {
        std::vector<StreamSpec> specs;
        size_t bound = chunk_header_size(pending.size());
        for (const Pending &pd : pending) {
            specs.push_back({pd.elem, pd.shuffle, cc.codec, cc.level, p.block_elems});
            bound += stream_bound(pd.size, specs.back());
        }
        // each codec writes into the thread's buffer that does not hold the chunk kept so far
        uint8_t *buf = scratch(csc.chunk[1 - kept], bound);
        std::vector<Section> tried(pending.size());
        size_t at = chunk_header_size(pending.size());
        for (size_t k = 0; k < pending.size(); k++) {
            Section &s = tried[k];
            s.type = pending[k].type;
            s.shuffle = pending[k].shuffle;
            s.elem = pending[k].elem;
            s.raw_size = pending[k].size;
            s.data = buf + at;
            s.stored_size = encode_stream(pending[k].raw, pending[k].size, specs[k], nt, buf + at);
            at += s.stored_size;
        }
        if (chunk != nullptr && at >= pos) continue;  // keep the smaller chunk
        chunk = buf, pos = at, sections.swap(tried), h.codec = cc.codec, kept = 1 - kept;
    }
    stage_mark("entropy");
    write_chunk_header(h, sections, chunk);
    *out = std::malloc(pos);
    check(*out != nullptr, REDML_E_NOMEM, "cannot allocate the output chunk");
    std::memcpy(*out, chunk, pos);
    *out_size = pos;
    stage_mark("write chunk");
}

}  // namespace

void codec_force_simd(int level) { forced_simd_level().store(level, std::memory_order_relaxed); }

std::string &last_error() {
    thread_local std::string message;
    return message;
}

}  // namespace redml

namespace redml {

void encode(const void *frame, redml_dtype dtype, uint32_t height, uint32_t width, const uint8_t *roi,
            const uint8_t *mask, const redml_params &p, SpotRequest *spots, void **out, size_t *out_size,
            const LatticeRequest *lattice) {
    check(frame && out && out_size, REDML_E_ARG, "null argument");
    check(!(roi && spots), REDML_E_ARG, "an ROI map and spots to find are exclusive");
    check(redml_dtype_size(dtype) != 0, REDML_E_ARG, "unsupported dtype");
    check(height >= 1 && width >= 1 && height <= kMaxSide && width <= kMaxSide &&
              (uint64_t)height * width <= kMaxPixels,
          REDML_E_ARG, "frame shape out of range (1..2^20 per side, at most 2^27 pixels)");
    validate_params(p);
    if (lattice) check_lattice_models(lattice->crystals, lattice->n, REDML_E_ARG);
    dispatch_dtype(dtype, [&](auto tag) {
        using T = decltype(tag);
        encode_frame<T>((const T *)frame, height, width, roi, mask, p, spots, out, out_size, lattice);
    });
}

}  // namespace redml

using namespace redml;

extern "C" {

void redml_default_params(redml_params *p) {
    p->mode = REDML_MODE_LOSSLESS;
    p->q = 0.0f;
    p->gain = 1.0f;
    p->mu_min = 1.0f;
    p->codec = REDML_CODEC_RANS;
    p->level = 1;
    p->shuffle = REDML_SHUFFLE_BYTE;
    p->recon = REDML_RECON_DITHER;
    p->tile = 32;
    p->roi_snr = 3.0f;
    p->roi_margin = 2;
    p->seed = 0x5eed1234u;
    p->block_elems = 1u << 18;
    p->nthreads = 0;
    p->read_noise = 0.0f;
    p->markers = REDML_MARKERS_NEGATIVE;
}

redml_status redml_check_params(const redml_params *p) {
    return guarded([&] {
        check(p != nullptr, REDML_E_ARG, "null argument");
        validate_params(*p);
    });
}

size_t redml_dtype_size(redml_dtype dtype) {
    switch (dtype) {
        case REDML_UINT16:
        case REDML_INT16: return 2;
        case REDML_INT32:
        case REDML_UINT32:
        case REDML_FLOAT32: return 4;
    }
    return 0;
}

redml_status redml_encode(const void *frame, redml_dtype dtype, uint32_t height, uint32_t width,
                          const uint8_t *roi, const uint8_t *mask, const redml_params *p, void **out,
                          size_t *out_size) {
    return guarded([&] {
        check(p != nullptr, REDML_E_ARG, "null argument");
        encode(frame, dtype, height, width, roi, mask, *p, nullptr, out, out_size);
    });
}

redml_status redml_encode_lattice(const void *frame, redml_dtype dtype, uint32_t height, uint32_t width,
                                  const uint8_t *roi, const uint8_t *mask, const redml_params *p,
                                  const redml_lattice *crystals, size_t n, void **out, size_t *out_size) {
    return guarded([&] {
        check(p != nullptr && crystals != nullptr, REDML_E_ARG, "null argument");
        const LatticeRequest lattice{crystals, n};
        encode(frame, dtype, height, width, roi, mask, *p, nullptr, out, out_size, &lattice);
    });
}

void redml_free(void *p) { std::free(p); }

unsigned redml_version_number(void) { return REDML_VERSION_NUMBER; }

const char *redml_strerror(redml_status s) {
    switch (s) {
        case REDML_OK: return "ok";
        case REDML_E_ARG: return "invalid argument";
        case REDML_E_CORRUPT: return "corrupt chunk";
        case REDML_E_VERSION: return "unsupported format version";
        case REDML_E_NOMEM: return "out of memory";
        case REDML_E_ENTROPY: return "entropy coder error";
        case REDML_E_INTERNAL: return "internal error";
    }
    return "unknown status";
}

const char *redml_last_error(void) { return last_error().c_str(); }

}  // extern "C"
