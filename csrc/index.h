// index.h: a known-cell indexer for still shots (one crystal per frame).
//
// From the spot finder's centroids, the frame's geometry and the crystal's reciprocal basis B
// (Busing-Levy, columns a*, b*, c*) to an orientation A = U B, or "not indexed". Laboratory
// frame of the lattice package: x along the fast axis, y along the slow axis, z along the beam
// from sample to detector; pixel (px, py) lies at ((px - beam_x) * pixel, (py - beam_y) * pixel,
// distance) mm; s0 = (0, 0, 1 / wavelength); the spot of hkl has s1 = s0 + A hkl.
//
// Method: vector-pair matching against the known lattice (the idea of TakeTwo, Ginn et al.
// 2016, Acta Cryst. D72, 956). The difference of two spots' reciprocal vectors is a lattice
// vector. For a spot and two of its reciprocal-space neighbours, the two differences are
// matched by length and by the angle between them against pairs of the lattice's short
// vectors; each match fixes a rotation, scored by how many spots it indexes (on the strongest
// spots first; the best there, and any other lattice at least half as good there that indexes
// mostly other spots, on all the spots: a still with two crystals is indexed with the one that
// explains most spots). The best is
// refined by least squares (the rotation and an isotropic scale that best superpose U B hkl on
// the spots' vectors), then polished to convergence: predicted positions as the lattice
// predictor places them (lattice.h) against the observed ones, over the rotation and the cell's
// free lengths (equal ones kept equal), first on every spot near a lattice point (several
// crystals a few tenths of a degree apart: the pose settles between them, as DIALS's does),
// then on the spots within tolerance of that pose, outliers left out. It is accepted only with
// enough spots indexed, in number and in fraction.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace redml {

struct IndexGeometry {
    double beam_x, beam_y;  // pixels, pixel centres at +0.5
    double distance_mm, pixel_size_mm, wavelength_a;
};

struct IndexSettings {
    char centring = 'P';          // P, A, B, C, I, F, R (obverse hexagonal setting)
    double tolerance_px = 3.0;    // a spot indexes when its lattice point lies this close (on the detector's scale)
    double spread_deg = 0.3;      // plus this angle times |r|: excitation error of stills (mosaicity, bandwidth)
    double length_tolerance = 0.04;  // relative, matching a spot difference's length to a lattice vector's
    double angle_tolerance_deg = 3.0;
    int max_spots = 60;           // strongest spots used to search (all spots are scored and refined)
    int neighbours = 6;           // reciprocal-space neighbours per spot whose differences are matched
    int max_trials = 5000;        // rotations scored before giving up
    int min_indexed = 10;         // acceptance: indexed spots, in number
    double min_fraction = 0.3;    // and as a fraction of all spots
    double accept_fraction = 0.75;// stop searching once a refined solution indexes this fraction
};

struct IndexResult {
    bool indexed = false;
    double A[9] = {0};            // row-major, columns a*, b*, c* in the laboratory frame (1/Angstrom)
    int n_indexed = 0;
    double rmsd_px = 0;           // predicted versus observed positions of the indexed spots
    int trials = 0;               // rotations scored
    std::vector<int32_t> hkl;     // 3 per spot (0, 0, 0 where it did not index)
    std::vector<uint8_t> is_indexed;
};

// x, y: n spot centroids (pixels); weight: n intensities ordering the search (strongest first)
// or nullptr (the given order). B: 3x3 row-major. Throws std::invalid_argument on bad input.
IndexResult index_still(const double *x, const double *y, const double *weight, size_t n, const IndexGeometry &geom,
                        const double B[9], const IndexSettings &settings);

}  // namespace redml
