// container.h: the chunk container of docs/format.md: fixed header, section table,
// checksums. Knows nothing about pixels.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>
#include "entropy.h"
#include "redml.h"

namespace redml {

enum SectionType : uint16_t {
    SECTION_MODEL = 1,             // per-tile mean and step, float32
    SECTION_EXACT_MASK = 2,        // run lengths of the exact-pixel map, LEB128
    SECTION_EXACT_VALUES = 3,      // exact pixels: zigzag residuals (ints) or raw bits (floats)
    SECTION_BACKGROUND_CODES = 4,  // background symbols, one section per dither phase
    SECTION_LATTICE = 5,           // crystal models whose predicted discs are exact (lattice_chunk.h)
};

const uint8_t SECTION_REQUIRED = 1;

struct ChunkHeader {
    uint8_t version = REDML_FORMAT_VERSION;
    redml_dtype dtype = REDML_UINT16;
    redml_mode mode = REDML_MODE_LOSSLESS;
    redml_codec codec = REDML_CODEC_ZSTD;
    redml_recon recon = REDML_RECON_DITHER;
    uint16_t tile = 32;
    uint32_t height = 0, width = 0;
    float q = 0, gain = 1, mu_min = 1;
    uint32_t seed = 0, block_elems = 0;
    uint64_t n_exact = 0;
    float read_noise = 0;  // the mean/draw model of integrating data; 0 elsewhere
};

struct Section {
    uint16_t type = 0;
    uint8_t flags = SECTION_REQUIRED;
    redml_shuffle shuffle = REDML_SHUFFLE_NONE;
    uint8_t elem = 1;
    uint64_t raw_size = 0;
    const uint8_t *data = nullptr;  // stored (entropy-coded) bytes
    uint64_t stored_size = 0;
};

const size_t kFixedHeaderSize = 56, kSectionEntrySize = 32;
const uint32_t kMaxSide = 1u << 20;
const uint64_t kMaxPixels = 1ull << 27;
// Largest background tile the encoder takes: it gathers a tile's pixels in one buffer of
// tile^2 values per thread (8 MB at 1024). Chunks of larger tiles (up to the header's
// 65535) still decode.
const uint32_t kMaxTile = 1024;

// Bytes of a chunk's header and section table (its sections' stored bytes follow).
size_t chunk_header_size(size_t nsections);
// Writes the header and section table (checksums computed here) at buf; the sections'
// stored bytes must already follow it there, in order (the encoder writes them in place).
void write_chunk_header(const ChunkHeader &h, const std::vector<Section> &sections, uint8_t *buf);

// Parses and validates a chunk: magic, version, field ranges, checksums, and every known
// section against the header (sizes from its shape, dtype, tile and mode; block tables
// against the sizes), so that a caller may allocate the frame once this returns. Section
// data pointers refer into `chunk`. Unknown optional sections are skipped.
struct ParsedChunk {
    ChunkHeader header;
    std::vector<Section> sections;
    const Section *find(uint16_t type) const;
    std::vector<const Section *> find_all(uint16_t type) const;
};
ParsedChunk parse_chunk(const uint8_t *chunk, size_t size);

// How a section's stored bytes are entropy-coded: its element size and shuffle, the chunk's
// codec and block size.
inline StreamSpec spec_for(const ChunkHeader &h, const Section &s) {
    return StreamSpec{s.elem, s.shuffle, h.codec, 0, h.block_elems};
}

// Largest exact-mask encoding of an n-pixel frame: at most n + 1 runs (the first may be
// empty), and a run of r >= 1 pixels takes at most r bytes (one byte per 7 bits).
inline uint64_t max_runs_bytes(uint64_t n) { return n + 1; }

}  // namespace redml
