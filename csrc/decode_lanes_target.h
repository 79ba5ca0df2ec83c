// decode_lanes_target.h: one build of the decoder's lane loops (decode_lanes.h), included once
// by each of decode_lanes_portable.cpp, decode_lanes_avx2.cpp and decode_lanes_avx512.cpp
// (no include guard), which define first:
//   REDML_LANES_NS      the build's namespace (lanes_portable, lanes_avx2, lanes_avx512)
//   REDML_LANES_TARGET  its target attribute (empty: the portable build)
//   REDML_LANES_AVX512  true where the build may take AVX-512's 32-bit lane products
// Every file builds with the same flags (csrc/sources.mk): per-target code comes from function
// attributes only. Per-file -m/-march flags would give the shared inline helpers (CodeReader,
// Storage, TileCoder) copies of different ISAs, any of which the linker may keep for all files.
#include "decode_lanes.h"

namespace redml {
namespace REDML_LANES_NS {

namespace {
// What the bodies of decode_lanes.h take from the build: the conditional reconstruction
// compiled once per form (draw or mean, float or double) for this target.
struct Target {
    static constexpr bool kAvx512 = REDML_LANES_AVX512;
    template <bool draw, class R>
    REDML_LANES_TARGET __attribute__((noinline)) static void conditional_lanes(const R *a, const R *b, const R *lam,
                                                                              const R *uni, const double *lambda,
                                                                              size_t n, int64_t width, uint32_t seed,
                                                                              uint32_t i0, R *res) {
        conditional_lanes_body<draw, R>(a, b, lam, uni, lambda, n, width, seed, i0, res);
    }
};
}  // namespace

template <class T>
REDML_LANES_TARGET bool decode_codes(const typename Storage<T>::Word *codes, T *out, size_t n,
                                     const Step1Int<T> *pred, int64_t lo) {
    return decode_codes_body<T>(codes, out, n, pred, lo);
}

template <class T, class C>
REDML_LANES_TARGET void decode_coded_span(REDML_SPAN_PARAMS) {
    decode_coded_span_body<T, Target>(REDML_SPAN_ARGS);
}

template <class T>
REDML_LANES_TARGET void sparse_dither(const double *lambda, size_t n, uint32_t i0, uint32_t seed, T *out) {
    sparse_dither_body<T>(lambda, n, i0, seed, out);
}

#define REDML_INSTANTIATE_LANES(T)                                                                               \
    template bool decode_codes<T>(const Storage<T>::Word *, T *, size_t, const Step1Int<T> *, int64_t);         \
    template void decode_coded_span<T, Columns>(const TileCoder<T> &, const Columns &, int64_t, const uint8_t *, \
                                                T *, uint32_t, size_t, const double *, int, uint32_t,           \
                                                CodeReader<T> &);                                               \
    template void decode_coded_span<T, OneTile>(const TileCoder<T> &, const OneTile &, int64_t, const uint8_t *, \
                                                T *, uint32_t, size_t, const double *, int, uint32_t,           \
                                                CodeReader<T> &);                                               \
    template void sparse_dither<T>(const double *, size_t, uint32_t, uint32_t, T *);
REDML_FOR_EACH_PIXEL_TYPE(REDML_INSTANTIATE_LANES)
#undef REDML_INSTANTIATE_LANES

}  // namespace REDML_LANES_NS
}  // namespace redml
