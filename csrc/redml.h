/* redml.h: the C API of the redml_reduce codec, and the part common to every redml_*.h.
 *
 * Three public headers, one per job, all plain C so they can be called from C hosts:
 *   redml.h           the codec (one chunk = one 2D frame; the byte layout of a chunk is
 *                     specified in docs/format.md): what the HDF5 plugin uses;
 *   redml_spots.h     the spot finder (the one the codec's ROI runs) and its helpers;
 *   redml_jungfrau.h  the JUNGFRAU raw -> photon conversion.
 * The other headers of csrc/ are internal.
 *
 * Errors never abort: every call returns a status code, and redml_strerror() turns it
 * into text. The detailed message of the last failure on the calling thread is
 * available from redml_last_error().
 */
#ifndef REDML_H
#define REDML_H

#include <stddef.h>
#include <stdint.h>

/* REDML_API marks the functions of the C API: default visibility, so that a shared library
 * built from csrc/ with -fvisibility=hidden exports them (and only them). A build that
 * embeds the core and exports none of it (the Python extension, the HDF5 plugin) defines
 * it empty (-DREDML_API=). */
#ifndef REDML_API
#if defined(__GNUC__) && __GNUC__ >= 4
#define REDML_API __attribute__((visibility("default")))
#else
#define REDML_API
#endif
#endif

/* Version of the library (of the redml_reduce package); the chunk format has its own,
 * REDML_FORMAT_VERSION. */
#define REDML_VERSION_MAJOR 0
#define REDML_VERSION_MINOR 1
#define REDML_VERSION_PATCH 0
#define REDML_VERSION_NUMBER (REDML_VERSION_MAJOR * 10000 + REDML_VERSION_MINOR * 100 + REDML_VERSION_PATCH)

#ifdef __cplusplus
extern "C" {
#endif

/* ---- common to every redml_*.h ---- */

typedef enum {
    REDML_UINT16 = 1,
    REDML_INT16 = 2,
    REDML_INT32 = 3,
    REDML_UINT32 = 4,
    REDML_FLOAT32 = 5
} redml_dtype;

typedef enum {
    REDML_OK = 0,
    REDML_E_ARG = 1,       /* invalid argument (dtype, shape, parameter) */
    REDML_E_CORRUPT = 2,   /* chunk is malformed, truncated or fails its checksum */
    REDML_E_VERSION = 3,   /* chunk needs a newer decoder */
    REDML_E_NOMEM = 4,     /* allocation failed */
    REDML_E_ENTROPY = 5,   /* zstd/lz4 reported an error */
    REDML_E_INTERNAL = 6
} redml_status;

/* REDML_VERSION_NUMBER of the library linked at run time (the macro is the one compiled
 * against). */
REDML_API unsigned redml_version_number(void);

REDML_API const char *redml_strerror(redml_status s);
REDML_API const char *redml_last_error(void);
REDML_API size_t redml_dtype_size(redml_dtype dtype);

/* Frees a buffer the library malloc'ed for the caller. */
REDML_API void redml_free(void *p);

/* ---- the codec ---- */

#define REDML_FORMAT_VERSION 1

/* HDF5 filter id: taken from the range 256-511 that HDF5 reserves for testing and
 * unregistered filters, until an official id is assigned. */
#define REDML_H5_FILTER_ID 310

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
    /* Quantized mode only: integer photon counts (gain 1), or integrating data (any
     * markers but NEGATIVE, read noise > 0, integer or float); bins of s with
     * s - 1 <= q*sigma/2 (floats: s = q*sigma/2) and no low-count rule; the two decode the
     * same chunk (see docs/format.md): */
    REDML_RECON_MEAN = 2,    /* the mean of the model's distribution within the bin (integers: rounded with dither) */
    REDML_RECON_DRAW = 3     /* a seeded draw from the model's distribution within the bin */
} redml_recon;

/* Whether a reconstruction is defined for a mode and dtype (the one rule encoder, parser
 * and decoder check); float data take the mean and draw only with the read-noise model
 * of integrating detectors (integrating != 0). */
static inline int redml_recon_allowed(int mode, int recon, int is_float, int integrating) {
    if (recon == REDML_RECON_DITHER) return 1;
    if (recon == REDML_RECON_POISSON) return mode == REDML_MODE_SPARSE;
    if (recon == REDML_RECON_MEAN || recon == REDML_RECON_DRAW)
        return mode == REDML_MODE_QUANTIZED && (!is_float || integrating);
    return 0;
}

/* Which values are the detector's markers (never quantized nor used by the model, always
 * stored exactly, like masked pixels). NEGATIVE (default) is for photon counters: every
 * negative value, the dtype's maximum, non-finite floats. The others are for integrating
 * detectors, whose pedestal-subtracted values are negative as often as not: negative
 * values are ordinary noise and only the extremes are markers: the dtype's maximum and
 * (signed types) minimum, non-finite floats; GAPS adds -1 and -2 (Pilatus-style gaps). */
typedef enum {
    REDML_MARKERS_NEGATIVE = 0,
    REDML_MARKERS_EXTREMES = 1,
    REDML_MARKERS_GAPS = 2
} redml_markers;

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
    /* Integrating detectors (markers other than NEGATIVE): Gaussian read noise in data
     * units, sigma^2 = gain^2*max(mean/gain, mu_min) + read_noise^2; -1: estimated from
     * the frame. Must be 0 with MARKERS_NEGATIVE. */
    float read_noise;
    redml_markers markers;
} redml_params;

/* Fills p with the documented defaults (lossless, rANS over byte planes). */
REDML_API void redml_default_params(redml_params *p);

/* Checks encoder parameters without encoding (REDML_E_ARG with a message if invalid). */
REDML_API redml_status redml_check_params(const redml_params *p);

/* Encodes one frame. `roi` and `mask` are optional (NULL) uint8 maps of height*width:
 * roi != 0 marks pixels to keep exactly (Bragg regions; NULL = built-in finder),
 * mask != 0 marks bad pixels, kept exactly and ignored by the background model.
 * On success *out is a malloc'ed buffer of *out_size bytes owned by the caller. */
REDML_API redml_status redml_encode(const void *frame, redml_dtype dtype, uint32_t height, uint32_t width,
                                    const uint8_t *roi, const uint8_t *mask, const redml_params *p,
                                    void **out, size_t *out_size);

/* A crystal whose predicted reflections a chunk keeps exact (docs/format.md, "Lattice
 * region"): the chunk stores these fields, and the decoder predicts the same discs from them
 * (the deterministic predictor of csrc/lattice.h), instead of a run-length mask of the discs.
 * Frame: laboratory x along the fast axis, y along the slow axis, z along the beam. */
typedef struct {
    double A[9];              /* U B, row-major, 1/Angstrom: its columns are a*, b*, c* */
    double beam_x, beam_y;    /* beam centre, pixels (pixel centres at +0.5) */
    double distance_mm, pixel_size_mm, wavelength_a;
    double sensor_mu_per_mm, sensor_thickness_mm; /* parallax correction; thickness 0: none */
    double domain_size_a, half_mosaicity_deg, bandwidth; /* which reflections (Nave model) */
    double d_min_a;           /* resolution limit, Angstrom; 0: the detector's edge */
    double radius;            /* footprint: a disc of this many pixels around each reflection */
    char centring;            /* lattice centring: 'P', 'A', 'B', 'C', 'I', 'F' or 'R' */
} redml_lattice;

/* redml_encode, with the discs of n (1..255) crystals kept exact besides `roi` (or the
 * built-in finder's region when roi is NULL), stored as the crystal models: the chunk needs
 * a decoder that knows the lattice section (older ones refuse it as "newer decoder"). */
REDML_API redml_status redml_encode_lattice(const void *frame, redml_dtype dtype, uint32_t height, uint32_t width,
                                            const uint8_t *roi, const uint8_t *mask, const redml_params *p,
                                            const redml_lattice *crystals, size_t n, void **out,
                                            size_t *out_size);

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
    float read_noise;    /* read noise of the mean/draw model of integrating data; else 0 */
} redml_info;

/* Parses and validates the header (and section table) without decoding pixels. */
REDML_API redml_status redml_inspect(const void *chunk, size_t size, redml_info *info);

/* Decodes into `out`, which must hold height*width elements of the chunk's dtype
 * (out_capacity bytes). recon_override < 0 keeps the chunk's reconstruction; DITHER or
 * POISSON switch a sparse chunk's (others ignore them); MEAN or DRAW switch a chunk
 * written with MEAN or DRAW (REDML_E_ARG for any other chunk). */
REDML_API redml_status redml_decode(const void *chunk, size_t size, void *out, size_t out_capacity,
                                    int recon_override, int nthreads);

/* Stored exact-pixel map (1 = stored losslessly) of a chunk, height*width bytes. */
REDML_API redml_status redml_exact_mask(const void *chunk, size_t size, uint8_t *out, size_t out_capacity);

/* The crystals of a chunk's lattice section (docs/format.md, "Lattice region"), whose
 * predicted discs it keeps exact: *n of them (0 for a chunk without one) are written to out
 * when capacity allows (REDML_E_ARG otherwise; out may be NULL with capacity 0 to count). */
REDML_API redml_status redml_lattice_crystals(const void *chunk, size_t size, redml_lattice *out, size_t capacity,
                                              size_t *n);

/* The stored background model: per tile (row-major, tile_rows x tile_cols, see
 * redml_model_shape) its mean and quantization step, in data units. */
REDML_API redml_status redml_model_shape(const void *chunk, size_t size, uint32_t *tile_rows, uint32_t *tile_cols);
REDML_API redml_status redml_model(const void *chunk, size_t size, float *mean, float *step, size_t capacity);

#ifdef __cplusplus
}
#endif
#endif /* REDML_H */
