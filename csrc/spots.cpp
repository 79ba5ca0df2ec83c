// spots.cpp: interim ROI rule (see spots.h).
#include "spots.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "quantize.h"
#include "threads.h"

namespace redml {

namespace {

const size_t kRowsPerTask = 64;

template <class Fn>
void for_row_bands(uint32_t height, int nthreads, Fn fn) {
    size_t ntasks = (height + kRowsPerTask - 1) / kRowsPerTask;
    parallel_for(ntasks, nthreads, [&](size_t t) {
        uint32_t y0 = (uint32_t)(t * kRowsPerTask);
        uint32_t y1 = (uint32_t)std::min<size_t>(height, y0 + kRowsPerTask);
        for (uint32_t y = y0; y < y1; y++) fn(y);
    });
}

}  // namespace

template <class T>
void find_roi(const T *frame, const uint8_t *usable, const BackgroundModel &model,
              const redml_params &p, uint8_t *roi, int nthreads) {
    const TileGrid &g = model.grid;
    const uint32_t H = g.height, W = g.width;
    // Per tile: the box-sum threshold (roi_snr sigmas of a sum of 9 pixels).
    std::vector<float> threshold(g.count());
    for (size_t t = 0; t < g.count(); t++)
        threshold[t] = (float)(p.roi_snr * 3.0 * redml_sigma(model.mean[t], p.gain, p.mu_min));
    // Background-subtracted values and their horizontal 3-sums.
    std::vector<float> excess((size_t)H * W), rowsum((size_t)H * W);
    for_row_bands(H, nthreads, [&](uint32_t y) {
        size_t o = (size_t)y * W;
        for (uint32_t tx = 0; tx < g.cols; tx++) {
            const float mean = model.mean[(size_t)(y / g.tile) * g.cols + tx];
            uint32_t x1 = std::min<uint32_t>(W, (tx + 1) * g.tile);
            for (uint32_t x = tx * g.tile; x < x1; x++)
                excess[o + x] = usable[o + x] ? (float)frame[o + x] - mean : 0.0f;
        }
        const float *e = excess.data() + o;
        float *rs = rowsum.data() + o;
        rs[0] = e[0] + (W > 1 ? e[1] : 0.0f);
        for (uint32_t x = 1; x + 1 < W; x++) rs[x] = e[x - 1] + e[x] + e[x + 1];
        if (W > 1) rs[W - 1] = e[W - 2] + e[W - 1];
    });
    // Candidates: above background with a significant 3x3 sum; then dilated horizontally.
    std::vector<uint8_t> wide((size_t)H * W);
    const int r = p.roi_margin;
    for_row_bands(H, nthreads, [&](uint32_t y) {
        size_t o = (size_t)y * W;
        const float *up = rowsum.data() + (y > 0 ? o - W : o);
        const float *mid = rowsum.data() + o;
        const float *down = rowsum.data() + (y + 1 < H ? o + W : o);
        const float wu = y > 0 ? 1.0f : 0.0f, wd = y + 1 < H ? 1.0f : 0.0f;
        uint8_t *out = wide.data() + o;
        for (uint32_t tx = 0; tx < g.cols; tx++) {
            const float thr = threshold[(size_t)(y / g.tile) * g.cols + tx];
            uint32_t x1 = std::min<uint32_t>(W, (tx + 1) * g.tile);
            for (uint32_t x = tx * g.tile; x < x1; x++) {
                if (!(excess[o + x] > 0.0f && wu * up[x] + mid[x] + wd * down[x] > thr)) continue;
                uint32_t a = x >= (uint32_t)r ? x - r : 0, b = std::min<uint32_t>(W - 1, x + r);
                std::memset(out + a, 1, b - a + 1);
            }
        }
    });
    // Vertical dilation: OR of the rows within the margin.
    for_row_bands(H, nthreads, [&](uint32_t y) {
        uint32_t ya = y >= (uint32_t)r ? y - r : 0, yb = std::min<uint32_t>(H - 1, y + r);
        uint8_t *out = roi + (size_t)y * W;
        std::memcpy(out, wide.data() + (size_t)ya * W, W);
        for (uint32_t yy = ya + 1; yy <= yb; yy++) {
            const uint8_t *in = wide.data() + (size_t)yy * W;
            for (uint32_t x = 0; x < W; x++) out[x] |= in[x];
        }
    });
}

#define REDML_INSTANTIATE(T) \
    template void find_roi<T>(const T *, const uint8_t *, const BackgroundModel &, const redml_params &, uint8_t *, int);
REDML_INSTANTIATE(uint16_t)
REDML_INSTANTIATE(int16_t)
REDML_INSTANTIATE(int32_t)
REDML_INSTANTIATE(uint32_t)
REDML_INSTANTIATE(float)
#undef REDML_INSTANTIATE

}  // namespace redml
