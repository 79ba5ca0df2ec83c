// spots.h: the region of interest kept losslessly (Bragg spots plus a margin).
//
// Interim rule until the full spot finder lands: a pixel is a spot candidate when it lies
// above the background and the sum of background-subtracted counts in its 3x3
// neighbourhood exceeds roi_snr times the Poisson sigma of that sum; candidates are
// dilated by roi_margin pixels (square). Unusable pixels count as background.
#pragma once
#include <cstdint>
#include "background.h"
#include "redml.h"

namespace redml {

template <class T>
void find_roi(const T *frame, const uint8_t *usable, const BackgroundModel &model,
              const redml_params &p, uint8_t *roi, int nthreads);

}  // namespace redml
