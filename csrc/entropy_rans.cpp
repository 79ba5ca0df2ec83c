// entropy_rans.cpp: decoder of htscodecs' order-0 rANS Nx16 streams with 32 interleaved
// states (written by rans_compress_to_4x16 with RANS_ORDER_X32), the form of every rANS
// plane over 1000 bytes. The library's decoder runs CPUID three times per call (a trap
// to the hypervisor on virtual machines, about a tenth of a frame's decode), decodes one
// stream at a time (a chain of dependent gathers) and leaves the planes to a second pass;
// this one decodes the same bytes with the tables and loops below (portable, AVX2 and
// AVX-512 builds, identical output, even on corrupt input), several streams in turn, and
// with AVX-512 assembles the elements of a byte-shuffled block in its registers. The
// encoder of the same streams is at the end of the file.
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
#include <cstdint>
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
    const __m256i mine = _mm256_permutevar8x32_epi32(words, _mm256_loadu_si256((const __m256i *)kExpand.idx[m]));
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
        for (int v = 0; v < 4; v++) r[k][v] = _mm256_loadu_si256((const __m256i *)(s[k]->x + 8 * v));
    while (true) {
        bool room = true;
        for (int k = 0; k < K; k++) room &= s[k]->roomy();
        if (!room) break;
        for (int k = 0; k < K; k++) group_avx2(*s[k], r[k]);
    }
    for (int k = 0; k < K; k++)
        for (int v = 0; v < 4; v++) _mm256_storeu_si256((__m256i *)(s[k]->x + 8 * v), r[k][v]);
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
        for (int v = 0; v < 2; v++) r[k][v] = _mm512_loadu_si512(s[k]->x + 16 * v);
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
        for (int v = 0; v < 2; v++) _mm512_storeu_si512(s[k]->x + 16 * v, r[k][v]);
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
            for (int v = 0; v < 2 && s[b][k]; v++) r[b][k][v] = _mm512_loadu_si512(s[b][k]->x + 16 * v);
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
            for (int v = 0; v < 2 && s[b][k]; v++) _mm512_storeu_si512(s[b][k]->x + 16 * v, r[b][k][v]);
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
    const int level = simd_level();
#ifdef REDML_AVX512_DISPATCH
    if (level == 3) return decode_avx512<K>(s);
#endif
#ifdef REDML_AVX2_DISPATCH
    if (level >= 2) return decode_avx2<K>(s);
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
    return simd_level() == 3;
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

void rans_force_simd(int level) { forced_simd_level().store(level, std::memory_order_relaxed); }

unsigned rans_decode_o0x32(const RansPlane *planes, int count) {
    check(count <= kRansMaxPlanes, REDML_E_ARG, "too many rANS planes");
    // Without AVX2 the library's SSE4.1 build is the faster one (the portable loop here is
    // its reference, run when a test asks for it).
    if (forced_simd_level().load(std::memory_order_relaxed) == 0 && !cpu_has_avx2()) return 0;
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


// ---- the encoder ----
#ifdef REDML_AVX512_DISPATCH
#define REDML_IF_AVX512(cond) (cond)
#else
#define REDML_IF_AVX512(cond) false
#endif
#ifdef REDML_AVX2_DISPATCH
#define REDML_IF_AVX2(cond) (cond)
#else
#define REDML_IF_AVX2(cond) false
#endif

// It writes the streams htscodecs writes (its frequency normalisation, table header, state
// and word order), byte for byte, so chunks do not change with the coder that wrote them.
// The states encode the symbols backwards (the decoder reads forwards): state i % 32 takes
// symbol i, the last n % 32 symbols first, then groups of 32 from the end, states 31 down
// to 0; a state at or above freq << 19 first moves its low 16 bits out, words written
// downwards from the top of a buffer, so they end up in the order the decoder reads them.
namespace {

const uint8_t kFlagsCat = 0x20;  // htscodecs' RANS_ORDER_CAT: the bytes stored as they are

// htscodecs' normalise_freq, step for step (the table is part of the stream): the counts
// F of the present symbols, summing to size, scaled to sum to tot, each kept at 1 or more;
// the largest count (the first of equal ones) takes up the rounding where it can (the
// second pass scales the first pass's counts), else the others give up theirs in order.
void normalise(uint32_t *F, uint32_t size, uint32_t tot) {
    for (int pass = 0; size != 0; pass++) {
        const uint64_t tr = ((uint64_t)tot << 31) / size + ((uint64_t)1 << 30) / size;
        uint32_t sum = 0;
        int M = 0;
        for (int j = 0, largest = -1; j < 256; j++) {
            if (!F[j]) continue;
            if (largest < (int64_t)F[j]) largest = (int)F[j], M = j;
            F[j] = std::max<uint32_t>(1, (uint32_t)((F[j] * tr) >> 31));
            sum += F[j];
        }
        int64_t adjust = (int64_t)tot - sum;
        if (adjust >= 0) {
            F[M] += (uint32_t)adjust;
            return;
        }
        if (F[M] > -adjust && (pass == 1 || F[M] / 2 >= -adjust)) {
            F[M] += (uint32_t)adjust;
            return;
        }
        if (pass == 0) {
            size = sum;
            continue;
        }
        adjust += F[M] - 1;
        F[M] = 1;
        for (int j = 0; adjust && j < 256; j++) {
            if (F[j] < 2) continue;
            const int64_t m = F[j] > -adjust ? adjust : 1 - (int64_t)F[j];
            F[j] = (uint32_t)(F[j] + m);
            adjust -= m;
        }
        return;
    }
}

// htscodecs' var_put_u32: 7-bit groups, most significant first, high bit = more follow.
uint8_t *put_varint(uint8_t *p, uint32_t v) {
    int k = 0;
    while (k < 4 && (v >> (7 * (k + 1))) != 0) k++;
    for (; k > 0; k--) *p++ = (uint8_t)(((v >> (7 * k)) & 0x7f) | 0x80);
    *p++ = (uint8_t)(v & 0x7f);
    return p;
}

// The table header read_table reads: the alphabet (a symbol whose predecessor is present is
// followed by the count of present symbols right after it, which are then not listed; a 0
// ends it), then each present symbol's frequency.
uint8_t *put_table(uint8_t *p, const uint32_t *F) {
    for (int j = 0, skip = 0; j < 256; j++) {
        if (!F[j]) continue;
        if (skip) {
            skip--;
            continue;
        }
        *p++ = (uint8_t)j;
        if (j > 0 && F[j - 1]) {
            while (j + 1 + skip < 256 && F[j + 1 + skip]) skip++;
            *p++ = (uint8_t)skip;
        }
    }
    *p++ = 0;
    for (int j = 0; j < 256; j++)
        if (F[j]) p = put_varint(p, F[j]);
    return p;
}

// Per symbol, what its encoding step needs (htscodecs' RansEncSymbol, packed): x becomes
// x + bias + q * (4096 - freq), q = x / freq computed as (x * rcp) >> (32 + shift), or, the
// same, as ((x << up) * rcp) >> 43 with up = 11 - shift: one shift for every lane of a
// vector. (x < freq << 19 <= 2^(shift + 20) once renormalised, so x << up < 2^31.)
struct EncTable {
    alignas(64) uint32_t rcp[256];
    alignas(64) uint32_t info[256];  // bias in bits 0-12, freq in 13-25, up in 26-29
    int max_symbol;
};
const int kQuotientShift = 43;
inline uint32_t info_bias(uint32_t e) { return e & 0x1fff; }
inline uint32_t info_freq(uint32_t e) { return (e >> 13) & 0x1fff; }
inline uint32_t info_up(uint32_t e) { return e >> 26; }

void build_enc_table(const uint32_t *F, EncTable &t) {
    uint32_t start = 0;
    t.max_symbol = 0;
    for (int j = 0; j < 256; j++) {
        const uint32_t f = F[j];
        t.rcp[j] = 0;
        t.info[j] = 0;
        if (!f) continue;
        t.max_symbol = j;
        uint32_t rcp, shift, bias = start;
        if (f == 1) {  // the reciprocal of 1 does not fit: q = x - 1, the bias makes up for it
            rcp = ~0u;
            shift = 0;
            bias = start + kTotal - 1;
        } else {  // Alverson's integer division by reciprocals: exact for x < 2^31
            uint32_t s = 0;
            while (f > (1u << s)) s++;
            rcp = (uint32_t)((((uint64_t)1 << (s + 31)) + f - 1) / f);
            shift = s - 1;
        }
        t.rcp[j] = rcp;
        t.info[j] = bias | (f << 13) | ((11 - shift) << 26);
        start += f;
    }
}

// One encoding step of state x with symbol entry (rcp, info); a word out below w first
// where the state must shrink. (Branch-free: the word is stored either way and kept where
// it counts; one word of room below w is needed.)
REDML_ALWAYS_INLINE void put_symbol(uint32_t &x, uint32_t rcp, uint32_t info, uint16_t *&w) {
    const bool renorm = x >= info_freq(info) << 19;
    w[-1] = (uint16_t)x;
    w -= renorm;
    x = renorm ? x >> 16 : x;
    const uint32_t q = (uint32_t)(((uint64_t)(x << info_up(info)) * rcp) >> kQuotientShift);
    x += info_bias(info) + q * (kTotal - info_freq(info));
}

// One plane being encoded: its table and states, the groups of 32 symbols below i still to
// encode, its words written downwards from top (a group is encoded only while the words
// so far leave the stream smaller than the plane: else it is stored as it is anyway).
struct EncStream {
    EncTable t;
    alignas(64) uint32_t x[kStates];
    const uint8_t *src;
    size_t n, i;
    uint16_t *top, *w, *floor;
    std::vector<uint16_t> words;
    uint8_t head[6 + 3 * 256 + 256];  // flags, size, table
    size_t meta, head_len;  // the flags and size; all of head
    size_t size;            // the stream's bytes
    bool stored;            // the stored form
    bool roomy() const { return i > 0 && w >= floor; }
};

void groups_portable(EncStream &s) {
    for (; s.roomy(); s.i -= kStates)
        for (int z = kStates - 1; z >= 0; z--) {
            const uint8_t c = s.src[s.i - kStates + z];
            put_symbol(s.x[z], s.t.rcp[c], s.t.info[c], s.w);
        }
}

#ifdef REDML_AVX2_DISPATCH
// Lane j of entry m: the lane whose word goes to position j of 8 where the lanes of mask m
// renormalise, their words packed at the top (positions 8 - popcount(m) ... 7, lane order).
struct CompactTable {
    alignas(32) int32_t idx[256][8];
    CompactTable() {
        for (int m = 0; m < 256; m++) {
            int j = 8 - __builtin_popcount(m);
            for (int k = 0; k < 8; k++) idx[m][k] = 0;
            for (int l = 0; l < 8; l++)
                if (m >> l & 1) idx[m][j++] = l;
        }
    }
};
const CompactTable kCompact;

// ((x << up) * rcp) >> 43 per 32-bit lane: the even and odd lanes' 64-bit products (the
// odd ones' quotients in their upper halves).
REDML_TARGET_AVX2 inline __m256i quotient_avx2(__m256i x, __m256i rcp, __m256i up) {
    const __m256i xs = _mm256_sllv_epi32(x, up);
    const __m256i even = _mm256_srli_epi64(_mm256_mul_epu32(xs, rcp), kQuotientShift);
    const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(xs, 32), _mm256_srli_epi64(rcp, 32));
    return _mm256_blend_epi32(even, _mm256_srli_epi64(odd, kQuotientShift - 32), 0xaa);
}

// Entry c of a table of 16 held in two registers (symbols below 16: no gather).
REDML_TARGET_AVX2 inline __m256i lookup16_avx2(const __m256i *tab, __m256i c) {
    const __m256 high = _mm256_castsi256_ps(_mm256_slli_epi32(c, 28));  // sign: c >= 8
    return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(_mm256_permutevar8x32_epi32(tab[0], c)),
                                                _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(tab[1], c)), high));
}

// 8 states take the symbols at in[0..8): the renormalising ones' words written below w.
// Small: every symbol below 16, the tables in lk (rcp, rcp, info, info).
template <bool Small>
REDML_TARGET_AVX2 inline void step8_enc_avx2(const EncTable &t, const __m256i *lk, __m256i &x, const uint8_t *in,
                                             uint16_t *&w) {
    const __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)in));
    const __m256i rcp = Small ? lookup16_avx2(lk, c) : _mm256_i32gather_epi32((const int *)t.rcp, c, 4);
    const __m256i info = Small ? lookup16_avx2(lk + 2, c) : _mm256_i32gather_epi32((const int *)t.info, c, 4);
    const __m256i mask13 = _mm256_set1_epi32(0x1fff);
    const __m256i freq = _mm256_and_si256(_mm256_srli_epi32(info, 13), mask13);
    const __m256i renorm = _mm256_cmpeq_epi32(_mm256_max_epu32(x, _mm256_slli_epi32(freq, 19)), x);  // x >= freq << 19
    const unsigned m = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(renorm));
    // the words packed at the top of 8, 16 bytes stored ending at w (what lies below the
    // new w is overwritten later)
    const __m256i top = _mm256_permutevar8x32_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0xffff)),
                                                    _mm256_loadu_si256((const __m256i *)kCompact.idx[m]));
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(top, top), 0x08);
    _mm_storeu_si128((__m128i *)(w - 8), _mm256_castsi256_si128(packed));
    w -= __builtin_popcount(m);
    x = _mm256_blendv_epi8(x, _mm256_srli_epi32(x, 16), renorm);
    const __m256i q = quotient_avx2(x, rcp, _mm256_srli_epi32(info, 26));
    const __m256i cmpl = _mm256_sub_epi32(_mm256_set1_epi32(kTotal), freq);
    x = _mm256_add_epi32(_mm256_add_epi32(x, _mm256_and_si256(info, mask13)), _mm256_mullo_epi32(q, cmpl));
}

template <bool Small>
REDML_TARGET_AVX2 void groups_avx2(EncStream &s) {
    const EncTable &t = s.t;
    const __m256i lk[4] = {_mm256_loadu_si256((const __m256i *)t.rcp), _mm256_loadu_si256((const __m256i *)(t.rcp + 8)),
                           _mm256_loadu_si256((const __m256i *)t.info), _mm256_loadu_si256((const __m256i *)(t.info + 8))};
    __m256i r[4];
    for (int v = 0; v < 4; v++) r[v] = _mm256_loadu_si256((const __m256i *)(s.x + 8 * v));
    for (; s.roomy(); s.i -= kStates)
        for (int v = 3; v >= 0; v--) step8_enc_avx2<Small>(t, lk, r[v], s.src + s.i - kStates + 8 * v, s.w);
    for (int v = 0; v < 4; v++) _mm256_storeu_si256((__m256i *)(s.x + 8 * v), r[v]);
}
#endif

#ifdef REDML_AVX512_DISPATCH
REDML_TARGET_AVX512 inline __m512i quotient_avx512(__m512i x, __m512i rcp, __m512i up) {
    const __m512i xs = _mm512_sllv_epi32(x, up);
    const __m512i even = _mm512_srli_epi64(_mm512_mul_epu32(xs, rcp), kQuotientShift);
    const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(xs, 32), _mm512_srli_epi64(rcp, 32));
    return _mm512_mask_blend_epi32(0xaaaa, even, _mm512_srli_epi64(odd, kQuotientShift - 32));
}

// The fields of 16 symbols' entries.
struct Lanes512 {
    __m512i rcp, bound, up, cmpl, bias;  // bound: freq << 19; cmpl: 4096 - freq
};

// Symbols below 32: each field's 32 entries in two registers, looked up by permutation (no
// gathers, and no shifts to unpack: the shifts and products share one port).
struct SmallTables512 {
    __m512i f[5][2];
};

REDML_TARGET_AVX512 SmallTables512 small_tables512(const EncTable &t) {
    alignas(64) uint32_t f[5][32];
    for (int j = 0; j < 32; j++) {
        const uint32_t e = t.info[j];
        f[0][j] = t.rcp[j];
        f[1][j] = info_freq(e) << 19;
        f[2][j] = info_up(e);
        f[3][j] = kTotal - info_freq(e);
        f[4][j] = info_bias(e);
    }
    SmallTables512 st;
    for (int k = 0; k < 5; k++)
        for (int h = 0; h < 2; h++) st.f[k][h] = _mm512_loadu_si512(f[k] + 16 * h);
    return st;
}

REDML_TARGET_AVX512 inline Lanes512 lookup_small512(const SmallTables512 &st, __m512i c) {
    return Lanes512{_mm512_permutex2var_epi32(st.f[0][0], c, st.f[0][1]), _mm512_permutex2var_epi32(st.f[1][0], c, st.f[1][1]),
                    _mm512_permutex2var_epi32(st.f[2][0], c, st.f[2][1]), _mm512_permutex2var_epi32(st.f[3][0], c, st.f[3][1]),
                    _mm512_permutex2var_epi32(st.f[4][0], c, st.f[4][1])};
}

REDML_TARGET_AVX512 inline Lanes512 gather512(const EncTable &t, __m512i c) {
    const __m512i info = _mm512_i32gather_epi32(c, t.info, 4);
    const __m512i freq = _mm512_and_si512(_mm512_srli_epi32(info, 13), _mm512_set1_epi32(0x1fff));
    return Lanes512{_mm512_i32gather_epi32(c, t.rcp, 4), _mm512_slli_epi32(freq, 19), _mm512_srli_epi32(info, 26),
                    _mm512_sub_epi32(_mm512_set1_epi32(kTotal), freq), _mm512_and_si512(info, _mm512_set1_epi32(0x1fff))};
}

// 16 states take the symbols at in[0..16): the renormalising ones' words written below w.
template <bool Small>
REDML_TARGET_AVX512 inline void step16_enc_avx512(const EncTable &t, const SmallTables512 &st, __m512i &x,
                                                  const uint8_t *in, uint16_t *&w) {
    const __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)in));
    const Lanes512 e = Small ? lookup_small512(st, c) : gather512(t, c);
    const __mmask16 renorm = _mm512_cmpge_epu32_mask(x, e.bound);
    const unsigned cnt = (unsigned)__builtin_popcount((unsigned)renorm);
    _mm256_mask_storeu_epi16(w - cnt, (__mmask16)((1u << cnt) - 1),
                             _mm512_cvtepi32_epi16(_mm512_maskz_compress_epi32(renorm, x)));
    w -= cnt;
    x = _mm512_mask_srli_epi32(x, renorm, x, 16);
    const __m512i q = quotient_avx512(x, e.rcp, e.up);
    x = _mm512_add_epi32(_mm512_add_epi32(x, e.bias), _mm512_mullo_epi32(q, e.cmpl));
}

template <bool Small>
REDML_TARGET_AVX512 void groups_avx512(EncStream &s) {
    SmallTables512 st;
    if (Small) st = small_tables512(s.t);
    __m512i r[2] = {_mm512_loadu_si512(s.x), _mm512_loadu_si512(s.x + 16)};
    for (; s.roomy(); s.i -= kStates) {
        step16_enc_avx512<Small>(s.t, st, r[1], s.src + s.i - 16, s.w);
        step16_enc_avx512<Small>(s.t, st, r[0], s.src + s.i - 32, s.w);
    }
    _mm512_storeu_si512(s.x, r[0]);
    _mm512_storeu_si512(s.x + 16, r[1]);
}
#endif

// A stream's groups with the best build the CPU has (or the forced one).
void encode_groups(EncStream &s) {
    const int level = simd_level();
#ifdef REDML_AVX512_DISPATCH
    if (level == 3) return s.t.max_symbol < 32 ? groups_avx512<true>(s) : groups_avx512<false>(s);
#endif
#ifdef REDML_AVX2_DISPATCH
    if (level >= 2)
        return s.t.max_symbol < 16 ? groups_avx2<true>(s) : groups_avx2<false>(s);
#endif
    groups_portable(s);
}

void put_u32le(uint8_t *p, uint32_t v) {
    for (int k = 0; k < 4; k++) p[k] = (uint8_t)(v >> (8 * k));
}

// Adds the counts of src[0, n) to hist: four tables (consecutive equal bytes do not wait
// on each other's increments).
void count_portable(const uint8_t *src, size_t n, uint32_t *hist) {
    uint32_t h[4][256] = {};
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        h[0][src[i]]++;
        h[1][src[i + 1]]++;
        h[2][src[i + 2]]++;
        h[3][src[i + 3]]++;
    }
    for (; i < n; i++) h[0][src[i]]++;
    for (int s = 0; s < 256; s++) hist[s] += h[0][s] + h[1][s] + h[2][s] + h[3][s];
}

#ifdef REDML_AVX512_DISPATCH
// The same counts where nearly every byte is below K (the planes of small codes): each of
// the K symbols counted in 64 bytes at once by a comparison, the rare larger bytes one by
// one.
template <int K>
REDML_TARGET_AVX512 void count_small_avx512(const uint8_t *src, size_t n, uint32_t *hist) {
    const __m512i one = _mm512_set1_epi8(1);
    size_t i = 0;
    while (i + 64 <= n) {
        __m512i acc[K];  // byte counters of each symbol, emptied before they can overflow
        for (int s = 0; s < K; s++) acc[s] = _mm512_setzero_si512();
        const size_t end = std::min(n & ~(size_t)63, i + 255 * 64);
        for (; i < end; i += 64) {
            const __m512i v = _mm512_loadu_si512(src + i);
            for (int s = 0; s < K; s++)
                acc[s] = _mm512_mask_add_epi8(acc[s], _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8((char)s)), acc[s], one);
            for (uint64_t big = _mm512_cmpge_epu8_mask(v, _mm512_set1_epi8((char)K)); big; big &= big - 1)
                hist[src[i + __builtin_ctzll(big)]]++;
        }
        for (int s = 0; s < K; s++)
            hist[s] += (uint32_t)_mm512_reduce_add_epi64(_mm512_sad_epu8(acc[s], _mm512_setzero_si512()));
    }
    count_portable(src + i, n - i, hist);
}
#endif

#ifdef REDML_AVX2_DISPATCH
template <int K>
REDML_TARGET_AVX2 void count_small_avx2(const uint8_t *src, size_t n, uint32_t *hist) {
    size_t i = 0;
    while (i + 32 <= n) {
        __m256i acc[K];  // byte counters of each symbol, emptied before they can overflow
        for (int s = 0; s < K; s++) acc[s] = _mm256_setzero_si256();
        const size_t end = std::min(n & ~(size_t)31, i + 255 * 32);
        for (; i < end; i += 32) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(src + i));
            for (int s = 0; s < K; s++) acc[s] = _mm256_sub_epi8(acc[s], _mm256_cmpeq_epi8(v, _mm256_set1_epi8((char)s)));
            // bytes of K or more: those whose maximum with K - 1 is not K - 1
            const __m256i big = _mm256_cmpeq_epi8(_mm256_max_epu8(v, _mm256_set1_epi8((char)(K - 1))),
                                                  _mm256_set1_epi8((char)(K - 1)));
            for (uint32_t m = ~(uint32_t)_mm256_movemask_epi8(big); m; m &= m - 1) hist[src[i + __builtin_ctz(m)]]++;
        }
        for (int s = 0; s < K; s++) {
            const __m256i sums = _mm256_sad_epu8(acc[s], _mm256_setzero_si256());
            alignas(32) uint64_t q[4];
            _mm256_storeu_si256((__m256i *)q, sums);
            hist[s] += (uint32_t)(q[0] + q[1] + q[2] + q[3]);
        }
    }
    count_portable(src + i, n - i, hist);
}
#endif

// Bytes of a plane sampled to choose how to count it.
const size_t kSample = 4096;

// How to count a plane: by symbol comparisons (99% of the sample's bytes below 8, or below
// 16: K; the others are counted one by one), else one by one (0). The counts do not depend
// on the choice.
int small_alphabet(const uint8_t *src, uint32_t *h) {
    count_portable(src, kSample, h);
    uint32_t below8 = 0, below16 = 0;
    for (int s = 0; s < 16; s++) (s < 8 ? below8 : below16) += h[s];
    below16 += below8;
    const uint32_t most = kSample - kSample / 100;
    return below8 >= most ? 8 : below16 >= most ? 16 : 0;
}

// Adds the counts of the bytes of src[0, n) to hist[256].
void count_bytes(const uint8_t *src, size_t n, uint32_t *hist) {
    const int level = simd_level();
    const bool avx512 = REDML_IF_AVX512(level == 3);
    const bool avx2 = REDML_IF_AVX2(level >= 2);
    if (n <= 2 * kSample || !(avx512 || avx2)) return count_portable(src, n, hist);
    uint32_t h[256] = {};
    const int K = small_alphabet(src, h);
    if (K == 0) return count_portable(src, n, hist);
    for (int s = 0; s < 256; s++) hist[s] += h[s];
    src += kSample;
    n -= kSample;
#ifdef REDML_AVX512_DISPATCH
    if (avx512) return K == 8 ? count_small_avx512<8>(src, n, hist) : count_small_avx512<16>(src, n, hist);
#endif
#ifdef REDML_AVX2_DISPATCH
    if (avx2) return K == 8 ? count_small_avx2<8>(src, n, hist) : count_small_avx2<16>(src, n, hist);
#endif
    count_portable(src, n, hist);
}

// Prepares plane s for encoding: its counts scaled and written into the header as
// htscodecs writes them, its table, its states past the last n % 32 symbols.
void open_enc(EncStream &s, const uint8_t *src, size_t n) {
    check(n > 1000 && n <= (size_t)INT32_MAX, REDML_E_ARG, "rANS plane size out of range");
    uint32_t F[256] = {};
    count_bytes(src, n, F);
    // the header's table scaled to min(4096, n rounded up to a power of 2), the coder's to 4096
    uint32_t scaled = 1;
    while (scaled < n && scaled < kTotal) scaled <<= 1;
    normalise(F, (uint32_t)n, scaled);
    s.head[0] = kFlagsO0X32;
    uint8_t *hp = put_varint(s.head + 1, (uint32_t)n);
    s.meta = (size_t)(hp - s.head);
    s.head_len = (size_t)(put_table(hp, F) - s.head);
    normalise(F, scaled, kTotal);
    build_enc_table(F, s.t);
    // words: at most n bytes' worth are worth writing; below floor, room for a group's 32
    // and the 8 the AVX2 build stores below its last
    const size_t most = n / 2 + 1, below = 2 * kStates + 16;
    uint16_t *buf = scratch(s.words, most + below);
    s.top = s.w = buf + most + below;
    s.floor = s.top - most;
    s.src = src;
    s.n = n;
    s.i = n & ~(size_t)(kStates - 1);
    for (int z = 0; z < kStates; z++) s.x[z] = kLow;
    for (int z = (int)(n - s.i) - 1; z >= 0; z--) {
        const uint8_t c = src[s.i + z];
        put_symbol(s.x[z], s.t.rcp[c], s.t.info[c], s.w);
    }
}

// The stream's size once its groups are encoded: coded, or stored where the coded form is
// not smaller (htscodecs' rule, on the bytes after the flags and size).
void close_enc(EncStream &s) {
    const size_t coded = s.head_len - s.meta + 4 * kStates + 2 * (size_t)(s.top - s.w);
    s.stored = s.w < s.floor || coded >= s.n;
    s.size = s.stored ? s.meta + s.n : s.meta + coded;
}

// Writes the stream at dst.
void write_enc(const EncStream &s, uint8_t *dst) {
    if (s.stored) {
        dst[0] = kFlagsO0X32 | kFlagsCat;
        std::memcpy(dst + 1, s.head + 1, s.meta - 1);
        std::memcpy(dst + s.meta, s.src, s.n);
        return;
    }
    std::memcpy(dst, s.head, s.head_len);
    uint8_t *p = dst + s.head_len;
    for (int z = 0; z < kStates; z++, p += 4) put_u32le(p, s.x[z]);
    std::memcpy(p, s.w, 2 * (size_t)(s.top - s.w));
}

// A thread's encoder stream (2 KB of tables: not on a pool thread's stack).
EncStream &enc_stream() {
    thread_local EncStream s;
    return s;
}

}  // namespace

size_t rans_encode_o0x32(const uint8_t *src, size_t n, uint8_t *dst, size_t cap) {
    EncStream &s = enc_stream();
    open_enc(s, src, n);
    encode_groups(s);
    close_enc(s);
    if (s.size <= cap) write_enc(s, dst);
    if (held_bytes(s.words) > kKeepBlockBytes) std::vector<uint16_t>().swap(s.words);  // a huge plane's (scratch.h)
    return s.size <= cap ? s.size : 0;
}

}  // namespace redml
