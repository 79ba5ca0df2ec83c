// pixels.h: dtype dispatch and per-type facts shared by the pipeline stages.
#pragma once
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <cstdint>
#include <limits>
#include <type_traits>
#include "error.h"
#include "redml.h"

namespace redml {

// Calls f(T{}) with T the C type of dtype.
template <class F>
auto dispatch_dtype(redml_dtype dt, F f) {
    switch (dt) {
        case REDML_UINT16: return f(uint16_t{});
        case REDML_INT16: return f(int16_t{});
        case REDML_INT32: return f(int32_t{});
        case REDML_UINT32: return f(uint32_t{});
        case REDML_FLOAT32: return f(float{});
    }
    fail(REDML_E_ARG, "unsupported dtype");
}

// Applies X to every pixel type of the format (explicit template instantiations).
#define REDML_FOR_EACH_PIXEL_TYPE(X) X(uint16_t) X(int16_t) X(int32_t) X(uint32_t) X(float)

template <class T>
constexpr redml_dtype dtype_of() {
    if constexpr (std::is_same<T, uint16_t>::value) return REDML_UINT16;
    else if constexpr (std::is_same<T, int16_t>::value) return REDML_INT16;
    else if constexpr (std::is_same<T, int32_t>::value) return REDML_INT32;
    else if constexpr (std::is_same<T, uint32_t>::value) return REDML_UINT32;
    else return REDML_FLOAT32;
}

// A pixel of a photon counter that is never quantized nor used by the background model:
// non-finite floats, negative values (detector masks such as Pilatus gaps) and the type's
// maximum (saturation / fill value). Integrating detectors' data: is_marker.
template <class T>
inline bool is_special_value(T v) {
    if constexpr (std::is_floating_point<T>::value) {
        return !std::isfinite(v) || v < 0;
    } else {
        return v < 0 || v == std::numeric_limits<T>::max();
    }
}

// Whether v is one of the detector's markers (redml_markers): never quantized nor used by
// the model. Photon counters (NEGATIVE): is_special_value. Integrating detectors: negative
// values are noise; the markers are the extremes (the type's maximum, a signed type's
// minimum, non-finite floats) and, with GAPS, -1 and -2.
template <class T>
inline bool is_marker(T v, redml_markers markers) {
    if (markers == REDML_MARKERS_NEGATIVE) return is_special_value(v);
    const bool gap = markers == REDML_MARKERS_GAPS && (v == (T)-1 || v == (T)-2) && std::numeric_limits<T>::is_signed;
    if constexpr (std::is_floating_point<T>::value) return !std::isfinite(v) || gap;
    else return v == std::numeric_limits<T>::max() || (std::numeric_limits<T>::is_signed && v == std::numeric_limits<T>::lowest()) || gap;
}

// ---- run-time SIMD dispatch ----
// Hot loops are compiled once per SIMD level, portable (SSE2 on x86-64), AVX2 and AVX-512,
// from one always-inlined body (REDML_SIMD_CLONES below); the best build the CPU has runs.
// Build flags stay portable.
#define REDML_ALWAYS_INLINE inline __attribute__((always_inline))
#if defined(__x86_64__) && defined(__GNUC__)
#define REDML_AVX2_DISPATCH 1
#define REDML_TARGET_AVX2 __attribute__((target("avx2")))
#endif

inline bool cpu_has_avx2() {
#ifdef REDML_AVX2_DISPATCH
    static const bool has = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") != 0;
    }();
    return has;
#else
    return false;
#endif
}

#ifdef REDML_AVX2_DISPATCH
// A third build of some loops, for CPUs with AVX-512 (F, DQ, BW, VL: 8 doubles a vector,
// 64-bit integer products and conversions).
#define REDML_AVX512_DISPATCH 1
#ifdef __clang__  // (clang ignores a target attribute naming prefer-vector-width)
#define REDML_TARGET_AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl")))
#else
#define REDML_TARGET_AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,prefer-vector-width=512")))
#endif
inline bool cpu_has_avx512() {
    static const bool has = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    }();
    return has;
}
// AVX512-VBMI2 (vpexpandw: the decoder's 16-bit word expansion, a level-4 form of level 3).
inline bool cpu_has_avx512_vbmi2() {
    static const bool has = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512vbmi2") != 0;
    }();
    return has;
}
#endif

// The SIMD build every dispatched loop of the core runs (codec, spot finder, rANS,
// usable_pixels): 3 AVX-512, 2 AVX2, 1 portable. The best the CPU has, or at most the level
// a test forces (the _codec/_spots/_rans_force_simd hooks all set this one level; 0: the best).
inline std::atomic<int> &forced_simd_level() {
    static std::atomic<int> level{0};
    return level;
}
inline int simd_level() {
    const int forced = forced_simd_level().load(std::memory_order_relaxed);
#ifdef REDML_AVX512_DISPATCH
    if ((forced == 0 || forced >= 3) && cpu_has_avx512()) return 3;
#endif
    if ((forced == 0 || forced >= 2) && cpu_has_avx2()) return 2;
    return 1;
}

// REDML_SIMD_CLONES(HEAD, RET, NAME, TARGS, PARAMS, ARGS, BODY...) stamps the builds of one
// always-inlined body: NAME##_portable, NAME##_avx2 and NAME##_avx512 (where the compiler can
// target them), each returning BODY compiled for its target, with the constant kSimdLevel (1, 2
// or 3, as simd_level) for bodies whose lane widths depend on the build; and NAME, which runs
// the build simd_level() names. HEAD: the template head in parentheses, () for a plain
// function; TARGS: the clones' template arguments where the call cannot deduce them, e.g.
// (<E, Un>), else (); PARAMS, ARGS: the parameter and argument lists, in parentheses.
#define REDML_UNPAREN(...) __VA_ARGS__
#ifdef REDML_AVX2_DISPATCH
#define REDML_WITH_AVX2(...) __VA_ARGS__
#else
#define REDML_WITH_AVX2(...)
#endif
#ifdef REDML_AVX512_DISPATCH
#define REDML_WITH_AVX512(...) __VA_ARGS__
#else
#define REDML_WITH_AVX512(...)
#endif
#define REDML_SIMD_CLONE(HEAD, TARGET, LEVEL, RET, NAME, PARAMS, ...) \
    REDML_UNPAREN HEAD TARGET RET NAME PARAMS {                       \
        [[maybe_unused]] constexpr int kSimdLevel = LEVEL;            \
        return __VA_ARGS__;                                           \
    }
#define REDML_SIMD_CLONES(HEAD, RET, NAME, TARGS, PARAMS, ARGS, ...)                                      \
    REDML_SIMD_CLONE(HEAD, , 1, RET, NAME##_portable, PARAMS, __VA_ARGS__)                                \
    REDML_WITH_AVX2(REDML_SIMD_CLONE(HEAD, REDML_TARGET_AVX2, 2, RET, NAME##_avx2, PARAMS, __VA_ARGS__))     \
    REDML_WITH_AVX512(REDML_SIMD_CLONE(HEAD, REDML_TARGET_AVX512, 3, RET, NAME##_avx512, PARAMS, __VA_ARGS__)) \
    REDML_UNPAREN HEAD RET NAME PARAMS {                                                                  \
        switch (simd_level()) {                                                                           \
            REDML_WITH_AVX512(case 3: return NAME##_avx512 REDML_UNPAREN TARGS ARGS;)                       \
            REDML_WITH_AVX2(case 2: return NAME##_avx2 REDML_UNPAREN TARGS ARGS;)                           \
            default: return NAME##_portable REDML_UNPAREN TARGS ARGS;                                     \
        }                                                                                                 \
    }

// usable[i] = 1 where pixel i is neither masked nor a marker (above), else 0: the
// map the codec and the spot finder compute before anything else (one body, a build for
// each SIMD level: usable_pixels below).
template <class T>
REDML_ALWAYS_INLINE void usable_pixels_body(const T *__restrict f, const uint8_t *__restrict mask, uint8_t *__restrict usable, size_t n,
                   redml_markers markers) {
    if (markers != REDML_MARKERS_NEGATIVE) {  // integrating detectors: negative values are noise
        for (size_t i = 0; i < n; i++) usable[i] = !(mask && mask[i]) && !is_marker(f[i], markers);
        return;
    }
    if constexpr (std::is_floating_point<T>::value) {
        for (size_t i = 0; i < n; i++) usable[i] = !(mask && mask[i]) && !is_special_value(f[i]);
    } else {  // is_special_value without branches, so the loops vectorize
        const T top = std::numeric_limits<T>::max();
        if (mask)
            for (size_t i = 0; i < n; i++) usable[i] = (uint8_t)((mask[i] == 0) & (f[i] >= 0) & (f[i] != top));
        else
            for (size_t i = 0; i < n; i++) usable[i] = (uint8_t)((f[i] >= 0) & (f[i] != top));
    }
}

REDML_SIMD_CLONES((template <class T>), void, usable_pixels, (),
                  (const T *f, const uint8_t *mask, uint8_t *usable, size_t n, redml_markers markers),
                  (f, mask, usable, n, markers), usable_pixels_body(f, mask, usable, n, markers))

// ---- 0/1 byte maps (usable, exact, candidate, strong pixels), eight bytes at a time ----

// End of the run of zero bytes (nonzero = false) or of nonzero bytes starting at i.
inline size_t byte_run_end(const uint8_t *p, size_t i, size_t n, bool nonzero) {
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        std::memcpy(&w, p + i, 8);
        const bool has_zero = ((w - ones) & ~w & highs) != 0;
        if (nonzero ? has_zero : w != 0) break;
    }
    while (i < n && (p[i] != 0) == nonzero) i++;
    return i;
}

// Number of i < n with a[i] = 1 and (b == nullptr or b[i] = 1), for maps of 0/1 bytes:
// the byte sum of a word of 0/1 bytes is its product with 0x0101... shifted down by 56.
inline size_t count_ones(const uint8_t *a, const uint8_t *b, size_t n) {
    size_t c = 0, i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t wa, wb = ~0ull;
        std::memcpy(&wa, a + i, 8);
        if (b) std::memcpy(&wb, b + i, 8);
        c += ((wa & wb) * 0x0101010101010101ull) >> 56;
    }
    for (; i < n; i++) c += a[i] & (b ? b[i] : 1);
    return c;
}

}  // namespace redml
