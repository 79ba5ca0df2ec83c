/* quantize.h: the per-pixel logic of the codec, in one place.
 *
 * Everything here is a pure function of its arguments so that the CPU core and a GPU
 * kernel (compiled from this same header: C++ or CUDA) produce identical codes. See docs/format.md,
 * "Quantization", for the mathematics.
 *
 * Background pixels are quantized with subtractive dither: a pseudo-random offset u in
 * [0, s) (a hash of the seed and the pixel index, so the decoder knows it too) shifts the
 * bin lattice per pixel. The reconstruction error is then uniform on
 * [-(s-1)/2, (s-1)/2] whatever the pixel value, hence zero mean (unbiased) for any signal,
 * with variance (s^2-1)/12 and |error| <= (s-1)/2 <= q*sigma/2.
 *
 * Low counts: with half-width h = (s-1)/2, values 0 <= x < h are stored exactly (in the
 * exact section); only x >= h go through the dithered bins (symbol zigzag(k - offset)).
 * A bin midpoint is then never below x - h >= 0, so nonnegative counts never decode
 * negative, and the choice depends on x alone, so both groups stay unbiased.
 */
#ifndef REDML_QUANTIZE_H
#define REDML_QUANTIZE_H

#include <stdint.h>
#include <math.h>

#if defined(__CUDACC__)
#define REDML_HD __host__ __device__ inline
#define REDML_HD_FLAT __host__ __device__ inline
#else
#define REDML_HD static inline
/* Inlined into its caller whatever its size, so it is compiled for the caller's target
   (the AVX2 build of a decoder loop vectorizes it). */
#define REDML_HD_FLAT static inline __attribute__((always_inline))
#endif

/* 32-bit integer mixer (xor-shift-multiply); good avalanche, cheap on CPU and GPU. */
REDML_HD uint32_t redml_mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

/* Pseudo-random 32 bits for pixel `idx` under `seed`; `stream` separates independent uses. */
REDML_HD uint32_t redml_hash(uint32_t seed, uint64_t idx, uint32_t stream) {
    uint32_t h = redml_mix32(seed ^ (stream * 0x9e3779b9u));
    h = redml_mix32(h ^ (uint32_t)idx);
    return redml_mix32(h ^ (uint32_t)(idx >> 32) ^ 0x85ebca6bu);
}

/* Uniform in [0, 1) with 32 bits of resolution. */
REDML_HD double redml_uniform(uint32_t seed, uint64_t idx, uint32_t stream) {
    return (double)redml_hash(seed, idx, stream) * (1.0 / 4294967296.0);
}

/* Integer dither in [0, s), for 1 <= s < 2^32 (a 32 x 32 -> 64-bit product: vectorizes). */
REDML_HD int64_t redml_dither_int(uint32_t seed, uint64_t idx, int64_t s) {
    return (int64_t)(((uint64_t)redml_hash(seed, idx, 1) * (uint64_t)(uint32_t)s) >> 32);
}

/* Zigzag maps signed to unsigned so small magnitudes give small codes. */
REDML_HD uint32_t redml_zigzag32(int32_t v) { return ((uint32_t)v << 1) ^ (uint32_t)(v >> 31); }
REDML_HD int32_t redml_unzigzag32(uint32_t v) { return (int32_t)(v >> 1) ^ -(int32_t)(v & 1); }
REDML_HD uint16_t redml_zigzag16(int16_t v) { return (uint16_t)(((uint16_t)v << 1) ^ (uint16_t)(v >> 15)); }
REDML_HD int16_t redml_unzigzag16(uint16_t v) { return (int16_t)((v >> 1) ^ (uint16_t)(-(int16_t)(v & 1))); }

/* Poisson noise level of a background mean, in data units. */
REDML_HD double redml_sigma(double mean, double gain, double mu_min) {
    double mu = mean / gain;
    return gain * sqrt(mu > mu_min ? mu : mu_min);
}

/* Step of a tile for integer data: the largest odd integer s with (s-1)/2 <= q*sigma/2,
 * and (s-1)/2 <= mean/2: a larger half-width would put most pixels in the exact low-count
 * regime, which costs more bits than it saves (the symbol entropy of a Poisson source is
 * lowest near half-width = mean/2). s = 1 means lossless. */
REDML_HD int64_t redml_step_int(double mean, double q, double gain, double mu_min) {
    if (!(q > 0.0) || !(mean > 0.0)) return 1;
    double half = floor(q * redml_sigma(mean, gain, mu_min) / 2.0);
    if (half > floor(mean / 2.0)) half = floor(mean / 2.0);
    if (!(half >= 0.0)) half = 0.0;
    if (half > 1048576.0) half = 1048576.0;
    return 2 * (int64_t)half + 1;
}

/* Step of a tile for float data: q*sigma, at most the mean (same reason); 0 = lossless. */
REDML_HD float redml_step_float(double mean, double q, double gain, double mu_min) {
    if (!(q > 0.0) || !(mean > 0.0)) return 0.0f;
    double s = q * redml_sigma(mean, gain, mu_min);
    if (s > mean) s = mean;
    return s > 0.0 && s < 1e30 ? (float)s : 0.0f;
}


/* floor(a / s) for s >= 1 using a precomputed inv_s = 1.0 / s: the floating-point
 * estimate is corrected to the exact integer result (|a| < 2^40). */
REDML_HD int64_t redml_floordiv_inv(int64_t a, int64_t s, double inv_s) {
    /* the truncated estimate (no floor(): a libm call without SSE4.1, and its conversion
       back a dependency chain) is corrected to the exact result in integers */
    int64_t k = (int64_t)((double)a * inv_s);
    while (k * s > a) k--;
    while ((k + 1) * s <= a) k++;
    return k;
}

REDML_HD uint64_t redml_zigzag64(int64_t v) { return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63); }
REDML_HD int64_t redml_unzigzag64(uint64_t v) { return (int64_t)(v >> 1) ^ -(int64_t)(v & 1); }

/* Integer reconstruction of symbol sym: the midpoint of its dithered bin. */
REDML_HD int64_t redml_recon_int(uint64_t sym, int64_t s, int64_t u, int64_t base) {
    int64_t k = redml_unzigzag64(sym) + base;
    return k * s - u + (s - 1) / 2;
}

/* floor(a / s) for |a| < 2^23, 1 <= s < 2^23 in 32-bit lanes (inv_s = 1.0f / s): the float
 * quotient is within 1 of a / s (|a / s| < 2^23, relative error < 2^-23; truncation adds at
 * most 1), so two corrections each way give the exact result (redml_floordiv_inv's, which
 * vectorizes less: the encoder's lanes for 16-bit pixels). */
REDML_HD_FLAT int32_t redml_floordiv_small(int32_t a, int32_t s, float inv_s) {
    int32_t k = (int32_t)((float)a * inv_s);
    k -= k * s > a;
    k -= k * s > a;
    k += (k + 1) * s <= a;
    k += (k + 1) * s <= a;
    return k;
}

/* The rules of the integer quantizers, written once for the signed integer type I of their
 * arithmetic (U: its unsigned type): int64_t in the reference functions below, int32_t in the
 * encoder's lanes for 16-bit pixels (where every term fits). Given the bin k = floor((x + u)
 * / s) of x and the offset base, each sets *sym = zigzag(k - base) and returns whether x is
 * coded (else it is stored in the exact section). Branch-free, so lane loops vectorize.
 * counts: photon counts (the low-count and never-negative rules); 0: integrating data
 * (negative values are noise). */
template <class I, class U>
REDML_HD_FLAT U redml_zigzag_as(I v) { return ((U)v << 1) ^ (U)(v >> (8 * sizeof(I) - 1)); }

/* The dithered midpoint quantizer: coded if the bin midpoint r = k s - u + (s-1)/2 (the
 * decoded value) lies in [lo, hi] and the symbol fits sym_max; photon counts also keep the
 * low counts 0 <= x < (s-1)/2 exact, and a count never decodes negative. */
template <class I, class U>
REDML_HD_FLAT int redml_midpoint_code(I x, I k, I s, I u, I base, I lo, I hi, U sym_max, int counts, U *sym) {
    const I h = (s - 1) / 2, r = k * s - u + h;
    const U z = redml_zigzag_as<I, U>(k - base);
    int ok = (r >= lo) & (r <= hi) & (z <= sym_max);
    if (counts) ok &= !((x >= 0) & (x < h)) & !((x >= 0) & (r < 0));
    *sym = z;
    return ok;
}

/* The bins of the conditional reconstructions: coded if the symbol fits sym_max; photon
 * counts also need x >= 0 and the bin [k s - u, k s - u + s - 1] at most hi (integrating
 * data: the decoder clips the bin to the dtype's range). */
template <class I, class U>
REDML_HD_FLAT int redml_bin_code(I x, I k, I s, I u, I base, I hi, U sym_max, int counts, U *sym) {
    const U z = redml_zigzag_as<I, U>(k - base);
    int ok = z <= sym_max;
    if (counts) ok &= (x >= 0) & (k * s - u + s - 1 <= hi);
    *sym = z;
    return ok;
}

/* Quantizes integer x; returns 1 and sets *sym, or 0 if the pixel must be stored in the
 * exact section (*sym then unspecified). The dithered midpoint quantizer itself (integrating
 * data use it as it is: negative values are noise there, with no low-count rule). */
REDML_HD int redml_quantize_int_rn(int64_t x, int64_t s, double inv_s, int64_t u, int64_t base, int64_t lo,
                                   int64_t hi, uint64_t sym_max, uint64_t *sym) {
    return redml_midpoint_code<int64_t, uint64_t>(x, redml_floordiv_inv(x + u, s, inv_s), s, u, base, lo, hi, sym_max,
                                                  0, sym);
}

/* Photon counts: the low-count rule, and counts never decode negative. */
REDML_HD int redml_quantize_int(int64_t x, int64_t s, double inv_s, int64_t u, int64_t base, int64_t lo,
                                int64_t hi, uint64_t sym_max, uint64_t *sym) {
    return redml_midpoint_code<int64_t, uint64_t>(x, redml_floordiv_inv(x + u, s, inv_s), s, u, base, lo, hi, sym_max,
                                                  1, sym);
}

/* Per-pixel code offset and phase. The offset is the bin, under this pixel's dither,
 * that holds the tile prediction; the phase says where the prediction falls inside that
 * bin (REDML_PHASES steps). Symbols are coded relative to the offset and split into one
 * stream per phase (the decoder computes both): the symbol distribution then depends
 * little on the dither, the tile mean or the step, and each stream's own frequency table
 * gets close to the entropy given the dither (13% fewer bits than one mixed stream at
 * q = 2, 40% at q = 4). */
#define REDML_PHASES 8

/* Per-tile constants of the integer offset: pred = pred_q*s + pred_r, and the phase
 * multiplier m = floor(REDML_PHASES * 2^32 / s), so phase = (r * m) >> 32 is in
 * [0, REDML_PHASES) for r in [0, s) without a division per pixel. m < 2^36 is kept as
 * its high and low 32 bits: for r < 2^32, (r * m) >> 32 = r * m_hi + ((r * m_lo) >> 32)
 * exactly, two 32-bit products that vectorize. */
typedef struct {
    int64_t pred_q, pred_r;
    uint32_t phase_mul_hi, phase_mul_lo;
} redml_offset_tile;

REDML_HD redml_offset_tile redml_offset_setup(int64_t pred, int64_t s) {
    redml_offset_tile o;
    o.pred_q = pred / s;
    o.pred_r = pred % s;
    if (o.pred_r < 0) {
        o.pred_r += s;
        o.pred_q -= 1;
    }
    const uint64_t m = (((uint64_t)REDML_PHASES) << 32) / (uint64_t)s;
    o.phase_mul_hi = (uint32_t)(m >> 32);
    o.phase_mul_lo = (uint32_t)m;
    return o;
}

/* The offset and phase in the integer type I (int64_t, or int32_t in the encoder's lanes for
 * 16-bit pixels), from the tile's constants. */
template <class I>
REDML_HD_FLAT I redml_offset_as(I pred_q, I pred_r, uint32_t mul_hi, uint32_t mul_lo, I u, I s, uint32_t *phase) {
    I r = pred_r + u;
    const I wrap = r >= s; /* branch-free: taken half the time, at random */
    r -= wrap * s;
    const uint32_t r32 = (uint32_t)r; /* r < s < 2^22 */
    *phase = r32 * mul_hi + (uint32_t)(((uint64_t)r32 * mul_lo) >> 32);
    return pred_q + wrap;
}
REDML_HD int64_t redml_offset_int(const redml_offset_tile *o, int64_t u, int64_t s, unsigned *phase) {
    uint32_t ph;
    const int64_t k = redml_offset_as<int64_t>(o->pred_q, o->pred_r, o->phase_mul_hi, o->phase_mul_lo, u, s, &ph);
    *phase = ph;
    return k;
}
/* floor(a * b / 2^32); narrow (b < 2^16): from two 32-bit products, ((a >> 16) * b + ((a &
 * 0xFFFF) * b >> 16)) >> 16 (no 64-bit lane products, which vectorize poorly). */
REDML_HD uint32_t redml_mulhi32(uint32_t a, uint32_t b, int narrow) {
    return narrow ? ((a >> 16) * b + (((a & 0xFFFFu) * b) >> 16)) >> 16 : (uint32_t)(((uint64_t)a * b) >> 32);
}

/* redml_dither_int and redml_offset_int in 32-bit lanes, for a pixel index below 2^32 (frames
 * hold at most 2^27 pixels) and s < 2^31 (narrow: s < 2^16): the same values (the decoder's
 * lanes). The offset is o->pred_q + the returned wrap (0 or 1). */
REDML_HD uint32_t redml_dither_u32(uint32_t seed, uint32_t idx, uint32_t s, int narrow) {
    return redml_mulhi32(redml_hash(seed, idx, 1), s, narrow);
}
REDML_HD uint32_t redml_offset_wrap32(uint32_t pred_r, uint32_t u, uint32_t s, uint32_t mul_hi, uint32_t mul_lo,
                                      int narrow, unsigned *phase) {
    uint32_t r = pred_r + u; /* < 2s */
    const uint32_t wrap = r >= s;
    r -= wrap * s;
    *phase = r * mul_hi + redml_mulhi32(mul_lo, r, narrow);
    return wrap;
}
REDML_HD int64_t redml_offset_float(double mean, double u, double s, unsigned *phase) {
    double t = (mean + u) / s, k = floor(t);
    /* A step tiny against the mean (or a hostile model) puts the offset beyond int64_t:
       saturate it (defined arithmetic). No code can then reach the tile's pixels
       (redml_quantize_float stores them exactly), so no valid chunk depends on the value. */
    if (!(k > -4.0e18 && k < 4.0e18)) {
        *phase = 0;
        return k < 0.0 ? -4000000000000000000LL : 4000000000000000000LL;
    }
    int ph = (int)((t - k) * REDML_PHASES);
    *phase = (unsigned)(ph < 0 ? 0 : (ph >= REDML_PHASES ? REDML_PHASES - 1 : ph));
    return (int64_t)k;
}

REDML_HD double redml_dither_float(uint32_t seed, uint64_t idx, double s) {
    return redml_uniform(seed, idx, 1) * s;
}

REDML_HD float redml_recon_float(uint32_t sym, double s, double u, int64_t base) {
    int64_t k = (int64_t)redml_unzigzag32(sym) + base;
    return (float)(((double)k + 0.5) * s - u);
}

/* Float counterpart of redml_quantize_int. Values 0 <= x < s/2 go to the exact section
 * (a decision on x alone, so the quantized ones stay unbiased); the bound is checked on
 * the float32 value actually decoded, so rounding never breaks it. */
/* The bin symbol of float x on the dithered lattice (bins [k*s - u, (k+1)*s - u)); 0 when
 * it does not fit 32 bits. */
REDML_HD int redml_bin_float_sym(float x, double s, double u, int64_t base, uint32_t *sym) {
    double k = floor(((double)x + u) / s);
    if (!(k > -2147483648.0 && k < 2147483647.0)) return 0;
    int64_t c = (int64_t)k - base;
    if (c < -2147483647LL || c > 2147483646LL) return 0;
    *sym = redml_zigzag32((int32_t)c);
    return 1;
}

/* The float midpoint quantizer itself (integrating data: as it is); the bound is checked
 * on the float32 value actually decoded, so rounding never breaks it. */
REDML_HD int redml_quantize_float_rn(float x, double s, double u, int64_t base, uint32_t *sym) {
    uint32_t z;
    if (!redml_bin_float_sym(x, s, u, base, &z)) return 0;
    double err = (double)redml_recon_float(z, s, u, base) - (double)x;
    if (!(fabs(err) <= s / 2.0)) return 0;
    *sym = z;
    return 1;
}

REDML_HD int redml_quantize_float(float x, double s, double u, int64_t base, uint32_t *sym) {
    if (x >= 0.0f && (double)x < s / 2.0) return 0;
    if (!redml_quantize_float_rn(x, s, u, base, sym)) return 0;
    return !(x >= 0.0f && redml_recon_float(*sym, s, u, base) < 0.0f);
}

/* ---- Conditional reconstructions (REDML_RECON_MEAN, REDML_RECON_DRAW) ----
 * Integer photon counts are binned on the same dithered lattice, but with bins of s counts
 * where s - 1 <= q*sigma/2: the decoder may put the value anywhere in its bin. It does so
 * from the background model's Poisson distribution restricted to the bin, so a blank
 * background keeps its mean and its variance-to-mean ratio (what DIALS's dispersion spot
 * finder tests) at any count, and no low-count pixel needs to be stored exactly. */

/* Step: the largest integer s with s - 1 <= q*sigma/2 (1 = lossless). */
REDML_HD int64_t redml_step_int_bin(double mean, double q, double gain, double mu_min) {
    if (!(q > 0.0)) return 1;
    double b = floor(q * redml_sigma(mean > 0.0 ? mean : 0.0, gain, mu_min) / 2.0);
    if (!(b >= 0.0)) b = 0.0;
    if (b > 1048576.0) b = 1048576.0;
    return (int64_t)b + 1;
}

/* Codes x >= 0 by its bin [k*s - u, k*s - u + s - 1]; returns 0 (store exactly) for
 * negative values, a bin reaching above hi, or a symbol above sym_max. */
REDML_HD int redml_quantize_bin(int64_t x, int64_t s, double inv_s, int64_t u, int64_t base, int64_t hi,
                                uint64_t sym_max, uint64_t *sym) {
    return redml_bin_code<int64_t, uint64_t>(x, redml_floordiv_inv(x + u, s, inv_s), s, u, base, hi, sym_max, 1, sym);
}

/* The values [*a, *b] of symbol sym's bin that are >= 0. */
REDML_HD void redml_bin_int(uint64_t sym, int64_t s, int64_t u, int64_t base, int64_t *a, int64_t *b) {
    int64_t k = redml_unzigzag64(sym) + base;
    *a = k * s - u;
    *b = *a + s - 1;
    if (*a < 0) *a = 0;
}

/* A value in [a, b] from Poisson(lambda) restricted to [a, b]: its mean, rounded with a
 * seeded dither (draw = 0; E[result] = the conditional mean), or a seeded draw (draw = 1).
 * Weights are taken relative to the distribution's mode in [a, b], so none exceeds 1. */
REDML_HD_FLAT int64_t redml_recon_conditional(int64_t a, int64_t b, double lambda, int draw, uint32_t seed, uint64_t idx) {
    if (b <= a) return a;
    if (!(lambda > 0.0)) return a; /* all the mass at the lowest count */
    double fl = floor(lambda);
    int64_t m = fl < (double)a ? a : (fl > (double)b ? b : (int64_t)fl);
    double wa = 1.0;
    for (int64_t x = m; x > a; x--) wa *= (double)x / lambda;
    /* The draw walks the same weights again: those of a narrow bin are kept. */
    enum { KEPT = 16 };
    double kept[KEPT];
    double total = 0.0, moment = 0.0, w = wa;
    for (int64_t x = a; x <= b; x++) {
        if (x - a < KEPT) kept[x - a] = w;
        total += w;
        moment += (double)(x - a) * w;
        w *= lambda / (double)(x + 1);
    }
    if (!(total > 0.0)) return m; /* weights underflowed below the mode: keep the mode */
    if (!draw) {
        int64_t r = a + (int64_t)floor(moment / total + redml_uniform(seed, idx, 5));
        return r > b ? b : r;
    }
    double target = redml_uniform(seed, idx, 6) * total, c = 0.0;
    if (b - a < KEPT) {
        for (int64_t x = a; x <= b; x++) {
            c += kept[x - a];
            if (c > target) return x;
        }
        return b;
    }
    w = wa;
    for (int64_t x = a; x <= b; x++) {
        c += w;
        if (c > target) return x;
        w *= lambda / (double)(x + 1);
    }
    return b;
}

/* redml_recon_conditional without divisions, for REDML_RECON_LANES pixels at once (lanes: a
 * loop per bin position over the pixels, which vectorizes; a fixed count, so no loop has a
 * remainder or a variable length), bins of at most REDML_FAST_BIN values (width: the widest).
 * a, b: the bins (whole numbers; unused lanes a = b = 0), lambda, uni: the uniform of stream 5
 * (mean) or 6 (draw). The weights are taken relative to a common factor instead of the mode,
 *     v_d = lambda^d * (a+d+1) * ... * (b)   for x = a + d, d = 0 .. b-a,
 * whose ratios are those of lambda^x / x!; the draw and the rounded mean depend only on
 * ratios. R is the arithmetic: double, or float (twice the lanes a vector) where the caller
 * has checked redml_fast_float_fits. Both round differently from the reference's recurrence
 * (positive terms only, within the domain below): double by < 1e-13 of the total, float by
 * < 6e-6 (about 6 * width roundings of 2^-24, the uniform's included); so a decision within
 * tol (REDML_FAST_TOL, REDML_FAST_TOL_FLOAT) of the total (times the width, of an integer, for
 * the mean) is not trusted: ok[j] = 0, and the caller takes redml_recon_conditional. The
 * result is then identical to the reference. Outside the domain (lambda or b beyond 2^20,
 * lambda below 2^-20, where the products could leave the double range) ok[j] = 0 too. K: an
 * integer of R's width (the flags in the same lanes). */
#define REDML_FAST_BIN 16
#define REDML_FAST_TOL 1e-11
#define REDML_FAST_TOL_FLOAT 2e-5f
#define REDML_LANES 64
#define REDML_RECON_LANES 32
template <class R, class K>
REDML_HD_FLAT void redml_recon_conditional_lanes(const R *a, const R *b, const R *lambda, const R *uni, int width,
                                                 int draw, R tol, R *res, K *ok) {
    /* Every loop runs over the pixels j innermost, without branches (selects), so each
       vectorizes. */
    enum { N = REDML_RECON_LANES };
    R v[REDML_FAST_BIN][N], q[N], total[N], moment[N], r[N], gap[N];
    if (width > REDML_FAST_BIN) {
        for (int j = 0; j < N; j++) ok[j] = 0, res[j] = a[j];
        return;
    }
    for (int j = 0; j < N; j++) q[j] = 1;
    for (int d = 0; d < width; d++) /* lambda^d */
        for (int j = 0; j < N; j++) {
            v[d][j] = q[j];
            q[j] *= lambda[j];
        }
    for (int j = 0; j < N; j++) q[j] = 1, total[j] = 0, moment[j] = 0, r[j] = 0;
    for (int d = width - 1; d >= 0; d--) /* times (a+d+1) ... (b); zero beyond the bin */
        for (int j = 0; j < N; j++) {
            /* 0/1 factors, not selects: GCC makes the selects a branch per pixel where the
               vectors have no mask registers (AVX2, SSE2). The same values: the products are
               finite in the domain, x - 1 and 1 + (x - 1) exact on these whole numbers. */
            const R x = a[j] + (R)d, in_bin = (R)(x <= b[j]);
            v[d][j] = v[d][j] * q[j] * in_bin;
            q[j] *= (R)1 + in_bin * (x - (R)1);
        }
    for (int d = 0; d < width; d++)
        for (int j = 0; j < N; j++) {
            total[j] += v[d][j];
            moment[j] += (R)d * v[d][j];
        }
    if (draw) {
        /* the draw is the first x whose cumulative weight exceeds uni*total: a + the number
           of positions in the bin below b at or below it (the cumulative sums never decrease);
           gap: how close a cumulative sum in the bin comes to the target */
        R c[N], target[N];
        for (int j = 0; j < N; j++) c[j] = 0, target[j] = uni[j] * total[j], gap[j] = total[j];
        for (int d = 0; d < width; d++)
            for (int j = 0; j < N; j++) {
                const R x = a[j] + (R)d, diff = (c[j] += v[d][j]) - target[j], dist = diff < 0 ? -diff : diff;
                r[j] += (R)((x < b[j]) & (diff <= 0)); /* (&, not &&: no branch) */
                gap[j] = ((x <= b[j]) & (dist < gap[j])) ? dist : gap[j];
            }
        for (int j = 0; j < N; j++) {
            r[j] += a[j];
            gap[j] -= tol * total[j]; /* > 0: no sum within tol of the target */
        }
    } else {
        const R t = tol * (R)width;
        for (int j = 0; j < N; j++) {
            /* f in [0, width]: truncation is floor (and vectorizes, unlike floor()) */
            const R f = moment[j] / total[j] + uni[j], fl = (R)(int32_t)f, x = a[j] + fl;
            const R lo = f - fl, hi = fl + 1 - f;
            gap[j] = (lo < hi ? lo : hi) - t;
            r[j] = x > b[j] ? b[j] : x;
        }
    }
    for (int j = 0; j < N; j++) {
        const int trivial = !(b[j] > a[j]) | !(lambda[j] > 0);
        const int inside = (lambda[j] >= (R)0x1p-20) & (lambda[j] <= (R)0x1p20) & (b[j] <= (R)0x1p20);
        res[j] = trivial ? a[j] : r[j];
        ok[j] = (K)(trivial | (inside & (gap[j] > 0)));
    }
}

/* The float form of redml_recon_conditional_lanes stays within float's normal range (products
 * of width - 1 factors, none above m or below 1/m, times 16 * 15: below 2^124) for bins ending
 * at most at m = redml_fast_float_bound(width) where the model at every pixel passes
 * redml_fast_float_fits (<= 0: a trivial lane, no products; NaN fails). */
REDML_HD double redml_fast_float_bound(int width) {
    const int e = width > 1 ? 112 / (width - 1) : 20;
    return (double)(1u << (e < 20 ? e : 20));
}
REDML_HD int redml_fast_float_fits(double lambda, double m) {
    return (lambda <= m) & ((lambda <= 0.0) | (lambda * m >= 1.0)); /* (no branch: vectorizes) */
}

/* Sparse mode: unbiased integer rounding of a model value v (E[result] = v). */
REDML_HD int64_t redml_dithered_round(double v, uint32_t seed, uint64_t idx) {
    return (int64_t)floor(v + redml_uniform(seed, idx, 2));
}

/* Sparse mode with noise: a seeded Poisson(lambda) draw (inversion for small lambda,
 * rounded normal approximation above 64). */
REDML_HD int64_t redml_poisson(double lambda, uint32_t seed, uint64_t idx) {
    if (!(lambda > 0.0)) return 0;
    if (lambda < 64.0) {
        double u = redml_uniform(seed, idx, 3);
        double p = exp(-lambda), cdf = p;
        int64_t k = 0;
        while (u > cdf && k < 1000) {
            k++;
            p *= lambda / (double)k;
            cdf += p;
        }
        return k;
    }
    double u1 = redml_uniform(seed, idx, 3) + 0.5 / 4294967296.0;
    double u2 = redml_uniform(seed, idx, 4);
    double z = sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
    double v = floor(lambda + sqrt(lambda) * z + 0.5);
    if (!(v < 9.0e18)) return 9000000000000000000LL; /* huge or infinite lambda: saturate, defined */
    return v < 0.0 ? 0 : (int64_t)v;
}

/* Sparse mode's noisy background on integrating data: a seeded standard normal draw
 * (Box-Muller on streams 7 and 8, apart from the Poisson draw's 3 and 4). */
REDML_HD double redml_normal_draw(uint32_t seed, uint64_t idx) {
    double u1 = redml_uniform(seed, idx, 7) + 0.5 / 4294967296.0;
    double u2 = redml_uniform(seed, idx, 8);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* ---- Integrating detectors: Poisson photons plus Gaussian read noise ----
 * Pedestal-subtracted data (ADU, keV or float photons): a pixel of mean `mean` (data
 * units, gain data units per photon) holds gain * Poisson(mu) + Normal(0, rn^2), mu =
 * mean/gain. Negative values are noise; the quantizers above run without the photon
 * counters' low-count and never-negative rules (redml_quantize_int_rn/_float_rn). */

/* sigma^2 = gain^2 * max(mean/gain, mu_min) + rn^2, in data units. */
REDML_HD double redml_sigma_rn(double mean, double gain, double mu_min, double rn) {
    double mu = mean / gain;
    if (!(mu > mu_min)) mu = mu_min;
    return sqrt(gain * gain * mu + rn * rn);
}

/* Midpoint steps: the largest odd s with (s-1)/2 <= q*sigma/2 (integers; no cap at the mean,
 * which may be 0 or negative), q*sigma (floats); 1 resp. 0 = lossless. */
REDML_HD int64_t redml_step_int_rn(double mean, double q, double gain, double mu_min, double rn) {
    if (!(q > 0.0)) return 1;
    double half = floor(q * redml_sigma_rn(mean, gain, mu_min, rn) / 2.0);
    if (!(half >= 0.0)) half = 0.0;
    if (half > 1048576.0) half = 1048576.0;
    return 2 * (int64_t)half + 1;
}
/* Float steps: q*sigma (midpoint, bound s/2) or q*sigma/2 (bins, bound s). */
REDML_HD float redml_step_float_rn(double mean, double q, double gain, double mu_min, double rn, int bins) {
    if (!(q > 0.0)) return 0.0f;
    double s = q * redml_sigma_rn(mean, gain, mu_min, rn) / (bins ? 2.0 : 1.0);
    return s > 0.0 && s < 1e30 ? (float)s : 0.0f;
}
/* Bin steps of integer data: the largest s with s - 1 <= q*sigma/2. */
REDML_HD int64_t redml_step_int_bin_rn(double mean, double q, double gain, double mu_min, double rn) {
    if (!(q > 0.0)) return 1;
    double b = floor(q * redml_sigma_rn(mean, gain, mu_min, rn) / 2.0);
    if (!(b >= 0.0)) b = 0.0;
    if (b > 1048576.0) b = 1048576.0;
    return (int64_t)b + 1;
}

/* Bin of integer x (any sign) on the lattice of redml_quantize_bin; 0 (store exactly) when
 * the symbol does not fit. The decoder clips the bin to the dtype's range. */
REDML_HD int redml_quantize_bin_rn(int64_t x, int64_t s, double inv_s, int64_t u, int64_t base, uint64_t sym_max,
                                   uint64_t *sym) {
    return redml_bin_code<int64_t, uint64_t>(x, redml_floordiv_inv(x + u, s, inv_s), s, u, base, 0, sym_max, 0, sym);
}

/* Standard normal mass on [a, b] (a <= b, infinities allowed), accurate in both tails. */
REDML_HD double redml_normal_mass(double a, double b) {
    const double r = 0.70710678118654752;
    if (a >= 0.0) return 0.5 * (erfc(a * r) - erfc(b * r));
    if (b <= 0.0) return 0.5 * (erfc(-b * r) - erfc(-a * r));
    return 1.0 - 0.5 * erfc(-a * r) - 0.5 * erfc(b * r);
}
REDML_HD double redml_normal_pdf(double z) { return isinf(z) ? 0.0 : 0.3989422804014327 * exp(-0.5 * z * z); }

/* z in [a, b] (finite) with redml_normal_mass(a, z) = t * redml_normal_mass(a, b): a draw
 * from the normal truncated to [a, b] for t uniform. Safeguarded Newton on the side of zero
 * where the masses keep their precision (a < 0: Phi(z) - Phi(a), one erfc per step). */
REDML_HD double redml_truncnorm_inverse(double a, double b, double t) {
    if (a >= 0.0) return -redml_truncnorm_inverse(-b, -a, 1.0 - t);
    const double r = 0.70710678118654752, phi_a = 0.5 * erfc(-a * r);
    const double target = t * redml_normal_mass(a, b);
    double lo = a, hi = b, z = a + t * (b - a);
    for (int it = 0; it < 60; it++) {
        double g = 0.5 * erfc(-z * r) - phi_a - target;
        if (g > 0.0) hi = z;
        else lo = z;
        double d = redml_normal_pdf(z), next = d > 0.0 ? z - g / d : 0.5 * (lo + hi);
        if (!(next > lo && next < hi)) next = 0.5 * (lo + hi);
        if (fabs(next - z) <= 1e-10 * (1.0 + fabs(z))) return next;
        z = next;
    }
    return z;
}

/* Above this many photons per pixel the model's distribution is taken in its Gaussian limit,
 * Normal(mean, gain*mean + rn^2): one component instead of the Poisson comb. */
#define REDML_NOISE_GAUSS_MU 30.0

/* Components of the model's distribution that meet [lo, hi] (data units): the photon
 * counts k0..k1 (each Normal(k*gain, rn^2) with weight Poisson(k; mu)), or, in the Gaussian
 * limit, one component (k0 = k1 = -1). */
REDML_HD void redml_noise_components(double lo, double hi, double mu, double gain, double rn, int64_t *k0,
                                     int64_t *k1) {
    if (mu > REDML_NOISE_GAUSS_MU) {
        *k0 = *k1 = -1;
        return;
    }
    double a = floor((lo - 6.0 * rn) / gain), b = ceil((hi + 6.0 * rn) / gain), top = mu + 12.0 * sqrt(mu) + 20.0;
    *k0 = a < 0.0 ? 0 : (int64_t)(a < top ? a : top);
    *k1 = b < 0.0 ? -1 : (int64_t)(b < top ? b : top);
}

/* Weight, centre and spread of component k (-1: the Gaussian limit). */
REDML_HD double redml_noise_component(int64_t k, double mu, double gain, double rn, double *centre, double *spread) {
    if (k < 0) {
        *centre = mu * gain;
        *spread = sqrt(gain * gain * mu + rn * rn);
        return 1.0;
    }
    *centre = (double)k * gain;
    *spread = rn;
    return mu > 0.0 ? exp((double)k * log(mu) - mu - lgamma((double)k + 1.0)) : (k == 0 ? 1.0 : 0.0);
}

/* Mass and first moment of the model on [lo, hi] (lo may be -infinity): what the clipped
 * tile mean is corrected with, and the conditional mean of a bin. */
REDML_HD double redml_noise_mass(double lo, double hi, double mu, double gain, double rn, double *moment) {
    int64_t k0, k1;
    redml_noise_components(lo, hi, mu, gain, rn, &k0, &k1);
    double mass = 0.0, mom = 0.0;
    for (int64_t k = k0; k <= k1; k++) {
        double c, sd, w = redml_noise_component(k, mu, gain, rn, &c, &sd);
        double a = (lo - c) / sd, b = (hi - c) / sd, m = w * redml_normal_mass(a, b);
        mass += m;
        mom += m * c + w * sd * (redml_normal_pdf(a) - redml_normal_pdf(b));
    }
    *moment = mom;
    return mass;
}

/* A value in [lo, hi] from the model (photon mean mu, gain, read noise rn > 0) restricted
 * to it: its conditional mean (draw = 0) or a draw with uniform t (draw = 1: the component
 * is picked with t, the value within it drawn with what is left of t). A bin the model
 * gives no mass (an outlier) takes the model mean clipped to the bin. The components'
 * Poisson weights follow by recurrence from the first; their masses are kept for the draw. */
#define REDML_NOISE_KEPT 64
REDML_HD double redml_recon_noise(double lo, double hi, double mu, double gain, double rn, int draw, double t) {
    int64_t k0, k1;
    redml_noise_components(lo, hi, mu, gain, rn, &k0, &k1);
    double kept[REDML_NOISE_KEPT], mass = 0.0, moment = 0.0, c = 0.0, sd = 1.0;
    double w = k0 <= k1 ? redml_noise_component(k0, mu, gain, rn, &c, &sd) : 0.0;
    for (int64_t k = k0; k <= k1; k++) {
        if (k != k0) { /* the next photon count: w *= mu / k */
            c = (double)k * gain;
            w *= mu / (double)k;
        }
        double a = (lo - c) / sd, b = (hi - c) / sd, m = w * redml_normal_mass(a, b);
        if (k - k0 < REDML_NOISE_KEPT) kept[k - k0] = m;
        mass += m;
        moment += m * c + w * sd * (redml_normal_pdf(a) - redml_normal_pdf(b));
    }
    if (!(mass > 0.0)) {
        double v = mu * gain;
        return v < lo ? lo : (v > hi ? hi : v);
    }
    double v = moment / mass;
    if (draw) {
        double target = t * mass;
        for (int64_t k = k0; k <= k1; k++) {
            double m = k - k0 < REDML_NOISE_KEPT ? kept[k - k0] : -1.0;
            if (m < 0.0) m = redml_noise_component(k, mu, gain, rn, &c, &sd) * redml_normal_mass((lo - c) / sd, (hi - c) / sd);
            if (m > 0.0 && (target < m || k == k1)) {
                redml_noise_component(k, mu, gain, rn, &c, &sd);
                double r = target / m;
                r = r < 0.0 ? 0.0 : (r > 1.0 ? 1.0 : r);
                v = c + sd * redml_truncnorm_inverse((lo - c) / sd, (hi - c) / sd, r);
                break;
            }
            target -= m;
        }
    }
    return v < lo ? lo : (v > hi ? hi : v);
}

/* ---- The same reconstruction from per-bin tables (integer data) ----
 * Below the Gaussian limit, everything redml_recon_noise computes with erfc and exp depends
 * on the bin and the photon count k only, not on the model mean: an integer bin a..b recurs
 * all over a frame (and from frame to frame), so the decoder tabulates those terms once per
 * bin and each pixel keeps the Poisson weights (one exp, one log) and a search. The results
 * are the reference's, bit for bit: the same operations on the same values in the same
 * order, and the draw's inverse (a Newton iteration) replaced by the bin's rounding
 * boundaries only where the target is clearly away from every boundary (else: reference). */

/* Photon counts of the components of bin [lo, hi] before the cap at mu + 12 sqrt(mu) + 20
 * (redml_noise_components; *k1 < *k0: none). */
REDML_HD void redml_noise_bin_components(double lo, double hi, double gain, double rn, int64_t *k0, int64_t *k1) {
    double a = floor((lo - 6.0 * rn) / gain), b = ceil((hi + 6.0 * rn) / gain);
    const double big = 4.0e15; /* beyond any cap (defined conversions) */
    *k0 = a < 0.0 ? 0 : (int64_t)(a < big ? a : big);
    *k1 = b < 0.0 ? -1 : (int64_t)(b < big ? b : big);
}

/* Whether the cap of redml_noise_components changes the components k0..k1 at photon mean mu
 * (or mu is in the Gaussian limit): then the table does not apply. */
REDML_HD int redml_noise_table_applies(double mu, int64_t k0, int64_t k1) {
    if (mu > REDML_NOISE_GAUSS_MU) return 0;
    const double top = mu + 12.0 * sqrt(mu) + 20.0;
    return (double)k0 < top && (double)k1 < top;
}

/* The mass, first moment and component masses (kept[k - k0]) of redml_recon_noise from the
 * bin's table: nm[k - k0] = redml_normal_mass(alpha_k, beta_k), pd[k - k0] = pdf(alpha_k) -
 * pdf(beta_k), lg0 = lgamma(k0 + 1). k1 - k0 < REDML_NOISE_KEPT. */
REDML_HD double redml_noise_table_mass(const double *nm, const double *pd, int64_t k0, int64_t k1, double lg0,
                                       double mu, double gain, double rn, double *kept, double *moment) {
    double mass = 0.0, mom = 0.0;
    double w = mu > 0.0 ? exp((double)k0 * log(mu) - mu - lg0) : (k0 == 0 ? 1.0 : 0.0);
    double c = (double)k0 * gain;
    for (int64_t k = k0; k <= k1; k++) {
        if (k != k0) {
            c = (double)k * gain;
            w *= mu / (double)k;
        }
        const double m = w * nm[k - k0];
        kept[k - k0] = m;
        mass += m;
        mom += m * c + w * rn * pd[k - k0];
    }
    *moment = mom;
    return mass;
}

/* The component redml_recon_noise's draw picks with uniform t (its index from k0, -1: none)
 * and the uniform left for the value within it (*r). */
REDML_HD int64_t redml_noise_pick(const double *kept, int64_t n, double mass, double t, double *r) {
    double target = t * mass;
    for (int64_t i = 0; i < n; i++) {
        const double m = kept[i];
        if (m > 0.0 && (target < m || i == n - 1)) {
            double q = target / m;
            *r = q < 0.0 ? 0.0 : (q > 1.0 ? 1.0 : q);
            return i;
        }
        target -= m;
    }
    return -1;
}

/* redml_truncnorm_inverse solves, on the side where it keeps precision (flip: the interval
 * mirrored), 0.5 erfc(-z/sqrt2) - phi_a = target. Its setup for a component's interval
 * [alpha, beta], and the rounding boundaries of an integer bin a..b (values a + j + 1/2, j <
 * n = b - a): h[j] the left side at the boundary (negated when mirrored, so h increases with
 * j and the value is above boundary j exactly where h[j] <= the target, negated likewise),
 * tol[j] how close a target may come before the Newton iteration's own error could put the
 * result on either side (2e-6 in z times the density there, plus 1e-14 of the masses for
 * the rounding of erfc). */
typedef struct {
    int flip;
    double phi_a, mass;
} redml_truncnorm_side;

REDML_HD redml_truncnorm_side redml_truncnorm_setup(double alpha, double beta) {
    redml_truncnorm_side sd;
    sd.flip = alpha >= 0.0;
    const double a = sd.flip ? -beta : alpha, b = sd.flip ? -alpha : beta;
    sd.phi_a = 0.5 * erfc(-a * 0.70710678118654752);
    sd.mass = redml_normal_mass(a, b);
    return sd;
}

/* Boundary j of integer bin a.. (value a + j + 1/2) of the component centred at c. */
REDML_HD void redml_truncnorm_boundary(const redml_truncnorm_side *sd, int64_t a, int64_t j, double c, double spread,
                                       double *h, double *tol) {
    const double z = ((double)(a + j) + 0.5 - c) / spread, zs = sd->flip ? -z : z;
    const double g = 0.5 * erfc(-zs * 0.70710678118654752) - sd->phi_a;
    *h = sd->flip ? -g : g;
    *tol = 2e-6 * redml_normal_pdf(zs) + 1e-14 * (sd->phi_a + sd->mass);
}

/* The target of uniform r on the boundaries' scale (h[j] <= it: the value is above j). */
REDML_HD double redml_truncnorm_target(const redml_truncnorm_side *sd, double r) {
    const double target = (sd->flip ? 1.0 - r : r) * sd->mass;
    return sd->flip ? -target : target;
}

/* The integer the reference's draw rounds to (floor(c + spread * z + 1/2), z the inverse at
 * uniform r) from the n boundaries h, tol of integer bin a..a+n: *x = a + the number of
 * boundaries below the value (a binary search whose steps depend on n only: selects, no
 * branches). Returns 0 when the target is within tol of the boundary on either side. */
REDML_HD int redml_truncnorm_round(const redml_truncnorm_side *sd, const double *h, const double *tol, int64_t a,
                                   int64_t n, double r, int64_t *x) {
    const double t = redml_truncnorm_target(sd, r);
    if (n <= 0) {
        *x = a;
        return 1;
    }
    int64_t base = 0, len = n;
    while (len > 1) {
        const int64_t half = len / 2;
        base = h[base + half] <= t ? base + half : base;
        len -= half;
    }
    const int64_t lo = base + (h[base] <= t); /* the first boundary above the value */
    *x = a + lo;
    return !(lo > 0 && fabs(h[lo - 1] - t) <= tol[lo - 1]) && !(lo < n && fabs(h[lo] - t) <= tol[lo]);
}

#endif /* REDML_QUANTIZE_H */
