// background.cpp: robust per-tile background mean and the quantization step per tile.
#include "background.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "pixels.h"
#include "quantize.h"
#include "scratch.h"
#include "threads.h"

namespace redml {

namespace {

// Sum and count of the 16-bit values v[i] <= top (32-bit: no overflow for n <= 32768
// values), branch-free; a build per SIMD level (pixels.h).
template <class V>
REDML_ALWAYS_INLINE void sum_at_most_body(const V *__restrict v, size_t n, V top, int32_t *sum, int32_t *count) {
    static_assert(sizeof(V) == 2, "16-bit values");
    int32_t s = 0, c = 0;
    for (size_t i = 0; i < n; i++) {
        const bool take = v[i] <= top;
        s += take ? (int32_t)v[i] : 0;
        c += take;
    }
    *sum = s;
    *count = c;
}
REDML_SIMD_CLONES((template <class V>), void, sum_at_most, (), (const V *v, size_t n, V top, int32_t *sum, int32_t *count),
                  (v, n, top, sum, count), sum_at_most_body(v, n, top, sum, count))

// The sigma of the clip: the model's, at least one photon's worth for integrating data (a
// clip at 3 sigma of a pixel of 0.05 photon and 0.2 photon of read noise would cut into the
// one-photon peak, and the mean's correction for the clip would extrapolate from there).
double clip_sigma(double mean, const redml_params &p) {
    if (!integrating(p) || p.mu_min >= 1.0f) return model_sigma(mean, p);
    redml_params one = p;
    one.mu_min = 1.0f;
    return model_sigma(mean, one);
}

// Sigma-clipped mean of values v[0..n) (upper side, 3 sigma, up to 4 passes); *clip_limit
// receives the limit of the last pass. Integer values are compared with the integer
// part of the limit and summed exactly in 64 bits, which gives the same sums as double
// arithmetic (the sums stay below 2^53); each pass is a branch-free loop. A pass of integer
// values whose integer limit is the previous pass's would take the same values, so give the
// same mean, which ends the iteration: it is not run.
template <class V>
double clipped_mean(const V *__restrict v, size_t n, const redml_params &p, double *clip_limit) {
    *clip_limit = INFINITY;
    if (n == 0) return 0.0;
    double limit = INFINITY, mean = 0.0;
    V previous_top = 0;
    for (int iter = 0; iter < 4; iter++) {
        double sum = 0.0, count = 0.0;
        if constexpr (std::is_floating_point<V>::value) {
            for (size_t i = 0; i < n; i++) {
                bool take = v[i] <= limit;
                sum += take ? v[i] : 0.0;
                count += take ? 1.0 : 0.0;
            }
        } else {
            // nothing at or below the limit (or no limit: NaN); checked before the conversion to V
            if (!(limit >= (double)std::numeric_limits<V>::lowest())) break;
            const V top = limit >= (double)std::numeric_limits<V>::max() ? std::numeric_limits<V>::max()
                                                                          : (V)std::floor(limit);
            if (iter > 0 && top == previous_top) {  // the previous pass again: the same mean
                *clip_limit = limit;
                break;
            }
            previous_top = top;
            int64_t isum = 0, icount = 0;
            if constexpr (sizeof(V) == 2) {
                // 32-bit partial sums over chunks short enough not to overflow: the loop
                // vectorizes in 32-bit lanes
                for (size_t c0 = 0; c0 < n; c0 += 32768) {
                    const size_t c1 = std::min(n, c0 + 32768);
                    int32_t psum = 0, pcount = 0;
                    sum_at_most(v + c0, c1 - c0, top, &psum, &pcount);
                    isum += psum;
                    icount += pcount;
                }
            } else {
                for (size_t i = 0; i < n; i++) {
                    const int64_t take = v[i] <= top;
                    isum += take * (int64_t)v[i];
                    icount += take;
                }
            }
            sum = (double)isum;
            count = (double)icount;
        }
        if (count == 0) break;
        double m = sum / count;
        *clip_limit = limit;
        if (iter > 0 && m == mean) break;
        mean = m;
        limit = mean + 3.0 * clip_sigma(mean, p);
    }
    return mean;
}

// Whether all n bytes of a 0/1 map are 1, eight at a time.
REDML_ALWAYS_INLINE bool all_set(const uint8_t *p, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        std::memcpy(&w, p + i, 8);
        if (w != 0x0101010101010101ull) return false;
    }
    for (; i < n; i++)
        if (p[i] != 1) return false;
    return true;
}

// The usable pixels of the n pixels at row (values) and ok (usable map) appended branch-free
// to buf (as the integer or double type clipped_mean sums); returns their count.
template <class T, class V>
REDML_ALWAYS_INLINE size_t gather_run(const T *__restrict row, const uint8_t *__restrict ok, uint32_t n, V *__restrict buf) {
    if (all_set(ok, n)) {  // the usual row: a plain (vectorized) copy
        for (uint32_t x = 0; x < n; x++) buf[x] = (V)row[x];
        return n;
    }
    size_t k = 0;
    for (uint32_t x = 0; x < n; x++) {
        buf[k] = (V)row[x];
        k += ok[x] != 0;
    }
    return k;
}

// The usable pixels of one tile, gathered into buf in raster order.
template <class T, class V>
size_t gather_tile(const T *frame, const uint8_t *usable, const TileGrid &g, uint32_t ty, uint32_t tx, V *buf) {
    uint32_t y0 = ty * g.tile, y1 = std::min(g.height, y0 + g.tile);
    uint32_t x0 = tx * g.tile, x1 = std::min(g.width, x0 + g.tile);
    size_t n = 0;
    for (uint32_t y = y0; y < y1; y++)
        n += gather_run(frame + (size_t)y * g.width + x0, usable + (size_t)y * g.width + x0, x1 - x0, buf + n);
    return n;
}

// The usable pixels of every tile of tile row ty, each in raster order: tile tx's at
// buf + tx * stride (stride: room for a tile's pixels), n[tx] of them. The frame is read row
// by row (tile by tile, each row of a tile was a cache miss: the rows are a frame row apart).
template <class T, class V>
REDML_ALWAYS_INLINE void gather_tile_row_body(const T *frame, const uint8_t *usable, const TileGrid &g, uint32_t ty, size_t stride, V *buf,
                     size_t *n) {
    const uint32_t y0 = ty * g.tile, y1 = std::min(g.height, y0 + g.tile);
    std::fill(n, n + g.cols, 0);
    for (uint32_t y = y0; y < y1; y++) {
        if (y + 1 < y1) {  // the next row asked for in cache (the hardware's prefetcher stops at each page)
            const char *f = (const char *)(frame + (size_t)(y + 1) * g.width), *ok = (const char *)(usable + (size_t)(y + 1) * g.width);
            for (size_t i = 0; i < g.width * sizeof(T); i += 64) __builtin_prefetch(f + i);
            for (size_t i = 0; i < g.width; i += 64) __builtin_prefetch(ok + i);
        }
        for (uint32_t tx = 0; tx < g.cols; tx++) {
            const uint32_t x0 = tx * g.tile, x1 = std::min(g.width, x0 + g.tile);
            const size_t i = (size_t)y * g.width + x0;
            n[tx] += gather_run(frame + i, usable + i, x1 - x0, buf + tx * stride + n[tx]);
        }
    }
}

REDML_SIMD_CLONES((template <class T, class V>), void, gather_tile_row, (),
                  (const T *frame, const uint8_t *usable, const TileGrid &g, uint32_t ty, size_t stride, V *buf,
                   size_t *n),
                  (frame, usable, g, ty, stride, buf, n), gather_tile_row_body(frame, usable, g, ty, stride, buf, n))

// The type clipped_mean sums a tile's values in: doubles (floats), the pixels' own type (16-bit
// pixels: half the bytes to gather and to read again each pass; the passes vectorize), 64-bit
// integers (the clip limit as an integer).
template <class T>
using TileValue = typename std::conditional<std::is_floating_point<T>::value, double,
                                            typename std::conditional<sizeof(T) == 2, T, int64_t>::type>::type;

// The Poisson mean lambda whose values up to L average m (the clipped mean above lost
// the tail beyond the clip: at lambda = 1 the 3-sigma clip biases the mean by -0.02
// sigma). E[x | x <= L] = lambda * P(x <= L-1) / P(x <= L), solved by fixed point.
double untruncated_poisson_mean(double m, double limit) {
    if (!(m > 0.0) || !(limit < 1e6)) return m;
    const int64_t L = (int64_t)std::floor(limit);
    if (L < 1) return m;
    double lambda = m;
    for (int iter = 0; iter < 50; iter++) {
        // P(x <= L-1) / P(x <= L) from the pmf recurrence, relative to pmf(0)
        double term = 1.0, below = 0.0;
        for (int64_t k = 0; k < L; k++) {
            below += term;
            term *= lambda / (double)(k + 1);
        }
        double next = m * (below + term) / below;
        if (!(next < 4.0 * m + 10.0)) return m;  // not a clipped Poisson sample: keep the mean
        if (std::fabs(next - lambda) < 1e-9 * (1.0 + lambda)) return next;
        lambda = next;
    }
    return lambda;
}

// The model mean (data units) whose values up to the clip limit average m: the clipped
// mean of integrating data corrected as untruncated_poisson_mean does for photon counts
// (integer values are <= floor(limit), i.e. below floor(limit) + 1/2 before rounding).
double untruncated_noise_mean(double m, double limit, const redml_params &p, bool integer) {
    if (!(m > 0.0) || !(limit < 1e30) || !(p.read_noise > 0)) return m;
    const double L = integer ? std::floor(limit) + 0.5 : limit, g = p.gain, rn = p.read_noise;
    double lambda = m;
    for (int iter = 0; iter < 50; iter++) {
        double moment, mass = redml_noise_mass(-INFINITY, L, std::max(lambda, 0.0) / g, g, rn, &moment);
        if (!(mass > 0.0)) return m;
        double next = lambda + (m - moment / mass);
        if (!(next < 4.0 * m + 10.0 * g)) return m;  // not a clipped sample of the model: keep the mean
        if (std::fabs(next - lambda) < 1e-9 * (g + std::fabs(lambda))) return next;
        lambda = next;
    }
    return lambda;
}

}  // namespace

double model_sigma(double mean, const redml_params &p) {
    return integrating(p) ? redml_sigma_rn(mean, p.gain, p.mu_min, p.read_noise > 0 ? p.read_noise : 0.0)
                          : redml_sigma(mean, p.gain, p.mu_min);
}

template <class T>
float tile_step(double mean, const redml_params &p) {
    const bool bins = conditional_recon(p);
    if (integrating(p)) {
        const double rn = p.read_noise > 0 ? p.read_noise : 0.0;
        if constexpr (std::is_floating_point<T>::value) return redml_step_float_rn(mean, p.q, p.gain, p.mu_min, rn, bins);
        return (float)(bins ? redml_step_int_bin_rn(mean, p.q, p.gain, p.mu_min, rn)
                            : redml_step_int_rn(mean, p.q, p.gain, p.mu_min, rn));
    }
    if constexpr (std::is_floating_point<T>::value) return redml_step_float(mean, p.q, p.gain, p.mu_min);
    return (float)(bins ? redml_step_int_bin(mean, p.q, p.gain, p.mu_min) : redml_step_int(mean, p.q, p.gain, p.mu_min));
}

template <class T>
double estimate_read_noise(const T *frame, const uint8_t *usable, const TileGrid &grid, const redml_params &p,
                           int nthreads) {
    redml_params clip = p;
    clip.read_noise = p.gain;  // the clip's provisional spread: one photon
    std::vector<double> excess(grid.count(), NAN);
    parallel_for(grid.rows, nthreads, [&](size_t ty) {
        std::vector<double> v((size_t)grid.tile * grid.tile);
        for (uint32_t tx = 0; tx < grid.cols; tx++) {
            const size_t n = gather_tile(frame, usable, grid, (uint32_t)ty, tx, v.data());
            if (n < 16) continue;
            // Mean and variance of the values up to 5 sigma above the clipped mean: the clip
            // keeps spots and zingers out, and its width its bias on both negligible (a 3-sigma
            // clip takes ~1% off the variance, more than the read noise at high flux).
            double limit, mean = clipped_mean(v.data(), n, clip, &limit);
            const double top = mean + 5.0 * clip_sigma(mean, clip);
            double s1 = 0.0, s2 = 0.0, c = 0.0;
            for (size_t i = 0; i < n; i++)
                if (v[i] <= top) s1 += v[i] - mean, s2 += (v[i] - mean) * (v[i] - mean), c += 1.0;
            if (c < 2.0) continue;
            const double m = s1 / c, var = (s2 - c * m * m) / (c - 1.0);
            excess[ty * grid.cols + tx] = var - p.gain * std::max(mean + m, 0.0);
        }
    });
    excess.erase(std::remove_if(excess.begin(), excess.end(), [](double e) { return std::isnan(e); }), excess.end());
    double r2 = 0.0;
    if (!excess.empty()) {
        std::nth_element(excess.begin(), excess.begin() + excess.size() / 2, excess.end());
        r2 = excess[excess.size() / 2];
    }
    const double floor_rn = 1e-3 * p.gain;
    return r2 > floor_rn * floor_rn ? std::sqrt(r2) : floor_rn;
}

template <class T>
BackgroundModel unfitted_background(const TileGrid &grid) {
    BackgroundModel m;
    m.grid = grid;
    m.mean.assign(grid.count(), 0.0f);
    m.step.assign(grid.count(), std::is_floating_point<T>::value ? 0.0f : 1.0f);
    return m;
}

template <class T>
void fit_tile_rows(const T *frame, const uint8_t *usable, const redml_params &p, uint32_t ty0, uint32_t ty1,
                   BackgroundModel &m, int nthreads) {
    const TileGrid &grid = m.grid;
    const bool quantize = p.mode == REDML_MODE_QUANTIZED;
    const size_t stride = (size_t)std::min(grid.tile, grid.height) * std::min(grid.tile, grid.width);
    parallel_for(ty1 - ty0, nthreads, [&](size_t k) {
        const uint32_t ty = ty0 + (uint32_t)k;
        // the tile row's values, kept by the thread (no allocation or page faults per tile row)
        thread_local std::vector<TileValue<T>> values;
        thread_local std::vector<size_t> counts;
        TileValue<T> *v = scratch(values, stride * grid.cols);
        size_t *n = scratch(counts, grid.cols);
        gather_tile_row(frame, usable, grid, ty, stride, v, n);
        for (uint32_t tx = 0; tx < grid.cols; tx++) {
            size_t t = (size_t)ty * grid.cols + tx;
            double limit;
            float mean = (float)clipped_mean(v + tx * stride, n[tx], p, &limit);
            // The conditional reconstructions decode from this mean's distribution: undo the
            // clip's bias for them (other modes keep the clipped mean).
            if (quantize && conditional_recon(p)) {
                if (integrating(p)) mean = (float)untruncated_noise_mean(mean, limit, p, !std::is_floating_point<T>::value);
                else if (!std::is_floating_point<T>::value) mean = (float)untruncated_poisson_mean(mean, limit);
            }
            m.mean[t] = mean;
            if (quantize) m.step[t] = tile_step<T>(mean, p);
        }
        if (held_bytes(values) > kKeepScratchBytes) std::vector<TileValue<T>>().swap(values);
    });
}

template <class T>
BackgroundModel fit_background(const T *frame, const uint8_t *usable, const TileGrid &grid,
                               const redml_params &p, int nthreads) {
    BackgroundModel m = unfitted_background<T>(grid);
    fit_tile_rows(frame, usable, p, 0, grid.rows, m, nthreads);
    return m;
}

double interpolate_mean(const BackgroundModel &m, uint32_t y, uint32_t x) {
    const TileGrid &g = m.grid;
    return bilinear_at(m, bilinear_axis(y, g.tile, g.rows), bilinear_axis(x, g.tile, g.cols));
}

#define REDML_INSTANTIATE(T)                                                                    \
    template BackgroundModel fit_background<T>(const T *, const uint8_t *, const TileGrid &,    \
                                               const redml_params &, int);                      \
    template float tile_step<T>(double, const redml_params &);                                  \
    template BackgroundModel unfitted_background<T>(const TileGrid &);                          \
    template void fit_tile_rows<T>(const T *, const uint8_t *, const redml_params &, uint32_t, uint32_t, \
                                   BackgroundModel &, int);                                     \
    template double estimate_read_noise<T>(const T *, const uint8_t *, const TileGrid &, const redml_params &, int);
REDML_FOR_EACH_PIXEL_TYPE(REDML_INSTANTIATE)
#undef REDML_INSTANTIATE

}  // namespace redml
