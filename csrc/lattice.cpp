// lattice.cpp: reflection prediction for still shots (see lattice.h for the model and why
// only +, -, *, / and sqrt appear here).
#include "lattice.h"

#ifdef __FAST_MATH__
#error "lattice.cpp must be built without fast-math: the decoder predicts the encoder's region bit for bit"
#endif

#include <cmath>

namespace redml {

namespace {

// Enumerating more hkl than this means a cell far too large for the frame (or a broken A):
// refused rather than looping for minutes.
constexpr double kMaxIndices = 4e8;

// Rows of A^-1 (the real-space axes a, b, c) into inv; false when A is singular.
bool invert3(const double A[9], double inv[9]) {
    const double c00 = A[4] * A[8] - A[5] * A[7];
    const double c01 = A[5] * A[6] - A[3] * A[8];
    const double c02 = A[3] * A[7] - A[4] * A[6];
    const double det = A[0] * c00 + A[1] * c01 + A[2] * c02;
    if (!std::isfinite(det) || det == 0.0) return false;
    inv[0] = c00 / det;
    inv[1] = (A[2] * A[7] - A[1] * A[8]) / det;
    inv[2] = (A[1] * A[5] - A[2] * A[4]) / det;
    inv[3] = c01 / det;
    inv[4] = (A[0] * A[8] - A[2] * A[6]) / det;
    inv[5] = (A[2] * A[3] - A[0] * A[5]) / det;
    inv[6] = c02 / det;
    inv[7] = (A[1] * A[6] - A[0] * A[7]) / det;
    inv[8] = (A[0] * A[4] - A[1] * A[3]) / det;
    for (int i = 0; i < 9; i++)
        if (!std::isfinite(inv[i])) return false;
    return true;
}

// Largest |r| (1/Angstrom) that can land within the frame (plus margin): the scattering
// angle of the farthest corner from the beam centre.
double max_reciprocal_radius(const LatticeGeometry &g, uint32_t height, uint32_t width, double margin) {
    const double xs[2] = {-margin - g.beam_x, (double)width + margin - g.beam_x};
    const double ys[2] = {-margin - g.beam_y, (double)height + margin - g.beam_y};
    double r2 = 0.0;
    for (double x : xs)
        for (double y : ys) {
            const double d2 = x * x + y * y;
            if (d2 > r2) r2 = d2;
        }
    const double rho = std::sqrt(r2) * g.pixel_mm;
    const double cos2t = g.distance_mm / std::sqrt(g.distance_mm * g.distance_mm + rho * rho);
    const double sin_t = std::sqrt((1.0 - cos2t) / 2.0);
    return 2.0 * sin_t / g.wavelength_a;
}

// The parallax shift factor o / |s1| (see LatticeGeometry) of a ray hitting the detector at
// (X, Y) mm from the beam centre; 0 without a sensor.
double parallax_factor(const LatticeGeometry &g, double X, double Y) {
    if (!(g.sensor_thickness_mm > 0)) return 0.0;
    const double len = std::sqrt(X * X + Y * Y + g.distance_mm * g.distance_mm);
    const double path = g.sensor_thickness_mm * len / g.distance_mm;  // t / cos
    const double inv_mu = 1.0 / g.sensor_mu_per_mm;
    const double o = inv_mu - (path + inv_mu) * deterministic_exp(-g.sensor_mu_per_mm * path);
    return o / len;
}

struct LRange {
    int32_t lo, hi;
};

// The l (ascending ranges, at most two, within [-lmax, lmax]) for which s0 + h a* + k b* + l c*
// = p + l c* can lie within tol of the Ewald sphere (radius k0): between the spheres of radii
// k0 - tol and k0 + tol. Widened by one index on each side against rounding.
int l_ranges(const double p[3], const double A[9], double k0, double tol, int32_t lmax, LRange out[2]) {
    const double c[3] = {A[2], A[5], A[8]};
    const double cc = c[0] * c[0] + c[1] * c[1] + c[2] * c[2];
    const double pc = p[0] * c[0] + p[1] * c[1] + p[2] * c[2];
    const double pp = p[0] * p[0] + p[1] * p[1] + p[2] * p[2];
    const double outer = k0 + tol;
    const double disc_o = pc * pc - cc * (pp - outer * outer);
    if (disc_o < 0) return 0;
    const double root_o = std::sqrt(disc_o);
    const double lo_o = std::ceil((-pc - root_o) / cc) - 1.0, hi_o = std::floor((-pc + root_o) / cc) + 1.0;
    const double inner = k0 - tol;
    double cut_lo = hi_o + 1.0, cut_hi = hi_o;  // the l strictly inside the inner sphere: none yet
    if (inner > 0) {
        const double disc_i = pc * pc - cc * (pp - inner * inner);
        if (disc_i > 0) {
            const double root_i = std::sqrt(disc_i);
            cut_lo = std::floor((-pc - root_i) / cc) + 2.0;  // first l surely inside
            cut_hi = std::ceil((-pc + root_i) / cc) - 2.0;   // last l surely inside
        }
    }
    const double lim = (double)lmax;
    auto clip = [&](double a, double b, LRange &r) {
        a = a < -lim ? -lim : a;
        b = b > lim ? lim : b;
        if (a > b) return false;
        r = LRange{(int32_t)a, (int32_t)b};
        return true;
    };
    int n = 0;
    if (cut_lo > cut_hi) return clip(lo_o, hi_o, out[0]) ? 1 : 0;
    if (clip(lo_o, cut_lo - 1.0, out[n])) n++;
    if (clip(cut_hi + 1.0, hi_o, out[n])) n++;
    return n;
}

double row_norm(const double m[9], int row) {
    const double *v = m + 3 * row;
    return std::sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
}

}  // namespace

double deterministic_exp(double x) {
    if (!(x <= 0.0)) return x != x ? x : 1.0;  // NaN stays NaN; only x <= 0 is needed here
    if (x < -745.0) return 0.0;
    // x = k ln2 + r, |r| <= ln2 / 2 (Cody-Waite: ln2 split so that k * kLn2Hi is exact).
    constexpr double kLn2Hi = 6.93147180369123816490e-01, kLn2Lo = 1.90821492927058770002e-10;
    constexpr double kInvLn2 = 1.44269504088896338700e+00;
    const double k = std::floor(x * kInvLn2 + 0.5);
    const double r = (x - k * kLn2Hi) - k * kLn2Lo;
    // Taylor series to r^14 (truncation below 1e-17 relative for |r| <= 0.35), Horner order.
    double p = 1.0 / 87178291200.0;  // 1/14!
    const double inv_fact[14] = {1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
                                 1.0 / 362880.0,     1.0 / 40320.0,     1.0 / 5040.0,      1.0 / 720.0,
                                 1.0 / 120.0,        1.0 / 24.0,        1.0 / 6.0,         0.5,
                                 1.0,                1.0};
    for (double c : inv_fact) p = p * r + c;
    return std::ldexp(p, (int)k);
}

bool lattice_centring_valid(char c) {
    return c == 'P' || c == 'A' || c == 'B' || c == 'C' || c == 'I' || c == 'F' || c == 'R';
}

bool predict_reflections(const double A[9], const LatticeGeometry &g, uint32_t height, uint32_t width,
                         const ExcitationProfile &p, double d_min_a, double margin, char centring,
                         std::vector<Prediction> &out, const char **error, PredictLimits *limits) {
    out.clear();
    auto fail = [&](const char *why) {
        if (error) *error = why;
        return false;
    };
    if (!(std::isfinite(g.beam_x) && std::isfinite(g.beam_y) && g.distance_mm > 0 && g.pixel_mm > 0 &&
          g.wavelength_a > 0 && std::isfinite(g.distance_mm) && std::isfinite(g.pixel_mm) &&
          std::isfinite(g.wavelength_a)))
        return fail("geometry: distance, pixel size and wavelength must be finite and > 0, the beam centre finite");
    if (!(g.sensor_thickness_mm >= 0 && std::isfinite(g.sensor_thickness_mm) &&
          (g.sensor_thickness_mm == 0 || (g.sensor_mu_per_mm > 0 && std::isfinite(g.sensor_mu_per_mm)))))
        return fail("sensor: thickness must be finite and >= 0, and with a thickness mu finite and > 0");
    if (!(p.domain_size_a > 0 && std::isfinite(p.domain_size_a) && p.half_mosaicity_deg >= 0 &&
          std::isfinite(p.half_mosaicity_deg) && p.bandwidth >= 0 && std::isfinite(p.bandwidth)))
        return fail("profile: domain size must be finite and > 0, mosaicity and bandwidth finite and >= 0");
    if (!(d_min_a >= 0 && std::isfinite(d_min_a))) return fail("d_min must be finite and >= 0");
    if (!(margin >= 0 && margin <= 1e6)) return fail("margin must be in [0, 1e6] pixels");
    if (!lattice_centring_valid(centring)) return fail("centring must be one of P, A, B, C, I, F, R");
    if (height == 0 || width == 0) return fail("the frame must not be empty");
    double inv[9];
    if (!invert3(A, inv)) return fail("A must be a finite, invertible 3x3 matrix");

    const double k0 = 1.0 / g.wavelength_a;
    double r_max = max_reciprocal_radius(g, height, width, margin);
    if (d_min_a > 0 && 1.0 / d_min_a < r_max) r_max = 1.0 / d_min_a;
    if (r_max > 2.0 * k0) r_max = 2.0 * k0;
    // |h| = |a . r| <= |a| |r|: the index ranges that can reach r_max.
    const double span[3] = {row_norm(inv, 0) * r_max, row_norm(inv, 1) * r_max, row_norm(inv, 2) * r_max};
    if ((2 * span[0] + 1) * (2 * span[1] + 1) * (2 * span[2] + 1) > kMaxIndices)
        return fail("too many reflections to enumerate: the cell is too large for this frame (check A's units: "
                    "1/Angstrom)");
    const int32_t hmax = (int32_t)span[0] + 1, kmax = (int32_t)span[1] + 1, lmax = (int32_t)span[2] + 1;
    if (limits) {
        const double pairs = (2.0 * hmax + 1) * (2.0 * kmax + 1);
        if (pairs > limits->hk_budget) return fail("too many reflections to search (the work limit of a lattice region)");
        limits->hk_budget -= pairs;
    }
    const double rr_max = r_max * r_max;
    const double dmin2 = d_min_a * d_min_a;
    const double mosaic = p.half_mosaicity_deg * (3.14159265358979323846 / 180.0) / 2.0;
    const double inv_domain = 1.0 / p.domain_size_a;
    const double half_band = p.bandwidth / 2.0;
    const double x_lo = -margin, x_hi = (double)width + margin;
    const double y_lo = -margin, y_hi = (double)height + margin;

    // Pruning: the rotation onto the sphere moves r by at least its distance from the sphere,
    // so only l within tol_max of the sphere can pass; the per-reflection test below decides.
    const double sin_max = 0.5 * r_max / k0;
    const double tol_max = sin_max < 0.999
        ? (inv_domain + r_max * mosaic + r_max * (sin_max / std::sqrt(1.0 - sin_max * sin_max)) * half_band) * 1.000001
        : 2.0 * k0;  // near back-scattering: no pruning
    LRange ranges[2];
    for (int32_t h = -hmax; h <= hmax; h++) {
        for (int32_t k = -kmax; k <= kmax; k++) {
            const double p[3] = {A[0] * h + A[1] * k, A[3] * h + A[4] * k, A[6] * h + A[7] * k + k0};
            const int nr = l_ranges(p, A, k0, tol_max, lmax, ranges);
            for (int ri = 0; ri < nr; ri++)
            for (int32_t l = ranges[ri].lo; l <= ranges[ri].hi; l++) {
                if ((h | k | l) == 0 || !centring_allows(centring, h, k, l)) continue;
                const double qx = A[0] * h + A[1] * k + A[2] * l;
                const double qy = A[3] * h + A[4] * k + A[5] * l;
                const double qz = A[6] * h + A[7] * k + A[8] * l;
                const double rho2 = qx * qx + qy * qy;
                const double qq = rho2 + qz * qz;
                if (qq > rr_max || rho2 == 0.0) continue;
                if (d_min_a > 0 && qq * dmin2 > 1.0) continue;
                // r rotated onto the sphere: component along the beam -a, normal to it b.
                EwaldPoint e;
                if (!onto_ewald(rho2, qq, k0, e)) continue;
                const double rho = std::sqrt(rho2);
                const double dr = rho - e.b, dz = qz + e.a;
                const double rotation = std::sqrt(dr * dr + dz * dz);
                const double q = std::sqrt(qq);
                const double sin_t = 0.5 * q / k0;
                const double tan_t = sin_t / std::sqrt(1.0 - sin_t * sin_t);
                const double tolerance = inv_domain + q * mosaic + q * tan_t * half_band;
                if (rotation > tolerance) continue;
                const double t = e.t * g.distance_mm;  // mm per unit of q's azimuthal part
                const double X = t * qx, Y = t * qy;                    // mm from the beam centre
                const double shift = 1.0 + parallax_factor(g, X, Y);
                const double x = g.beam_x + X * shift / g.pixel_mm;
                const double y = g.beam_y + Y * shift / g.pixel_mm;
                if (!(x >= x_lo && x < x_hi && y >= y_lo && y < y_hi)) continue;
                if (limits && out.size() >= limits->max_predictions) {
                    out.clear();
                    return fail("too many predicted reflections (the limit of a lattice region)");
                }
                out.push_back(Prediction{h, k, l, x, y, rotation});
            }
        }
    }
    return true;
}

void paint_discs(const Prediction *pred, size_t n, double radius, uint32_t height, uint32_t width, uint8_t *map) {
    if (!(radius >= 0)) return;
    const double r2 = radius * radius;
    for (size_t i = 0; i < n; i++) {
        const double px = pred[i].x, py = pred[i].y;
        // Pixel c's centre is c + 0.5: the candidates lie in [p - r - 0.5, p + r - 0.5].
        const double c0 = std::ceil(px - radius - 0.5), c1 = std::floor(px + radius - 0.5);
        const double r0 = std::ceil(py - radius - 0.5), r1 = std::floor(py + radius - 0.5);
        if (c1 < 0 || r1 < 0 || c0 >= (double)width || r0 >= (double)height) continue;
        const uint32_t x0 = c0 < 0 ? 0 : (uint32_t)c0, y0 = r0 < 0 ? 0 : (uint32_t)r0;
        const uint32_t x1 = c1 >= (double)width ? width - 1 : (uint32_t)c1;
        const uint32_t y1 = r1 >= (double)height ? height - 1 : (uint32_t)r1;
        for (uint32_t y = y0; y <= y1; y++) {
            const double dy = (double)y + 0.5 - py;
            for (uint32_t x = x0; x <= x1; x++) {
                const double dx = (double)x + 0.5 - px;
                if (dx * dx + dy * dy <= r2) map[(size_t)y * width + x] = 1;
            }
        }
    }
}

}  // namespace redml
