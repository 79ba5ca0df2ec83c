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

void redml_free(void *p);

const char *redml_strerror(redml_status s);
const char *redml_last_error(void);
size_t redml_dtype_size(redml_dtype dtype);

#ifdef __cplusplus
}
#endif
#endif /* REDML_H */
