// entropy_rans.cpp: decoder of htscodecs' order-0 rANS Nx16 streams with 32 interleaved
// states (written by rans_compress_to_4x16 with RANS_ORDER_X32), the form of every rANS
// plane over 1000 bytes. The library's decoder runs CPUID three times per call (a trap
// to the hypervisor on virtual machines, about a tenth of a frame's decode), decodes one
// stream at a time (a chain of dependent gathers) and leaves the planes to a second pass;
// this one decodes the same bytes with the tables and loops below (portable, AVX2 and
// AVX-512 builds, identical output, even on corrupt input), several streams in turn, and
// with AVX-512 assembles the elements of a byte-shuffled block in its registers.
//
// The stream: u8 flags (0x04), the size as a big-endian base-128 varint, the frequency
// table (the alphabet, run-length coded, then each symbol's frequency as a varint; the
// total a power of two up to 4096, scaled to 4096), the 32 states as u32 little-endian,
// then the 16-bit renormalisation words, read by state 0, 1, ..., 31, 0, 1, ... The
// symbol at position i is decoded by state i % 32; the last n % 32 symbols are read from
// the final states without an update.
#include "entropy_rans.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#ifdef __x86_64__
#include <immintrin.h>
#endif

#include "error.h"
#include "pixels.h"
#include "scratch.h"

namespace redml {

namespace {

const int kStates = 32;
const unsigned kScaleBits = 12;
const uint32_t kTotal = 1u << kScaleBits, kSlotMask = kTotal - 1;
const uint32_t kLow = 1u << 15;  // states lie in [kLow, 2^31) after each renormalisation
const uint8_t kFlagsO0X32 = 0x04;
// Bytes a group of 32 symbols may read (one word per state) plus what the SIMD loads read
// past it: where fewer remain, the checked loop finishes.
const size_t kGroupBytes = 2 * kStates + 32;

std::atomic<int> forced_simd{0};

// htscodecs' var_get_u32: 7-bit groups, most significant first, high bit = more follow.
bool get_varint(const uint8_t *&p, const uint8_t *end, uint32_t *v) {
    uint64_t x = 0;
    for (int k = 0; k < 5 && p < end; k++) {
        const uint8_t c = *p++;
        x = (x << 7) | (c & 0x7f);
        if (!(c & 0x80)) {
            *v = (uint32_t)x;
            return x <= UINT32_MAX;
        }
    }
    return false;
}

// The alphabet: a symbol, and after a symbol whose successor follows, the count of further
// consecutive symbols; a 0 ends it (htscodecs' decode_alphabet).
bool read_alphabet(const uint8_t *&p, const uint8_t *end, bool *present) {
    if (p >= end) return false;
    unsigned j = *p++, run = 0;
    do {
        present[j] = true;
        if (run) {
            run--;
            if (++j > 255) return false;
            continue;
        }
        if (p >= end) return false;
        const unsigned next = *p++;
        if (next == j + 1) {
            if (p >= end) return false;
            run = *p++;
        }
        j = next;
    } while (j);
    return true;
}

// The decoding table of one stream: per slot (state mod 4096), its symbol in bits 0-7,
// the slot's offset in the symbol's range in bits 8-19, the symbol's frequency in 20-31.
struct Table {
    uint32_t slot[kTotal];
    int single = -1;  // the symbol of a one-symbol alphabet (frequency 4096), else -1
};

// Reads the frequency table into t; false if it is not one this decoder takes (the caller
// leaves the stream to htscodecs).
bool read_table(const uint8_t *&p, const uint8_t *end, Table &t) {
    bool present[256] = {};
    uint32_t freq[256] = {}, total = 0;
    if (!read_alphabet(p, end, present)) return false;
    for (int s = 0; s < 256; s++) {
        if (!present[s]) continue;
        if (!get_varint(p, end, &freq[s]) || freq[s] > kTotal) return false;
        total += freq[s];
    }
    if (total == 0 || total > kTotal || (total & (total - 1))) return false;  // not a power of two up to 4096
    const unsigned shift = __builtin_ctz(kTotal / total);
    uint32_t start = 0;
    for (int s = 0; s < 256; s++) {
        const uint32_t f = freq[s] << shift;
        if (f == kTotal) t.single = s;
        for (uint32_t k = 0; k < f && f < kTotal; k++) t.slot[start + k] = (uint32_t)s | (k << 8) | (f << 20);
        start += f;
    }
    return true;
}

// One stream being decoded: its table, states, input and output.
struct Stream {
    Table t;
    alignas(64) uint32_t x[kStates];
    const uint8_t *p, *end;
    uint8_t *dst;
    size_t n, i = 0;  // symbols, and those decoded so far (a multiple of 32)
    size_t body() const { return n & ~(size_t)(kStates - 1); }
    // Whether the unchecked loops may decode the next group.
    bool roomy() const { return i < body() && (size_t)(end - p) >= kGroupBytes; }
};

// Reads the stream's header, table and states; false if it is not the order-0 32-state
// form with size n.
bool open_stream(Stream &s, const uint8_t *src, size_t len, uint8_t *dst, size_t n) {
    const uint8_t *p = src, *end = src + len;
    uint32_t size;
    if (len == 0 || *p++ != kFlagsO0X32 || !get_varint(p, end, &size) || size != n) return false;
    s.t.single = -1;
    if (!read_table(p, end, s.t)) return false;
    check(end - p >= 4 * kStates, REDML_E_CORRUPT, "rANS stream truncated");
    for (int z = 0; z < kStates; z++, p += 4) {
        s.x[z] = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
        check(s.x[z] >= kLow, REDML_E_CORRUPT, "rANS state out of range");
    }
    s.p = p;
    s.end = end;
    s.dst = dst;
    s.n = n;
    s.i = 0;
    return true;
}

// One symbol of state x: its byte, and x advanced past it.
REDML_ALWAYS_INLINE uint8_t step(const Table &t, uint32_t &x) {
    const uint32_t e = t.slot[x & kSlotMask];
    x = (e >> 20) * (x >> kScaleBits) + ((e >> 8) & kSlotMask);
    return (uint8_t)e;
}

// The rest of a stream after the unchecked loops: groups of 32 symbols with every
// renormalisation read checked against the end (the last bytes; corrupt streams), then
// the last n % 32 symbols, read from the final states.
void finish(Stream &s) {
    const size_t body = s.body();
    uint32_t *x = s.x;
    for (; s.i < body; s.i += kStates)
        for (int z = 0; z < kStates; z++) {
            s.dst[s.i + z] = step(s.t, x[z]);
            if (x[z] < kLow) {
                check(s.end - s.p >= 2, REDML_E_CORRUPT, "rANS stream truncated");
                x[z] = (x[z] << 16) | (uint32_t)s.p[0] | ((uint32_t)s.p[1] << 8);
                s.p += 2;
            }
        }
    for (size_t z = 0; z < s.n - body; z++) s.dst[body + z] = (uint8_t)s.t.slot[x[z] & kSlotMask];
}

// The unchecked loops decode K streams together (independent dependency chains, K times
// the work in flight), one group of 32 symbols of each in turn, while every one has room.
template <int K>
void decode_portable(Stream *const *s) {
    while (true) {
        for (int k = 0; k < K; k++)
            if (!s[k]->roomy()) return;
        for (int k = 0; k < K; k++) {
            Stream &st = *s[k];
            for (int z = 0; z < kStates; z++) {
                st.dst[st.i + z] = step(st.t, st.x[z]);
                const uint32_t w = (uint32_t)st.p[0] | ((uint32_t)st.p[1] << 8);
                const bool renorm = st.x[z] < kLow;
                st.x[z] = renorm ? (st.x[z] << 16) | w : st.x[z];
                st.p += renorm ? 2 : 0;
            }
            st.i += kStates;
        }
    }
}

#ifdef REDML_AVX2_DISPATCH
// Lane j of entry m: the index, among the words a group of 8 states reads, of the word
// state j reads when the states of mask m renormalise (the set bits of m below j).
struct ExpandTable {
    alignas(32) int32_t idx[256][8];
    ExpandTable() {
        for (int m = 0; m < 256; m++)
            for (int j = 0; j < 8; j++) idx[m][j] = __builtin_popcount(m & ((1 << j) - 1));
    }
};
const ExpandTable kExpand;

// One vector of 8 states: advanced past their symbols (returned in the low byte of each
// lane), then renormalised from p.
REDML_TARGET_AVX2 inline __m256i step8_avx2(const Table &t, __m256i &x, const uint8_t *&p) {
    const __m256i e = _mm256_i32gather_epi32((const int *)t.slot, _mm256_and_si256(x, _mm256_set1_epi32(kSlotMask)), 4);
    x = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_srli_epi32(e, 20), _mm256_srli_epi32(x, kScaleBits)),
                         _mm256_and_si256(_mm256_srli_epi32(e, 8), _mm256_set1_epi32(kSlotMask)));
    const __m256i renorm = _mm256_cmpeq_epi32(_mm256_min_epu32(x, _mm256_set1_epi32(kLow - 1)), x);  // x < kLow
    const unsigned m = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(renorm));
    const __m256i words = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    const __m256i mine = _mm256_permutevar8x32_epi32(words, _mm256_load_si256((const __m256i *)kExpand.idx[m]));
    x = _mm256_blendv_epi8(x, _mm256_or_si256(_mm256_slli_epi32(x, 16), mine), renorm);
    p += 2 * __builtin_popcount(m);
    return _mm256_and_si256(e, _mm256_set1_epi32(0xff));
}

// One group of 32 symbols of a stream whose states are r[0..4).
REDML_TARGET_AVX2 inline void group_avx2(Stream &s, __m256i *r) {
    const __m256i s0 = step8_avx2(s.t, r[0], s.p), s1 = step8_avx2(s.t, r[1], s.p);
    const __m256i s2 = step8_avx2(s.t, r[2], s.p), s3 = step8_avx2(s.t, r[3], s.p);
    // 32 lanes of bytes to 32 bytes: the packs interleave the 128-bit halves, the
    // permutation puts the 4-byte groups back in state order
    const __m256i bytes = _mm256_packus_epi16(_mm256_packus_epi32(s0, s1), _mm256_packus_epi32(s2, s3));
    _mm256_storeu_si256((__m256i *)(s.dst + s.i),
                        _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    s.i += kStates;
}

template <int K>
REDML_TARGET_AVX2 void decode_avx2(Stream *const *s) {
    __m256i r[K][4];
    for (int k = 0; k < K; k++)
        for (int v = 0; v < 4; v++) r[k][v] = _mm256_load_si256((const __m256i *)(s[k]->x + 8 * v));
    while (true) {
        bool room = true;
        for (int k = 0; k < K; k++) room &= s[k]->roomy();
        if (!room) break;
        for (int k = 0; k < K; k++) group_avx2(*s[k], r[k]);
    }
    for (int k = 0; k < K; k++)
        for (int v = 0; v < 4; v++) _mm256_store_si256((__m256i *)(s[k]->x + 8 * v), r[k][v]);
}
#endif

#ifdef REDML_AVX512_DISPATCH
// 16 states: advanced past their symbols (returned in the low byte of each lane), then
// renormalised from p.
REDML_TARGET_AVX512 inline __m512i step16_avx512(const Table &t, __m512i &x, const uint8_t *&p) {
    const __m512i e = _mm512_i32gather_epi32(_mm512_and_si512(x, _mm512_set1_epi32(kSlotMask)), (const void *)t.slot, 4);
    x = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_srli_epi32(e, 20), _mm512_srli_epi32(x, kScaleBits)),
                         _mm512_and_si512(_mm512_srli_epi32(e, 8), _mm512_set1_epi32(kSlotMask)));
    const __mmask16 renorm = _mm512_cmplt_epu32_mask(x, _mm512_set1_epi32(kLow));
    const __m512i words = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    // the k-th word read goes to the k-th renormalising state
    x = _mm512_mask_or_epi32(x, renorm, _mm512_slli_epi32(x, 16), _mm512_maskz_expand_epi32(renorm, words));
    p += 2 * __builtin_popcount((unsigned)renorm);
    return _mm512_and_si512(e, _mm512_set1_epi32(0xff));
}

template <int K>
REDML_TARGET_AVX512 void decode_avx512(Stream *const *s) {
    __m512i r[K][2];
    for (int k = 0; k < K; k++)
        for (int v = 0; v < 2; v++) r[k][v] = _mm512_load_si512(s[k]->x + 16 * v);
    while (true) {
        bool room = true;
        for (int k = 0; k < K; k++) room &= s[k]->roomy();
        if (!room) break;
        for (int k = 0; k < K; k++) {
            Stream &st = *s[k];
            for (int v = 0; v < 2; v++)
                _mm_storeu_si128((__m128i *)(st.dst + st.i + 16 * v), _mm512_cvtepi32_epi8(step16_avx512(st.t, r[k][v], st.p)));
            st.i += kStates;
        }
    }
    for (int k = 0; k < K; k++)
        for (int v = 0; v < 2; v++) _mm512_store_si512(s[k]->x + 16 * v, r[k][v]);
}

// The elements of B blocks of E byte planes (s[b][k]: plane k's stream of block b,
// nullptr where the plane is constant, its bytes in fill[b] at byte k): each 32-bit lane
// assembles byte k of its element from plane k, so the elements are stored without an
// unshuffle pass; the blocks' streams are independent chains, decoded in turn. Groups of
// 32 elements from element i on while every block has them and every stream has room;
// returns where it stopped.
template <int E, int B>
REDML_TARGET_AVX512 size_t elements_avx512(Stream *const (*s)[kRansMaxPlanes], const uint32_t *fill,
                                           uint8_t *const *dst, size_t body, size_t i) {
    __m512i r[B][E][2];
    for (int b = 0; b < B; b++)
        for (int k = 0; k < E; k++)
            for (int v = 0; v < 2 && s[b][k]; v++) r[b][k][v] = _mm512_load_si512(s[b][k]->x + 16 * v);
    for (; i < body; i += kStates) {
        bool room = true;
        for (int b = 0; b < B; b++)
            for (int k = 0; k < E; k++) room &= !s[b][k] || (size_t)(s[b][k]->end - s[b][k]->p) >= kGroupBytes;
        if (!room) break;
        for (int v = 0; v < 2; v++)
            for (int b = 0; b < B; b++) {
                __m512i el = _mm512_set1_epi32((int)fill[b]);
                for (int k = 0; k < E; k++)
                    if (s[b][k])
                        el = _mm512_or_si512(el, _mm512_slli_epi32(step16_avx512(s[b][k]->t, r[b][k][v], s[b][k]->p), 8 * k));
                uint8_t *d = dst[b] + (i + 16 * v) * E;
                if (E == 1) _mm_storeu_si128((__m128i *)d, _mm512_cvtepi32_epi8(el));
                else if (E == 2) _mm256_storeu_si256((__m256i *)d, _mm512_cvtepi32_epi16(el));
                else _mm512_storeu_si512(d, el);
            }
    }
    for (int b = 0; b < B; b++)
        for (int k = 0; k < E; k++)
            for (int v = 0; v < 2 && s[b][k]; v++) _mm512_store_si512(s[b][k]->x + 16 * v, r[b][k][v]);
    return i;
}

template <int E>
size_t elements_dispatch(Stream *const (*s)[kRansMaxPlanes], const uint32_t *fill, uint8_t *const *dst, size_t body,
                         size_t i, int blocks) {
    return blocks == 2 ? elements_avx512<E, 2>(s, fill, dst, body, i) : elements_avx512<E, 1>(s, fill, dst, body, i);
}
#endif

// The unchecked loops of the best build the CPU has (or the one rans_force_simd asks
// for) over K streams together.
template <int K>
void decode_fast(Stream *const *s) {
    const int forced = forced_simd.load(std::memory_order_relaxed);
#ifdef REDML_AVX512_DISPATCH
    if ((forced == 0 || forced == 3) && cpu_has_avx512()) return decode_avx512<K>(s);
#endif
#ifdef REDML_AVX2_DISPATCH
    if ((forced == 0 || forced >= 2) && cpu_has_avx2()) return decode_avx2<K>(s);
#endif
    decode_portable<K>(s);
}

// Streams of a one-symbol alphabet: the symbol n times (every state keeps its value).
bool fill_single(Stream &s) {
    if (s.t.single < 0) return false;
    std::memset(s.dst, s.t.single, s.n);
    s.i = s.body();
    return true;
}

bool avx512_allowed() {
#ifdef REDML_AVX512_DISPATCH
    const int forced = forced_simd.load(std::memory_order_relaxed);
    return (forced == 0 || forced == 3) && cpu_has_avx512();
#else
    return false;
#endif
}

// Opens the rANS streams of planes[0..count) into streams[]; false if one is not of the form.
bool open_planes(const RansPlane *planes, int count, Stream *streams, Stream **open) {
    for (int k = 0; k < count; k++) {
        open[k] = nullptr;
        if (!planes[k].src) continue;
        if (!open_stream(streams[k], planes[k].src, planes[k].len, planes[k].dst, planes[k].n)) return false;
        open[k] = &streams[k];
    }
    return true;
}

// A thread's streams (16 KB tables each: not on a pool thread's stack) and buffers, found
// once per call (each thread_local access in a shared library is a call).
struct Work {
    Stream streams[kRansMaxBlocks * kRansMaxPlanes];
    std::vector<uint8_t> rest[kRansMaxPlanes];  // finish_block's planes
};
Work &work() {
    thread_local Work w;
    return w;
}

}  // namespace

void rans_force_simd(int level) { forced_simd.store(level, std::memory_order_relaxed); }

unsigned rans_decode_o0x32(const RansPlane *planes, int count) {
    check(count <= kRansMaxPlanes, REDML_E_ARG, "too many rANS planes");
    // Without AVX2 the library's SSE4.1 build is the faster one (the portable loop here is
    // its reference, run when a test asks for it).
    if (forced_simd.load(std::memory_order_relaxed) == 0 && !cpu_has_avx2()) return 0;
    Stream *streams = work().streams;
    Stream *run[kRansMaxPlanes];
    unsigned decoded = 0;
    int k = 0;
    for (int j = 0; j < count; j++) {
        const RansPlane &pl = planes[j];
        if (!open_stream(streams[j], pl.src, pl.len, pl.dst, pl.n)) continue;
        decoded |= 1u << j;
        if (!fill_single(streams[j])) run[k++] = &streams[j];
    }
    switch (k) {  // together, then each to its end
        case 4: decode_fast<4>(run); break;
        case 3: decode_fast<3>(run); break;
        case 2: decode_fast<2>(run); break;
        default: break;
    }
    for (int j = 0; j < k; j++) {
        decode_fast<1>(run + j);
        finish(*run[j]);
    }
    return decoded;
}

#ifdef REDML_AVX512_DISPATCH
namespace {

// Block b's streams opened into s (the constant planes and one-symbol streams: nullptr,
// their bytes in fill and bytes); false if a stream is not of the form.
bool open_block(const RansBlock &blk, int elem, Stream *streams, Stream **s, uint32_t *fill, uint8_t *bytes) {
    if (!open_planes(blk.planes, elem, streams, s)) return false;
    *fill = 0;
    for (int k = 0; k < elem; k++) {
        bytes[k] = blk.planes[k].fill;
        if (s[k] && s[k]->t.single >= 0) {
            bytes[k] = (uint8_t)s[k]->t.single;
            s[k] = nullptr;
        }
        if (!s[k]) *fill |= (uint32_t)bytes[k] << (8 * k);
    }
    return true;
}

// The elements of a block from `done` on, plane by plane into per-plane buffers (a stream
// near its end; one whose symbols take few bits can have many left), then into place.
void finish_block(const RansBlock &blk, int elem, Stream *const *s, const uint8_t *bytes, size_t done,
                  std::vector<uint8_t> *rest) {
    const size_t left = blk.n - done;
    for (int k = 0; k < elem; k++) {
        if (!s[k]) continue;
        Stream &st = *s[k];
        st.dst = scratch(rest[k], left);  // the stream rebased: its symbols from `done` on
        st.n = left;
        st.i = 0;
        decode_fast<1>(&s[k]);
        finish(st);
    }
    for (size_t j = 0; j < left; j++)
        for (int k = 0; k < elem; k++) blk.dst[(done + j) * elem + k] = s[k] ? rest[k][j] : bytes[k];
}

}  // namespace
#endif

bool rans_decode_elements(const RansBlock *blocks, int count, int elem) {
#ifdef REDML_AVX512_DISPATCH
    if (!avx512_allowed() || !(elem == 1 || elem == 2 || elem == 4) || count < 1 || count > kRansMaxBlocks)
        return false;
    Work &w = work();
    Stream *s[kRansMaxBlocks][kRansMaxPlanes];
    uint32_t fill[kRansMaxBlocks];
    uint8_t bytes[kRansMaxBlocks][kRansMaxPlanes];
    uint8_t *dst[kRansMaxBlocks];
    size_t body = SIZE_MAX;
    for (int b = 0; b < count; b++) {
        if (!open_block(blocks[b], elem, w.streams + b * kRansMaxPlanes, s[b], &fill[b], bytes[b])) return false;
        dst[b] = blocks[b].dst;
        body = std::min(body, blocks[b].n & ~(size_t)(kStates - 1));
    }
    auto run = [&](int b0, int nb, size_t bd, size_t i) {  // blocks [b0, b0 + nb) from element i on
        return elem == 1   ? elements_dispatch<1>(s + b0, fill + b0, dst + b0, bd, i, nb)
               : elem == 2 ? elements_dispatch<2>(s + b0, fill + b0, dst + b0, bd, i, nb)
                           : elements_dispatch<4>(s + b0, fill + b0, dst + b0, bd, i, nb);
    };
    const size_t together = run(0, count, body, 0);  // all blocks in turn, then each alone
    for (int b = 0; b < count; b++) {
        const size_t done = count == 1 ? together : run(b, 1, blocks[b].n & ~(size_t)(kStates - 1), together);
        finish_block(blocks[b], elem, s[b], bytes[b], done, w.rest);
    }
    for (std::vector<uint8_t> &r : w.rest)  // a huge block's: not kept (scratch.h)
        if (r.capacity() > kKeepBlockBytes) std::vector<uint8_t>().swap(r);
    return true;
#else
    (void)blocks, (void)count, (void)elem;
    return false;
#endif
}

}  // namespace redml
