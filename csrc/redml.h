/* redml.h: the contract of the redml_reduce codec core.
 *
 * One chunk = one 2D frame. The byte layout of a chunk is specified in docs/format.md;
 * this header is the only interface the HDF5 plugin, the Python binding and the GPU
 * path use. Everything here is plain C so it can be called from C hosts.
 *
 * Errors never abort: every call returns a status code, and redml_strerror() turns it
 * into text. The detailed message of the last failure on the calling thread is
 * available from redml_last_error().
 */
#ifndef REDML_H
#define REDML_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define REDML_FORMAT_VERSION 1

/* HDF5 filter id: taken from the range 256-511 that HDF5 reserves for testing and
 * unregistered filters, until an official id is assigned. */
#define REDML_H5_FILTER_ID 310

typedef enum {
    REDML_UINT16 = 1,
    REDML_INT16 = 2,
    REDML_INT32 = 3,
    REDML_UINT32 = 4,
    REDML_FLOAT32 = 5
} redml_dtype;

typedef enum {
    REDML_MODE_LOSSLESS = 0,  /* every pixel byte-exact */
    REDML_MODE_QUANTIZED = 1, /* exact pixels lossless, background within q*sigma/2 */
    REDML_MODE_SPARSE = 2     /* exact pixels lossless, background replaced by the model */
} redml_mode;

/* Entropy coders. RANS: htscodecs' static rANS (order 0), one stream per byte plane:
 * within ~1% of the order-0 entropy; the default. LZ4/ZSTD: fast general-purpose. */
typedef enum { REDML_CODEC_LZ4 = 1, REDML_CODEC_ZSTD = 2, REDML_CODEC_RANS = 3 } redml_codec;
typedef enum { REDML_SHUFFLE_NONE = 0, REDML_SHUFFLE_BYTE = 1, REDML_SHUFFLE_BIT = 2 } redml_shuffle;

/* How background pixels are reconstructed. */
typedef enum {
    REDML_RECON_DITHER = 0,  /* quantized: dithered bin midpoint; sparse: dithered rounding of the model */
    REDML_RECON_POISSON = 1, /* sparse only: seeded Poisson draw around the model */
    /* Quantized integer photon counts (gain 1) only; bins of s counts with s - 1 <= q*sigma/2
     * and no low-count rule; the two decode the same chunk (see docs/format.md): */
    REDML_RECON_MEAN = 2,    /* the mean of Poisson(model) within the bin, rounded with dither */
    REDML_RECON_DRAW = 3     /* a seeded draw from Poisson(model) within the bin */
} redml_recon;

/* Whether a reconstruction is defined for a mode and dtype (the one rule encoder, parser
 * and decoder check). */
static inline int redml_recon_allowed(int mode, int recon, int is_float) {
    if (recon == REDML_RECON_DITHER) return 1;
    if (recon == REDML_RECON_POISSON) return mode == REDML_MODE_SPARSE;
    if (recon == REDML_RECON_MEAN || recon == REDML_RECON_DRAW) return mode == REDML_MODE_QUANTIZED && !is_float;
    return 0;
}

typedef enum {
    REDML_OK = 0,
    REDML_E_ARG = 1,       /* invalid argument (dtype, shape, parameter) */
    REDML_E_CORRUPT = 2,   /* chunk is malformed, truncated or fails its checksum */
    REDML_E_VERSION = 3,   /* chunk needs a newer decoder */
    REDML_E_NOMEM = 4,     /* allocation failed */
    REDML_E_ENTROPY = 5,   /* zstd/lz4 reported an error */
    REDML_E_INTERNAL = 6
} redml_status;

typedef struct {
    redml_mode mode;
    float q;             /* step in units of the local Poisson sigma (mode QUANTIZED) */
    float gain;          /* data units per photon (1 for photon counts) */
    float mu_min;        /* sigma = gain*sqrt(max(mean/gain, mu_min)) */
    redml_codec codec;
    int level;           /* zstd level (ignored for lz4) */
    redml_shuffle shuffle; /* shuffle of the pixel streams */
    redml_recon recon;
    uint16_t tile;       /* background model tile edge in pixels */
    float roi_snr;       /* spot finder's strong-pixel threshold (sigmas) for the ROI */
    uint16_t roi_margin; /* dilation of the ROI in pixels */
    uint32_t seed;       /* dither / noise seed, stored in the chunk */
    uint32_t block_elems;/* entropy block size in elements */
    int nthreads;        /* 0 = REDML_NUM_THREADS or all cores */
} redml_params;

/* Fills p with the documented defaults (lossless, rANS over byte planes). */
void redml_default_params(redml_params *p);

/* Checks encoder parameters without encoding (REDML_E_ARG with a message if invalid). */
redml_status redml_check_params(const redml_params *p);

/* Encodes one frame. `roi` and `mask` are optional (NULL) uint8 maps of height*width:
 * roi != 0 marks pixels to keep exactly (Bragg regions; NULL = built-in finder),
 * mask != 0 marks bad pixels, kept exactly and ignored by the background model.
 * On success *out is a malloc'ed buffer of *out_size bytes owned by the caller. */
redml_status redml_encode(const void *frame, redml_dtype dtype, uint32_t height, uint32_t width,
                          const uint8_t *roi, const uint8_t *mask, const redml_params *p,
                          void **out, size_t *out_size);

typedef struct {
    int version;
    redml_dtype dtype;
    redml_mode mode;
    redml_codec codec;
    redml_recon recon;
    uint32_t height, width;
    uint16_t tile;
    float q, gain, mu_min;
    uint32_t seed;
    uint64_t n_exact;    /* pixels stored exactly (ROI, masked, special values) */
} redml_info;

/* Parses and validates the header (and section table) without decoding pixels. */
redml_status redml_inspect(const void *chunk, size_t size, redml_info *info);

/* Decodes into `out`, which must hold height*width elements of the chunk's dtype
 * (out_capacity bytes). recon_override < 0 keeps the chunk's reconstruction; DITHER or
 * POISSON switch a sparse chunk's (others ignore them); MEAN or DRAW switch a chunk
 * written with MEAN or DRAW (REDML_E_ARG for any other chunk). */
redml_status redml_decode(const void *chunk, size_t size, void *out, size_t out_capacity,
                          int recon_override, int nthreads);

/* Stored exact-pixel map (1 = stored losslessly) of a chunk, height*width bytes. */
redml_status redml_exact_mask(const void *chunk, size_t size, uint8_t *out, size_t out_capacity);

/* The stored background model: per tile (row-major, tile_rows x tile_cols, see
 * redml_model_shape) its mean and quantization step, in data units. */
redml_status redml_model_shape(const void *chunk, size_t size, uint32_t *tile_rows, uint32_t *tile_cols);
redml_status redml_model(const void *chunk, size_t size, float *mean, float *step, size_t capacity);

/* Spot finder (csrc/spots.h): local dispersion threshold + 8-connected components. */
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
void redml_free(void *p);

/* JUNGFRAU raw frames -> photons (csrc/jungfrau.h has the per-pixel rule and the markers).
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
redml_status redml_jf_convert(const uint16_t *raw, uint32_t height, uint32_t width, const float *pedestal,
                              const float *gain, const uint8_t *mask, float *track_g0,
                              const redml_jf_module *modules, uint32_t n_modules, const uint32_t *gap_index,
                              size_t n_gap, uint32_t out_height, uint32_t out_width, const redml_jf_params *p,
                              void *photons, float *kev, uint8_t *status, uint64_t counts[REDML_JF_NSTATUS]);

const char *redml_strerror(redml_status s);
const char *redml_last_error(void);
size_t redml_dtype_size(redml_dtype dtype);

#ifdef __cplusplus
}
#endif
#endif /* REDML_H */
