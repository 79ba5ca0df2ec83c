// scratch.h: work buffers a thread keeps across calls (no allocation, zeroing or page
// faults per frame), and one rule for how much it may keep.
#pragma once

#include <cstddef>
#include <vector>

namespace redml {

// What one job's buffers (the encoder's, the spot finder's, ...) may hold on one thread
// between calls: a 4M frame's (about 16 bytes a pixel for the encoder) stay, a larger
// frame's are released after its call, so a long-running writer does not pin them.
const size_t kKeepScratchBytes = (size_t)128 << 20;
// The entropy coder's per-block buffers: a few default blocks' worth.
const size_t kKeepBlockBytes = (size_t)16 << 20;

// A buffer of at least n elements; its contents are unspecified.
template <class V>
typename V::value_type *scratch(V &v, size_t n) {
    if (v.size() < n) {
        V().swap(v);
        v.resize(n);
    }
    return v.data();
}

// Bytes the vectors hold.
template <class... V>
size_t held_bytes(const V &...v) {
    return (size_t(0) + ... + (v.capacity() * sizeof(typename V::value_type)));
}

// At scope exit, frees a job's buffers (a struct with held()) grown past `limit`.
template <class S>
struct ReleaseIfLarge {
    S &sc;
    size_t limit = kKeepScratchBytes;
    ~ReleaseIfLarge() {
        if (sc.held() > limit) sc = S();
    }
};

}  // namespace redml
