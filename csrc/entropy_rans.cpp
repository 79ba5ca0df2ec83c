// entropy_rans.cpp: decoder of htscodecs' order-0 rANS Nx16 streams with 32 interleaved
// states (written by rans_compress_to_4x16 with RANS_ORDER_X32), the form of every rANS
// plane over 1000 bytes. The library's decoder runs CPUID three times per call (a trap
// to the hypervisor on virtual machines, about a tenth of a frame's decode), and its
// output goes through a second pass; this one decodes the same bytes with the tables and
// loops below (portable, AVX2 and AVX-512 builds, identical output, even on corrupt input).
//
// The stream: u8 flags (0x04), the size as a big-endian base-128 varint, the frequency
// table (the alphabet, run-length coded, then each symbol's frequency as a varint; the
// total a power of two up to 4096, scaled to 4096), the 32 states as u32 little-endian,
// then the 16-bit renormalisation words, read by state 0, 1, ..., 31, 0, 1, ... The
// symbol at position i is decoded by state i % 32; the last n % 32 symbols are read from
// the final states without an update.
#include "entropy_rans.h"

#include <atomic>
#include <cstring>

#ifdef __x86_64__
#include <immintrin.h>
#endif

#include "error.h"
#include "pixels.h"

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

// One symbol of state x: its byte, and x advanced past it.
REDML_ALWAYS_INLINE uint8_t step(const Table &t, uint32_t &x) {
    const uint32_t e = t.slot[x & kSlotMask];
    x = (e >> 20) * (x >> kScaleBits) + ((e >> 8) & kSlotMask);
    return (uint8_t)e;
}

// Groups of 32 symbols from dst[i] on up to `body`, each renormalisation read checked
// against the end (the last bytes of a stream; corrupt streams).
void decode_checked(const Table &t, uint32_t *x, const uint8_t *&p, const uint8_t *end, uint8_t *dst, size_t i,
                    size_t body) {
    for (; i < body; i += kStates)
        for (int z = 0; z < kStates; z++) {
            dst[i + z] = step(t, x[z]);
            if (x[z] < kLow) {
                check(end - p >= 2, REDML_E_CORRUPT, "rANS stream truncated");
                x[z] = (x[z] << 16) | (uint32_t)p[0] | ((uint32_t)p[1] << 8);
                p += 2;
            }
        }
}

// The unchecked loops: groups of 32 symbols from dst[0] while kGroupBytes input bytes
// remain; return where they stopped.
size_t decode_portable(const Table &t, uint32_t *x, const uint8_t *&p, const uint8_t *end, uint8_t *dst,
                       size_t body) {
    size_t i = 0;
    for (; i < body && (size_t)(end - p) >= kGroupBytes; i += kStates)
        for (int z = 0; z < kStates; z++) {
            dst[i + z] = step(t, x[z]);
            const uint32_t w = (uint32_t)p[0] | ((uint32_t)p[1] << 8);
            const bool renorm = x[z] < kLow;
            x[z] = renorm ? (x[z] << 16) | w : x[z];
            p += renorm ? 2 : 0;
        }
    return i;
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

REDML_TARGET_AVX2 size_t decode_avx2(const Table &t, uint32_t *x, const uint8_t *&p, const uint8_t *end, uint8_t *dst,
                                     size_t body) {
    __m256i r[4];
    for (int v = 0; v < 4; v++) r[v] = _mm256_loadu_si256((const __m256i *)(x + 8 * v));
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    size_t i = 0;
    for (; i < body && (size_t)(end - p) >= kGroupBytes; i += kStates) {
        const __m256i s0 = step8_avx2(t, r[0], p), s1 = step8_avx2(t, r[1], p);
        const __m256i s2 = step8_avx2(t, r[2], p), s3 = step8_avx2(t, r[3], p);
        // 32 lanes of bytes to 32 bytes: the packs interleave the 128-bit halves, the
        // permutation puts the 4-byte groups back in state order
        const __m256i bytes = _mm256_packus_epi16(_mm256_packus_epi32(s0, s1), _mm256_packus_epi32(s2, s3));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_permutevar8x32_epi32(bytes, order));
    }
    for (int v = 0; v < 4; v++) _mm256_storeu_si256((__m256i *)(x + 8 * v), r[v]);
    return i;
}
#endif

#ifdef REDML_AVX512_DISPATCH
REDML_TARGET_AVX512 inline void step16_avx512(const Table &t, __m512i &x, const uint8_t *&p, uint8_t *dst) {
    const __m512i e = _mm512_i32gather_epi32(_mm512_and_si512(x, _mm512_set1_epi32(kSlotMask)), (const void *)t.slot, 4);
    x = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_srli_epi32(e, 20), _mm512_srli_epi32(x, kScaleBits)),
                         _mm512_and_si512(_mm512_srli_epi32(e, 8), _mm512_set1_epi32(kSlotMask)));
    const __mmask16 renorm = _mm512_cmplt_epu32_mask(x, _mm512_set1_epi32(kLow));
    const __m512i words = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    // the k-th word read goes to the k-th renormalising state
    x = _mm512_mask_or_epi32(x, renorm, _mm512_slli_epi32(x, 16), _mm512_maskz_expand_epi32(renorm, words));
    p += 2 * __builtin_popcount((unsigned)renorm);
    _mm_storeu_si128((__m128i *)dst, _mm512_cvtepi32_epi8(e));
}

REDML_TARGET_AVX512 size_t decode_avx512(const Table &t, uint32_t *x, const uint8_t *&p, const uint8_t *end,
                                         uint8_t *dst, size_t body) {
    __m512i r0 = _mm512_loadu_si512(x), r1 = _mm512_loadu_si512(x + 16);
    size_t i = 0;
    for (; i < body && (size_t)(end - p) >= kGroupBytes; i += kStates) {
        step16_avx512(t, r0, p, dst + i);
        step16_avx512(t, r1, p, dst + i + 16);
    }
    _mm512_storeu_si512(x, r0);
    _mm512_storeu_si512(x + 16, r1);
    return i;
}
#endif

// The unchecked loop of the best build the CPU has (or the one rans_force_simd asks for).
size_t decode_fast(const Table &t, uint32_t *x, const uint8_t *&p, const uint8_t *end, uint8_t *dst, size_t body) {
    const int forced = forced_simd.load(std::memory_order_relaxed);
#ifdef REDML_AVX512_DISPATCH
    if ((forced == 0 || forced == 3) && cpu_has_avx512()) return decode_avx512(t, x, p, end, dst, body);
#endif
#ifdef REDML_AVX2_DISPATCH
    if ((forced == 0 || forced >= 2) && cpu_has_avx2()) return decode_avx2(t, x, p, end, dst, body);
#endif
    return decode_portable(t, x, p, end, dst, body);
}

}  // namespace

void rans_force_simd(int level) { forced_simd.store(level, std::memory_order_relaxed); }

bool rans_decode_o0x32(const uint8_t *src, size_t len, uint8_t *dst, size_t n) {
    const uint8_t *p = src, *end = src + len;
    uint32_t size;
    if (len == 0 || *p++ != kFlagsO0X32 || !get_varint(p, end, &size) || size != n) return false;
    thread_local Table t;  // 16 KB: not on the stack of a pool thread
    t.single = -1;
    if (!read_table(p, end, t)) return false;
    check(end - p >= 4 * kStates, REDML_E_CORRUPT, "rANS stream truncated");
    uint32_t x[kStates];
    for (int z = 0; z < kStates; z++, p += 4) {
        x[z] = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
        check(x[z] >= kLow, REDML_E_CORRUPT, "rANS state out of range");
    }
    if (t.single >= 0) {  // every state keeps its value: the one symbol n times
        std::memset(dst, t.single, n);
        return true;
    }
    const size_t body = n & ~(size_t)(kStates - 1);
    const size_t done = decode_fast(t, x, p, end, dst, body);
    decode_checked(t, x, p, end, dst, done, body);
    for (size_t z = 0; z < n - body; z++) dst[body + z] = (uint8_t)t.slot[x[z] & kSlotMask];
    return true;
}

}  // namespace redml
