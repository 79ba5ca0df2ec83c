// lattice.h: reflection prediction for still shots and the exact-region map it gives.
//
// Frame (docs: the lattice convention): laboratory x along the detector's fast axis, y along
// its slow axis, z along the beam from sample to detector; a flat detector normal to the beam.
// Pixel (px, py) (pixel centres at +0.5) lies at ((px - beam_x) * pixel_mm, (py - beam_y) *
// pixel_mm, distance_mm). A = U B (row-major 3x3, 1/Angstrom): its columns are a*, b*, c*,
// so the reciprocal vector of hkl is r = A hkl; the incident wave vector is s0 = (0, 0, 1/lambda).
//
// A reflection is predicted where DIALS's stills predictor puts it: r is rotated about the
// axis normal to r and to the beam onto the Ewald sphere (keeping |r|, so its resolution and
// its azimuth), and s1 = s0 + r_rotated is projected onto the detector. It is kept when that
// rotation moves r by at most the profile's tolerance (the Nave mosaic model DIALS uses for
// stills, with a bandwidth term; see ExcitationProfile).
//
// Determinism: the decoder must predict the same exact region as the encoder (a chunk will
// carry the crystal model instead of a mask), so this code uses +, -, *, / and sqrt only
// (correctly rounded in IEEE-754), in a fixed order, no library transcendental functions, and
// the build forbids FMA contraction and fast-math (setup.py). Predictions come out in hkl
// order (h, then k, then l, each ascending).
#pragma once
#include <cmath>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace redml {

// Parallax: a sensor of thickness t absorbing with coefficient mu records a ray at the mean
// depth of its absorption, so the spot is shifted outwards along the ray's in-plane direction
// by o / |s1| * (X, Y) mm, o = 1/mu - (t/cos + 1/mu) exp(-mu t / cos), cos = D / |s1| (the
// correction DIALS applies for its ParallaxCorrectedPxMmStrategy). thickness 0: none.
struct LatticeGeometry {
    double beam_x, beam_y;  // pixels, pixel centres at +0.5
    double distance_mm, pixel_mm, wavelength_a;
    double sensor_mu_per_mm, sensor_thickness_mm;  // parallax (0: none)
};

// How far from the Ewald sphere a reflection may lie and still be predicted: the distance
// (1/Angstrom) that r moves when rotated onto the sphere must be at most
//   1 / domain_size_a + |r| * half_mosaicity_rad / 2 + |r| * tan(theta) * bandwidth / 2
// (DIALS's Nave model, d/D + eta/2 in angle, times |r|; bandwidth: full width dlambda/lambda).
struct ExcitationProfile {
    double domain_size_a;       // > 0
    double half_mosaicity_deg;  // >= 0
    double bandwidth;           // >= 0
};

struct Prediction {
    int32_t h, k, l;
    double x, y;       // pixels (fast, slow), pixel centres at +0.5
    double rotation;   // 1/Angstrom: how far r moves onto the Ewald sphere
};

// Lattice centring absences: 'P' (none), 'A', 'B', 'C', 'I', 'F', 'R' (obverse, hexagonal axes).
bool lattice_centring_valid(char centring);

// Where a still records the reciprocal point q = (qx, qy, qz) (1/Angstrom; rho2 = qx^2 + qy^2,
// qq = rho2 + qz^2): q rotated onto the Ewald sphere (radius k0 = 1/wavelength) keeping |q| and
// its azimuth about the beam. a: the rotated point's component against the beam, b: its distance
// from the beam axis; t: detector millimetres from the beam centre per unit of q's azimuthal
// part, per millimetre of sample-detector distance. False where q cannot diffract. One rule for
// the predictor and the indexer (the predictor's arithmetic order: deterministic).
struct EwaldPoint {
    double a, b, t;
};
inline bool onto_ewald(double rho2, double qq, double k0, EwaldPoint &e) {
    e.a = 0.5 * qq / k0;
    const double b2 = qq - e.a * e.a;
    if (!(rho2 > 0.0) || !(b2 > 0.0) || !(k0 - e.a > 0.0)) return false;
    e.b = std::sqrt(b2);
    e.t = e.b / std::sqrt(rho2) / (k0 - e.a);
    return true;
}

// Whether the centring allows reflection hkl (the one rule of the predictor and the indexer).
inline bool centring_allows(char centring, int32_t h, int32_t k, int32_t l) {
    switch (centring) {
        case 'A': return ((k + l) & 1) == 0;
        case 'B': return ((h + l) & 1) == 0;
        case 'C': return ((h + k) & 1) == 0;
        case 'I': return ((h + k + l) & 1) == 0;
        case 'F': return ((h + k) & 1) == 0 && ((h + l) & 1) == 0;
        case 'R': return ((-h + k + l) % 3) == 0;
        default: return true;
    }
}

// Work limits for predictions from untrusted models (a chunk's lattice section): hk_budget,
// the (h, k) index pairs the search may still visit (decremented by this call's), and the most
// predictions one call may return. A call over either fails rather than running for minutes or
// allocating gigabytes.
struct PredictLimits {
    double hk_budget;
    size_t max_predictions;
};

// Every reflection of A with d >= d_min_a (0: no limit) whose predicted position lies within
// `margin` pixels of the height x width frame (-margin <= x < width + margin, same for y).
// Returns false (and nothing) when the arguments are invalid or a limit is passed (why in *error).
bool predict_reflections(const double A[9], const LatticeGeometry &geometry, uint32_t height, uint32_t width,
                         const ExcitationProfile &profile, double d_min_a, double margin, char centring,
                         std::vector<Prediction> &out, const char **error, PredictLimits *limits = nullptr);

// exp(x) for x <= 0 with +, -, * and an exact power-of-two scaling only, so that it gives
// the same bits on every platform (library exp() may differ by an ulp between libms).
double deterministic_exp(double x);

// Sets map[y * width + x] = 1 for every pixel whose centre lies within `radius` pixels of a
// prediction (distance <= radius); leaves the other pixels as they are.
void paint_discs(const Prediction *predictions, size_t n, double radius, uint32_t height, uint32_t width,
                 uint8_t *map);

}  // namespace redml
