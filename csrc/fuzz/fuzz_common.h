// fuzz_common.h: helpers shared by the libFuzzer targets (csrc/fuzz/*.cpp).
//
// Random mutations almost never keep the XXH3 checksums of a chunk valid, so a fuzzer fed
// only with raw bytes would spend its time in the checksum check. Each target therefore
// runs an input twice: as given (the checksum path), and with every checksum the input
// reaches recomputed (docs/format.md: section checksums, then the header checksum), which
// lets mutated headers, section tables and payloads reach the decoder proper.
#pragma once
#include <xxhash.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "redml.h"

extern "C" const void *H5PLget_plugin_info(void);

namespace fuzz {

inline uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}
inline void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

// Recomputes the section checksums and the header checksum of a chunk in place, as far
// as the bytes go. Returns false when nothing could be repaired (not a chunk).
inline bool repair_checksums(std::vector<uint8_t> &c) {
    const size_t kFixed = 56, kEntry = 32;
    if (c.size() < kFixed + 8 || std::memcmp(c.data(), "RDML", 4) != 0) return false;
    size_t nsec = c[9], hsize = kFixed + kEntry * nsec + 8;
    if (c.size() < hsize) return false;
    size_t pos = hsize;
    for (size_t i = 0; i < nsec; i++) {
        uint8_t *e = c.data() + kFixed + kEntry * i;
        uint64_t stored = get_u64(e + 16);
        if (stored > c.size() - pos) break;
        put_u64(e + 24, XXH3_64bits(c.data() + pos, stored));
        pos += stored;
    }
    put_u64(c.data() + hsize - 8, XXH3_64bits(c.data(), hsize - 8));
    return true;
}

// Frames larger than this are not decoded by the harnesses (the decoder allows 2^27
// pixels; the fuzzer's memory limit does not). REDML_FUZZ_MAX_PIXELS overrides it.
inline size_t max_pixels() {
    static size_t v = [] {
        const char *e = std::getenv("REDML_FUZZ_MAX_PIXELS");
        long long n = e ? std::atoll(e) : 0;
        return n > 0 ? (size_t)n : (size_t)1 << 18;
    }();
    return v;
}

// A harness-detected violation of the decoder's contract: abort, so libFuzzer records
// the input as a crash.
#define FUZZ_ASSERT(cond)                                                                 \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            std::fprintf(stderr, "fuzz assertion failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
            std::abort();                                                                 \
        }                                                                                 \
    } while (0)

// ---- the HDF5 filter entry point, called the way HDF5 calls it ----

// The layout of HDF5's H5Z_class2_t, as in csrc/h5filter.cpp.
typedef size_t (*H5Z_func_t)(unsigned, size_t, const unsigned[], size_t, size_t *, void **);
struct H5Z_class2_t {
    int version;
    int id;
    unsigned encoder_present, decoder_present;
    const char *name;
    void *can_apply, *set_local;
    H5Z_func_t filter;
};
const unsigned kReverse = 0x0100;  // H5Z_FLAG_REVERSE: decode

inline H5Z_func_t filter_fn() {
    static H5Z_func_t fn = [] {
        const H5Z_class2_t *c = (const H5Z_class2_t *)H5PLget_plugin_info();
        FUZZ_ASSERT(c && c->version == 1 && c->id == REDML_H5_FILTER_ID && c->filter);
        return c->filter;
    }();
    return fn;
}

// Calls the filter callback on a malloc'ed copy of `bytes` (nbytes valid, `extra` garbage
// bytes after them, as HDF5 may hand over a larger buffer). The callback owns the buffer:
// on success it frees it and returns another. Returns the output; *ok = success.
inline std::vector<uint8_t> call_filter(unsigned flags, size_t n, const unsigned *cd, const uint8_t *bytes,
                                        size_t nbytes, size_t extra, bool *ok) {
    size_t alloc = nbytes + extra;
    uint8_t *buf = (uint8_t *)std::malloc(alloc ? alloc : 1);
    FUZZ_ASSERT(buf);
    if (nbytes) std::memcpy(buf, bytes, nbytes);
    for (size_t i = nbytes; i < alloc; i++) buf[i] = (uint8_t)(0x5A ^ i);
    void *b = buf;
    size_t buf_size = alloc;
    size_t r = filter_fn()(flags, n, cd, nbytes, &buf_size, &b);
    std::vector<uint8_t> out;
    if (r == 0) {
        FUZZ_ASSERT(b == buf);  // on failure the input buffer stays with the caller
        *ok = false;
    } else {
        FUZZ_ASSERT(r <= buf_size);
        out.assign((uint8_t *)b, (uint8_t *)b + r);
        *ok = true;
    }
    std::free(b);
    return out;
}

inline unsigned float_bits(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}

}  // namespace fuzz
