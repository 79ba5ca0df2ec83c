// background.h: the background model, a robust mean per square tile of the frame.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>
#include "redml.h"

namespace redml {

struct TileGrid {
    uint32_t height = 0, width = 0, tile = 1, rows = 0, cols = 0;
    TileGrid() = default;
    TileGrid(uint32_t h, uint32_t w, uint32_t t)
        : height(h), width(w), tile(t), rows((h + t - 1) / t), cols((w + t - 1) / t) {}
    size_t count() const { return (size_t)rows * cols; }
    size_t index(uint32_t y, uint32_t x) const { return (size_t)(y / tile) * cols + x / tile; }
};

struct BackgroundModel {
    TileGrid grid;
    std::vector<float> mean;  // robust mean per tile, data units
    std::vector<float> step;  // quantization step per tile (integer dtypes: odd integer)
};

// Integrating detectors (markers other than NEGATIVE): negative values are noise and the
// noise model has a read noise (quantize.h, "Integrating detectors").
inline bool integrating(const redml_params &p) { return p.markers != REDML_MARKERS_NEGATIVE; }
inline bool conditional_recon(const redml_params &p) {
    return p.recon == REDML_RECON_MEAN || p.recon == REDML_RECON_DRAW;
}

// The noise sigma of a tile mean, in data units: Poisson (photon counters) or Poisson plus
// read noise (integrating detectors; p.read_noise as estimated when it was < 0).
double model_sigma(double mean, const redml_params &p);

// The quantization step of a tile of mean `mean` (quantized mode): the rule of the
// reconstruction, the dtype and the detector (quantize.h).
template <class T>
float tile_step(double mean, const redml_params &p);

// The read noise of a frame of an integrating detector, in data units: the median over
// tiles of the variance above the Poisson term (variance - gain * mean) of the values up to
// 5 sigma above the clipped mean, at least 1e-3 * gain. Precise where the read noise
// matters (a few photons per pixel or less); noisy at high flux, where it hardly does.
template <class T>
double estimate_read_noise(const T *frame, const uint8_t *usable, const TileGrid &grid, const redml_params &p,
                           int nthreads);

// Sigma-clipped (upper side, 3 sigma, 3 iterations) mean of the pixels with usable[i] != 0
// in each tile; tiles without usable pixels get mean 0. Steps follow from q (quantize.h).
template <class T>
BackgroundModel fit_background(const T *frame, const uint8_t *usable, const TileGrid &grid,
                               const redml_params &p, int nthreads);

// fit_background in parts, for a caller that uses each band of tile rows while its pixels are
// in cache: the model of a grid before any fit (means 0, lossless steps), then the tile rows
// [ty0, ty1) fitted into it.
template <class T>
BackgroundModel unfitted_background(const TileGrid &grid);
template <class T>
void fit_tile_rows(const T *frame, const uint8_t *usable, const redml_params &p, uint32_t ty0, uint32_t ty1,
                   BackgroundModel &m, int nthreads);

// Model value at a pixel, bilinear between tile centres (used by the sparse mode).
double interpolate_mean(const BackgroundModel &m, uint32_t y, uint32_t x);

// interpolate_mean in two steps, for callers that reuse a row's or a column's terms:
// the neighbouring tile centres of pixel coordinate p and its weight, then the value.
struct BilinearAxis {
    uint32_t i0, i1;
    double w;
};
inline BilinearAxis bilinear_axis(uint32_t p, uint32_t tile, uint32_t count) {
    // Position in tile-centre coordinates, clamped to the outermost centres.
    double f = ((double)p + 0.5) / tile - 0.5;
    f = f < 0.0 ? 0.0 : (f > (double)(count - 1) ? (double)(count - 1) : f);
    uint32_t i0 = (uint32_t)f;
    return BilinearAxis{i0, i0 + 1 < count ? i0 + 1 : count - 1, f - i0};
}
inline double bilinear_at(const BackgroundModel &m, const BilinearAxis &r, const BilinearAxis &c) {
    auto at = [&](uint32_t ty, uint32_t tx) { return (double)m.mean[(size_t)ty * m.grid.cols + tx]; };
    return (1 - r.w) * ((1 - c.w) * at(r.i0, c.i0) + c.w * at(r.i0, c.i1)) +
           r.w * ((1 - c.w) * at(r.i1, c.i0) + c.w * at(r.i1, c.i1));
}

}  // namespace redml
