// lattice_chunk.cpp: the lattice section of a chunk (see lattice_chunk.h, docs/format.md).
#include "lattice_chunk.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <xxhash.h>

#include "error.h"
#include "lattice.h"

namespace redml {

namespace {

const uint8_t kLatticeLayout = 1;

}  // namespace

void lattice_model_doubles(const redml_lattice &m, double *v) {
    std::memcpy(v, m.A, 9 * sizeof(double));
    const double rest[12] = {m.beam_x,          m.beam_y,          m.distance_mm,        m.pixel_size_mm,
                             m.wavelength_a,    m.sensor_mu_per_mm, m.sensor_thickness_mm, m.domain_size_a,
                             m.half_mosaicity_deg, m.bandwidth,     m.d_min_a,            m.radius};
    std::memcpy(v + 9, rest, sizeof(rest));
}

redml_lattice lattice_model_from_doubles(const double *v, char centring) {
    redml_lattice m;
    std::memcpy(m.A, v, 9 * sizeof(double));
    m.beam_x = v[9], m.beam_y = v[10], m.distance_mm = v[11], m.pixel_size_mm = v[12], m.wavelength_a = v[13];
    m.sensor_mu_per_mm = v[14], m.sensor_thickness_mm = v[15];
    m.domain_size_a = v[16], m.half_mosaicity_deg = v[17], m.bandwidth = v[18];
    m.d_min_a = v[19], m.radius = v[20];
    m.centring = centring;
    return m;
}

namespace {

void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

}  // namespace

void check_lattice_models(const redml_lattice *models, size_t n, redml_status status) {
    check(n >= 1 && n <= kMaxLatticeCrystals, status, "a lattice region holds 1 to 255 crystals");
    for (size_t i = 0; i < n; i++) {
        const redml_lattice &m = models[i];
        // The predictor checks the geometry, profile and A; the footprint is checked here.
        check(m.radius >= 0 && m.radius <= 1e4, status, "lattice radius must be in [0, 1e4] pixels");
        check(lattice_centring_valid(m.centring), status, "lattice centring must be one of P, A, B, C, I, F, R");
    }
}

void paint_lattice_region(const redml_lattice *models, size_t n, uint32_t height, uint32_t width, uint8_t *map,
                          redml_status status) {
    check_lattice_models(models, n, status);
    // Limits far above any real crystal's (a 1000 Angstrom cell to 1.5 Angstrom searches 2e6 hk
    // pairs; a Pilatus 6M still predicts a few thousand reflections), so that a hostile chunk
    // costs at most about a second and a bounded amount of memory.
    const size_t npix = (size_t)height * width;
    PredictLimits limits{kMaxLatticeSearch, std::max<size_t>(size_t(1) << 16, npix / 4)};
    double paint_work = 0;  // pixels visited by the discs, at most a few times the frame
    std::vector<Prediction> pred;
    for (size_t i = 0; i < n; i++) {
        const redml_lattice &m = models[i];
        const LatticeGeometry g{m.beam_x,       m.beam_y,           m.distance_mm,        m.pixel_size_mm,
                                m.wavelength_a, m.sensor_mu_per_mm, m.sensor_thickness_mm};
        const ExcitationProfile prof{m.domain_size_a, m.half_mosaicity_deg, m.bandwidth};
        const char *error = nullptr;
        // Reflections within `radius` of the frame reach it with their discs.
        const bool ok =
            predict_reflections(m.A, g, height, width, prof, m.d_min_a, m.radius, m.centring, pred, &error, &limits);
        check(ok, status, error ? error : "invalid lattice model");
        const double side = 2.0 * m.radius + 2.0;
        paint_work += (double)pred.size() * std::min(side * side, (double)npix);
        check(paint_work <= 64.0 * (double)npix + (double)(1u << 24), status,
              "lattice region too large to paint (discs covering the frame many times over)");
        paint_discs(pred.data(), pred.size(), m.radius, height, width, map);
    }
}

uint64_t lattice_region(const redml_lattice *models, size_t n, uint32_t height, uint32_t width, uint8_t *map,
                        redml_status status) {
    const size_t npix = (size_t)height * width;
    std::memset(map, 0, npix);
    paint_lattice_region(models, n, height, width, map, status);
    return XXH3_64bits(map, npix);
}

std::vector<uint8_t> write_lattice_section(const redml_lattice *models, size_t n, uint64_t region_hash) {
    std::vector<uint8_t> out(lattice_section_size(n), 0);
    out[0] = kLatticeLayout;
    out[1] = (uint8_t)n;
    put_u64(&out[4], region_hash);
    for (size_t i = 0; i < n; i++) {
        uint8_t *rec = &out[kLatticeSectionHead + i * kLatticeRecordSize];
        double v[kLatticeDoubles];
        lattice_model_doubles(models[i], v);
        for (size_t j = 0; j < kLatticeDoubles; j++) {
            uint64_t bits;
            std::memcpy(&bits, &v[j], 8);
            put_u64(rec + 8 * j, bits);
        }
        rec[8 * kLatticeDoubles] = (uint8_t)models[i].centring;  // then 7 reserved zero bytes
    }
    return out;
}

std::vector<redml_lattice> read_lattice_section(const uint8_t *p, size_t size, uint64_t *region_hash) {
    check(size >= kLatticeSectionHead && p[0] == kLatticeLayout, REDML_E_CORRUPT,
          "unknown lattice section layout");
    const size_t n = p[1];
    check(n >= 1 && size == lattice_section_size(n) && p[2] == 0 && p[3] == 0, REDML_E_CORRUPT,
          "lattice section has the wrong size");
    *region_hash = get_u64(p + 4);
    std::vector<redml_lattice> models;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *rec = p + kLatticeSectionHead + i * kLatticeRecordSize;
        double v[kLatticeDoubles];
        for (size_t j = 0; j < kLatticeDoubles; j++) {
            const uint64_t bits = get_u64(rec + 8 * j);
            std::memcpy(&v[j], &bits, 8);
        }
        for (size_t j = 8 * kLatticeDoubles + 1; j < kLatticeRecordSize; j++)
            check(rec[j] == 0, REDML_E_CORRUPT, "reserved lattice record bytes are not zero");
        models.push_back(lattice_model_from_doubles(v, (char)rec[8 * kLatticeDoubles]));
    }
    return models;
}

}  // namespace redml
