/* redml_spots.h: the C API of the spot finder (the one the codec's ROI runs; csrc/spots.h
 * has the criterion) and of two helpers of spot finding: the ROI's dilation and a radial
 * background profile. Plain C; statuses, dtypes and redml_free come from redml.h.
 */
#ifndef REDML_SPOTS_H
#define REDML_SPOTS_H

#include "redml.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Parameters of the finder (defaults in parentheses): local dispersion threshold +
 * 8-connected components. */
typedef struct {
    int kernel;            /* half-size of the dispersion window (3: 7x7) */
    float sigma_b;         /* dispersion threshold, sigmas (6) */
    float sigma_s;         /* strong-pixel threshold, sigmas (3) */
    float gain;            /* data units per photon (1) */
    int min_count;         /* usable pixels needed in a window (2) */
    float threshold;       /* absolute threshold, data units (0) */
    int min_pixels;        /* pixels per spot, at least (3) */
    int max_pixels;        /* and at most (1000) */
    float max_separation;  /* brightest pixel to centroid, pixels (2; <= 0: off) */
    /* Integrating detectors: which values are markers (NEGATIVE: every negative value, as
     * for photon counters; EXTREMES, GAPS: negative values are noise, redml.h), and the
     * Gaussian read noise in data units (0; -1: estimated from the frame as the encoder
     * does), in the variance gain * mean + read_noise^2 of the dispersion and strong tests.
     * read_noise must be 0 with NEGATIVE. */
    float read_noise;
    redml_markers markers;
} redml_finder_params;

typedef struct {
    double x, y;           /* centroid (fast, slow), pixel centres at +0.5 */
    double total;          /* background-subtracted integrated value */
    double max;            /* brightest pixel */
    double background;     /* mean local background under the spot */
    double snr;            /* total / Poisson sigma of the spot's counts */
    int npix;
    int x0, y0, x1, y1;    /* bounding box, half-open */
} redml_peak;

REDML_API void redml_default_finder_params(redml_finder_params *fp);

/* Finds the spots of a frame. mask (optional) marks bad pixels; the markers (fp->markers)
 * are ignored as in the codec. spot_mask (optional, height*width) receives 1 on spot pixels.
 * *peaks is malloc'ed (free with redml_free), *n_peaks its length. */
REDML_API redml_status redml_find_spots(const void *frame, redml_dtype dtype, uint32_t height, uint32_t width,
                                        const uint8_t *mask, const redml_finder_params *fp, uint8_t *spot_mask,
                                        redml_peak **peaks, size_t *n_peaks, int nthreads);

/* Encodes one frame as redml_encode does with roi NULL, except that the exactly kept region
 * is the mask of the spots redml_find_spots(frame, mask, fp) finds, dilated by p->roi_margin
 * (what redml_dilate makes of it): one spot search for the chunk and the caller's peaks,
 * which come back as redml_find_spots returns them (same finder, settings and records).
 * *out as redml_encode's; *peaks is malloc'ed (free both with redml_free). */
REDML_API redml_status redml_encode_spots(const void *frame, redml_dtype dtype, uint32_t height, uint32_t width,
                                          const uint8_t *mask, const redml_params *p, const redml_finder_params *fp,
                                          void **out, size_t *out_size, redml_peak **peaks, size_t *n_peaks);

/* Square dilation of a byte map of height*width, in place: every nonzero pixel sets the
 * (2 margin + 1)^2 square around it; the map then holds 0 and 1 (margin 0: unchanged).
 * map may be NULL only if height*width is 0. */
REDML_API redml_status redml_dilate(uint8_t *map, uint32_t height, uint32_t width, int margin, int nthreads);

/* Radial background profile with iterative two-sided sigma clipping (the peakfinder8 /
 * pyFAI approach). bins: per pixel its bin in [0, nbins), or -1 to ignore it; the
 * markers are ignored as in the codec (NEGATIVE: every negative value; integrating
 * detectors' EXTREMES and GAPS: negative values are noise, used). Per bin, the mean and standard deviation of its
 * pixels, recomputed without the pixels beyond clip sigmas until stable (at most
 * `iterations` times), then once at clip + 2 sigmas (so that the clipped Poisson tail does
 * not bias low counts). mean, sigma and count (pixels kept in the last pass) hold nbins
 * values each. */
REDML_API redml_status redml_radial_profile(const void *frame, redml_dtype dtype, size_t npix, const int32_t *bins,
                                            int32_t nbins, double clip, int iterations, redml_markers markers,
                                            double *mean, double *sigma, int64_t *count, int nthreads);

#ifdef __cplusplus
}
#endif
#endif /* REDML_SPOTS_H */
