// decode.cpp: the decoder of one chunk and the reading side of the C API of redml.h.
//
//   container (sections) -> entropy (streams) -> exact map, model, values and codes
//   -> reconstruction, band by band (the span loops: decode_lanes.h, a build per SIMD target)
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "background.h"
#include "codec.h"
#include "container.h"
#include "decode_lanes.h"
#include "entropy.h"
#include "error.h"
#include "lattice_chunk.h"
#include "pixels.h"
#include "quantize.h"
#include "redml.h"
#include "scratch.h"
#include "threads.h"

namespace redml {

namespace {


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


// Calls a lane loop of decode_lanes.h (a call expression naming it) in the build for the CPU.
#ifdef REDML_AVX512_DISPATCH
#define REDML_LANES_AVX512_CALL(...) \
    if (use_avx512()) return lanes_avx512::__VA_ARGS__;
#else
#define REDML_LANES_AVX512_CALL(...)
#endif
#ifdef REDML_AVX2_DISPATCH
#define REDML_LANES_AVX2_CALL(...) \
    if (use_avx2()) return lanes_avx2::__VA_ARGS__;
#else
#define REDML_LANES_AVX2_CALL(...)
#endif
#define REDML_LANES_DISPATCH(...)       \
    REDML_LANES_AVX512_CALL(__VA_ARGS__) \
    REDML_LANES_AVX2_CALL(__VA_ARGS__)   \
    return lanes_portable::__VA_ARGS__;

template <class T>
bool decode_codes(const typename Storage<T>::Word *codes, T *out, size_t n, const Step1Int<T> *pred, int64_t lo) {
    REDML_LANES_DISPATCH(decode_codes<T>(codes, out, n, pred, lo))
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

// decode_coded_span, decode_codes and sparse_dither: decode_lanes.h's, in the CPU's build.
template <class T, class C>
void decode_coded_span(REDML_SPAN_PARAMS) {
    REDML_LANES_DISPATCH(decode_coded_span<T, C>(REDML_SPAN_ARGS))
}

template <class T>
void sparse_dither(const double *lambda, size_t n, uint32_t i0, uint32_t seed, T *out) {
    REDML_LANES_DISPATCH(sparse_dither<T>(lambda, n, i0, seed, out))
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

}  // namespace redml

using namespace redml;

extern "C" {

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

}  // extern "C"
