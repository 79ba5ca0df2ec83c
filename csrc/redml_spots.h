/* redml_spots.h: the C API of the spot finder (the one the codec's ROI uses, csrc/spots.h
 * has the criterion). Plain C; statuses, dtypes and redml_free come from redml.h.
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

void redml_default_finder_params(redml_finder_params *fp);

/* Finds the spots of a frame. mask (optional) marks bad pixels; special values are
 * ignored as in the codec. spot_mask (optional, height*width) receives 1 on spot pixels.
 * *peaks is malloc'ed (free with redml_free), *n_peaks its length. */
redml_status redml_find_spots(const void *frame, redml_dtype dtype, uint32_t height, uint32_t width,
                              const uint8_t *mask, const redml_finder_params *fp, uint8_t *spot_mask,
                              redml_peak **peaks, size_t *n_peaks, int nthreads);

#ifdef __cplusplus
}
#endif
#endif /* REDML_SPOTS_H */
