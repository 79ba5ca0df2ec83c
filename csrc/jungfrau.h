/* jungfrau.h: the per-pixel logic of the JUNGFRAU raw -> photon conversion, in one place.
 *
 * Plain C on purpose (no STL, no exceptions, pure functions of their arguments), so that the
 * threaded CPU loop (csrc/jungfrau.cpp) and a GPU kernel compiled from this same header
 * (REDML_HD is __host__ __device__ under nvcc, see quantize.h) give identical photons.
 *
 * A raw word: bits 15-14 the gain stage (0 = G0, 1 = G1, 3 = G2, 2 = invalid), bits 13-0 the
 * ADC value. 0xC000 (G2, ADC 0) is an overload, 0xFFFF an error word.
 *
 *     keV     = (adc - pedestal[stage]) / gain[stage]          (float32, gain in ADU/keV)
 *     photons = round_half_away_from_zero(keV * (1 / energy_keV))
 *
 * Markers (never a photon count; the codec keeps them exactly and its background model
 * ignores them, see csrc/pixels.h): the output type's minimum for masked pixels (calibration
 * mask, non-finite calibration), invalid gain bits and error words; its maximum for overloads
 * and for counts at or above the maximum (saturated). Counts at or below the minimum are
 * clamped to minimum + 1 (saturated too). The keV image has NaN where the photons have the
 * minimum marker and +inf for overloads.
 */
#ifndef REDML_JUNGFRAU_H
#define REDML_JUNGFRAU_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "quantize.h"       /* REDML_HD */
#include "redml_jungfrau.h" /* redml_jf_status */

/* Raw module: 512 x 1024 pixels in 2 x 4 chips of 256 x 256. Assembled module: the pixels at
 * chip borders are twice as wide (four times at chip corners), so each border row and column
 * gains one pixel: 514 x 1030. */
#define REDML_JF_CHIP 256
#define REDML_JF_MODULE_ROWS 512
#define REDML_JF_MODULE_COLS 1024
#define REDML_JF_ASM_ROWS 514
#define REDML_JF_ASM_COLS 1030

/* Gain stage (REDML_JF_G0..G2) of a word, or REDML_JF_ERROR / OVERLOAD / INVALID_GAIN. */
REDML_HD int redml_jf_classify(uint16_t word) {
    unsigned g = (unsigned)word >> 14;
    if (g < 2u) return (int)g; /* G0, G1: most words, decided first */
    if (g == 2u) return REDML_JF_INVALID_GAIN;
    return word == 0xFFFFu ? REDML_JF_ERROR : (word == 0xC000u ? REDML_JF_OVERLOAD : REDML_JF_G2);
}

/* Rounds half away from zero into the output range [lo, hi] of the photon type; returns
 * `stage` for a count inside (lo, hi), REDML_JF_SATURATED for one at or beyond either end
 * (hi, or lo + 1 below) and REDML_JF_MASKED (lo) for a non-finite value. In double, v +- 0.5
 * is exact for a float v (or lands on the same side of every integer), so truncating it is
 * the rounding; no library call. */
REDML_HD int redml_jf_round(float photons, int stage, int32_t lo, int32_t hi, int32_t *out) {
    double v = (double)photons;
    if (!isfinite(v)) {
        *out = lo;
        return REDML_JF_MASKED;
    }
    double r = v + copysign(0.5, v); /* trunc(r) = round half away from zero of v; no branch */
    if (r >= (double)hi) {
        *out = hi;
        return REDML_JF_SATURATED;
    }
    if (r <= (double)lo) {
        *out = lo + 1;
        return REDML_JF_SATURATED;
    }
    *out = (int32_t)r;
    return stage;
}

/* The conversion of one pixel. `i` indexes the pixel in the raw frame of `n` pixels;
 * pedestal and gain are [3][n] planes (G0, G1, G2), except that G0's pedestal is read from
 * `ped0` (the pedestal plane 0 itself, or a tracked copy). masked != 0: a bad pixel.
 * Writes the photon count (or marker) to *photons and the energy in keV to *kev; returns
 * the pixel's redml_jf_status. */
REDML_HD int redml_jf_pixel(uint16_t word, int masked, const float *ped0, const float *pedestal, const float *gain,
                            size_t i, size_t n, float inv_energy, int32_t lo, int32_t hi, int32_t *photons,
                            float *kev) {
    int s = masked ? REDML_JF_MASKED : redml_jf_classify(word);
    if (s > REDML_JF_G2) {
        *photons = s == REDML_JF_OVERLOAD ? hi : lo;
        *kev = s == REDML_JF_OVERLOAD ? INFINITY : NAN;
        return s;
    }
    float p = s == REDML_JF_G0 ? ped0[i] : pedestal[(size_t)s * n + i];
    float g = gain[(size_t)s * n + i];
    float e = ((float)(word & 0x3FFFu) - p) / g;
    if (isinf(g)) e = NAN; /* a broken gain, as a nan one: its quotient 0 is no count */
    s = redml_jf_round(e * inv_energy, s, lo, hi, photons);
    *kev = s == REDML_JF_MASKED ? NAN : e;
    return s;
}

/* Pedestal tracking: a G0 pixel whose value is within `threshold` photons of zero saw no
 * photon; its pedestal moves towards the ADC value by `alpha` (1/window: an exponential
 * running mean over about `window` such frames). Returns the new G0 pedestal. */
REDML_HD float redml_jf_track(float ped0, uint16_t word, int status, float kev, float inv_energy, float alpha,
                              float threshold) {
    if (status != REDML_JF_G0 || !(fabsf(kev * inv_energy) < threshold)) return ped0;
    return ped0 + ((float)(word & 0x3FFFu) - ped0) * alpha;
}

/* A double-size (k = 2) or quadruple-size (k = 4, chip corner) pixel is split over k output
 * pixels conserving its total: part j gets floor(v / k), plus one for j < (v mod k). Markers
 * (lo, hi) are copied to every part. */
REDML_HD int32_t redml_jf_split(int32_t v, int k, int j, int32_t lo, int32_t hi) {
    if (v == lo || v == hi || k == 1) return v;
    int32_t q = v / k, r = v % k;
    if (r < 0) {
        r += k;
        q -= 1;
    }
    return q + (j < r ? 1 : 0);
}

/* Where a raw module row (or column) lands in the assembled module: its first position,
 * and in *extra the direction (+1 / -1) of the second half of a chip-border pixel, 0 if
 * none. `chips` is the number of chips along that axis (2 for rows, 4 for columns). */
REDML_HD int redml_jf_expand(int raw, int chips, int *extra) {
    int chip = raw / REDML_JF_CHIP, j = raw % REDML_JF_CHIP;
    *extra = (j == REDML_JF_CHIP - 1 && chip < chips - 1) ? 1 : ((j == 0 && chip > 0) ? -1 : 0);
    return raw + 2 * chip;
}

#endif /* REDML_JUNGFRAU_H */
