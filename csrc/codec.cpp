// codec.cpp: the pipeline of one frame and the C API of redml.h.
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

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the chunk format is little-endian");

namespace redml {

namespace {

const uint32_t kRowsPerBand = 64;

const size_t kLanes = REDML_LANES;  // pixels coded together (a tile row is cut into such spans)
static_assert(REDML_LANES % REDML_RECON_LANES == 0, "a span holds whole blocks of the conditional lanes");
const size_t kWordSlack = 64;  // spare bytes after the decoder's words (expand_slots reads 16 words at a time)

// The build of the codec's SIMD loops (encoder and decoder) that runs: pixels.h's
// simd_level (the best the CPU has, or the one a test forces).
#ifdef REDML_AVX512_DISPATCH
bool use_avx512() { return simd_level() == 3; }
#endif
#ifdef REDML_AVX2_DISPATCH
bool use_avx2() { return simd_level() >= 2; }
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

// Decodes the runs into `exact` (n bytes); returns the number of exact pixels.
uint64_t decode_runs(const uint8_t *p, size_t size, uint8_t *exact, size_t n) {
    size_t pos = 0, i = 0;
    uint8_t cur = 0;
    uint64_t n_exact = 0;
    bool first = true;
    while (pos < size) {
        uint64_t v = 0;
        int shift = 0;
        for (;;) {
            check(pos < size && shift <= 56, REDML_E_CORRUPT, "truncated run length in the exact mask");
            uint8_t b = p[pos++];
            v |= (uint64_t)(b & 0x7f) << shift;
            shift += 7;
            if (!(b & 0x80)) break;
        }
        check(v > 0 || first, REDML_E_CORRUPT, "empty run in the exact mask");
        check(v <= n - i, REDML_E_CORRUPT, "exact mask runs exceed the frame");
        std::memset(exact + i, cur, v);
        if (cur) n_exact += v;
        i += v;
        cur ^= 1;
        first = false;
    }
    check(i == n, REDML_E_CORRUPT, "exact mask runs do not cover the frame");
    return n_exact;
}

// The crystals of the chunk's lattice section (none without one) and its region hash.
std::vector<redml_lattice> chunk_lattice(const ParsedChunk &pc, uint64_t *region_hash) {
    const Section *lat_s = pc.find(SECTION_LATTICE);
    if (!lat_s) return {};
    std::vector<uint8_t> bytes(lat_s->raw_size);
    decode_stream(lat_s->data, lat_s->stored_size, bytes.data(), bytes.size(), spec_for(pc.header, *lat_s), 1);
    return read_lattice_section(bytes.data(), bytes.size(), region_hash);
}

// The stored exact-pixel map: the mask's runs, ORed with the discs that the lattice section's
// crystals paint (predicted again here, checked against the encoder's region hash); returns
// the number of exact pixels. runs_buf, region_buf: scratch for the decoded runs and the region.
uint64_t read_exact_map(const ParsedChunk &pc, uint8_t *exact, std::vector<uint8_t> &runs_buf,
                        std::vector<uint8_t> &region_buf, int nt) {
    const ChunkHeader &h = pc.header;
    const size_t N = (size_t)h.height * h.width;
    const Section *mask_s = pc.find(SECTION_EXACT_MASK);
    uint8_t *runs = scratch(runs_buf, std::max<size_t>(1, mask_s->raw_size));
    decode_stream(mask_s->data, mask_s->stored_size, runs, mask_s->raw_size, spec_for(h, *mask_s), nt);
    uint64_t n_exact = decode_runs(runs, mask_s->raw_size, exact, N);
    uint64_t stored_hash = 0;
    const std::vector<redml_lattice> crystals = chunk_lattice(pc, &stored_hash);
    if (crystals.empty()) return n_exact;
    uint8_t *region = scratch(region_buf, N);
    const uint64_t hash = lattice_region(crystals.data(), crystals.size(), h.height, h.width, region, REDML_E_CORRUPT);
    check(hash == stored_hash, REDML_E_CORRUPT,
          "the lattice region predicted here differs from the encoder's (a build that predicts differently)");
    // The encoder's runs leave the region out: the two add up.
    check(count_ones(exact, region, N) == 0, REDML_E_CORRUPT, "exact mask runs overlap the lattice region");
    for (size_t i = 0; i < N; i++) exact[i] |= region[i];
    return n_exact + count_ones(region, nullptr, N);
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

// Work buffers of one encode, kept by the calling thread across frames: no allocation,
// zeroing or page faults per frame once they have grown to the frame's size. Released
// after a frame above kKeepScratchBytes, so a one-off huge frame does not pin its memory.
struct EncodeScratch {
    std::vector<uint8_t> usable, exact, tags, background;
    std::vector<uint32_t> words;  // band outputs, then the streams (as Words)
    size_t held() const { return held_bytes(usable, exact, tags, background, words); }
};

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

// The calling thread's buffers (one set for every pixel type, encoder and decoder).
EncodeScratch &work_scratch() {
    thread_local EncodeScratch sc;
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

// Integer type of step-1 codes: 16-bit pixels' codes, predictions and residuals all fit
// 32-bit arithmetic (which vectorizes).
template <class T>
using Step1Int = typename std::conditional<sizeof(T) == 2, int32_t, int64_t>::type;
// The encoder's step-1 predictions: the pixel type for 16-bit pixels (predictions are clamped
// to the dtype), whose codes it computes in 16-bit lanes.
template <class T>
using EncodePred = typename std::conditional<sizeof(T) == 2, T, int64_t>::type;

// The tile predictions spread over pixel row y (pred[x] = preds of x's tile).
template <class P>
void prediction_row(const std::vector<int64_t> &preds, const TileGrid &g, uint32_t y, P *pred) {
    const int64_t *p = preds.data() + (size_t)(y / g.tile) * g.cols;
    for (uint32_t x = 0; x < g.width; x++) pred[x] = (P)p[x / g.tile];
}

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

// ---------------------------------------------------------------- decoder

template <class T>
BackgroundModel read_model(const ParsedChunk &pc, int nt) {
    const ChunkHeader &h = pc.header;
    const Section *s = pc.find(SECTION_MODEL);  // its size checked by parse_chunk
    TileGrid g(h.height, h.width, h.tile);
    std::vector<float> raw(2 * g.count());
    decode_stream(s->data, s->stored_size, (uint8_t *)raw.data(), s->raw_size, spec_for(h, *s), nt);
    BackgroundModel m;
    m.grid = g;
    m.mean.assign(raw.begin(), raw.begin() + g.count());
    m.step.assign(raw.begin() + g.count(), raw.end());
    for (size_t t = 0; t < g.count(); t++) {
        float mean = m.mean[t], step = m.step[t];
        // Float frames: the mean of finite float32 pixels is any finite float32.
        check(std::isfinite(mean) && (std::is_floating_point<T>::value || std::fabs(mean) < 1e10f), REDML_E_CORRUPT,
              "invalid model mean");
        if constexpr (std::is_floating_point<T>::value) {
            check(std::isfinite(step) && step >= 0 && step < 1e30f, REDML_E_CORRUPT, "invalid model step");
        } else {
            const bool conditional = h.recon == REDML_RECON_MEAN || h.recon == REDML_RECON_DRAW;
            check(step >= 1 && step <= 2097153.0f && std::floor(step) == step && (conditional || ((int64_t)step & 1)),
                  REDML_E_CORRUPT, "invalid model step");
        }
    }
    return m;
}

// The bilinear model (interpolate_mean, background.h) a pixel row at a time: the
// interpolations along the two tile rows around a pixel row are shared by every pixel row
// between those tile centres, then each pixel takes two products and a sum. The same
// operations in the same order as bilinear_at, so the same values.
class BilinearRows {
  public:
    BilinearRows() = default;
    explicit BilinearRows(const BackgroundModel &m) : m_(&m), top_(m.grid.width), bottom_(m.grid.width), row_(m.grid.width) {
        for (uint32_t x = 0; x < m.grid.width; x++) cols_.push_back(bilinear_axis(x, m.grid.tile, m.grid.cols));
    }
    explicit operator bool() const { return m_ != nullptr; }
    // The model at the pixels of row y, valid until the next call.
    const double *row(uint32_t y) {
        const TileGrid &g = m_->grid;
        const BilinearAxis r = bilinear_axis(y, g.tile, g.rows);
        if (r.i0 != top_row_ || r.i1 != bottom_row_) {
            along_tile_row(r.i0, top_.data());
            along_tile_row(r.i1, bottom_.data());
            top_row_ = r.i0;
            bottom_row_ = r.i1;
        }
        const double wt = 1 - r.w, wb = r.w;
        for (uint32_t x = 0; x < g.width; x++) row_[x] = wt * top_[x] + wb * bottom_[x];
        return row_.data();
    }

  private:
    void along_tile_row(uint32_t ty, double *v) const {
        const float *mean = m_->mean.data() + (size_t)ty * m_->grid.cols;
        for (size_t x = 0; x < cols_.size(); x++) {
            const BilinearAxis &c = cols_[x];
            v[x] = (1 - c.w) * (double)mean[c.i0] + c.w * (double)mean[c.i1];
        }
    }
    const BackgroundModel *m_ = nullptr;
    std::vector<BilinearAxis> cols_;
    std::vector<double> top_, bottom_, row_;
    uint32_t top_row_ = UINT32_MAX, bottom_row_ = UINT32_MAX;
};

// The per-bin tables of integrating integer data (quantize.h, "The same reconstruction from
// per-bin tables"), kept by each thread across the frames of one gain and read noise (a bin's
// tables do not depend on the model), found by a hash of the bin. A bin's tables are built
// on its second use (a bin met once costs the reference's work, not more), a component's
// rounding boundaries on its first draw; all in flat pools (offsets, no allocation per bin).
class NoiseTables {
  public:
    struct Bin {
        int64_t k0 = 0, k1 = -1;   // the components before the cap; k1 < k0: none
        double lg0 = 0;            // lgamma(k0 + 1)
        uint32_t terms = kNone;    // pool_ offset of nm[k1 - k0 + 1], then pd[k1 - k0 + 1]
        uint32_t draws = kNone;    // draw_of_ offset of each component's draw (kNone: not yet)
    };
    // This thread's tables for the chunk's gain and read noise (emptied when full: at most
    // about 30 MB per thread).
    static NoiseTables &get(double gain, double rn) {
        thread_local NoiseTables t;
        if (t.gain_ != gain || t.rn_ != rn || t.pool_.size() > kMaxPool || t.bins_.size() >= kMaxBins) t.reset(gain, rn);
        return t;
    }
    // The tables of bin a..b, nullptr where they do not apply (too many components, or the
    // bin's first use).
    const Bin *bin(int64_t a, int64_t b) {
        const uint64_t key = ((uint64_t)(a + ((int64_t)1 << 31)) << 23) ^ (uint64_t)(b - a);
        size_t slot = slot_of(key);
        if (slots_[slot] == 0) {  // first use: remembered only (while there is room)
            if (bins_.size() >= kMaxBins) return nullptr;
            if (2 * (bins_.size() + 1) > slots_.size()) {
                grow();
                slot = slot_of(key);
            }
            bins_.emplace_back();
            keys_[slot] = key;
            slots_[slot] = (uint32_t)bins_.size();
            return nullptr;
        }
        Bin &bin = bins_[slots_[slot] - 1];
        if (bin.terms == kNone) {
            if (pool_.size() > kMaxPool) return nullptr;  // full: the reference for new bins
            build(bin, a, b);
        }
        return bin.k1 >= bin.k0 && bin.k1 - bin.k0 < REDML_NOISE_KEPT ? &bin : nullptr;
    }
    const double *terms(const Bin &bin) const { return pool_.data() + bin.terms; }
    // The integer the draw with uniform r rounds to, from component k0 + i of bin a..b
    // (redml_truncnorm_round; the component's boundaries computed on its first draw); false
    // when the target is too close to a boundary to tell, or the bin too wide for boundaries
    // (or no room for them).
    bool round(const Bin &bin, int64_t a, int64_t b, int64_t i, double r, int64_t *x) {
        const int64_t n = b - a;
        uint32_t &di = draw_of_[bin.draws + i];
        if (di == kNone) {
            if (n > kMaxBounds || pool_.size() > kMaxPool) return false;
            Draw d;
            d.c = (double)(bin.k0 + i) * gain_;
            d.side = redml_truncnorm_setup(((double)a - 0.5 - d.c) / rn_, ((double)b + 0.5 - d.c) / rn_);
            d.bounds = (uint32_t)pool_.size();
            pool_.resize(pool_.size() + 2 * (size_t)n);
            double *h = pool_.data() + d.bounds;
            for (int64_t j = 0; j < n; j++) redml_truncnorm_boundary(&d.side, a, j, d.c, rn_, &h[j], &h[n + j]);
            di = (uint32_t)draws_.size();
            draws_.push_back(d);
        }
        const Draw &d = draws_[di];
        const double *h = pool_.data() + d.bounds;
        return redml_truncnorm_round(&d.side, h, h + n, a, n, r, x);
    }

  private:
    static constexpr uint32_t kNone = UINT32_MAX;
    static constexpr size_t kMaxPool = 1 << 21;  // doubles (16 MB)
    static constexpr size_t kMaxBins = 1 << 18;  // bins remembered (10 MB, and their hash slots)
    static constexpr int64_t kMaxBounds = 64;    // wider bins: few pixels per boundary
    struct Draw {  // one component's side of the inverse; its boundaries h[n], tol[n] at pool_ + bounds
        redml_truncnorm_side side;
        double c;
        uint32_t bounds;
    };
    void build(Bin &bin, int64_t a, int64_t b) {
        const double lo = (double)a - 0.5, hi = (double)b + 0.5;
        redml_noise_bin_components(lo, hi, gain_, rn_, &bin.k0, &bin.k1);
        bin.terms = (uint32_t)pool_.size();
        if (bin.k1 < bin.k0 || bin.k1 - bin.k0 >= REDML_NOISE_KEPT) return;
        const size_t n = (size_t)(bin.k1 - bin.k0 + 1);
        bin.lg0 = lgamma((double)bin.k0 + 1.0);
        pool_.resize(pool_.size() + 2 * n);
        double *nm = pool_.data() + bin.terms, *pd = nm + n;
        for (size_t i = 0; i < n; i++) {  // redml_recon_noise's terms, as it computes them
            const double c = (double)(bin.k0 + (int64_t)i) * gain_, al = (lo - c) / rn_, be = (hi - c) / rn_;
            nm[i] = redml_normal_mass(al, be);
            pd[i] = redml_normal_pdf(al) - redml_normal_pdf(be);
        }
        bin.draws = (uint32_t)draw_of_.size();
        draw_of_.resize(draw_of_.size() + n, kNone);
    }
    void reset(double gain, double rn) {
        gain_ = gain;
        rn_ = rn;
        bins_.clear();
        draws_.clear();
        draw_of_.clear();
        pool_.clear();
        keys_.assign(4096, 0);
        slots_.assign(4096, 0);
    }
    // Open addressing: the slot of key, or the empty slot where it goes (linear probing).
    size_t slot_of(uint64_t key) const {
        const size_t mask = slots_.size() - 1;
        size_t i = (size_t)((key * 0x9e3779b97f4a7c15ull) >> 40) & mask;
        while (slots_[i] != 0 && keys_[i] != key) i = (i + 1) & mask;
        return i;
    }
    void grow() {
        std::vector<uint64_t> keys = std::move(keys_);
        std::vector<uint32_t> slots = std::move(slots_);
        keys_.assign(2 * keys.size(), 0);
        slots_.assign(2 * slots.size(), 0);
        for (size_t i = 0; i < slots.size(); i++)
            if (slots[i] != 0) {
                const size_t j = slot_of(keys[i]);
                keys_[j] = keys[i];
                slots_[j] = slots[i];
            }
    }
    double gain_ = -1, rn_ = -1;
    std::vector<Bin> bins_;
    std::vector<Draw> draws_;
    std::vector<uint32_t> draw_of_;
    std::vector<double> pool_;
    std::vector<uint64_t> keys_;
    std::vector<uint32_t> slots_;  // index + 1 into bins_, 0: empty
};

// redml_recon_noise of integer bin a..b rounded as decode_noise_int does (uni: the uniform
// of stream 6 for the draw, 5 for the mean), from the bin's tables; false where they do not
// apply or do not decide (the reference then decides).
inline bool noise_bin_from_tables(NoiseTables &tables, int64_t a, int64_t b, double mu, double gain, double rn,
                                  bool draw, double uni, int64_t *x) {
    const NoiseTables::Bin *bin = tables.bin(a, b);
    if (!bin || !redml_noise_table_applies(mu, bin->k0, bin->k1)) return false;
    const double *nm = tables.terms(*bin), *pd = nm + (bin->k1 - bin->k0 + 1);
    double kept[REDML_NOISE_KEPT], moment;
    const double mass = redml_noise_table_mass(nm, pd, bin->k0, bin->k1, bin->lg0, mu, gain, rn, kept, &moment);
    if (!(mass > 0.0)) return false;
    if (!draw) {
        const double lo = (double)a - 0.5, hi = (double)b + 0.5, m = moment / mass;
        const double v = m < lo ? lo : (m > hi ? hi : m);
        *x = std::min(std::max((int64_t)std::floor(v + uni), a), b);
        return true;
    }
    double r;
    const int64_t c = redml_noise_pick(kept, bin->k1 - bin->k0 + 1, mass, uni, &r);
    if (c < 0) return false;
    if (tables.round(*bin, a, b, c, r, x)) return true;
    // the component's inverse itself, as redml_recon_noise takes it
    const double lo = (double)a - 0.5, hi = (double)b + 0.5, centre = (double)(bin->k0 + c) * gain;
    const double v = centre + rn * redml_truncnorm_inverse((lo - centre) / rn, (hi - centre) / rn, r);
    *x = std::min(std::max((int64_t)std::floor((v < lo ? lo : (v > hi ? hi : v)) + 0.5), a), b);
    return true;
}

// A background pixel of integrating float data decoded from its bin [k*s - u, (k+1)*s - u]
// with the model at the pixel (mean `lambda`, the chunk's gain and read noise): the
// conditional mean or a draw (quantize.h, redml_recon_noise).
template <class T>
T decode_noise_float(typename Storage<T>::Word sym, const TileCoder<T> &tc, const typename TileCoder<T>::Pixel &px,
                     double lambda, const ChunkHeader &h, bool draw, size_t i) {
    const double g = h.gain, mu = std::max(lambda, 0.0) / g, t = redml_uniform(h.seed, i, 6);
    const double lo = ((double)Storage<T>::unzigzag(sym) + (double)px.base) * tc.step - px.u_float;
    return (T)redml_recon_noise(lo, lo + tc.step, mu, g, h.read_noise, draw, t);
}

// An integer pixel of integrating data decoded from its bin k (step s, dither u: the values
// a..b, taken as [a - 1/2, b + 1/2] before rounding) with the model at the pixel: the
// conditional mean rounded with dither (uni: stream 5) or a draw rounded to the nearest
// (uni: stream 6), from the bins' tables where they decide, else redml_recon_noise.
template <class T>
T decode_noise_int(int64_t k, int64_t s, int64_t u, double lambda, const ChunkHeader &h, bool draw, double uni,
                   NoiseTables &tables) {
    using S = Storage<T>;
    const double g = h.gain, mu = std::max(lambda, 0.0) / g;
    const int64_t a = std::max(k * s - u, S::lo()), b = std::min(k * s - u + s - 1, S::hi());
    check(a <= b, REDML_E_CORRUPT, "decoded value out of range");
    int64_t x;
    if (noise_bin_from_tables(tables, a, b, mu, g, h.read_noise, draw, uni, &x)) return (T)x;
    const double v = redml_recon_noise((double)a - 0.5, (double)b + 0.5, mu, g, h.read_noise, draw, uni);
    const int64_t r = (int64_t)std::floor(v + (draw ? 0.5 : uni));
    return (T)std::min(std::max(r, a), b);
}


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

template <class T>
bool decode_codes_portable(const typename Storage<T>::Word *codes, T *out, size_t n, const Step1Int<T> *pred,
                           int64_t lo) {
    return decode_codes_body<T>(codes, out, n, pred, lo);
}
#ifdef REDML_AVX2_DISPATCH
template <class T>
REDML_TARGET_AVX2 bool decode_codes_avx2(const typename Storage<T>::Word *codes, T *out, size_t n,
                                         const Step1Int<T> *pred, int64_t lo) {
    return decode_codes_body<T>(codes, out, n, pred, lo);
}
#endif
template <class T>
bool decode_codes(const typename Storage<T>::Word *codes, T *out, size_t n, const Step1Int<T> *pred, int64_t lo) {
#ifdef REDML_AVX2_DISPATCH
    if (use_avx2()) return decode_codes_avx2<T>(codes, out, n, pred, lo);
#endif
    return decode_codes_portable<T>(codes, out, n, pred, lo);
}

// Decodes n pixels of step-1 tiles (pred: each pixel's tile prediction): exact ones from
// the values, the others from the phase-0 codes (k = unzigzag(code) + pred; the
// conditional reconstructions keep k too, their bin holding one value, which must be >= 0).
template <class T>
void decode_step1_span(const uint8_t *exact, T *out, size_t n, const Step1Int<T> *pred, bool conditional,
                       const typename Storage<T>::Word *values, size_t *vi_io, const typename Storage<T>::Word *codes,
                       size_t n_codes, size_t *ci_io) {
    using S = Storage<T>;
    size_t vi = *vi_io, ci = *ci_io;
    const int64_t lo = conditional ? 0 : S::lo();
    bool ok = true;
    for (size_t x = 0; x < n;) {
        if (exact[x]) {
            out[x] = S::from_exact_word(values[vi++], pred[x]);
            x++;
            continue;
        }
        // a run of coded pixels, up to the next exact one (the map holds 0/1: memchr, SIMD in libc)
        const uint8_t *next = (const uint8_t *)std::memchr(exact + x, 1, n - x);
        const size_t end = next ? (size_t)(next - exact) : n;
        check(end - x <= n_codes - ci, REDML_E_CORRUPT, "background code stream length does not match its phase");
        ok &= decode_codes<T>(codes + ci, out + x, end - x, pred + x, lo);
        ci += end - x;
        x = end;
    }
    check(ok, REDML_E_CORRUPT, "decoded value out of range");
    *vi_io = vi;
    *ci_io = ci;
}

#ifdef REDML_AVX512_DISPATCH
// CodeReader::read_span with AVX-512 (and POPCNT, which every AVX-512 CPU has), for n <= 64
// pixels: slot_masks gives each slot's pixels as a bit mask (one byte compare for all of them)
// and their count; expand_slots then puts each slot's next words at its pixels' places, 16
// pixels a vector (vpexpandd), a fixed number of steps (no branch on the data), all kLanes
// places (those from n on hold no word). It loads 16 words where a slot needs fewer: the
// word buffer ends with kWordSlack spare bytes.
#define REDML_TARGET_AVX512_POPCNT __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,popcnt")))
REDML_TARGET_AVX512_POPCNT void slot_masks(const uint8_t *slot, size_t n, uint64_t *mask, size_t *count) {
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
    void read_span(const uint8_t *__restrict slot, size_t n, Word *__restrict w) {
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

// decode_noise_int for n <= kLanes pixels of one row of one coded tile from frame index i0
// on (their dither, offset, phase and uniform in one vectorized pass first).
template <class T>
void decode_noise_int_lanes(const TileCoder<T> &tc, int64_t pred, const uint8_t *exact, T *out, uint32_t i0, size_t n,
                            const double *lambda, const ChunkHeader &h, bool draw, NoiseTables &tables,
                            CodeReader<T> &rd) {
    using S = Storage<T>;
    int64_t u[kLanes], k[kLanes];
    uint8_t phase[kLanes];
    double uni[kLanes];
    tc.int_lanes(h.seed, i0, n, u, k, phase);
    for (size_t j = 0; j < n; j++) uni[j] = redml_uniform(h.seed, i0 + (uint32_t)j, draw ? 6 : 5);
    for (size_t j = 0; j < n; j++) {
        if (exact[j]) {
            out[j] = S::from_exact_word(rd.values[rd.vi++], pred);
            continue;
        }
        const int64_t bin = k[j] + S::unzigzag(rd.next_code(phase[j]));
        out[j] = decode_noise_int<T>(bin, tc.s_int, u[j], lambda[j], h, draw, uni[j], tables);
    }
}

// Conditional reconstruction of n <= kLanes pixels (exact ones: a = b = 0), in blocks of
// REDML_RECON_LANES, in arithmetic R (quantize.h, redml_recon_conditional_lanes): the fast
// form where it decides, the reference elsewhere (from the model at the pixels, lambda: the
// doubles; lam: as R). a, b, lam and uni (the uniform of stream 6, draw, or 5, mean) hold n
// values (a partial last block is padded with empty bins).
template <bool draw, class R>
REDML_ALWAYS_INLINE void conditional_lanes(const R *a, const R *b, const R *lam, const R *uni, const double *lambda,
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
template <class T, class R, class I>
REDML_ALWAYS_INLINE void conditional_span(const I *lo, const I *hi, const double *lambda, const uint8_t *exact,
                                          size_t n, int64_t width, bool draw, uint32_t seed, uint32_t i0, T *out) {
    R a[kLanes], b[kLanes], lam[kLanes], uni[kLanes], res[kLanes];
    const uint32_t stream = draw ? 6 : 5;
    for (size_t j = 0; j < n; j++) {
        a[j] = (R)lo[j], b[j] = (R)hi[j], lam[j] = (R)lambda[j];
        uni[j] = (R)redml_hash(seed, i0 + (uint32_t)j, stream) * (R)0x1p-32;  // redml_uniform, in R
    }
    if (draw) conditional_lanes<true, R>(a, b, lam, uni, lambda, n, width, seed, i0, res);
    else conditional_lanes<false, R>(a, b, lam, uni, lambda, n, width, seed, i0, res);
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
template <class T, class I, bool kAvx512, class C>
REDML_ALWAYS_INLINE void decode_int_lanes(const C &cv, const uint8_t *__restrict exact,
                                          T *__restrict out, uint32_t i0, size_t n, int64_t width,
                                          const double *lambda, int recon, uint32_t seed, CodeReader<T> &rd) {
    using S = Storage<T>;
    I u[kLanes], k[kLanes], s[kLanes];
    uint8_t slot[kLanes];
    typename S::Word w[kLanes];
    // steps up to kNarrowStep: 32-bit products only in the AVX-512 build (which would otherwise
    // take 64-bit lane products, vpmullq; AVX2 and SSE2 widen with one 32 x 32-bit product)
    const int narrow = kAvx512 && sizeof(I) == 4;
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
        if (fits) conditional_span<T, float>(lo, hi, lambda, exact, n, width, draw, seed, i0, out);
        else conditional_span<T, double>(lo, hi, lambda, exact, n, width, draw, seed, i0, out);
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
template <class T, bool kAvx512, class C>
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
            if (sizeof(T) == 2 && width <= kNarrowStep)
                decode_int_lanes<T, int32_t, kAvx512>(cv.at(c), exact + c, out + c, i, m, width, lam, recon, seed, rd);
            else decode_int_lanes<T, int64_t, kAvx512>(cv.at(c), exact + c, out + c, i, m, width, lam, recon, seed, rd);
        }
    }
}

#define REDML_SPAN_PARAMS                                                                                        \
    const TileCoder<T> &tc, const C &cv, int64_t pred, const uint8_t *exact, T *out, uint32_t i0, size_t n,     \
        const double *lambda, int recon, uint32_t seed, CodeReader<T> &rd
#define REDML_SPAN_ARGS tc, cv, pred, exact, out, i0, n, lambda, recon, seed, rd
template <class T, class C>
void decode_coded_span_portable(REDML_SPAN_PARAMS) {
    decode_coded_span_body<T, false>(REDML_SPAN_ARGS);
}
#ifdef REDML_AVX2_DISPATCH
template <class T, class C>
REDML_TARGET_AVX2 void decode_coded_span_avx2(REDML_SPAN_PARAMS) {
    decode_coded_span_body<T, false>(REDML_SPAN_ARGS);
}
#endif
#ifdef REDML_AVX512_DISPATCH
template <class T, class C>
REDML_TARGET_AVX512 void decode_coded_span_avx512(REDML_SPAN_PARAMS) {
    decode_coded_span_body<T, true>(REDML_SPAN_ARGS);
}
#endif
// decode_coded_span_body (the AVX-512 or AVX2 build where the CPU has it).
template <class T, class C>
void decode_coded_span(REDML_SPAN_PARAMS) {
#ifdef REDML_AVX512_DISPATCH
    if (use_avx512()) return decode_coded_span_avx512<T, C>(REDML_SPAN_ARGS);
#endif
#ifdef REDML_AVX2_DISPATCH
    if (use_avx2()) return decode_coded_span_avx2<T, C>(REDML_SPAN_ARGS);
#endif
    decode_coded_span_portable<T, C>(REDML_SPAN_ARGS);
}
#undef REDML_SPAN_PARAMS
#undef REDML_SPAN_ARGS

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

template <class T>
void sparse_dither_portable(const double *lambda, size_t n, uint32_t i0, uint32_t seed, T *out) {
    sparse_dither_body<T>(lambda, n, i0, seed, out);
}
#ifdef REDML_AVX2_DISPATCH
template <class T>
REDML_TARGET_AVX2 void sparse_dither_avx2(const double *lambda, size_t n, uint32_t i0, uint32_t seed, T *out) {
    sparse_dither_body<T>(lambda, n, i0, seed, out);
}
#endif
#ifdef REDML_AVX512_DISPATCH
template <class T>
REDML_TARGET_AVX512 void sparse_dither_avx512(const double *lambda, size_t n, uint32_t i0, uint32_t seed, T *out) {
    sparse_dither_body<T>(lambda, n, i0, seed, out);
}
#endif
template <class T>
void sparse_dither(const double *lambda, size_t n, uint32_t i0, uint32_t seed, T *out) {
#ifdef REDML_AVX512_DISPATCH
    if (use_avx512()) return sparse_dither_avx512<T>(lambda, n, i0, seed, out);
#endif
#ifdef REDML_AVX2_DISPATCH
    if (use_avx2()) return sparse_dither_avx2<T>(lambda, n, i0, seed, out);
#endif
    sparse_dither_portable<T>(lambda, n, i0, seed, out);
}

// A row of n pixels of a sparse chunk from frame index i0 on: the background from the model
// (lambda), made unbiased (dither) or noisy (Poisson, plus the chunk's read noise on
// integrating data: the background keeps its variance, negative values included, which
// integration programs' background estimators expect), then the exact pixels from their
// values (pred: the tile predictions along the row).
template <class T>
void decode_sparse_row(const uint8_t *exact, T *out, size_t n, const double *lambda, const Step1Int<T> *pred,
                       uint32_t i0, const ChunkHeader &h, bool poisson, CodeReader<T> &rd) {
    using S = Storage<T>;
    if (!poisson) {
        sparse_dither<T>(lambda, n, i0, h.seed, out);
    } else {
        const double rn = h.read_noise;
        for (size_t x = 0; x < n; x++) {
            double r = (double)h.gain * (double)redml_poisson(std::max(0.0, lambda[x]) / h.gain, h.seed, i0 + x);
            if (rn > 0) r += rn * redml_normal_draw(h.seed, i0 + x);
            if constexpr (S::is_float) out[x] = (T)r;
            else out[x] = (T)std::clamp(std::floor(r + 0.5), (double)S::lo(), (double)S::hi());
        }
    }
    for (size_t x = 0; x < n; x++) {  // the exact pixels (the map holds 0/1: memchr, SIMD in libc)
        const uint8_t *next = (const uint8_t *)std::memchr(exact + x, 1, n - x);
        if (!next) break;
        x = (size_t)(next - exact);
        out[x] = S::from_exact_word(rd.values[rd.vi++], S::is_float ? 0 : pred[x]);
    }
}

// Adds to count[ph] the number of coded pixels of phase ph among the n pixels from frame
// index i0 on, in one row of one coded tile (the phases as decode_coded_lanes_body finds them).
template <class T>
void count_phases(const TileCoder<T> &tc, const uint8_t *exact, uint32_t i0, size_t n, uint32_t seed, size_t *count) {
    for (size_t c = 0; c < n; c += kLanes) {
        const size_t m = std::min(kLanes, n - c);
        uint8_t phase[kLanes];
        if constexpr (std::is_floating_point<T>::value) {
            for (size_t j = 0; j < m; j++) phase[j] = (uint8_t)tc.at(seed, i0 + c + j).phase;
        } else {
            int64_t u[kLanes], base[kLanes];
            tc.int_lanes(seed, i0 + (uint32_t)c, m, u, base, phase);
        }
        for (size_t j = 0; j < m; j++) count[phase[j]] += exact[c + j] == 0;
    }
}

template <class T>
void decode_frame(const ParsedChunk &pc, T *out, int recon, int nt) {
    using S = Storage<T>;
    using Word = typename S::Word;
    const ChunkHeader &h = pc.header;
    const uint32_t H = h.height, W = h.width;
    const size_t N = (size_t)H * W;

    // Sections and block tables were checked against the header by parse_chunk.
    const Section *vals_s = pc.find(SECTION_EXACT_VALUES);
    std::vector<const Section *> codes_s = pc.find_all(SECTION_BACKGROUND_CODES);
    const uint64_t n_exact = h.n_exact;

    BackgroundModel model = read_model<T>(pc, nt);
    std::vector<int64_t> preds;
    std::vector<TileCoder<T>> coders;
    extend_tile_coding<T>(model, model.step.size(), h.mode != REDML_MODE_SPARSE, preds, coders);
    const TileGrid &g = model.grid;
    if (h.mode == REDML_MODE_LOSSLESS) {  // a lossless chunk must not carry a lossy step
        float lossless_step = std::is_floating_point<T>::value ? 0.0f : 1.0f;
        for (float st : model.step) check(st == lossless_step, REDML_E_CORRUPT, "lossy step in a lossless chunk");
    }

    // Work buffers kept by the calling thread across frames (see EncodeScratch).
    EncodeScratch &sc = work_scratch();
    ReleaseIfLarge<EncodeScratch> release{sc};
    uint8_t *exact = scratch(sc.exact, N);
    {
        check(read_exact_map(pc, exact, sc.usable, sc.tags, nt) == n_exact, REDML_E_CORRUPT,
              "exact mask does not match the exact pixel count");
    }
    // The exact values, then each phase's codes (sizes checked by parse_chunk: n_exact
    // values and N - n_exact codes in all).
    Word *values = (Word *)scratch(sc.words, (N * sizeof(Word) + 3) / 4 + kWordSlack / 4);
    std::memset((uint8_t *)values + N * sizeof(Word), 0, kWordSlack);
    decode_stream(vals_s->data, vals_s->stored_size, (uint8_t *)values, vals_s->raw_size, spec_for(h, *vals_s), nt);
    std::vector<Word *> codes(codes_s.size());
    std::vector<size_t> code_count(codes_s.size());
    for (size_t ph = 0, pos = n_exact; ph < codes_s.size(); ph++) {
        const Section *cs = codes_s[ph];
        codes[ph] = values + pos;
        code_count[ph] = cs->raw_size / sizeof(Word);
        pos += code_count[ph];
        decode_stream(cs->data, cs->stored_size, (uint8_t *)codes[ph], cs->raw_size, spec_for(h, *cs), nt);
    }

    const size_t nph = codes.size();
    const bool poisson = recon == REDML_RECON_POISSON;
    const bool conditional = recon == REDML_RECON_MEAN || recon == REDML_RECON_DRAW;
    const bool sparse = h.mode == REDML_MODE_SPARSE;
    const bool noise = conditional && h.read_noise > 0;  // the model of integrating data
    const bool counts = conditional && !noise;             // step-1 bins of counts hold values >= 0
    // Per tile row: whether all its tiles are lossless integer tiles (decoded a whole pixel
    // row at a time), and the tile predictions spread over a pixel row.
    std::vector<uint8_t> row_step1(g.rows, 0), row_coded(g.rows, 0);
    if (!S::is_float && !sparse)
        for (uint32_t ty = 0; ty < g.rows; ty++) {
            const auto first = model.step.begin() + (size_t)ty * g.cols, last = first + g.cols;
            row_step1[ty] = std::all_of(first, last, [](float st) { return st == 1.0f; });
            // every tile coded (step > 1), none of integrating data: whole pixel rows at once
            // (32-bit pixels with the midpoint only tile by tile, their constants hoisted: 15-20%
            // faster than per-column constants; the conditional reconstructions gain from full
            // blocks across the tiles)
            row_coded[ty] = (sizeof(T) == 2 || conditional) && !noise &&
                            std::none_of(first, last, [](float st) { return st == 1.0f; });
        }
    // Rows [y0, y1), reading the values from vi on and phase ph's codes from ci[ph] on.
    auto reconstruct = [&](uint32_t y0, uint32_t y1, size_t vi, size_t *ci) {
        std::vector<Step1Int<T>> pred_row(W);
        uint32_t pred_ty = UINT32_MAX;
        ColumnCoders columns;  // the coded tiles' constants along the tile row pred_ty
        BilinearRows bilinear = conditional || sparse ? BilinearRows(model) : BilinearRows();
        NoiseTables *tables = noise && !S::is_float ? &NoiseTables::get(h.gain, h.read_noise) : nullptr;
        CodeReader<T> rd{values, vi, codes.data(), code_count.data(), ci};
        for (uint32_t y = y0; y < y1; y++) {
            const uint32_t ty = y / g.tile;
            if (ty != pred_ty && !S::is_float) {
                prediction_row(preds, g, y, pred_row.data());
                if (row_coded[ty]) columns.set<T>(coders, preds, g, ty);
                pred_ty = ty;
            }
            const size_t row = (size_t)y * W;
            if (row_step1[ty]) {  // the whole row at once: few calls, long vectorized runs
                decode_step1_span<T>(exact + row, out + row, W, pred_row.data(), counts, values, &rd.vi,
                                     codes[0], code_count[0], &ci[0]);
                continue;
            }
            const double *lambda = bilinear ? bilinear.row(y) : nullptr;
            if (sparse) {  // every tile alike: the whole row at once
                decode_sparse_row<T>(exact + row, out + row, W, lambda, pred_row.data(), (uint32_t)row, h, poisson, rd);
                continue;
            }
            if (row_coded[ty]) {  // across the tiles, kLanes pixels at a time
                decode_coded_span<T>(coders[(size_t)ty * g.cols], Columns{columns.view()}, 0, exact + row, out + row,
                                     (uint32_t)row, W, lambda, recon, h.seed, rd);
                continue;
            }
            for (uint32_t tx = 0; tx < g.cols; tx++) {
                const size_t t = (size_t)ty * g.cols + tx;
                const int64_t pred = preds[t];
                const uint32_t x0 = tx * g.tile, x1 = std::min<uint32_t>(W, x0 + g.tile);
                if (!S::is_float && model.step[t] == 1.0f && !sparse) {
                    // step 1: phase 0, code = zigzag residual (the general path reduces to this)
                    decode_step1_span<T>(exact + row + x0, out + row + x0, x1 - x0, pred_row.data() + x0, counts,
                                         values, &rd.vi, codes[0], code_count[0], &ci[0]);
                } else if (noise) {  // integrating data
                    const bool draw = recon == REDML_RECON_DRAW;
                    if constexpr (S::is_float) {  // pixel by pixel (decode_noise_float)
                        for (uint32_t x = x0; x < x1; x++) {
                            const size_t i = row + x;
                            if (exact[i]) {
                                out[i] = S::from_exact_word(values[rd.vi++], pred);
                                continue;
                            }
                            const TileCoder<T> &tc = coders[t];
                            auto px = tc.at(h.seed, i);
                            const Word sym = rd.next_code(px.phase);
                            check(model.step[t] > 0, REDML_E_CORRUPT, "background pixel in a lossless float tile");
                            out[i] = decode_noise_float<T>(sym, tc, px, lambda[x], h, draw, i);
                        }
                    } else {
                        for (uint32_t x = x0; x < x1; x += (uint32_t)kLanes)
                            decode_noise_int_lanes<T>(coders[t], pred, exact + row + x, out + row + x, (uint32_t)(row + x),
                                                      std::min<size_t>(kLanes, x1 - x), lambda + x, h, draw, *tables, rd);
                    }
                } else {
                    const OneTile one{coders[t].s_int, pred, coders[t].off};
                    decode_coded_span<T>(coders[t], one, pred, exact + row + x0, out + row + x0,
                                         (uint32_t)(row + x0), x1 - x0, lambda ? lambda + x0 : nullptr, recon, h.seed,
                                         rd);
                }
            }
        }
    };
    const size_t nbands = (H + kRowsPerBand - 1) / kRowsPerBand;
    if (nt <= 1 || nbands == 1) {  // one pass in raster order: no need to know where bands start
        std::vector<size_t> ci(std::max<size_t>(nph, 1), 0);
        reconstruct(0, H, 0, ci.data());
        for (size_t ph = 0; ph < nph; ph++)
            check(ci[ph] == code_count[ph], REDML_E_CORRUPT, "background code stream length does not match its phase");
        return;
    }
    // Bands in parallel: where each band starts in the value stream and in each code stream.
    std::vector<size_t> band_exact(nbands + 1, 0), band_codes((nbands + 1) * std::max<size_t>(nph, 1), 0);
    for_bands(H, nt, [&](size_t b, uint32_t y0, uint32_t y1) {
        if (nph && band_is_step1<T>(model, y0, y1)) {  // every code of the band has phase 0
            const size_t ne = count_ones(exact + (size_t)y0 * W, nullptr, (size_t)(y1 - y0) * W);
            band_exact[b + 1] = ne;
            band_codes[(b + 1) * nph] = (size_t)(y1 - y0) * W - ne;
            return;
        }
        size_t c = 0;
        for (uint32_t y = y0; y < y1; y++) {
            for (uint32_t tx = 0; tx < g.cols; tx++) {
                const size_t t = (size_t)(y / g.tile) * g.cols + tx;
                const size_t i0 = (size_t)y * W + (size_t)tx * g.tile;
                const size_t n = std::min<size_t>(W, (size_t)(tx + 1) * g.tile) - (size_t)tx * g.tile;
                const size_t ne = count_ones(exact + i0, nullptr, n);
                c += ne;
                if (!nph) continue;
                if (!S::is_float && model.step[t] == 1.0f) band_codes[(b + 1) * nph] += n - ne;  // phase 0
                else count_phases<T>(coders[t], exact + i0, (uint32_t)i0, n, h.seed, &band_codes[(b + 1) * nph]);
            }
        }
        band_exact[b + 1] = c;
    });
    for (size_t b = 0; b < nbands; b++) {
        band_exact[b + 1] += band_exact[b];
        for (size_t ph = 0; ph < nph; ph++) band_codes[(b + 1) * nph + ph] += band_codes[b * nph + ph];
    }
    for (size_t ph = 0; ph < nph; ph++)
        check(band_codes[nbands * nph + ph] == code_count[ph], REDML_E_CORRUPT,
              "background code stream length does not match its phase");
    for_bands(H, nt, [&](size_t b, uint32_t y0, uint32_t y1) {
        std::vector<size_t> ci(std::max<size_t>(nph, 1), 0);
        for (size_t ph = 0; ph < nph; ph++) ci[ph] = band_codes[b * nph + ph];
        reconstruct(y0, y1, band_exact[b], ci.data());
    });
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

redml_status redml_inspect(const void *chunk, size_t size, redml_info *info) {
    return guarded([&] {
        check(info != nullptr, REDML_E_ARG, "null argument");
        ParsedChunk pc = parse_chunk((const uint8_t *)chunk, size);
        const ChunkHeader &h = pc.header;
        info->version = h.version;
        info->dtype = h.dtype;
        info->mode = h.mode;
        info->codec = h.codec;
        info->recon = h.recon;
        info->height = h.height;
        info->width = h.width;
        info->tile = h.tile;
        info->q = h.q;
        info->gain = h.gain;
        info->mu_min = h.mu_min;
        info->seed = h.seed;
        info->n_exact = h.n_exact;
        info->read_noise = h.read_noise;
    });
}

redml_status redml_decode(const void *chunk, size_t size, void *out, size_t out_capacity, int recon_override,
                          int nthreads) {
    return guarded([&] {
        check(out != nullptr, REDML_E_ARG, "null output buffer");
        ParsedChunk pc = parse_chunk((const uint8_t *)chunk, size);
        const ChunkHeader &h = pc.header;
        check(out_capacity >= (size_t)h.height * h.width * redml_dtype_size(h.dtype), REDML_E_ARG,
              "output buffer too small for the decoded frame");
        int recon = (int)h.recon;
        if (recon_override >= 0) {
            // mean <-> draw read the same bins; dither <-> Poisson apply to sparse chunks
            // and are ignored by others (as they always were).
            check(recon_override <= REDML_RECON_DRAW, REDML_E_ARG, "unknown reconstruction");
            const bool cond_override = recon_override == REDML_RECON_MEAN || recon_override == REDML_RECON_DRAW;
            const bool cond_chunk = h.recon == REDML_RECON_MEAN || h.recon == REDML_RECON_DRAW;
            check(!cond_override || cond_chunk, REDML_E_ARG,
                  "the mean and draw reconstructions decode only chunks written with one of them");
            if (cond_override || h.mode == REDML_MODE_SPARSE) recon = recon_override;
        }
        int nt = resolve_threads(nthreads);
        dispatch_dtype(h.dtype, [&](auto tag) {
            using T = decltype(tag);
            decode_frame<T>(pc, (T *)out, recon, nt);
        });
    });
}

redml_status redml_exact_mask(const void *chunk, size_t size, uint8_t *out, size_t out_capacity) {
    return guarded([&] {
        check(out != nullptr, REDML_E_ARG, "null output buffer");
        ParsedChunk pc = parse_chunk((const uint8_t *)chunk, size);
        const ChunkHeader &h = pc.header;
        size_t N = (size_t)h.height * h.width;
        check(out_capacity >= N, REDML_E_ARG, "output buffer too small for the mask");
        std::vector<uint8_t> runs, region;
        read_exact_map(pc, out, runs, region, 1);
    });
}

redml_status redml_lattice_crystals(const void *chunk, size_t size, redml_lattice *out, size_t capacity, size_t *n) {
    return guarded([&] {
        check(n != nullptr && (out != nullptr || capacity == 0), REDML_E_ARG, "null argument");
        ParsedChunk pc = parse_chunk((const uint8_t *)chunk, size);
        uint64_t region_hash = 0;
        const std::vector<redml_lattice> crystals = chunk_lattice(pc, &region_hash);
        *n = crystals.size();
        check(crystals.size() <= capacity || (out == nullptr && capacity == 0), REDML_E_ARG,
              "output buffer too small for the chunk's crystals");
        if (out) std::copy(crystals.begin(), crystals.end(), out);
    });
}

redml_status redml_model_shape(const void *chunk, size_t size, uint32_t *tile_rows, uint32_t *tile_cols) {
    return guarded([&] {
        check(tile_rows && tile_cols, REDML_E_ARG, "null argument");
        ParsedChunk pc = parse_chunk((const uint8_t *)chunk, size);
        TileGrid g(pc.header.height, pc.header.width, pc.header.tile);
        *tile_rows = g.rows;
        *tile_cols = g.cols;
    });
}

redml_status redml_model(const void *chunk, size_t size, float *mean, float *step, size_t capacity) {
    return guarded([&] {
        check(mean && step, REDML_E_ARG, "null argument");
        ParsedChunk pc = parse_chunk((const uint8_t *)chunk, size);
        dispatch_dtype(pc.header.dtype, [&](auto tag) {
            BackgroundModel m = read_model<decltype(tag)>(pc, 1);
            check(capacity >= m.mean.size(), REDML_E_ARG, "output buffers too small for the model");
            std::copy(m.mean.begin(), m.mean.end(), mean);
            std::copy(m.step.begin(), m.step.end(), step);
        });
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
