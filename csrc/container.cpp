// container.cpp: reading and writing the chunk container (docs/format.md).
#include "container.h"

#include <xxhash.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "background.h"
#include "entropy.h"
#include "error.h"
#include "lattice_chunk.h"
#include "quantize.h"

namespace redml {

namespace {

struct Writer {
    uint8_t *p;
    void u8(uint8_t v) { *p++ = v; }
    void u16(uint16_t v) { for (int i = 0; i < 2; i++) *p++ = (uint8_t)(v >> (8 * i)); }
    void u32(uint32_t v) { for (int i = 0; i < 4; i++) *p++ = (uint8_t)(v >> (8 * i)); }
    void u64(uint64_t v) { for (int i = 0; i < 8; i++) *p++ = (uint8_t)(v >> (8 * i)); }
    void f32(float v) { uint32_t u; std::memcpy(&u, &v, 4); u32(u); }
};

struct Reader {
    const uint8_t *p;
    uint8_t u8() { return *p++; }
    uint16_t u16() { uint16_t v = 0; for (int i = 0; i < 2; i++) v |= (uint16_t)(*p++ << (8 * i)); return v; }
    uint32_t u32() { uint32_t v = 0; for (int i = 0; i < 4; i++) v |= (uint32_t)*p++ << (8 * i); return v; }
    uint64_t u64() { uint64_t v = 0; for (int i = 0; i < 8; i++) v |= (uint64_t)*p++ << (8 * i); return v; }
    float f32() { uint32_t u = u32(); float v; std::memcpy(&v, &u, 4); return v; }
};

const uint8_t kMagic[4] = {'R', 'D', 'M', 'L'};

// The block table of a section, against its declared raw size (check_stream: block count,
// lengths, what each block can expand to).
void check_blocks(const ChunkHeader &h, const Section &s) {
    check_stream(s.data, s.stored_size, s.raw_size, spec_for(h, s));
}

// Every section a decoder reads, sized from the header: the model holds a mean and a step
// (float32) per tile, the exact values n_exact pixel words, the codes (one section per
// dither phase unless sparse) the other pixels, the mask's runs at most one byte a pixel.
void check_sections(const ParsedChunk &pc) {
    const ChunkHeader &h = pc.header;
    const uint64_t n = (uint64_t)h.height * h.width;
    const uint64_t tiles = TileGrid(h.height, h.width, h.tile).count();
    const uint8_t word = (uint8_t)redml_dtype_size(h.dtype);
    const Section *model = pc.find(SECTION_MODEL), *mask = pc.find(SECTION_EXACT_MASK);
    const Section *values = pc.find(SECTION_EXACT_VALUES);
    check(model != nullptr, REDML_E_CORRUPT, "chunk has no background model section");
    check(mask != nullptr && values != nullptr, REDML_E_CORRUPT, "chunk lacks the exact mask or values section");
    check(model->elem == 4 && model->raw_size == 8 * tiles, REDML_E_CORRUPT, "model section has the wrong size");
    check(mask->elem == 1 && mask->raw_size <= max_runs_bytes(n), REDML_E_CORRUPT,
          "exact mask section has the wrong size");
    check(values->elem == word && values->raw_size == h.n_exact * word, REDML_E_CORRUPT,
          "exact-values section has the wrong size");
    std::vector<const Section *> codes = pc.find_all(SECTION_BACKGROUND_CODES);
    check(codes.size() == (h.mode != REDML_MODE_SPARSE ? (size_t)REDML_PHASES : 0u), REDML_E_CORRUPT,
          "wrong number of background code sections for the mode");
    uint64_t n_codes = 0;
    for (const Section *cs : codes) {
        check(cs->elem == word && cs->raw_size % word == 0 && cs->raw_size <= n * word, REDML_E_CORRUPT,
              "background-codes section has the wrong size");
        n_codes += cs->raw_size / word;
    }
    check(codes.empty() || n_codes == n - h.n_exact, REDML_E_CORRUPT, "background code count does not match the frame");
    for (const Section *s : {values, mask, model}) check_blocks(h, *s);
    if (const Section *lattice = pc.find(SECTION_LATTICE)) {  // its count is checked when it is read
        check(lattice->elem == 1 && lattice->raw_size >= lattice_section_size(1) &&
                  lattice->raw_size <= lattice_section_size(kMaxLatticeCrystals),
              REDML_E_CORRUPT, "lattice section has the wrong size");
        check_blocks(h, *lattice);
    }
    for (const Section *cs : codes) check_blocks(h, *cs);
}

}  // namespace

size_t chunk_header_size(size_t nsections) { return kFixedHeaderSize + kSectionEntrySize * nsections + 8; }

void write_chunk_header(const ChunkHeader &h, const std::vector<Section> &sections, uint8_t *buf) {
    const size_t header_size = chunk_header_size(sections.size());
    Writer w{buf};
    for (uint8_t c : kMagic) w.u8(c);
    w.u8(h.version);
    w.u8((uint8_t)h.dtype);
    w.u8((uint8_t)h.mode);
    w.u8((uint8_t)h.codec);
    w.u8((uint8_t)h.recon);
    w.u8((uint8_t)sections.size());
    w.u16(h.tile);
    w.u32(h.height);
    w.u32(h.width);
    w.f32(h.q);
    w.f32(h.gain);
    w.f32(h.mu_min);
    w.u32(h.seed);
    w.u32(h.block_elems);
    w.u64(h.n_exact);
    w.u32((uint32_t)header_size);
    w.f32(h.read_noise);
    for (const Section &s : sections) {
        w.u16(s.type);
        w.u8(s.flags);
        w.u8((uint8_t)s.shuffle);
        w.u8(s.elem);
        w.u8(0);
        w.u16(0);
        w.u64(s.raw_size);
        w.u64(s.stored_size);
        w.u64(XXH3_64bits(s.data, s.stored_size));
    }
    w.u64(XXH3_64bits(buf, header_size - 8));
}

const Section *ParsedChunk::find(uint16_t type) const {
    for (const Section &s : sections)
        if (s.type == type) return &s;
    return nullptr;
}

std::vector<const Section *> ParsedChunk::find_all(uint16_t type) const {
    std::vector<const Section *> out;
    for (const Section &s : sections)
        if (s.type == type) out.push_back(&s);
    return out;
}

ParsedChunk parse_chunk(const uint8_t *chunk, size_t size) {
    check(chunk != nullptr, REDML_E_ARG, "no chunk given");
    check(size >= kFixedHeaderSize + 8, REDML_E_CORRUPT, "chunk shorter than its header");
    check(std::memcmp(chunk, kMagic, 4) == 0, REDML_E_CORRUPT, "not a redml chunk (bad magic)");
    Reader r{chunk + 4};
    ParsedChunk pc;
    ChunkHeader &h = pc.header;
    h.version = r.u8();
    check(h.version >= 1, REDML_E_CORRUPT, "invalid format version 0");
    check(h.version <= REDML_FORMAT_VERSION, REDML_E_VERSION,
          "chunk needs a newer redml_reduce decoder (format version above 1)");
    uint8_t dtype = r.u8(), mode = r.u8(), codec = r.u8(), recon = r.u8(), nsec = r.u8();
    h.tile = r.u16();
    h.height = r.u32();
    h.width = r.u32();
    h.q = r.f32();
    h.gain = r.f32();
    h.mu_min = r.f32();
    h.seed = r.u32();
    h.block_elems = r.u32();
    h.n_exact = r.u64();
    uint32_t header_size = r.u32();
    h.read_noise = r.f32();  // was reserved (0): old chunks read as photon counts
    size_t expect_header = kFixedHeaderSize + kSectionEntrySize * nsec + 8;
    check(header_size == expect_header && size >= expect_header, REDML_E_CORRUPT, "header size mismatch or truncated header");
    check(XXH3_64bits(chunk, expect_header - 8) == [&] { Reader t{chunk + expect_header - 8}; return t.u64(); }(),
          REDML_E_CORRUPT, "header checksum mismatch");
    // Fields are only trusted after the header checksum matched.
    check(dtype >= REDML_UINT16 && dtype <= REDML_FLOAT32, REDML_E_CORRUPT, "unknown dtype code");
    check(mode <= REDML_MODE_SPARSE, REDML_E_CORRUPT, "unknown mode");
    check(codec >= REDML_CODEC_LZ4 && codec <= REDML_CODEC_RANS, REDML_E_CORRUPT, "unknown entropy codec");
    // A read noise only comes with the mean/draw model of integrating data and with sparse
    // chunks of integrating data (their noisy background); every other chunk keeps the 0 that
    // decoders before it require, and those decoders refuse the sparse chunks that carry one.
    const bool conditional = recon == REDML_RECON_MEAN || recon == REDML_RECON_DRAW;
    check(!std::signbit(h.read_noise) &&
              (h.read_noise == 0.0f || ((conditional || mode == REDML_MODE_SPARSE) && std::isfinite(h.read_noise))),
          REDML_E_CORRUPT, "invalid read noise");
    check(redml_recon_allowed(mode, recon, dtype == REDML_FLOAT32, h.read_noise > 0), REDML_E_CORRUPT,
          "unknown reconstruction for this mode");
    h.dtype = (redml_dtype)dtype;
    h.mode = (redml_mode)mode;
    h.codec = (redml_codec)codec;
    h.recon = (redml_recon)recon;
    check(h.height >= 1 && h.width >= 1 && h.height <= kMaxSide && h.width <= kMaxSide &&
              (uint64_t)h.height * h.width <= kMaxPixels,
          REDML_E_CORRUPT, "frame shape out of range");
    check(h.tile >= 1, REDML_E_CORRUPT, "tile size is zero");
    check(h.block_elems >= 256 && h.block_elems <= (1u << 24), REDML_E_CORRUPT, "block size out of range");
    check(std::isfinite(h.q) && h.q >= 0 && std::isfinite(h.gain) && h.gain > 0 && std::isfinite(h.mu_min) &&
              h.mu_min >= 0,
          REDML_E_CORRUPT, "invalid quantization parameters");
    check(h.n_exact <= (uint64_t)h.height * h.width, REDML_E_CORRUPT, "exact pixel count exceeds the frame");
    size_t pos = expect_header;
    for (unsigned i = 0; i < nsec; i++) {
        Section s;
        s.type = r.u16();
        s.flags = r.u8();
        uint8_t shuffle = r.u8();
        s.elem = r.u8();
        uint8_t z8 = r.u8();
        uint16_t z16 = r.u16();
        s.raw_size = r.u64();
        s.stored_size = r.u64();
        uint64_t sum = r.u64();
        check(z8 == 0 && z16 == 0, REDML_E_CORRUPT, "reserved section field is not zero");
        check(shuffle <= REDML_SHUFFLE_BIT, REDML_E_CORRUPT, "unknown shuffle");
        check(s.elem == 1 || s.elem == 2 || s.elem == 4, REDML_E_CORRUPT, "invalid element size");
        s.shuffle = (redml_shuffle)shuffle;
        check(s.stored_size <= size - pos, REDML_E_CORRUPT, "section extends past the end of the chunk");
        s.data = chunk + pos;
        pos += s.stored_size;
        check(XXH3_64bits(s.data, s.stored_size) == sum, REDML_E_CORRUPT, "section checksum mismatch");
        bool known = s.type >= SECTION_MODEL && s.type <= SECTION_LATTICE;
        if (!known) {
            check(!(s.flags & SECTION_REQUIRED), REDML_E_VERSION, "chunk has a required section this decoder does not know");
            continue;
        }
        check(s.type == SECTION_BACKGROUND_CODES || pc.find(s.type) == nullptr, REDML_E_CORRUPT, "duplicate section");
        pc.sections.push_back(s);
    }
    check(pos == size, REDML_E_CORRUPT, "chunk has trailing bytes");
    check_sections(pc);
    return pc;
}

}  // namespace redml
