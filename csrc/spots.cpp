// spots.cpp: spot finder (see spots.h).
#include "spots.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

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
    std::vector<uint8_t> cand, core, rows;
    size_t held() const { return held_bytes(cand, core, rows); }
};

FinderScratch &finder_scratch() {  // the calling thread's, one set for every pixel type
    thread_local FinderScratch sc;
    return sc;
}


// out[x] = (in[x] != 0), n bytes.
REDML_ALWAYS_INLINE void copy_01(const uint8_t *__restrict in, uint8_t *__restrict out, size_t n) {
    for (size_t x = 0; x < n; x++) out[x] = in[x] != 0;
}

// One row of a 0/1 byte map combined over a window of 2r+1 columns, clipped to the row:
// AND (erosion) or OR (dilation). pad: room for W + 2r bytes. Plain loops over a padded
// copy, so they vectorize.
template <bool And>
REDML_ALWAYS_INLINE void window_row(const uint8_t *in, uint8_t *out, uint32_t W, int r, uint8_t *pad) {
    const uint8_t outside = And ? 1 : 0;  // clipped: outside pixels never decide
    std::memset(pad, outside, (size_t)r);
    copy_01(in, pad + r, W);
    std::memset(pad + r + W, outside, (size_t)r);
    std::memcpy(out, pad, W);
    for (int d = 1; d <= 2 * r; d++) {
        const uint8_t *__restrict a = pad + d;
        uint8_t *__restrict o = out;
        if (And)
            for (uint32_t x = 0; x < W; x++) o[x] &= a[x];
        else
            for (uint32_t x = 0; x < W; x++) o[x] |= a[x];
    }
}

// Rows [y0, y1) of `out`: the column-wise AND (OR) of `rows` over 2r+1 rows, clipped.
// any[y]: whether row y of `rows` has a nonzero byte (an all-zero row decides an AND
// alone, and an OR of all-zero rows is zero: no pass over the bytes).
template <bool And>
REDML_ALWAYS_INLINE void window_columns(const uint8_t *rows, const uint8_t *any, uint8_t *out, uint32_t H, uint32_t W,
                                        int r, uint32_t y0, uint32_t y1) {
    for (uint32_t y = y0; y < y1; y++) {
        uint32_t ya = y >= (uint32_t)r ? y - r : 0, yb = std::min<uint32_t>(H - 1, y + r);
        uint8_t *__restrict o = out + (size_t)y * W;
        bool all_any = true, some_any = false;
        for (uint32_t yy = ya; yy <= yb; yy++) {
            all_any &= any[yy] != 0;
            some_any |= any[yy] != 0;
        }
        if (And ? !all_any : !some_any) {
            std::memset(o, 0, W);
            continue;
        }
        bool first = true;  // rows without a nonzero byte were not written by the row pass
        for (uint32_t yy = ya; yy <= yb; yy++) {
            if (!any[yy]) continue;
            const uint8_t *__restrict a = rows + (size_t)yy * W;
            if (first)
                std::memcpy(o, a, W);
            else if (And)
                for (uint32_t x = 0; x < W; x++) o[x] &= a[x];
            else
                for (uint32_t x = 0; x < W; x++) o[x] |= a[x];
            first = false;
        }
    }
}

// The row of window_row, run by run of nonzero input bytes (the maps are sparse: a few
// runs per row cost less than 2r passes over it). Returns whether the output has a
// nonzero byte, or -1, with `out` unspecified, for a row of more than W / 32 runs.
template <bool And>
REDML_ALWAYS_INLINE int window_row_runs(const uint8_t *in, uint8_t *out, uint32_t W, int r) {
    std::memset(out, 0, W);
    size_t runs = 0;
    bool any = false;
    for (size_t a = byte_run_end(in, 0, W, false); a < W; a = byte_run_end(in, a, W, false)) {
        if (++runs > W / 32) return -1;
        const size_t b = byte_run_end(in, a, W, true);
        // the output run of input run [a, b), clipped (pixels outside never decide)
        const size_t lo = And ? (a == 0 ? 0 : a + r) : (a >= (size_t)r ? a - r : 0);
        const size_t hi = And ? (b == W ? W : (b >= (size_t)r ? b - r : 0)) : std::min<size_t>(W, b + r);
        if (lo < hi) {
            std::memset(out + lo, 1, hi - lo);
            any = true;
        }
        a = b;
    }
    return any;
}

// The row pass of rows [y0, y1): any[y] = whether row y of `rows` has a nonzero byte
// (rows without one are not written).
template <bool And>
REDML_ALWAYS_INLINE void window_rows(const uint8_t *in, uint8_t *rows, uint8_t *any, uint32_t W, int r, uint32_t y0,
                                     uint32_t y1, uint8_t *pad) {
    for (uint32_t y = y0; y < y1; y++) {
        const uint8_t *row = in + (size_t)y * W;
        uint8_t *out = rows + (size_t)y * W;
        any[y] = 0;
        if (byte_run_end(row, 0, W, false) == W) continue;
        const int runs = window_row_runs<And>(row, out, W, r);
        if (runs >= 0) {
            any[y] = (uint8_t)runs;
            continue;
        }
        window_row<And>(row, out, W, r, pad);
        any[y] = byte_run_end(out, 0, W, false) < W;
    }
}

// The two passes, portable and AVX2 builds (pixels.h).
template <bool And>
void window_rows_portable(const uint8_t *in, uint8_t *rows, uint8_t *any, uint32_t W, int r, uint32_t y0, uint32_t y1,
                          uint8_t *pad) {
    window_rows<And>(in, rows, any, W, r, y0, y1, pad);
}
template <bool And>
void window_columns_portable(const uint8_t *rows, const uint8_t *any, uint8_t *out, uint32_t H, uint32_t W, int r,
                             uint32_t y0, uint32_t y1) {
    window_columns<And>(rows, any, out, H, W, r, y0, y1);
}
#ifdef REDML_AVX2_DISPATCH
template <bool And>
REDML_TARGET_AVX2 void window_rows_avx2(const uint8_t *in, uint8_t *rows, uint8_t *any, uint32_t W, int r,
                                        uint32_t y0, uint32_t y1, uint8_t *pad) {
    window_rows<And>(in, rows, any, W, r, y0, y1, pad);
}
template <bool And>
REDML_TARGET_AVX2 void window_columns_avx2(const uint8_t *rows, const uint8_t *any, uint8_t *out, uint32_t H,
                                           uint32_t W, int r, uint32_t y0, uint32_t y1) {
    window_columns<And>(rows, any, out, H, W, r, y0, y1);
}
#endif

// AND (erosion) or OR (dilation) of a (2r+1)^2 window, clipped to the frame, of a 0/1
// byte map; `rows` (H*W) holds the row pass. in may equal out.
template <bool And>
void window_filter(const uint8_t *in, uint8_t *out, uint8_t *rows, uint32_t H, uint32_t W, int r, int nthreads) {
    std::vector<uint8_t> any(H);
    auto row_pass = window_rows_portable<And>;
    auto column_pass = window_columns_portable<And>;
#ifdef REDML_AVX2_DISPATCH
    if (cpu_has_avx2()) {
        row_pass = window_rows_avx2<And>;
        column_pass = window_columns_avx2<And>;
    }
#endif
    // A clipped window wider than the frame covers all of it: the same result at a radius of
    // side - 1, so a huge radius (roi_margin up to 65535) costs no more than the frame.
    const int rx = (int)std::min<int64_t>(r, (int64_t)W - 1), ry = (int)std::min<int64_t>(r, (int64_t)H - 1);
    for_row_bands(H, kRowsPerBand, nthreads, [&](size_t, uint32_t y0, uint32_t y1) {
        std::vector<uint8_t> pad(W + 2 * (size_t)rx);
        row_pass(in, rows, any.data(), W, rx, y0, y1, pad.data());
    });
    for_row_bands(H, kRowsPerBand, nthreads, [&](size_t, uint32_t y0, uint32_t y1) {
        column_pass(rows, any.data(), out, H, W, ry, y0, y1);
    });
}

// AND of a (2r+1)^2 window (clipped to the frame): erosion of a 0/1 byte map.
void erode(const uint8_t *in, uint8_t *out, uint8_t *rows, uint32_t H, uint32_t W, int r, int nthreads) {
    window_filter<true>(in, out, rows, H, W, r, nthreads);
}

// Appends to `out` the offsets i < n where a[i] and b[i] are both nonzero, in order, while
// there are at most `limit` of them (else returns false). b is the sparse map: 32 bytes
// where it is all zero are skipped at once.
bool collect_both(const uint8_t *a, const uint8_t *b, size_t n, size_t limit, std::vector<uint32_t> &out) {
    out.clear();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        uint64_t w[4];
        std::memcpy(w, b + i, 32);
        if (!(w[0] | w[1] | w[2] | w[3])) continue;
        for (size_t j = i; j < i + 32; j++)
            if (a[j] && b[j]) out.push_back((uint32_t)j);
        if (out.size() > limit) return false;
    }
    for (; i < n; i++)
        if (a[i] && b[i]) out.push_back((uint32_t)i);
    return out.size() <= limit;
}

// The mean of the usable pixels outside the candidate cores in the (2R+1)^2 window
// around (y, x), clipped to the frame: the strong test's local background at the tested
// pixels, summed directly (integer data: exact, as the box sums are). Along a run of
// tested pixels of one row the window slides: one column in, one column out.
template <class T>
class WindowBackground {
  public:
    WindowBackground(const T *frame, const uint8_t *usable, const uint8_t *core, uint32_t H, uint32_t W, int R)
        : f_(frame), ok_(usable), core_(core), H_(H), W_(W), R_(R) {}

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
    void add_column(uint32_t y, uint32_t x, int64_t sign) {
        const uint32_t ya = y >= (uint32_t)R_ ? y - R_ : 0, yb = std::min<uint32_t>(H_ - 1, y + R_);
        int64_t n = 0, sum = 0;
        for (uint32_t yy = ya; yy <= yb; yy++) {  // branch-free (0/1 maps)
            const size_t i = (size_t)yy * W_ + x;
            const int64_t use = ok_[i] & (core_[i] ^ 1);
            n += use;
            sum += (int64_t)f_[i] * use;
        }
        n_ += sign * n;
        sum_ += sign * sum;
    }
    const T *f_;
    const uint8_t *ok_, *core_;
    uint32_t H_, W_;
    int R_;
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
    thread_local std::vector<uint8_t> wide;
    const size_t N = (size_t)H * W;
    window_filter<false>(map, map, scratch(wide, N), H, W, r, nthreads);
    if (held_bytes(wide) > kKeepScratchBytes) std::vector<uint8_t>().swap(wide);
}

// Dispersion candidates of rows [y0, y1) from 32-bit integer box sums, for integer
// frames whose usable values in the rows the windows reach are small enough that every
// window sum of squares fits in 32 bits (counts below ~6600 for 7x7 windows). Returns
// false, writing nothing, where they are not. The sums equal the double box sums exactly,
// and the test is the same double expression, so the candidates are identical. Plain
// loops over padded column sums: they vectorize (AVX2 where the CPU has it).
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
    uint8_t *cand;
};

// out[x] = in[x] + ... + in[x + 2R]: the row pass of a box sum over padded column sums.
// GCC/Clang vector extension: 8 int32 lanes (one AVX2 register, or two SSE2 ones).
typedef int32_t v8i __attribute__((vector_size(32)));

template <int R>
SPOTS_INLINE void window_sum(const int32_t *in, int32_t *out, uint32_t W) {
    uint32_t x = 0;
    for (; x + 8 <= W; x += 8) {  // the 2R + 1 shifted loads summed in registers
        v8i t, u;
        std::memcpy(&t, in + x, sizeof t);
        for (int d = 1; d <= 2 * R; d++) {
            std::memcpy(&u, in + x + d, sizeof u);
            t += u;
        }
        std::memcpy(out + x, &t, sizeof t);
    }
    for (; x < W; x++) {
        int32_t t = 0;
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

// The test of pixels whose windows are full (every pixel usable, the centre too), in
// float, 8 lanes without a table lookup: c[x] = whether var > rhs where var - rhs lies
// beyond a bound on the float rounding errors (16 times the worst case), so that it
// decides as the double test does; open[x] = 1 where it does not decide (a window not
// full, or a pixel too close to call). rhs >= 0 where sm > 0, and sm <= 0 fails.
// Integrating: the read noise's term (`empty`: full * rn2) and the sign test, which
// photon counters (values >= 0, no read noise) skip: their sum is 0 only on all-zero
// windows, where var = rhs = 0 fails, so both loops decide alike there.
template <bool Integrating>
SPOTS_INLINE void dispersion_screen(const int32_t *__restrict n, const int32_t *__restrict sm,
                                    const int32_t *__restrict s2, uint8_t *__restrict c, uint8_t *__restrict open,
                                    uint32_t W, int32_t full, float gain, float empty, float bound) {
    for (uint32_t x = 0; x < W; x++) {
        const float sx = (float)sm[x], ms = (float)full * (float)s2[x], sq = sx * sx;
        const float var = ms - sq, rhs = (Integrating ? gain * sx + empty : gain * sx) * bound;
        const float tol = (ms + sq + rhs) * 0x1p-20f;
        const int32_t positive = sm[x] > 0;
        const int32_t pass = Integrating ? (var > rhs + tol) & positive : var > rhs + tol;
        const int32_t fail = (var < rhs - tol) | (positive ^ 1);  // an all-zero window: var = rhs = 0
        c[x] = (uint8_t)pass;
        open[x] = (uint8_t)((n[x] != full) | ((pass | fail) ^ 1));
    }
}

// The dispersion test of one row from its window counts n, sums sm and sums of squares
// s2: the float screen where it applies, the double test for every pixel it leaves open.
SPOTS_INLINE void dispersion_test(const DispersionArgs &a, const int32_t *__restrict n, const int32_t *__restrict sm,
                                  const int32_t *__restrict s2, const uint8_t *__restrict ok, uint8_t *__restrict c,
                                  uint8_t *__restrict open, uint32_t W, int32_t full) {
    const int32_t min_count = std::max(a.min_count, 2);
    const double bound_full = a.bound[full];
    if (!(full >= min_count && a.gain > 0 && bound_full >= 0 && std::isfinite(a.gain * bound_full) &&
          std::isfinite(full * a.rn2 * bound_full))) {
        for (uint32_t x = 0; x < W; x++) c[x] = dispersion_pixel(a, min_count, n[x], sm[x], s2[x], ok[x]);
        return;
    }
    const float empty = (float)((double)full * a.rn2);
    if (a.integrating)
        dispersion_screen<true>(n, sm, s2, c, open, W, full, (float)a.gain, empty, (float)bound_full);
    else
        dispersion_screen<false>(n, sm, s2, c, open, W, full, (float)a.gain, empty, (float)bound_full);
    for (size_t x = byte_run_end(open, 0, W, false); x < W; x = byte_run_end(open, x + 1, W, false))
        c[x] = dispersion_pixel(a, min_count, n[x], sm[x], s2[x], ok[x]);
}

// Adds (sign 1) or removes (-1) row y of the usable values to the padded column sums.
template <int R, class T>
SPOTS_INLINE void column_sums_row(const DispersionArgs &a, const T *frame, int64_t y, int32_t sign, int32_t *cols) {
    if (y < 0 || y >= (int64_t)a.H) return;
    const uint32_t W = a.W, P = W + 2 * R;
    const T *__restrict f = frame + (size_t)y * W;
    const uint8_t *__restrict ok = a.usable + (size_t)y * W;
    int32_t *__restrict pn = cols + R, *__restrict ps = cols + P + R, *__restrict ps2 = cols + 2 * P + R;
    for (uint32_t x = 0; x < W; x++) {
        const int32_t w = ok[x] != 0, v = (int32_t)f[x] * w;  // unusable: 0 (whatever its value)
        pn[x] += sign * w;
        ps[x] += sign * v;
        ps2[x] += sign * v * v;
    }
}

// Slides the column sums down one row: adds row y_in and removes row y_out, in one pass
// where both lie inside the frame.
template <int R, class T>
SPOTS_INLINE void column_sums_slide(const DispersionArgs &a, const T *frame, int64_t y_in, int64_t y_out,
                                    int32_t *cols) {
    if (y_in >= (int64_t)a.H || y_out < 0) {
        column_sums_row<R>(a, frame, y_in, 1, cols);
        column_sums_row<R>(a, frame, y_out, -1, cols);
        return;
    }
    const uint32_t W = a.W, P = W + 2 * R;
    const T *__restrict fi = frame + (size_t)y_in * W, *__restrict fo = frame + (size_t)y_out * W;
    const uint8_t *__restrict oki = a.usable + (size_t)y_in * W, *__restrict oko = a.usable + (size_t)y_out * W;
    int32_t *__restrict pn = cols + R, *__restrict ps = cols + P + R, *__restrict ps2 = cols + 2 * P + R;
    for (uint32_t x = 0; x < W; x++) {
        const int32_t wi = oki[x] != 0, vi = (int32_t)fi[x] * wi;
        const int32_t wo = oko[x] != 0, vo = (int32_t)fo[x] * wo;
        pn[x] += wi - wo;
        ps[x] += vi - vo;
        ps2[x] += vi * vi - vo * vo;
    }
}

template <int R, class T>
SPOTS_INLINE void dispersion_rows_int(const DispersionArgs &a, const T *frame, uint32_t y0, uint32_t y1,
                                      int32_t *cols, int32_t *sums) {
    const uint32_t W = a.W, P = W + 2 * R;  // column sums padded by R zeros on each side
    const int32_t *cn = cols, *cs = cols + P, *cs2 = cols + 2 * P;
    int32_t *n = sums, *sm = sums + W, *s2 = sums + 2 * W;
    uint8_t *open = (uint8_t *)(sums + 3 * W);
    std::memset(cols, 0, 3 * (size_t)P * sizeof(int32_t));
    auto add_row = [&](int64_t y, int32_t sign) __attribute__((always_inline)) {
        column_sums_row<R>(a, frame, y, sign, cols);
    };
    for (int64_t y = (int64_t)y0 - R; y <= (int64_t)y0 + R; y++) add_row(y, 1);
    for (uint32_t y = y0; y < y1; y++) {
        if (y > y0) column_sums_slide<R>(a, frame, (int64_t)y + R, (int64_t)y - R - 1, cols);
        window_sum<R>(cn, n, W);
        window_sum<R>(cs, sm, W);
        window_sum<R>(cs2, s2, W);
        dispersion_test(a, n, sm, s2, a.usable + (size_t)y * W, a.cand + (size_t)y * W, open, W, (2 * R + 1) * (2 * R + 1));
    }
}

template <class T>
SPOTS_INLINE void dispersion_band_int_body(const DispersionArgs &a, const T *frame, int r, uint32_t y0, uint32_t y1,
                                           int32_t *cols, int32_t *sums) {
    switch (r) {
        case 1: return dispersion_rows_int<1>(a, frame, y0, y1, cols, sums);
        case 2: return dispersion_rows_int<2>(a, frame, y0, y1, cols, sums);
        case 3: return dispersion_rows_int<3>(a, frame, y0, y1, cols, sums);
        default: return dispersion_rows_int<4>(a, frame, y0, y1, cols, sums);
    }
}

template <class T>
void dispersion_band_int_default(const DispersionArgs &a, const T *frame, int r, uint32_t y0, uint32_t y1,
                                 int32_t *cols, int32_t *sums) {
    dispersion_band_int_body(a, frame, r, y0, y1, cols, sums);
}

#ifdef REDML_AVX2_DISPATCH
template <class T>
REDML_TARGET_AVX2 void dispersion_band_int_avx2(const DispersionArgs &a, const T *frame, int r, uint32_t y0,
                                                uint32_t y1, int32_t *cols, int32_t *sums) {
    dispersion_band_int_body(a, frame, r, y0, y1, cols, sums);
}
#endif

// Largest magnitude of the usable values of n pixels (negative where the markers let
// negative values be noise), branch-free.
template <class T>
int64_t usable_max_abs(const T *__restrict f, const uint8_t *__restrict ok, size_t n) {
    T hi = 0, lo = 0;
    for (size_t i = 0; i < n; i++) {
        const T v = (T)(f[i] * (T)(ok[i] != 0));
        hi = std::max<T>(hi, v);
        lo = std::min<T>(lo, v);
    }
    return std::max<int64_t>((int64_t)hi, -(int64_t)lo);
}

template <class T>
bool dispersion_band_int(const DispersionArgs &a, const T *frame, int r, uint32_t y0, uint32_t y1) {
    if constexpr (std::is_floating_point<T>::value) {
        return false;
    } else {
        if (r < 1 || r > 4) return false;
        const int64_t area = (int64_t)(2 * r + 1) * (2 * r + 1);
        const int64_t limit = (int64_t)std::sqrt((double)INT32_MAX / (double)area) - 1;
        const uint32_t ya = y0 >= (uint32_t)r ? y0 - r : 0, yb = std::min<uint32_t>(a.H, y1 + r);
        if (usable_max_abs(frame + (size_t)ya * a.W, a.usable + (size_t)ya * a.W, (size_t)(yb - ya) * a.W) > limit)
            return false;
        // sums: the window sums of a row (3 W) and its open pixels (W bytes)
        std::vector<int32_t> cols(3 * ((size_t)a.W + 2 * r)), sums(3 * (size_t)a.W + ((size_t)a.W + 3) / 4);
#ifdef REDML_AVX2_DISPATCH
        if (cpu_has_avx2()) {
            dispersion_band_int_avx2(a, frame, r, y0, y1, cols.data(), sums.data());
            return true;
        }
#endif
        dispersion_band_int_default(a, frame, r, y0, y1, cols.data(), sums.data());
        return true;
    }
}

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
                             const FinderParams &fp, uint8_t *spot_mask, int nthreads) {
    const size_t N = (size_t)H * W;
    const int k = std::max(1, fp.kernel);
    const double g = fp.gain;
    const double rn = fp.read_noise < 0 ? estimated_read_noise(frame, usable, H, W, fp, nthreads) : fp.read_noise;
    const double rn2 = rn * rn;
    FinderScratch &sc = finder_scratch();
    ReleaseIfLarge<FinderScratch> release{sc};

    // 1. dispersion candidates
    uint8_t *cand = scratch(sc.cand, N);
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
        box_sums_band<true>(H, W, k, y0, y1, load_usable, [&](uint32_t y, const double *n, const double *s, const double *s2) {
            uint8_t *c = cand + (size_t)y * W;
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
        });
    });
    stage_mark("dispersion 7x7");
    // 2. erosion by the window: the candidate cores
    uint8_t *core = scratch(sc.core, N);
    erode(cand, core, scratch(sc.rows, N), H, W, k - 1, nthreads);
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
        const uint8_t *c = core + (size_t)y * W;
        for (uint32_t x = 0; x < W; x++) {
            bool use = ok[x] && !c[x];
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
        if (!std::is_floating_point<T>::value && collect_both(usable + i0, core + i0, n, n * 4 / window, tested)) {
            WindowBackground<T> background(frame, usable, core, H, W, R);
            for (uint32_t j : tested) {
                const uint32_t y = (uint32_t)((i0 + j) / W), x = (uint32_t)((i0 + j) % W);
                strong_test(strong, y, x, background.at(y, x));
            }
            return;
        }
        box_sums_band<false>(H, W, R, y0, y1, load_background, [&](uint32_t y, const double *n, const double *s, const double *) {
            const uint8_t *ok = usable + (size_t)y * W, *c = core + (size_t)y * W;
            for (uint32_t x = 0; x < W; x++) {
                if (!ok[x] || !c[x]) continue;
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
        std::memset(spot_mask, 0, N);
        for (size_t r = 0; r < runs.size(); r++) {
            if (!fp.mask_all_strong && !accepted[(size_t)slot[find_root(parent, (uint32_t)r)]]) continue;
            std::memset(spot_mask + (size_t)runs[r].y * W + runs[r].x0, 1, runs[r].x1 - runs[r].x0);
        }
    }
    stage_mark("spot mask");
    return peaks;
}

#define REDML_INSTANTIATE(T)                                                                      \
    template std::vector<Peak> find_spots<T>(const T *, const uint8_t *, uint32_t, uint32_t,      \
                                             const FinderParams &, uint8_t *, int);
REDML_FOR_EACH_PIXEL_TYPE(REDML_INSTANTIATE)
#undef REDML_INSTANTIATE

}  // namespace redml
