// lattice_chunk.h: the lattice section of a chunk (docs/format.md, "Lattice region"): the
// crystal models and footprints from which the decoder predicts the same exact region as
// the encoder, in place of the run-length mask of the discs.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "redml.h"

namespace redml {

// Section bytes: u8 layout (1), u8 n (1..255), u16 reserved (0), u64 XXH3-64 of the painted
// region (height x width bytes, 1 inside), then n records of kLatticeRecordSize bytes.
const size_t kLatticeSectionHead = 12, kLatticeRecordSize = 176;
const size_t kMaxLatticeCrystals = 255;
// The (h, k) index pairs the predictions of one region may search, all crystals together.
const double kMaxLatticeSearch = double(1u << 26);

// A record's doubles, in redml_lattice's field order: A[9], beam_x, beam_y, distance_mm,
// pixel_size_mm, wavelength_a, sensor_mu_per_mm, sensor_thickness_mm, domain_size_a,
// half_mosaicity_deg, bandwidth, d_min_a, radius (then the centring letter).
const size_t kLatticeDoubles = 21;
redml_lattice lattice_model_from_doubles(const double *v, char centring);
void lattice_model_doubles(const redml_lattice &m, double *v);

inline uint64_t lattice_section_size(size_t n) { return kLatticeSectionHead + kLatticeRecordSize * n; }

// Checks the count (1..255), each radius ([0, 1e4] pixels) and centring letter (the
// predictor checks the geometry and A): throws `status`.
void check_lattice_models(const redml_lattice *models, size_t n, redml_status status);

// ORs the exact region of the models into map (height x width, 0/1): for each crystal, the
// discs of `radius` pixels around every reflection predicted within `radius` of the frame
// (lattice.h; the same call as redml_reduce.lattice.lattice_roi). Throws `status` when a model
// cannot be predicted or passes the work limits (index pairs, predictions, painted pixels).
void paint_lattice_region(const redml_lattice *models, size_t n, uint32_t height, uint32_t width, uint8_t *map,
                          redml_status status);

// Writes the exact region of the models into map (height x width bytes: 1 inside a disc, 0
// elsewhere; paint_lattice_region) and returns its XXH3-64 (what the section stores, so that
// a decoder whose prediction differed reports it instead of decoding a wrong frame).
uint64_t lattice_region(const redml_lattice *models, size_t n, uint32_t height, uint32_t width, uint8_t *map,
                        redml_status status);

// The section's bytes for the models and the XXH3-64 of the region they paint.
std::vector<uint8_t> write_lattice_section(const redml_lattice *models, size_t n, uint64_t region_hash);

// Parses a section (its size checked against its count): the models and the stored region
// hash. Throws REDML_E_CORRUPT.
std::vector<redml_lattice> read_lattice_section(const uint8_t *p, size_t size, uint64_t *region_hash);

}  // namespace redml
