// spots.h: the spot finder (local dispersion threshold + connected components) and the
// ROI the codec keeps exactly.
//
// Per pixel, with box sums over the usable pixels of a (2k+1)^2 window:
//  1. candidate: var > (gain * mean + read_noise^2) * (1 + sigma_b * sqrt(2/(n-1))), with
//     mean > 0 (a Poisson background has var = gain * mean, an integrating detector's adds
//     its read noise; a spot inflates it). read_noise 0: DIALS's index of dispersion test
//     var/mean > gain * (1 + sigma_b * sqrt(2/(n-1)));
//  2. the candidate regions are eroded by k pixels (the window smeared each spot by k);
//  3. strong: an eroded candidate whose value exceeds the local background mean, taken
//     over a (2k+5)^2 window without the eroded regions, by
//     sigma_s * sqrt(gain * max(mean, 0) + read_noise^2), and exceeds `threshold`;
//  4. strong pixels are grouped into 8-connected spots; spots with fewer than min_pixels
//     or more than max_pixels, or whose brightest pixel lies further than max_separation
//     from the centroid, are dropped.
// This is the dispersion-extended criterion of DIALS's default spot finder, written for
// this project's streaming, multithreaded core.
#pragma once
#include <cstdint>
#include <vector>

#include "redml.h"

namespace redml {

struct FinderParams {
    int kernel = 3;             // half-size k of the dispersion window
    double sigma_b = 6.0;       // dispersion threshold (sigmas)
    double sigma_s = 3.0;       // strong-pixel threshold (sigmas)
    double gain = 1.0;          // data units per photon
    // Integrating detectors: Gaussian read noise in data units (variance gain * mean +
    // read_noise^2); < 0: estimated from the frame (estimate_read_noise, background.h).
    double read_noise = 0.0;
    // The markers the caller's usable map left out (negative values are noise unless
    // NEGATIVE): the read-noise estimate reads it, and the dispersion test whether usable
    // values may be negative.
    redml_markers markers = REDML_MARKERS_NEGATIVE;
    int min_count = 2;          // usable pixels needed in a window
    double threshold = 0.0;     // absolute threshold (data units)
    int min_pixels = 3;         // per spot
    int max_pixels = 1000;
    double max_separation = 2.0;  // brightest pixel to centroid (pixels); <= 0: no test
    // For the codec's ROI, which must also keep zingers, hot pixels and outliers beside
    // bad pixels exactly (DIALS, and the defaults here, drop them):
    bool mask_all_strong = false;        // spot_mask: every strong pixel, whatever the spot filters say
    bool masked_pixels_neutral = false;  // the erosion ignores masked pixels instead of stopping at them
};

struct Peak {
    double x, y;          // intensity-weighted centroid, pixel centres at +0.5 (fast, slow)
    double total;         // sum of (value - local background) over the spot's pixels
    double max;           // brightest value
    double background;    // mean local background under the spot
    double snr;           // total / sqrt(sum of the model's variances: gain * value + read_noise^2)
    int npix;
    int x0, y0, x1, y1;   // bounding box, half-open
};

// Finds spots. `usable` (height*width, 1 = use) excludes masked pixels and the markers
// (usable_pixels with fp.markers, pixels.h).
// `spot_mask` (optional, height*width) receives 1 on the pixels of accepted spots, dilated
// by `margin` pixels (as dilate does).
template <class T>
std::vector<Peak> find_spots(const T *frame, const uint8_t *usable, uint32_t height, uint32_t width,
                             const FinderParams &fp, uint8_t *spot_mask, int nthreads, int margin = 0);

// Tests: the SIMD build the spot finder and usable_pixels may use at most (1 portable,
// 2 AVX2, 3 AVX-512; 0: the best the CPU has), for every thread.
void spots_force_simd(int level);

// Square dilation of a byte map by `margin` pixels, in place.
void dilate(uint8_t *map, uint32_t height, uint32_t width, int margin, int nthreads);

}  // namespace redml
