// entropy.h: shuffle + LZ4/zstd in independent blocks (the "block stream" of docs/format.md).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>
#include "redml.h"

namespace redml {

struct StreamSpec {
    int elem;            // element size in bytes (1, 2 or 4)
    redml_shuffle shuffle;
    redml_codec codec;
    int level;           // zstd level
    uint32_t block_elems;
};

// Shuffles (in place semantics: src -> dst, same size). Trailing bytes that do not form
// a whole element, and for the bit shuffle trailing elements that do not form a group of
// 8, are copied unchanged.
void byte_shuffle(const uint8_t *src, uint8_t *dst, size_t nbytes, int elem);
void byte_unshuffle(const uint8_t *src, uint8_t *dst, size_t nbytes, int elem);
void bit_shuffle(const uint8_t *src, uint8_t *dst, size_t nbytes, int elem);
void bit_unshuffle(const uint8_t *src, uint8_t *dst, size_t nbytes, int elem);

// Most bytes the block stream of raw_size bytes can take.
size_t stream_bound(size_t raw_size, const StreamSpec &spec);

// Encodes raw bytes as a block stream into dst (room for stream_bound bytes, written in
// place: no copy of the output); returns the stream's size.
size_t encode_stream(const uint8_t *raw, size_t raw_size, const StreamSpec &spec, int nthreads, uint8_t *dst);

// Decodes a block stream into exactly raw_size bytes; throws redml::Error on any mismatch.
void decode_stream(const uint8_t *stored, size_t stored_size, uint8_t *raw, size_t raw_size,
                   const StreamSpec &spec, int nthreads);

// Checks the block table of a stream against raw_size without decoding (cheap; used to
// reject absurd declared sizes before allocating).
void check_stream(const uint8_t *stored, size_t stored_size, size_t raw_size, const StreamSpec &spec);

}  // namespace redml
