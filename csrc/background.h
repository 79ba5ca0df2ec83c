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

// Sigma-clipped (upper side, 3 sigma, 3 iterations) mean of the pixels with usable[i] != 0
// in each tile; tiles without usable pixels get mean 0. Steps follow from q (quantize.h).
template <class T>
BackgroundModel fit_background(const T *frame, const uint8_t *usable, const TileGrid &grid,
                               const redml_params &p, int nthreads);

// Model value at a pixel, bilinear between tile centres (used by the sparse mode).
double interpolate_mean(const BackgroundModel &m, uint32_t y, uint32_t x);

}  // namespace redml
