// spots.cpp: interim ROI rule (see spots.h).
#include "spots.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "quantize.h"
#include "threads.h"

namespace redml {

const uint32_t kRowsPerBand = 32;

template <class T>
void find_roi(const T *frame, const uint8_t *usable, const BackgroundModel &model,
              const redml_params &p, uint8_t *roi, int nthreads) {
    const TileGrid &g = model.grid;
    const uint32_t H = g.height, W = g.width;
    // Per tile: the box-sum threshold (roi_snr sigmas of a sum of 9 pixels).
    std::vector<float> threshold(g.count());
    for (size_t t = 0; t < g.count(); t++)
        threshold[t] = (float)(p.roi_snr * 3.0 * redml_sigma(model.mean[t], p.gain, p.mu_min));
    const int r = p.roi_margin;
    std::vector<uint8_t> wide((size_t)H * W);  // candidates dilated horizontally

    for_row_bands(H, kRowsPerBand, nthreads, [&](size_t, uint32_t y0, uint32_t y1) {
        // Background-subtracted values and their horizontal 3-sums for the band plus a
        // one-row halo (zero rows outside the frame).
        const uint32_t ya = y0 > 0 ? y0 - 1 : 0, yb = std::min(H, y1 + 1);
        const size_t rows = yb - ya + 2;  // + a zero row on each side
        std::vector<float> excess((size_t)rows * W, 0.0f), rowsum((size_t)rows * W, 0.0f);
        auto slot = [&](uint32_t y) { return (size_t)(y - ya + 1) * W; };
        for (uint32_t y = ya; y < yb; y++) {
            float *__restrict e = excess.data() + slot(y);
            const T *__restrict f = frame + (size_t)y * W;
            const uint8_t *__restrict ok = usable + (size_t)y * W;
            for (uint32_t tx = 0; tx < g.cols; tx++) {
                const float mean = model.mean[(size_t)(y / g.tile) * g.cols + tx];
                const uint32_t x1 = std::min<uint32_t>(W, (tx + 1) * g.tile);
                for (uint32_t x = tx * g.tile; x < x1; x++) e[x] = ok[x] ? (float)f[x] - mean : 0.0f;
            }
            float *__restrict rs = rowsum.data() + slot(y);
            rs[0] = e[0] + (W > 1 ? e[1] : 0.0f);
            for (uint32_t x = 1; x + 1 < W; x++) rs[x] = e[x - 1] + e[x] + e[x + 1];
            if (W > 1) rs[W - 1] = e[W - 2] + e[W - 1];
        }
        // Candidates: above background with a significant 3x3 sum; dilated horizontally.
        std::vector<uint8_t> cand(W);
        for (uint32_t y = y0; y < y1; y++) {
            const float *__restrict e = excess.data() + slot(y);
            const float *__restrict up = rowsum.data() + slot(y) - W;
            const float *__restrict mid = rowsum.data() + slot(y);
            const float *__restrict down = rowsum.data() + slot(y) + W;
            uint8_t *__restrict c = cand.data();
            for (uint32_t tx = 0; tx < g.cols; tx++) {
                const float thr = threshold[(size_t)(y / g.tile) * g.cols + tx];
                const uint32_t x1 = std::min<uint32_t>(W, (tx + 1) * g.tile);
                for (uint32_t x = tx * g.tile; x < x1; x++)
                    c[x] = (uint8_t)((e[x] > 0.0f) & (up[x] + mid[x] + down[x] > thr));
            }
            uint8_t *out = wide.data() + (size_t)y * W;
            for (uint32_t x = 0; x < W; x++) {
                if (!c[x]) continue;
                uint32_t a = x >= (uint32_t)r ? x - r : 0, b = std::min<uint32_t>(W - 1, x + r);
                std::memset(out + a, 1, b - a + 1);
            }
        }
    });
    // Vertical dilation: OR of the rows within the margin.
    for_row_bands(H, kRowsPerBand, nthreads, [&](size_t, uint32_t y0, uint32_t y1) {
        for (uint32_t y = y0; y < y1; y++) {
            uint32_t ya = y >= (uint32_t)r ? y - r : 0, yb = std::min<uint32_t>(H - 1, y + r);
            uint8_t *__restrict out = roi + (size_t)y * W;
            std::memcpy(out, wide.data() + (size_t)ya * W, W);
            for (uint32_t yy = ya + 1; yy <= yb; yy++) {
                const uint8_t *__restrict in = wide.data() + (size_t)yy * W;
                for (uint32_t x = 0; x < W; x++) out[x] |= in[x];
            }
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
