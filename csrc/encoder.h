// encoder.h: the encoder's entry for the C APIs (codec.cpp), with the one option that only
// redml_spots.h exposes: the spot finder's peaks returned with the chunk.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "redml.h"
#include "spots.h"

namespace redml {

// Spots the caller wants from the encoder: found with fp (as redml_find_spots finds them, on
// the pixels that are neither masked nor special values), their mask dilated by roi_margin
// is the exactly kept region, and their peaks come back in `peaks`.
struct SpotRequest {
    FinderParams fp;
    std::vector<Peak> peaks;
};

// Crystals whose predicted discs the chunk keeps exact, stored as their models (lattice_chunk.h).
struct LatticeRequest {
    const redml_lattice *crystals = nullptr;
    size_t n = 0;
};

// redml_encode, arguments checked; spots (optional, roi must then be NULL): see SpotRequest;
// lattice (optional): discs kept exact besides the roi or the finder's region.
void encode(const void *frame, redml_dtype dtype, uint32_t height, uint32_t width, const uint8_t *roi,
            const uint8_t *mask, const redml_params &p, SpotRequest *spots, void **out, size_t *out_size,
            const LatticeRequest *lattice = nullptr);

}  // namespace redml
