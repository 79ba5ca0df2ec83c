// jungfrau.cpp: JUNGFRAU raw frames -> photons (redml_jf_convert in redml.h). One threaded
// pass over the raw words, fused with masking, pedestal tracking and module assembly; the
// per-pixel rule is csrc/jungfrau.h (shared with the GPU path).
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "error.h"
#include "jungfrau.h"
#include "redml.h"
#include "threads.h"

namespace redml {
namespace {

const uint32_t kRowsPerTask = 32;  // divides 512: a task never straddles two modules
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

// Converts raw row y into v[] (photons or markers) and, when the frame wants them, e[] (keV),
// the status map and the tracked pedestal; counts the statuses other than G0.
template <bool kMask, bool kExtras>
void convert_row(const Frame &f, uint32_t y, int32_t lo, int32_t hi, int32_t *v, float *e, uint64_t *counts) {
    // Locals, not f's fields: the stores below must not force reloads.
    const size_t row = (size_t)y * f.width, n = f.n;
    const uint16_t *raw = f.raw + row;
    const float *ped0 = f.ped0, *pedestal = f.pedestal, *gain = f.gain;
    const uint8_t *mask = f.mask;
    const float inv_energy = f.inv_energy;
    const uint32_t width = f.width;
    for (uint32_t x = 0; x < width; x++) {
        const size_t i = row + x;
        float ex;
        const int s = redml_jf_pixel(raw[x], kMask ? mask[i] : 0, ped0, pedestal, gain, i, n, inv_energy, lo, hi,
                                     &v[x], &ex);
        if (s != REDML_JF_G0) counts[s]++;  // G0 (most pixels) by difference: no chain of increments
        if (kExtras) {
            if (e) e[x] = ex;
            if (f.status) f.status[i] = (uint8_t)s;
            if (f.track) f.track[i] = redml_jf_track(f.track[i], raw[x], s, ex, inv_energy, f.alpha, f.threshold);
        }
    }
}

// Writes converted row y to the outputs: as it is (raw layout), or into its module's place,
// chip-border pixels split over 2 (4 at chip corners) output pixels.
template <class T>
void place_row(const Frame &f, uint32_t y, const int32_t *v, const float *e, T *photons, int32_t lo, int32_t hi) {
    float *kev = f.kev;
    if (!f.modules) {
        const size_t row = (size_t)y * f.width;
        if (photons)
            for (uint32_t x = 0; x < f.width; x++) photons[row + x] = (T)v[x];
        if (kev)
            for (uint32_t x = 0; x < f.width; x++) kev[row + x] = e[x];
        return;
    }
    const redml_jf_module &m = f.modules[y / REDML_JF_MODULE_ROWS];
    int row_extra;
    const int r = redml_jf_expand((int)(y % REDML_JF_MODULE_ROWS), 2, &row_extra);
    const int64_t base = out_offset(m, r, 0, f.out_width);
    const int64_t row_step = (int64_t)m.slow_y * f.out_width + m.slow_x;  // next assembled row
    const int64_t col_step = (int64_t)m.fast_y * f.out_width + m.fast_x;  // next assembled column
    const int nrows = row_extra ? 2 : 1;
    auto split = [&](uint32_t x) {  // any pixel, split or not
        int col_extra;
        const int c = redml_jf_expand((int)x, 4, &col_extra);
        const int ncols = col_extra ? 2 : 1, k = nrows * ncols;
        const int64_t o = base + c * col_step;
        for (int a = 0, part = 0; a < nrows; a++)
            for (int b = 0; b < ncols; b++, part++) {
                const int64_t oo = o + a * row_extra * row_step + b * col_extra * col_step;
                if (photons) photons[oo] = (T)redml_jf_split(v[x], k, part, lo, hi);
                if (kev) kev[oo] = e[x] / (float)k;
            }
    };
    if (nrows == 2) {  // a chip-border row: every pixel split
        for (uint32_t x = 0; x < REDML_JF_MODULE_COLS; x++) split(x);
        return;
    }
    const int chips = REDML_JF_MODULE_COLS / REDML_JF_CHIP;
    for (int chip = 0; chip < chips; chip++) {
        const uint32_t x0 = chip * REDML_JF_CHIP, x1 = x0 + REDML_JF_CHIP;
        const uint32_t xa = chip > 0 ? x0 + 1 : x0, xb = chip < chips - 1 ? x1 - 1 : x1;  // whole pixels
        const int64_t o = base + (int64_t)(xa + 2 * chip) * col_step;
        if (photons)
            for (uint32_t x = xa; x < xb; x++) photons[o + (int64_t)(x - xa) * col_step] = (T)v[x];
        if (kev)
            for (uint32_t x = xa; x < xb; x++) kev[o + (int64_t)(x - xa) * col_step] = e[x];
        if (xa > x0) split(x0);
        if (xb < x1) split(xb);
    }
}

template <class T>
void convert_rows(const Frame &f, T *photons, uint32_t y0, uint32_t y1, uint64_t *task_counts) {
    const int32_t lo = std::numeric_limits<T>::min(), hi = std::numeric_limits<T>::max();
    std::vector<int32_t> v(f.width);
    std::vector<float> e(f.kev ? f.width : 0);
    float *ep = f.kev ? e.data() : nullptr;
    uint64_t counts[REDML_JF_NSTATUS] = {0};
    const bool extras = f.kev || f.status || f.track;
    for (uint32_t y = y0; y < y1; y++) {
        if (f.mask) {
            if (extras) convert_row<true, true>(f, y, lo, hi, v.data(), ep, counts);
            else convert_row<true, false>(f, y, lo, hi, v.data(), ep, counts);
        } else {
            if (extras) convert_row<false, true>(f, y, lo, hi, v.data(), ep, counts);
            else convert_row<false, false>(f, y, lo, hi, v.data(), ep, counts);
        }
        place_row<T>(f, y, v.data(), ep, photons, lo, hi);
    }
    counts[REDML_JF_G0] = (uint64_t)(y1 - y0) * f.width;
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
            for (size_t k = 0; k < n_gap; k++)
                check(gap_index[k] < (uint64_t)out_height * out_width, REDML_E_ARG, "gap index outside the image");
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
                convert_rows<T>(f, out, y0, y1, task_counts[t].data());
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
