// levels.h: a frame's background level and saturated pixels in one pass, for the acquisition
// indicators (redml_reduce/acquire/indicators.py, which states the definitions).
#pragma once

#include <cstddef>
#include <cstdint>

namespace redml {

struct FrameLevels {
    double background;  // NaN where no grid pixel is good
    uint64_t saturated;  // 0 with Saturated::kNone
};

// Which values are saturated: none, all, or those >= a threshold of the frame's type (the
// caller rounds a saturation value to it: up for integer frames, to nearest for float ones).
enum class Saturated { kNone, kAll, kAtOrAbove };

// The background's grid: every kGridStep-th row and column.
constexpr size_t kGridStep = 4;

// frame: h x w values of T, C order; bad: h x w bytes (nonzero = bad) or null. Saturated
// pixels (`saturated`, `threshold`) are counted where not bad, and left out of the background
// (unless kNone: saturated 0). The background (mean of the good pixels on the 1-in-kGridStep grid of rows and
// columns, clipped once at its mean + 5 sqrt(max(mean, 1))) is computed only if `background`.
template <class T>
FrameLevels frame_levels(const T *frame, const uint8_t *bad, size_t h, size_t w, Saturated saturated, T threshold,
                         bool background);

}  // namespace redml
