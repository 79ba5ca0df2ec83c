/* redml_jungfrau.h: the C API of the JUNGFRAU raw -> photon conversion (csrc/jungfrau.h has
 * the per-pixel rule and the markers). Plain C; statuses and dtypes come from redml.h.
 */
#ifndef REDML_JUNGFRAU_API_H
#define REDML_JUNGFRAU_API_H

#include "redml.h"

#ifdef __cplusplus
extern "C" {
#endif

/* JUNGFRAU raw frames -> photons.
 * Status of one pixel after conversion; counts[] and the optional status map use it. */
typedef enum {
    REDML_JF_G0 = 0, REDML_JF_G1 = 1, REDML_JF_G2 = 2, /* converted, in this gain stage */
    REDML_JF_SATURATED = 3,    /* count at or beyond the output type's range: max (min + 1 below) */
    REDML_JF_MASKED = 4,       /* calibration mask or non-finite pedestal/gain: min */
    REDML_JF_INVALID_GAIN = 5, /* gain bits 10b: min */
    REDML_JF_OVERLOAD = 6,     /* word 0xC000: max */
    REDML_JF_ERROR = 7,        /* word 0xFFFF: min */
    REDML_JF_NSTATUS = 8
} redml_jf_status;

/* Placement of one module in the assembled image: its assembled pixel (row r, column c),
 * 0 <= r < 514, 0 <= c < 1030, lands at output (origin_y + r*slow_y + c*fast_y,
 * origin_x + r*slow_x + c*fast_x). fast and slow are unit steps along the output axes.
 * Modules must lie inside the output and must not overlap. */
typedef struct {
    int32_t origin_y, origin_x;
    int32_t fast_y, fast_x;
    int32_t slow_y, slow_x;
} redml_jf_module;

typedef struct {
    float energy_keV;       /* photon energy (> 0): photons = keV / energy_keV */
    redml_dtype out_dtype;  /* REDML_INT16 or REDML_INT32 */
    float track_alpha;      /* pedestal tracking (track_g0 != NULL): weight of a dark sample, in (0, 1] */
    float track_threshold;  /* a G0 pixel within this many photons of zero is dark */
    int nthreads;           /* 0 = REDML_NUM_THREADS or all cores */
} redml_jf_params;

/* Converts one raw frame of height x width words (pixel i = row * width + column).
 * pedestal (ADU) and gain (ADU/keV) are [3][height*width] planes for G0, G1, G2; mask
 * (optional) marks bad pixels. track_g0 (optional, height*width): the G0 pedestal, read
 * instead of pedestal plane 0 and updated in place by tracking. modules == NULL: the outputs
 * have the raw layout (out_height x out_width = height x width); else the frame holds
 * n_modules modules of 512 x 1024 (height = 512 n_modules, width = 1024), assembled into
 * out_height x out_width, double pixels split, and the n_gap output pixels listed in gap_index
 * (the pixels no module covers) set to the masked marker. Outputs (each optional):
 * photons (out_dtype), kev (float32), status (uint8 redml_jf_status, raw layout).
 * counts (optional) receives the number of raw pixels of each status. */
REDML_API redml_status redml_jf_convert(const uint16_t *raw, uint32_t height, uint32_t width, const float *pedestal,
                                        const float *gain, const uint8_t *mask, float *track_g0,
                                        const redml_jf_module *modules, uint32_t n_modules, const uint32_t *gap_index,
                                        size_t n_gap, uint32_t out_height, uint32_t out_width, const redml_jf_params *p,
                                        void *photons, float *kev, uint8_t *status, uint64_t counts[REDML_JF_NSTATUS]);

#ifdef __cplusplus
}
#endif
#endif /* REDML_JUNGFRAU_API_H */
