// radial.h: radial background profile with iterative two-sided sigma clipping (the
// peakfinder8 / pyFAI approach): per radial bin, the mean and standard deviation of the
// usable pixels, recomputed without pixels beyond clip sigmas until stable, then once at
// clip + 2 sigmas (so the clipped Poisson tail does not bias low counts).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "redml.h"

namespace redml {

struct RadialProfile {
    std::vector<double> mean, sigma;
    std::vector<int64_t> count;  // pixels kept in the last iteration
};

// bins: per pixel its bin in [0, nbins), or -1 to ignore it (masked, outside the range);
// the markers (is_marker, pixels.h) are ignored too.
template <class T>
RadialProfile fit_radial(const T *frame, const int32_t *bins, size_t npix, int32_t nbins, double clip,
                         int iterations, redml_markers markers, int nthreads);

}  // namespace redml
