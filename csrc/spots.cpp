// spots.cpp: spot finder (see spots.h).
#include "spots.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <numeric>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "background.h"
#include "pixels.h"
#include "scratch.h"
#include "stages.h"
#include "threads.h"

namespace redml {

namespace {

const uint32_t kRowsPerBand = 128;

// Box sums over a (2r+1)^2 window, clipped to the frame, of weight w, w*v and (if
// Squares) w*v^2 for every pixel of rows [y0, y1). load(y, w, v) fills one row of weights
// and values; emit(y, n, s, s2) receives one row of sums. Column sums slide down the rows
// and row sums slide along x (exact for integer data: all sums stay below 2^53).
template <bool Squares, class Load, class Emit>
void box_sums_band(uint32_t H, uint32_t W, int r, uint32_t y0, uint32_t y1, Load load, Emit emit) {
    std::vector<double> cn(W, 0.0), cs(W, 0.0), cs2(Squares ? W : 0, 0.0), w(W), v(W);
    auto add_row = [&](int64_t y, double sign) {
        if (y < 0 || y >= (int64_t)H) return;
        load((uint32_t)y, w.data(), v.data());
        double *__restrict n = cn.data(), *__restrict s = cs.data();
        const double *__restrict wp = w.data(), *__restrict vp = v.data();
        for (uint32_t x = 0; x < W; x++) {
            n[x] += sign * wp[x];
            s[x] += sign * wp[x] * vp[x];
        }
        if constexpr (Squares) {
            double *__restrict s2 = cs2.data();
            for (uint32_t x = 0; x < W; x++) s2[x] += sign * wp[x] * vp[x] * vp[x];
        }
    };
    for (int64_t y = (int64_t)y0 - r; y <= (int64_t)y0 + r; y++) add_row(y, 1.0);
    std::vector<double> n(W), s(W), s2(Squares ? W : 0);
    for (uint32_t y = y0; y < y1; y++) {
        if (y > y0) {
            add_row((int64_t)y + r, 1.0);
            add_row((int64_t)y - r - 1, -1.0);
        }
        double bn = 0, bs = 0, bs2 = 0;
        for (uint32_t x = 0; x < std::min<uint32_t>(W, (uint32_t)r); x++) {
            bn += cn[x];
            bs += cs[x];
            if constexpr (Squares) bs2 += cs2[x];
        }
        for (uint32_t x = 0; x < W; x++) {
            if (x + r < W) {
                bn += cn[x + r];
                bs += cs[x + r];
                if constexpr (Squares) bs2 += cs2[x + r];
            }
            if (x >= (uint32_t)r + 1) {
                bn -= cn[x - r - 1];
                bs -= cs[x - r - 1];
                if constexpr (Squares) bs2 -= cs2[x - r - 1];
            }
            n[x] = bn;
            s[x] = bs;
            if constexpr (Squares) s2[x] = bs2;
        }
        emit(y, n.data(), s.data(), Squares ? s2.data() : nullptr);
    }
}

// Work buffers of one call, kept by the calling thread across frames (no allocation,
// zeroing or page faults per frame); released after a frame above kKeepScratchBytes (scratch.h).
struct FinderScratch {
    std::vector<uint64_t> cand, spots;  // packed maps: the candidates (eroded in place: the cores), the spots
    size_t held() const { return held_bytes(cand, spots); }
};

FinderScratch &finder_scratch() {  // the calling thread's, one set for every pixel type
    thread_local FinderScratch sc;
    return sc;
}


// ---- AND (erosion) and OR (dilation) of a square window over 0/1 byte maps, bit-packed ----
// Each row is packed into words of 64 pixels (bit b of word j: pixel 64 j + b); the window
// is separable (rows, then columns) and each direction is a running window of length r + 1
// forward and r + 1 backward, built by doubling (log2(r) word operations a word), so a
// radius costs about the same whatever its size. Pixels outside the frame never decide:
// they are the identity of the operation (1 for AND, 0 for OR).

template <bool And>
REDML_ALWAYS_INLINE uint64_t combine(uint64_t a, uint64_t b) {
    return And ? a & b : a | b;
}

// The 64 bytes at p (nonzero = 1) as the bits of one word.
REDML_ALWAYS_INLINE uint64_t pack64(const uint8_t *p) {
#ifdef __SSE2__
    const __m128i zero = _mm_setzero_si128();
    uint64_t zeros = 0;
    for (int q = 0; q < 4; q++) {
        const __m128i v = _mm_loadu_si128((const __m128i *)(p + 16 * q));
        zeros |= (uint64_t)(uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(v, zero)) << (16 * q);
    }
    return ~zeros;
#else
    uint64_t w = 0;
    for (int b = 0; b < 64; b++) w |= (uint64_t)(p[b] != 0) << b;
    return w;
#endif
}

// The 64 bits of w as 0/1 bytes at p.
REDML_ALWAYS_INLINE void unpack64(uint64_t w, uint8_t *p) {
    if (!w) {  // most words of the maps
        std::memset(p, 0, 64);
        return;
    }
#ifdef __SSE2__
    const __m128i bit = _mm_set_epi8((char)128, 64, 32, 16, 8, 4, 2, 1, (char)128, 64, 32, 16, 8, 4, 2, 1);
    const __m128i one = _mm_set1_epi8(1);
    for (int q = 0; q < 4; q++) {
        const uint64_t lo = (w >> (16 * q)) & 0xff, hi = (w >> (16 * q + 8)) & 0xff;
        const __m128i v = _mm_set_epi64x((long long)(hi * 0x0101010101010101ull), (long long)(lo * 0x0101010101010101ull));
        _mm_storeu_si128((__m128i *)(p + 16 * q), _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(v, bit), bit), one));
    }
#else
    for (int b = 0; b < 64; b++) p[b] = (uint8_t)((w >> b) & 1);
#endif
}

// Packs a row of W bytes into (W + 63) / 64 words; the bits at and beyond W are `fill`.
void pack_row(const uint8_t *in, uint64_t *out, uint32_t W, uint64_t fill) {
    uint32_t j = 0;
    for (; 64 * (j + 1) <= W; j++) out[j] = pack64(in + 64 * j);
    if (64 * j < W) {
        const uint32_t n = W - 64 * j;
        uint8_t tail[64] = {0};
        std::memcpy(tail, in + 64 * j, n);
        out[j] = (pack64(tail) & ((1ull << n) - 1)) | (fill << n);
    }
}

// The first W bits of a packed row as 0/1 bytes.
void unpack_row(const uint64_t *in, uint8_t *out, uint32_t W) {
    uint32_t j = 0;
    for (; 64 * (j + 1) <= W; j++) unpack64(in[j], out + 64 * j);
    if (64 * j < W) {
        uint8_t tail[64];
        unpack64(in[j], tail);
        std::memcpy(out + 64 * j, tail, W - 64 * j);
    }
}

// v[b] op= v[b + s] for every bit b of words [0, nw), in place; v[nw, 2 nw + 1) hold `fill`
// (the bits beyond the row).
template <bool And>
void combine_ahead(uint64_t *v, size_t nw, size_t s) {
    const size_t q = s / 64, t = s % 64;
    if (t == 0)
        for (size_t i = 0; i < nw; i++) v[i] = combine<And>(v[i], v[i + q]);
    else
        for (size_t i = 0; i < nw; i++) v[i] = combine<And>(v[i], (v[i + q] >> t) | (v[i + q + 1] << (64 - t)));
}

// v[b] op= v[b - s] for every bit b of words [0, nw), in place; v[-nw - 1, 0) hold `fill`
// (the bits before the row).
template <bool And>
void combine_behind(uint64_t *v, size_t nw, size_t s) {
    const ptrdiff_t q = (ptrdiff_t)(s / 64), t = (ptrdiff_t)(s % 64);
    if (t == 0)
        for (ptrdiff_t i = (ptrdiff_t)nw; i-- > 0;) v[i] = combine<And>(v[i], v[i - q]);
    else
        for (ptrdiff_t i = (ptrdiff_t)nw; i-- > 0;)
            v[i] = combine<And>(v[i], (v[i - q] << t) | (v[i - q - 1] >> (64 - t)));
}

// The running window of length L by doubling: step(s) combines each element with the one s
// ahead (or behind); after it the elements cover L consecutive ones.
template <class Step>
void running_window(size_t L, Step step) {
    size_t p = 1;
    for (; 2 * p <= L; p *= 2) step(p);
    if (L > p) step(L - p);
}

// One packed row: the op over bits [b - r, b + r] (clipped, r < 64 nw) of every bit b;
// fwd and bwd: room for 2 nw + 1 words each.
template <bool And>
void window_bits_row(uint64_t *row, size_t nw, size_t r, uint64_t *fwd, uint64_t *bwd) {
    const uint64_t fill = And ? ~0ull : 0;
    std::fill(fwd + nw, fwd + 2 * nw + 1, fill);
    std::fill(bwd, bwd + nw + 1, fill);
    std::memcpy(fwd, row, nw * sizeof(uint64_t));
    std::memcpy(bwd + nw + 1, row, nw * sizeof(uint64_t));
    running_window(r + 1, [&](size_t s) { combine_ahead<And>(fwd, nw, s); });
    running_window(r + 1, [&](size_t s) { combine_behind<And>(bwd + nw + 1, nw, s); });
    for (size_t i = 0; i < nw; i++) row[i] = combine<And>(fwd[i], bwd[nw + 1 + i]);
}

// Words [c0, c1) of every row of a packed map (row stride nw): the op over rows [y - r, y + r]
// (clipped) of every row y. fwd and bwd: room for H * (c1 - c0) words each.
template <bool And>
void window_bits_columns(uint64_t *map, size_t H, size_t nw, size_t c0, size_t c1, size_t r, uint64_t *fwd,
                         uint64_t *bwd) {
    const size_t cw = c1 - c0;
    for (size_t y = 0; y < H; y++) {
        std::memcpy(fwd + y * cw, map + y * nw + c0, cw * sizeof(uint64_t));
        std::memcpy(bwd + y * cw, map + y * nw + c0, cw * sizeof(uint64_t));
    }
    running_window(r + 1, [&](size_t s) {  // rows beyond the frame: the identity
        for (size_t y = 0; y + s < H; y++)
            for (size_t c = 0; c < cw; c++) fwd[y * cw + c] = combine<And>(fwd[y * cw + c], fwd[(y + s) * cw + c]);
    });
    running_window(r + 1, [&](size_t s) {
        for (size_t y = H; y-- > s;)
            for (size_t c = 0; c < cw; c++) bwd[y * cw + c] = combine<And>(bwd[y * cw + c], bwd[(y - s) * cw + c]);
    });
    for (size_t y = 0; y < H; y++)
        for (size_t c = 0; c < cw; c++) map[y * nw + c0 + c] = combine<And>(fwd[y * cw + c], bwd[y * cw + c]);
}

// AND (erosion) or OR (dilation) of a (2r+1)^2 window, clipped to the frame, of a packed
// 0/1 map (rows of nw = (W + 63) / 64 words), in place.
template <bool And>
void window_bits(uint64_t *map, uint32_t H, uint32_t W, int r, int nthreads) {
    if (r <= 0 || H == 0 || W == 0) return;
    // A clipped window wider than the frame covers all of it: the same result at a radius of
    // side - 1, so a huge radius (roi_margin up to 65535) costs no more than the frame.
    const size_t rx = (size_t)std::min<int64_t>(r, (int64_t)W - 1), ry = (size_t)std::min<int64_t>(r, (int64_t)H - 1);
    const size_t nw = ((size_t)W + 63) / 64;
    const uint64_t tail = W % 64 ? (1ull << (W % 64)) - 1 : ~0ull;  // the bits of the last word inside the row
    for_row_bands(H, kRowsPerBand, nthreads, [&](size_t, uint32_t y0, uint32_t y1) {
        std::vector<uint64_t> fwd(2 * nw + 1), bwd(2 * nw + 1);
        for (uint32_t y = y0; y < y1; y++) {
            uint64_t *row = map + (size_t)y * nw;
            row[nw - 1] = And ? row[nw - 1] | ~tail : row[nw - 1] & tail;  // beyond W: the identity
            window_bits_row<And>(row, nw, rx, fwd.data(), bwd.data());
            row[nw - 1] &= tail;
        }
    });
    const size_t strip = 8;  // words of a column strip
    parallel_for((nw + strip - 1) / strip, nthreads, [&](size_t s) {
        const size_t c0 = s * strip, c1 = std::min(nw, c0 + strip);
        thread_local std::vector<uint64_t> fwd, bwd;  // (kept: no page faults per frame)
        window_bits_columns<And>(map, H, nw, c0, c1, ry, scratch(fwd, (size_t)H * (c1 - c0)),
                                 scratch(bwd, (size_t)H * (c1 - c0)));
    });
}

// Packs a byte map (nonzero = 1) into `bits`, rows of (W + 63) / 64 words, the bits beyond
// W `fill`; returns its words.
uint64_t *pack_map(const uint8_t *in, std::vector<uint64_t> &bits, uint32_t H, uint32_t W, uint64_t fill,
                   int nthreads) {
    const size_t nw = ((size_t)W + 63) / 64;
    uint64_t *map = scratch(bits, (size_t)H * nw);
    for_row_bands(H, kRowsPerBand, nthreads, [&](size_t, uint32_t y0, uint32_t y1) {
        for (uint32_t y = y0; y < y1; y++) pack_row(in + (size_t)y * W, map + (size_t)y * nw, W, fill);
    });
    return map;
}

// A packed map as 0/1 bytes.
void unpack_map(const uint64_t *map, uint8_t *out, uint32_t H, uint32_t W, int nthreads) {
    const size_t nw = ((size_t)W + 63) / 64;
    for_row_bands(H, kRowsPerBand, nthreads, [&](size_t, uint32_t y0, uint32_t y1) {
        for (uint32_t y = y0; y < y1; y++) unpack_row(map + (size_t)y * nw, out + (size_t)y * W, W);
    });
}

// Sets bits [x0, x1) of a packed row.
void set_bits(uint64_t *row, uint32_t x0, uint32_t x1) {
    for (uint32_t x = x0; x < x1;) {
        const uint32_t j = x / 64, b = x % 64, n = std::min<uint32_t>(64 - b, x1 - x);
        row[j] |= (n == 64 ? ~0ull : ((1ull << n) - 1)) << b;
        x += n;
    }
}

// Bit x of a packed row.
REDML_ALWAYS_INLINE uint64_t bit_at(const uint64_t *row, uint32_t x) {
    return (row[x / 64] >> (x % 64)) & 1;
}

// Appends to `out` the pixels of rows [y0, y1) set in the packed map `bits` and usable, as
// offsets from pixel y0 * W in raster order, while there are at most `limit` of them (else
// returns false).
bool collect_set(const uint64_t *bits, const uint8_t *usable, uint32_t W, uint32_t y0, uint32_t y1, size_t limit,
                 std::vector<uint32_t> &out) {
    out.clear();
    const size_t nw = ((size_t)W + 63) / 64;
    for (uint32_t y = y0; y < y1; y++) {
        const uint64_t *row = bits + (size_t)y * nw;
        for (size_t j = 0; j < nw; j++)
            for (uint64_t w = row[j]; w; w &= w - 1) {
                const uint32_t x = (uint32_t)(64 * j) + (uint32_t)__builtin_ctzll(w);
                if (x < W && usable[(size_t)y * W + x]) out.push_back((y - y0) * W + x);
            }
        if (out.size() > limit) return false;
    }
    return true;
}

// The mean of the usable pixels outside the candidate cores in the (2R+1)^2 window
// around (y, x), clipped to the frame: the strong test's local background at the tested
// pixels, summed directly (integer data: exact, as the box sums are). Pixels are asked for
// in raster order: along a run of one row the window slides (one column in, one out), and
// each column's sums are kept with their row, so the next row slides them down a row.
template <class T>
class WindowBackground {
  public:
    WindowBackground(const T *frame, const uint8_t *usable, const uint64_t *core, uint32_t H, uint32_t W, int R)
        : f_(frame), ok_(usable), core_(core), nw_(((size_t)W + 63) / 64), H_(H), W_(W), R_(R), col_(W) {}

    double at(uint32_t y, uint32_t x) {
        if (!(valid_ && y == y_ && x == x_ + 1)) {
            const uint32_t xa = x >= (uint32_t)R_ ? x - R_ : 0, xb = std::min<uint32_t>(W_ - 1, x + R_);
            n_ = sum_ = 0;
            for (uint32_t xx = xa; xx <= xb; xx++) add_column(y, xx, 1);
        } else {  // slid right by one
            if (x_ >= (uint32_t)R_) add_column(y, x_ - R_, -1);
            if (x + R_ <= W_ - 1) add_column(y, x + R_, 1);
        }
        valid_ = true;
        y_ = y;
        x_ = x;
        return n_ >= 2 ? (double)sum_ / (double)n_ : 0.0;
    }

  private:
    struct Column {  // the sums of one column over rows [y - R, y + R] (clipped)
        int64_t n = 0, sum = 0;
        int64_t y = -2;  // none
    };
    // Adds (sign 1) or removes (-1) one pixel's weight and value to a column's sums.
    void add_pixel(Column &c, int64_t yy, uint32_t x, int64_t sign) {
        if (yy < 0 || yy >= (int64_t)H_) return;
        const size_t i = (size_t)yy * W_ + x;
        const int64_t use = ok_[i] & (bit_at(core_ + (size_t)yy * nw_, x) ^ 1);  // branch-free (0/1 maps)
        c.n += sign * use;
        c.sum += sign * (int64_t)f_[i] * use;
    }
    void add_column(uint32_t y, uint32_t x, int64_t sign) {
        Column &c = col_[x];
        if (c.y == (int64_t)y - 1) {  // slid down by one row
            add_pixel(c, (int64_t)y - R_ - 1, x, -1);
            add_pixel(c, (int64_t)y + R_, x, 1);
        } else if (c.y != (int64_t)y) {
            c = Column();
            for (int64_t yy = (int64_t)y - R_; yy <= (int64_t)y + R_; yy++) add_pixel(c, yy, x, 1);
        }
        c.y = y;
        n_ += sign * c.n;
        sum_ += sign * c.sum;
    }
    const T *f_;
    const uint8_t *ok_;
    const uint64_t *core_;  // packed
    size_t nw_;
    uint32_t H_, W_;
    int R_;
    std::vector<Column> col_;
    bool valid_ = false;
    uint32_t y_ = 0, x_ = 0;
    int64_t n_ = 0, sum_ = 0;
};

struct Run {
    uint32_t y, x0, x1;  // [x0, x1)
    uint32_t label;
};

uint32_t find_root(std::vector<uint32_t> &parent, uint32_t a) {
    while (parent[a] != a) {
        parent[a] = parent[parent[a]];
        a = parent[a];
    }
    return a;
}

}  // namespace

void dilate(uint8_t *map, uint32_t H, uint32_t W, int r, int nthreads) {
    if (r <= 0) return;
    thread_local std::vector<uint64_t> bits;
    window_bits<false>(pack_map(map, bits, H, W, 0, nthreads), H, W, r, nthreads);
    unpack_map(bits.data(), map, H, W, nthreads);
    if (held_bytes(bits) > kKeepScratchBytes) std::vector<uint64_t>().swap(bits);
}

// Dispersion candidates of rows [y0, y1) from 32-bit integer box sums, for integer
// frames whose usable values in the rows the windows reach are small enough that every
// window sum of squares fits in 32 bits (counts below ~6600 for 7x7 windows). Returns
// false where they are not (the double path then does the rows). The sums equal the double
// box sums exactly, and the test is the same double expression, so the candidates are
// identical. Plain loops over padded column sums: they vectorize (AVX2 or AVX-512 where
// the CPU has it).
#define SPOTS_INLINE REDML_ALWAYS_INLINE

struct DispersionArgs {
    const uint8_t *usable;
    uint32_t H, W;
    const double *bound;  // (m - 1) + sigma_b * sqrt(2 (m - 1)) per count m
    double gain;
    double rn2;  // read_noise^2: the variance of an empty pixel (0 for photon counters)
    bool integrating;  // usable values may be negative, or rn2 > 0
    int min_count;
    uint8_t neutral;  // candidate value of an unusable pixel
    uint64_t *cand;  // packed, rows of (W + 63) / 64 words
};

// out[x] = in[x] + ... + in[x + 2R]: the row pass of a box sum over padded column sums.
// GCC/Clang vector extension: L int32 lanes (L = 8: one AVX2 register, or two SSE2 ones;
// 16: one AVX-512 register).
// (Explicit types: GCC drops vector_size on a dependent alias template.)
template <int L>
struct UInt32Lanes;
template <>
struct UInt32Lanes<8> {
    typedef uint32_t type __attribute__((vector_size(32)));
};
template <>
struct UInt32Lanes<16> {
    typedef uint32_t type __attribute__((vector_size(64)));
};

template <int R, int L>
SPOTS_INLINE void window_sum(const uint32_t *in, uint32_t *out, uint32_t W) {
    uint32_t x = 0;
    for (; x + L <= W; x += L) {  // the 2R + 1 shifted loads summed in registers
        typename UInt32Lanes<L>::type t, u;
        static_assert(sizeof t == 4 * L, "L int32 lanes");
        std::memcpy(&t, in + x, sizeof t);
        for (int d = 1; d <= 2 * R; d++) {
            std::memcpy(&u, in + x + d, sizeof u);
            t += u;
        }
        std::memcpy(out + x, &t, sizeof t);
    }
    for (; x < W; x++) {
        uint32_t t = 0;
        for (int d = 0; d <= 2 * R; d++) t += in[x + d];
        out[x] = t;
    }
}

// The dispersion test of a window of m usable pixels, sum sx and sum of squares s2, scaled
// by m (m - 1): m s2 - sx^2 > (gain sx + m rn2) * bound[m]. The one expression of every
// path (bit for bit: the float screen only decides where it agrees with it).
// A window whose sum is <= 0 is never a candidate, as in DIALS: a photon mean is never
// negative, and a spot raises the mean of every window that holds part of it, so a mean
// <= 0 is noise around an empty background (integrating detectors' negative values, or a
// pedestal dip) whatever its spread, which var/mean (undefined there) cannot judge either.
// Photon counters (values >= 0) reach a sum of 0 only on all-zero windows, which failed
// the test anyway.
SPOTS_INLINE bool dispersion_passes(double m, double sx, double s2, double gain, double rn2, double bound) {
    return sx > 0 && m * s2 - sx * sx > (gain * sx + m * rn2) * bound;
}

// The dispersion test of one pixel from its window count m, sum sm and sum of squares s2,
// branch-free (unusable: `neutral`); integer sums: exact below 2^53.
SPOTS_INLINE uint8_t dispersion_pixel(const DispersionArgs &a, int32_t min_count, int32_t m, int32_t sm, int32_t s2,
                                      uint8_t ok) {
    const int32_t pass = (m >= min_count) & dispersion_passes(m, sm, s2, a.gain, a.rn2, a.bound[m]);
    const int32_t o = ok != 0;
    return (uint8_t)((pass & o) | (a.neutral & (o ^ 1)));
}

// The column sums hold two arrays: the count of usable pixels and their sum packed in one
// int32 (count * 2^20 + sum: a window's |sum| stays below 2^19 under the integer path's
// value limit, and 81 * 2^20 + 2^19 < 2^31), and the sums of squares. One array fewer to
// slide and to sum along the rows; unpack_counts splits a window's packed sum.
const int kCountShift = 20;

// The smallest and largest usable value the column sums took in (T's lanes: a cheap
// running check that the 32-bit sums are exact).
template <class T>
struct ValueRange {
    T lo = 0, hi = 0;
    int64_t max_abs() const { return std::max<int64_t>((int64_t)hi, -(int64_t)lo); }
};

// Adds (sign 1) or removes (-1) row y of the usable values to the padded column sums. The
// sums are uint32 (wrapping: defined whatever the values; the caller checks `seen` before it
// reads them as int32).
template <int R, class T>
SPOTS_INLINE void column_sums_row(const DispersionArgs &a, const T *frame, int64_t y, uint32_t sign, uint32_t *cols,
                                  ValueRange<T> &seen) {
    if (y < 0 || y >= (int64_t)a.H) return;
    const uint32_t W = a.W, P = W + 2 * R;
    const T *__restrict f = frame + (size_t)y * W;
    const uint8_t *__restrict ok = a.usable + (size_t)y * W;
    uint32_t *__restrict pns = cols + R, *__restrict ps2 = cols + P + R;
    T lo = seen.lo, hi = seen.hi;
    for (uint32_t x = 0; x < W; x++) {
        const uint32_t w = ok[x] != 0;
        const T t = (T)(f[x] * (T)w);  // unusable: 0 (whatever its value)
        lo = std::min(lo, t);
        hi = std::max(hi, t);
        const uint32_t v = (uint32_t)t;
        pns[x] += sign * ((w << kCountShift) + v);
        ps2[x] += sign * v * v;
    }
    seen.lo = lo;
    seen.hi = hi;
}

// Slides the column sums down one row: adds row y_in and removes row y_out, in one pass
// where both lie inside the frame.
template <int R, class T>
SPOTS_INLINE void column_sums_slide(const DispersionArgs &a, const T *frame, int64_t y_in, int64_t y_out,
                                    uint32_t *cols, ValueRange<T> &seen) {
    if (y_in >= (int64_t)a.H || y_out < 0) {
        column_sums_row<R>(a, frame, y_in, 1, cols, seen);
        column_sums_row<R>(a, frame, y_out, ~0u, cols, seen);
        return;
    }
    const uint32_t W = a.W, P = W + 2 * R;
    const T *__restrict fi = frame + (size_t)y_in * W, *__restrict fo = frame + (size_t)y_out * W;
    const uint8_t *__restrict oki = a.usable + (size_t)y_in * W, *__restrict oko = a.usable + (size_t)y_out * W;
    uint32_t *__restrict pns = cols + R, *__restrict ps2 = cols + P + R;
    T lo = seen.lo, hi = seen.hi;
    for (uint32_t x = 0; x < W; x++) {
        const uint32_t wi = oki[x] != 0, wo = oko[x] != 0;
        const T ti = (T)(fi[x] * (T)wi);
        lo = std::min(lo, ti);
        hi = std::max(hi, ti);
        const uint32_t vi = (uint32_t)ti, vo = (uint32_t)(T)(fo[x] * (T)wo);
        pns[x] += ((wi - wo) << kCountShift) + (vi - vo);
        ps2[x] += (vi - vo) * (vi + vo);  // vi^2 - vo^2 (mod 2^32), one product
    }
    seen.lo = lo;
    seen.hi = hi;
}

// Asks for row y of the frame and of the usable map in cache (each row starts a new page,
// where the hardware's prefetcher stops).
template <class T>
SPOTS_INLINE void prefetch_row(const DispersionArgs &a, const T *frame, uint32_t y) {
    const char *f = (const char *)(frame + (size_t)y * a.W), *ok = (const char *)(a.usable + (size_t)y * a.W);
    for (size_t i = 0; i < a.W * sizeof(T); i += 64) __builtin_prefetch(f + i);
    for (size_t i = 0; i < a.W; i += 64) __builtin_prefetch(ok + i);
}

// The count and the sum of a window's packed sum (int32, or int32 lanes).
template <class V>
SPOTS_INLINE void unpack_count(const V &packed, V &count, V &sum) {
    count = (packed + (1 << (kCountShift - 1))) >> kCountShift;
    sum = packed - (count << kCountShift);
}

// n[x] = the count, sm[x] = the sum of a window's packed sum n[x] (in place).
SPOTS_INLINE void unpack_counts(int32_t *__restrict n, int32_t *__restrict sm, uint32_t W) {
    for (uint32_t x = 0; x < W; x++) {
        const int32_t packed = n[x];
        unpack_count(packed, n[x], sm[x]);
    }
}

// The window count m, sum sum and sum of squares sq of pixel x from the padded column sums.
template <int R>
SPOTS_INLINE void window_at(const uint32_t *cns, const uint32_t *cs2, uint32_t x, int32_t &m, int32_t &sum,
                            int32_t &sq) {
    uint32_t t = 0, q = 0;
    for (int d = 0; d <= 2 * R; d++) {
        t += cns[x + d];
        q += cs2[x + d];
    }
    unpack_count((int32_t)t, m, sum);
    sq = (int32_t)q;
}

// The float screen's constants (dispersion_screen_setup).
struct ScreenArgs {
    int32_t full;  // the count of a full window
    float gain, empty, bound;  // empty: full * rn2 (integrating); bound: bound[full]
};

// Whether the float screen applies to windows of `full` pixels, and its constants.
SPOTS_INLINE bool dispersion_screen_setup(const DispersionArgs &a, int32_t full, ScreenArgs &s) {
    const double bound_full = a.bound[full];
    s = ScreenArgs{full, (float)a.gain, (float)((double)full * a.rn2), (float)bound_full};
    return full >= std::max(a.min_count, 2) && a.gain > 0 && bound_full >= 0 && std::isfinite(a.gain * bound_full) &&
           std::isfinite(full * a.rn2 * bound_full);
}

// The screen's S lanes of int32 and float (GCC/Clang vector extension, as UInt32Lanes): S = 4
// in the portable build (SSE2 compares 8-lane vectors lane by lane), 8 in the AVX2 and
// AVX-512 builds (GCC 12 compares 16-lane vectors lane by lane).
template <int S>
struct ScreenLanes;
template <>
struct ScreenLanes<4> {
    typedef int32_t Int __attribute__((vector_size(16)));
    typedef uint32_t UInt __attribute__((vector_size(16)));
    typedef float Float __attribute__((vector_size(16)));
};
template <>
struct ScreenLanes<8> {
    typedef int32_t Int __attribute__((vector_size(32)));
    typedef uint32_t UInt __attribute__((vector_size(32)));
    typedef float Float __attribute__((vector_size(32)));
};

// c[k] = pass[k] & 1, open[k] = undecided[k] & 1 for the S lanes (of -1 or 0): narrowed with
// byte shuffles or 64-bit shifts, as GCC 12 narrows a loop or __builtin_convertvector lane by
// lane. (Byte views of int32 lanes: little-endian.)
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "byte views of int32 lanes");
SPOTS_INLINE void store_flags(const ScreenLanes<8>::Int &pass, const ScreenLanes<8>::Int &undecided, uint8_t *c, uint8_t *open) {
    typedef uint8_t Bytes32 __attribute__((vector_size(32)));
    typedef uint8_t Bytes16 __attribute__((vector_size(16)));
    const Bytes32 b = (Bytes32)((pass & 1) | ((undecided & 1) << 8));  // lane k: bytes c, open, 0, 0
    const Bytes16 y = __builtin_shufflevector(b, b, 0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
    std::memcpy(c, &y, 8);
    std::memcpy(open, (const uint8_t *)&y + 8, 8);
}
SPOTS_INLINE void store_flags(const ScreenLanes<4>::Int &pass, const ScreenLanes<4>::Int &undecided, uint8_t *c, uint8_t *open) {
    typedef uint64_t Pairs __attribute__((vector_size(16)));
    Pairs w = (Pairs)((pass & 1) | ((undecided & 1) << 16));  // lane k: bytes c, 0, open, 0
    w |= w >> 24;  // each 64-bit half's low bytes: c c open open
    const uint32_t lo = (uint32_t)w[0], hi = (uint32_t)w[1];
    const uint32_t cw = (lo & 0xffff) | (hi << 16), ow = (lo >> 16) | (hi & 0xffff0000u);
    std::memcpy(c, &cw, 4);
    std::memcpy(open, &ow, 4);
}

#ifdef REDML_AVX512_DISPATCH
// window_screen (below) of a row in 16 AVX-512 lanes (GCC 12 compares 16-lane vector extension
// types lane by lane): the same float operations in the same order as window_screen_lanes,
// the flags stored from the compare masks, the last partial vector by masked loads and stores.
// Its own AVX-512 function, called once per row (intrinsics inline only into their target's
// functions).
template <int R, bool Integrating>
REDML_TARGET_AVX512 void window_screen16_row(const uint32_t *cns, const uint32_t *cs2, uint8_t *c, uint8_t *open,
                                             uint32_t W, const ScreenArgs &s) {
    const __m512i half = _mm512_set1_epi32(1 << (kCountShift - 1)), full = _mm512_set1_epi32(s.full);
    const __m512 nfull = _mm512_set1_ps((float)s.full), gain = _mm512_set1_ps(s.gain), empty = _mm512_set1_ps(s.empty);
    const __m512 bound = _mm512_set1_ps(s.bound), eps = _mm512_set1_ps(0x1p-20f);
    for (uint32_t x = 0; x < W; x += 16) {
        const __mmask16 lanes = W - x >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (W - x)) - 1);
        __m512i t = _mm512_maskz_loadu_epi32(lanes, cns + x), q = _mm512_maskz_loadu_epi32(lanes, cs2 + x);
        for (int d = 1; d <= 2 * R; d++) {
            t = _mm512_add_epi32(t, _mm512_maskz_loadu_epi32(lanes, cns + x + d));
            q = _mm512_add_epi32(q, _mm512_maskz_loadu_epi32(lanes, cs2 + x + d));
        }
        const __m512i count = _mm512_srai_epi32(_mm512_add_epi32(t, half), kCountShift);
        const __m512i sum = _mm512_sub_epi32(t, _mm512_slli_epi32(count, kCountShift));
        const __m512 sx = _mm512_cvtepi32_ps(sum), sq = _mm512_mul_ps(sx, sx);
        const __m512 ms = _mm512_mul_ps(nfull, _mm512_cvtepi32_ps(q)), var = _mm512_sub_ps(ms, sq);
        __m512 rhs = _mm512_mul_ps(gain, sx);
        if (Integrating) rhs = _mm512_add_ps(rhs, empty);
        rhs = _mm512_mul_ps(rhs, bound);
        const __m512 tol = _mm512_mul_ps(_mm512_add_ps(_mm512_add_ps(ms, sq), rhs), eps);
        const __mmask16 positive = _mm512_cmpgt_epi32_mask(sum, _mm512_setzero_si512());
        __mmask16 pass = _mm512_cmp_ps_mask(var, _mm512_add_ps(rhs, tol), _CMP_GT_OQ);
        if (Integrating) pass &= positive;
        const __mmask16 fail = _mm512_cmp_ps_mask(var, _mm512_sub_ps(rhs, tol), _CMP_LT_OQ) | (__mmask16)~positive;
        const __mmask16 undecided = _mm512_cmpneq_epi32_mask(count, full) | (__mmask16)~(pass | fail);
        _mm_mask_storeu_epi8(c + x, lanes, _mm_maskz_set1_epi8(pass, 1));
        _mm_mask_storeu_epi8(open + x, lanes, _mm_maskz_set1_epi8(undecided, 1));
    }
}
#endif

// The window sums of S pixels from the padded column sums (the row pass of the box sums)
// and the float test of the pixels whose windows are full (every pixel usable, the centre too), in one pass without
// a table lookup: c[x] = whether var > rhs where var - rhs lies beyond a bound on the float
// rounding errors (16 times the worst case), so that it decides as the double test does;
// open[x] = 1 where it does not decide (a window not full, or a pixel too close to call).
// rhs >= 0 where sm > 0, and sm <= 0 fails. Integrating: the read noise's term (`empty`)
// and the sign test, which photon counters (values >= 0, no read noise) skip: their sum is
// 0 only on all-zero windows, where var = rhs = 0 fails, so both decide alike there.
template <int R, int S, bool Integrating>
SPOTS_INLINE void window_screen_lanes(const uint32_t *cns, const uint32_t *cs2, uint8_t *c, uint8_t *open,
                                      const ScreenArgs &s) {
    typedef typename ScreenLanes<S>::Int I;
    typedef typename ScreenLanes<S>::Float F;
    typename ScreenLanes<S>::UInt t, q, u;
    std::memcpy(&t, cns, sizeof t);
    std::memcpy(&q, cs2, sizeof q);
    for (int d = 1; d <= 2 * R; d++) {
        std::memcpy(&u, cns + d, sizeof u);
        t += u;
        std::memcpy(&u, cs2 + d, sizeof u);
        q += u;
    }
    const I sq2 = (I)q;
    I count, sum;
    unpack_count((I)t, count, sum);
    const F sx = __builtin_convertvector(sum, F), ms = (float)s.full * __builtin_convertvector(sq2, F), sq = sx * sx;
    const F var = ms - sq, rhs = (Integrating ? s.gain * sx + s.empty : s.gain * sx) * s.bound;
    const F tol = (ms + sq + rhs) * 0x1p-20f;
    const I positive = sum > 0;  // lanes of -1 (true) or 0
    const I pass = Integrating ? (var > rhs + tol) & positive : (I)(var > rhs + tol);
    const I fail = (var < rhs - tol) | ~positive;  // an all-zero window: var = rhs = 0
    const I undecided = (count != s.full) | ~(pass | fail);
    store_flags(pass, undecided, c, open);
}

// window_screen_lanes over a row of W pixels; the last, partial vector from a zero-padded copy
// of its column sums.
template <int R, int S, bool Integrating>
SPOTS_INLINE void window_screen(const uint32_t *cns, const uint32_t *cs2, uint8_t *c, uint8_t *open, uint32_t W,
                                const ScreenArgs &s) {
    if constexpr (S == 16) {  // (the AVX-512 build only)
#ifdef REDML_AVX512_DISPATCH
        window_screen16_row<R, Integrating>(cns, cs2, c, open, W, s);
#else
        static_assert(S != 16, "16 lanes exist in the AVX-512 build only");
#endif
    } else {
        uint32_t x = 0;
        for (; x + S <= W; x += S) window_screen_lanes<R, S, Integrating>(cns + x, cs2 + x, c + x, open + x, s);
        if (x == W) return;
        const uint32_t k = W - x;  // pixels left (< S), their column sums: k + 2R
        uint32_t pc[S + 2 * R] = {}, pq[S + 2 * R] = {};
        uint8_t tc[S], to[S];
        std::memcpy(pc, cns + x, (k + 2 * R) * sizeof(uint32_t));
        std::memcpy(pq, cs2 + x, (k + 2 * R) * sizeof(uint32_t));
        window_screen_lanes<R, S, Integrating>(pc, pq, tc, to, s);
        std::memcpy(c + x, tc, k);
        std::memcpy(open + x, to, k);
    }
}

// The dispersion test of one row from the padded column sums: the float screen where it
// applies (`screened`), the double test for every pixel it leaves open (its window sums
// again: open pixels are few); n, sm, s2: room for the row's window counts, sums and sums
// of squares where the screen does not apply.
template <int R, int L, int S>
SPOTS_INLINE void dispersion_test(const DispersionArgs &a, const uint32_t *cns, const uint32_t *cs2, bool screened,
                                  const ScreenArgs &s, const uint8_t *__restrict ok, int32_t *__restrict n,
                                  int32_t *__restrict sm, int32_t *__restrict s2, uint8_t *__restrict c,
                                  uint8_t *__restrict open) {
    const uint32_t W = a.W;
    const int32_t min_count = std::max(a.min_count, 2);
    if (!screened) {
        window_sum<R, L>(cns, (uint32_t *)n, W);  // (int32 and uint32 may alias)
        unpack_counts(n, sm, W);
        window_sum<R, L>(cs2, (uint32_t *)s2, W);
        for (uint32_t x = 0; x < W; x++) c[x] = dispersion_pixel(a, min_count, n[x], sm[x], s2[x], ok[x]);
        return;
    }
    if (a.integrating) window_screen<R, S, true>(cns, cs2, c, open, W, s);
    else window_screen<R, S, false>(cns, cs2, c, open, W, s);
    for (size_t x = byte_run_end(open, 0, W, false); x < W; x = byte_run_end(open, x + 1, W, false)) {
        int32_t m, sum, sq;
        window_at<R>(cns, cs2, (uint32_t)x, m, sum, sq);
        c[x] = dispersion_pixel(a, min_count, m, sum, sq, ok[x]);
    }
}

// The integer path of rows [y0, y1): false, with the candidates of the rows unspecified, as
// soon as a usable value the windows reach exceeds `limit`.
template <int R, int L, int S, class T>
SPOTS_INLINE bool dispersion_rows_int(const DispersionArgs &a, const T *frame, uint32_t y0, uint32_t y1,
                                      int64_t limit, uint32_t *cols, int32_t *sums) {
    const uint32_t W = a.W, P = W + 2 * R;  // column sums padded by R zeros on each side
    const uint32_t *cns = cols, *cs2 = cols + P;
    int32_t *n = sums, *sm = sums + W, *s2 = sums + 2 * W;
    uint8_t *open = (uint8_t *)(sums + 3 * W), *c = open + W;  // open pixels and candidates of a row
    std::memset(cols, 0, 2 * (size_t)P * sizeof(uint32_t));
    ScreenArgs screen;
    const bool screened = dispersion_screen_setup(a, (2 * R + 1) * (2 * R + 1), screen);
    ValueRange<T> seen;
    for (int64_t y = (int64_t)y0 - R; y <= (int64_t)y0 + R; y++) column_sums_row<R>(a, frame, y, 1, cols, seen);
    for (uint32_t y = y0; y < y1; y++) {
        if (y > y0) column_sums_slide<R>(a, frame, (int64_t)y + R, (int64_t)y - R - 1, cols, seen);
        if (seen.max_abs() > limit) return false;
        if (y + R + 1 < a.H) prefetch_row(a, frame, y + R + 1);  // the next row slid in, while this one is tested
        dispersion_test<R, L, S>(a, cns, cs2, screened, screen, a.usable + (size_t)y * W, n, sm, s2, c, open);
        pack_row(c, a.cand + (size_t)y * ((W + 63) / 64), W, 0);
    }
    return true;
}

// The integer path of rows [y0, y1) (r in 1..4), in L-lane vectors (the float screen in S
// lanes); false where a usable value the windows reach is too large for 32-bit sums of squares.
template <int L, int S, class T>
SPOTS_INLINE bool dispersion_band_int_body(const DispersionArgs &a, const T *frame, int r, uint32_t y0, uint32_t y1,
                                           uint32_t *cols, int32_t *sums) {
    const int64_t area = (int64_t)(2 * r + 1) * (2 * r + 1);
    // window sums of squares within int32, and window sums within the packed sums' 2^19
    const int64_t limit = std::min<int64_t>((int64_t)std::sqrt((double)INT32_MAX / (double)area) - 1,
                                            ((1 << (kCountShift - 1)) - 1) / area);
    switch (r) {
        case 1: return dispersion_rows_int<1, L, S>(a, frame, y0, y1, limit, cols, sums);
        case 2: return dispersion_rows_int<2, L, S>(a, frame, y0, y1, limit, cols, sums);
        case 3: return dispersion_rows_int<3, L, S>(a, frame, y0, y1, limit, cols, sums);
        default: return dispersion_rows_int<4, L, S>(a, frame, y0, y1, limit, cols, sums);
    }
}

// The portable, AVX2 and AVX-512 builds of the one body (pixels.h): 8 lanes (16 in the
// AVX-512 build); the float screen's 4 (portable), 8 (AVX2) or 16 (AVX-512, intrinsics).
REDML_SIMD_CLONES((template <class T>), bool, dispersion_band_int_simd, (),
                  (const DispersionArgs &a, const T *frame, int r, uint32_t y0, uint32_t y1, uint32_t *cols,
                   int32_t *sums),
                  (a, frame, r, y0, y1, cols, sums),
                  dispersion_band_int_body<(kSimdLevel == 3 ? 16 : 8), (kSimdLevel == 3 ? 16 : kSimdLevel == 2 ? 8 : 4)>(
                      a, frame, r, y0, y1, cols, sums))

template <class T>
bool dispersion_band_int(const DispersionArgs &a, const T *frame, int r, uint32_t y0, uint32_t y1) {
    if constexpr (std::is_floating_point<T>::value) {
        return false;
    } else {
        if (r < 1 || r > 4) return false;
        // cols: padded column sums (2 (W + 2r)); sums: the window sums of a row (3 W), its
        // open pixels and candidates (W bytes each)
        thread_local std::vector<uint32_t> cols;
        thread_local std::vector<int32_t> sums;
        uint32_t *c = scratch(cols, 2 * ((size_t)a.W + 2 * r));
        int32_t *s = scratch(sums, 3 * (size_t)a.W + 2 * (((size_t)a.W + 3) / 4));
        return dispersion_band_int_simd(a, frame, r, y0, y1, c, s);
    }
}

void spots_force_simd(int level) { forced_simd_level().store(level, std::memory_order_relaxed); }

namespace {

// The read noise of an integrating detector's frame, as the encoder estimates it with its
// default tiles (estimate_read_noise).
template <class T>
double estimated_read_noise(const T *frame, const uint8_t *usable, uint32_t H, uint32_t W, const FinderParams &fp,
                            int nthreads) {
    redml_params p;
    redml_default_params(&p);
    p.gain = (float)fp.gain;
    p.markers = fp.markers;
    return estimate_read_noise(frame, usable, TileGrid(H, W, p.tile), p, nthreads);
}

}  // namespace

template <class T>
std::vector<Peak> find_spots(const T *frame, const uint8_t *usable, uint32_t H, uint32_t W,
                             const FinderParams &fp, uint8_t *spot_mask, int nthreads, int margin) {
    const int k = std::max(1, fp.kernel);
    const double g = fp.gain;
    const double rn = fp.read_noise < 0 ? estimated_read_noise(frame, usable, H, W, fp, nthreads) : fp.read_noise;
    const double rn2 = rn * rn;
    FinderScratch &sc = finder_scratch();
    ReleaseIfLarge<FinderScratch> release{sc};

    // 1. dispersion candidates, packed (rows of nw words)
    const size_t nw = ((size_t)W + 63) / 64;
    uint64_t *cand = scratch(sc.cand, (size_t)H * nw);
    auto load_usable = [&](uint32_t y, double *w, double *v) {
        const T *f = frame + (size_t)y * W;
        const uint8_t *ok = usable + (size_t)y * W;
        for (uint32_t x = 0; x < W; x++) {
            w[x] = ok[x] ? 1.0 : 0.0;
            v[x] = ok[x] ? (double)f[x] : 0.0;
        }
    };
    // (m - 1) + sigma_b * sqrt(2 (m - 1)) for every possible count m in a window
    const int max_count = (2 * k + 1) * (2 * k + 1);
    std::vector<double> dispersion_bound(max_count + 1, 0.0);
    for (int m = 2; m <= max_count; m++) dispersion_bound[m] = (m - 1) + fp.sigma_b * std::sqrt(2.0 * (m - 1));
    const DispersionArgs dargs{usable, H, W, dispersion_bound.data(), g, rn2,
                               fp.markers != REDML_MARKERS_NEGATIVE || rn2 > 0, fp.min_count,
                               (uint8_t)fp.masked_pixels_neutral, cand};
    for_row_bands(H, kRowsPerBand, nthreads, [&](size_t, uint32_t y0, uint32_t y1) {
        if (dispersion_band_int(dargs, frame, k, y0, y1)) return;
        std::vector<uint8_t> row(W);
        box_sums_band<true>(H, W, k, y0, y1, load_usable, [&](uint32_t y, const double *n, const double *s, const double *s2) {
            uint8_t *c = row.data();
            const uint8_t *ok = usable + (size_t)y * W;
            for (uint32_t x = 0; x < W; x++) {
                double sx = s[x];
                int m = (int)(n[x] + 0.5);
                c[x] = 0;
                if (!ok[x]) {
                    c[x] = fp.masked_pixels_neutral;  // never strong itself: strong needs ok[x]
                    continue;
                }
                if (m < fp.min_count || m < 2) continue;
                c[x] = dispersion_passes(m, sx, s2[x], g, rn2, dispersion_bound[m]);
            }
            pack_row(c, cand + (size_t)y * nw, W, 0);
        });
    });
    stage_mark("dispersion 7x7");
    // 2. erosion by the window: the candidate cores
    window_bits<true>(cand, H, W, k - 1, nthreads);
    const uint64_t *core = cand;
    stage_mark("erosion");
    // 3. strong pixels against the background without the cores
    // The strong pixels and their local backgrounds, per band in raster order (few: a list
    // instead of frame-sized maps to clear and scan).
    struct StrongPixel {
        uint32_t i;  // pixel index
        float bg;
    };
    std::vector<std::vector<StrongPixel>> band_strong((H + kRowsPerBand - 1) / kRowsPerBand);
    auto load_background = [&](uint32_t y, double *w, double *v) {
        const T *f = frame + (size_t)y * W;
        const uint8_t *ok = usable + (size_t)y * W;
        const uint64_t *c = core + (size_t)y * nw;
        for (uint32_t x = 0; x < W; x++) {
            bool use = ok[x] && !bit_at(c, x);
            w[x] = use ? 1.0 : 0.0;
            v[x] = use ? (double)f[x] : 0.0;
        }
    };
    auto strong_test = [&](std::vector<StrongPixel> &strong, uint32_t y, uint32_t x, double mean) {
        const size_t i = (size_t)y * W + x;
        double v = (double)frame[i];
        // the model's variance at the local mean (a photon mean is never negative)
        if (v > fp.threshold && v >= mean + fp.sigma_s * std::sqrt(g * std::max(mean, 0.0) + rn2))
            strong.push_back({(uint32_t)i, (float)mean});
    };
    const int R = k + 2;
    for_row_bands(H, kRowsPerBand, nthreads, [&](size_t b, uint32_t y0, uint32_t y1) {
        std::vector<StrongPixel> &strong = band_strong[b];
        // Integer frames with few tested pixels (usable candidate cores): their window
        // sums directly, instead of box sums over the whole band.
        const size_t i0 = (size_t)y0 * W, n = (size_t)(y1 - y0) * W;
        const size_t window = (size_t)(2 * R + 1) * (2 * R + 1);
        std::vector<uint32_t> tested;
        if (!std::is_floating_point<T>::value && collect_set(core, usable, W, y0, y1, n * 4 / window, tested)) {
            WindowBackground<T> background(frame, usable, core, H, W, R);
            for (uint32_t j : tested) {
                const uint32_t y = (uint32_t)((i0 + j) / W), x = (uint32_t)((i0 + j) % W);
                strong_test(strong, y, x, background.at(y, x));
            }
            return;
        }
        box_sums_band<false>(H, W, R, y0, y1, load_background, [&](uint32_t y, const double *n, const double *s, const double *) {
            const uint8_t *ok = usable + (size_t)y * W;
            const uint64_t *c = core + (size_t)y * nw;
            for (uint32_t x = 0; x < W; x++) {
                if (!ok[x] || !bit_at(c, x)) continue;
                strong_test(strong, y, x, n[x] >= 2 ? s[x] / n[x] : 0.0);
            }
        });
    });
    std::vector<StrongPixel> strong;  // raster order
    for (const std::vector<StrongPixel> &b : band_strong) strong.insert(strong.end(), b.begin(), b.end());
    stage_mark("background 11x11");

    // 4. 8-connected components over row runs (runs are few: sequential union-find)
    std::vector<Run> runs;
    std::vector<size_t> row_start(H + 1, 0);  // first run of each row (of a later row if none)
    uint32_t rows_started = 0;
    for (const StrongPixel &sp : strong) {
        const uint32_t y = sp.i / W, x = sp.i % W;
        if (!runs.empty() && runs.back().y == y && runs.back().x1 == x) {
            runs.back().x1++;
            continue;
        }
        for (; rows_started <= y; rows_started++) row_start[rows_started] = runs.size();
        runs.push_back({y, x, x + 1, (uint32_t)runs.size()});
    }
    for (; rows_started <= H; rows_started++) row_start[rows_started] = runs.size();
    std::vector<uint32_t> parent(runs.size());
    std::iota(parent.begin(), parent.end(), 0u);
    for (uint32_t y = 1; y < H; y++) {
        size_t a = row_start[y - 1], a_end = row_start[y], b_end = row_start[y + 1];
        for (size_t b = row_start[y]; b < b_end; b++) {
            while (a < a_end && runs[a].x1 + 1 <= runs[b].x0) a++;  // previous run ends left of b
            for (size_t c = a; c < a_end && runs[c].x0 <= runs[b].x1; c++) {
                uint32_t ra = find_root(parent, (uint32_t)c), rb = find_root(parent, (uint32_t)b);
                if (ra != rb) parent[std::max(ra, rb)] = std::min(ra, rb);
            }
        }
    }
    // 5. per-spot statistics and filters
    struct Acc {
        double sw = 0, swx = 0, swy = 0, total = 0, var = 0, bgsum = 0, max = -INFINITY;
        uint32_t maxx = 0, maxy = 0;
        int npix = 0;
        uint32_t x0 = UINT32_MAX, y0 = UINT32_MAX, x1 = 0, y1 = 0;
    };
    std::vector<int64_t> slot(runs.size(), -1);
    std::vector<Acc> acc;
    size_t next_strong = 0;  // the runs cover the strong pixels in their order
    for (size_t r = 0; r < runs.size(); r++) {
        uint32_t root = find_root(parent, (uint32_t)r);
        if (slot[root] < 0) {
            slot[root] = (int64_t)acc.size();
            acc.emplace_back();
        }
        Acc &a = acc[(size_t)slot[root]];
        const Run &run = runs[r];
        for (uint32_t x = run.x0; x < run.x1; x++) {
            size_t i = (size_t)run.y * W + x;
            double v = (double)frame[i], b = strong[next_strong++].bg;
            double wgt = std::max(v, 0.0);  // centroid weights: the counts, as DIALS does
            a.sw += wgt;
            a.swx += wgt * (x + 0.5);
            a.swy += wgt * (run.y + 0.5);
            a.total += v - b;
            a.var += g * std::max(v, 0.0) + rn2;
            a.bgsum += b;
            if (v > a.max) {
                a.max = v;
                a.maxx = x;
                a.maxy = run.y;
            }
            a.npix++;
        }
        a.x0 = std::min(a.x0, run.x0);
        a.x1 = std::max(a.x1, run.x1);
        a.y0 = std::min(a.y0, run.y);
        a.y1 = std::max(a.y1, run.y + 1);
    }
    std::vector<uint8_t> accepted(acc.size(), 0);
    std::vector<Peak> peaks;
    for (size_t s = 0; s < acc.size(); s++) {
        const Acc &a = acc[s];
        if (a.npix < fp.min_pixels || a.npix > fp.max_pixels || a.sw <= 0) continue;
        double cx = a.swx / a.sw, cy = a.swy / a.sw;
        if (fp.max_separation > 0 &&
            std::hypot(a.maxx + 0.5 - cx, a.maxy + 0.5 - cy) > fp.max_separation)
            continue;
        accepted[s] = 1;
        Peak p;
        p.x = cx;
        p.y = cy;
        p.total = a.total;
        p.max = a.max;
        p.background = a.bgsum / a.npix;
        p.snr = a.var > 0 ? a.total / std::sqrt(a.var) : 0.0;
        p.npix = a.npix;
        p.x0 = (int)a.x0;
        p.y0 = (int)a.y0;
        p.x1 = (int)a.x1;
        p.y1 = (int)a.y1;
        peaks.push_back(p);
    }
    stage_mark("labelling");
    if (spot_mask) {
        std::vector<uint32_t> masked;  // the runs in the mask
        for (size_t r = 0; r < runs.size(); r++)
            if (fp.mask_all_strong || accepted[(size_t)slot[find_root(parent, (uint32_t)r)]]) masked.push_back((uint32_t)r);
        const size_t m = (size_t)std::max(margin, 0);
        size_t painted = 0;  // bytes the runs' dilated rectangles cover, overlaps counted
        for (uint32_t r : masked) painted += (2 * m + 1) * (runs[r].x1 - runs[r].x0 + 2 * m);
        if (painted <= (size_t)H * W / 8) {
            // Few spots (the usual frame): the dilation is the union of each run's rectangle
            // grown by the margin (clipped to the frame), painted into the cleared map.
            std::memset(spot_mask, 0, (size_t)H * W);
            for (uint32_t r : masked) {
                const Run &run = runs[r];
                const size_t y0 = run.y >= m ? run.y - m : 0, y1 = std::min<size_t>(H, run.y + m + 1);
                const size_t x0 = run.x0 >= m ? run.x0 - m : 0, x1 = std::min<size_t>(W, run.x1 + m);
                for (size_t y = y0; y < y1; y++) std::memset(spot_mask + y * W + x0, 1, x1 - x0);
            }
            stage_mark("spot mask");
        } else {
            uint64_t *spots = scratch(sc.spots, (size_t)H * nw);
            std::memset(spots, 0, (size_t)H * nw * sizeof(uint64_t));
            for (uint32_t r : masked) set_bits(spots + (size_t)runs[r].y * nw, runs[r].x0, runs[r].x1);
            stage_mark("spot mask");
            window_bits<false>(spots, H, W, margin, nthreads);
            unpack_map(spots, spot_mask, H, W, nthreads);
        }
    }
    return peaks;
}

#define REDML_INSTANTIATE(T)                                                                      \
    template std::vector<Peak> find_spots<T>(const T *, const uint8_t *, uint32_t, uint32_t,      \
                                             const FinderParams &, uint8_t *, int, int);
REDML_FOR_EACH_PIXEL_TYPE(REDML_INSTANTIATE)
#undef REDML_INSTANTIATE

}  // namespace redml
