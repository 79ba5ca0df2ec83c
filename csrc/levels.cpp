// levels.cpp: see levels.h. Integer frames give numpy's background to the last bit (their
// sums are exact), float ones to its rounding (numpy sums pairwise).
#include "levels.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "pixels.h"
#include "scratch.h"

namespace redml {
namespace {

// "value is saturated" (levels.h).
template <class T>
struct AtOrAbove {
    Saturated kind;
    T t;
    bool operator()(T v) const { return (kind == Saturated::kAll) | ((kind == Saturated::kAtOrAbove) & (v >= t)); }
};

// Values >= t among n that are not bad (bad null: none is): a compare-and-count loop the
// compiler vectorizes, built for each SIMD level (pixels.h).
template <class T>
REDML_ALWAYS_INLINE uint32_t count_at_least_body(const T *__restrict v, const uint8_t *__restrict bad, size_t n, T t) {
    uint32_t c = 0;
    if (bad)
        for (size_t j = 0; j < n; j++) c += (bad[j] == 0) & (v[j] >= t);
    else
        for (size_t j = 0; j < n; j++) c += v[j] >= t;
    return c;
}

REDML_SIMD_CLONES((template <class T>), uint32_t, count_at_least, (), (const T *v, const uint8_t *bad, size_t n, T t),
                  (v, bad, n, t), count_at_least_body(v, bad, n, t))

// Saturated pixels of one row that are not bad.
template <class T>
uint64_t saturated_in_row(const T *row, const uint8_t *bad_row, size_t w, const AtOrAbove<T> &sat) {
    if (sat.kind == Saturated::kAtOrAbove) return count_at_least(row, bad_row, w, sat.t);
    if (sat.kind == Saturated::kNone) return 0;
    return bad_row ? (uint64_t)std::count(bad_row, bad_row + w, uint8_t(0)) : w;  // all
}

// A grid pixel that counts towards the background: not bad, finite, not negative, below
// saturation (without branches: the grid's pixels are a fair coin's worth of each).
template <class T>
bool grid_good(T v, bool is_bad, const AtOrAbove<T> &sat) {
    bool ok = !is_bad & !sat(v);
    if constexpr (std::is_floating_point_v<T>) ok &= std::isfinite(v);
    if constexpr (std::is_signed_v<T>) ok &= v >= 0;
    return ok;
}

// Sums of integer frames up to 32 bits in int64 (exact, and vectorized), of the others in double.
template <class T>
using Sum = std::conditional_t<std::is_integral_v<T> && sizeof(T) <= 4, int64_t, double>;

// The grid pixels of one row (every kGridStep-th, n of them) copied to v, with ok[k] = 1 where
// pixel k counts towards the background (grid_good).
template <class T, bool HasBad>
REDML_ALWAYS_INLINE void grid_row_body(const T *__restrict row, const uint8_t *__restrict bad_row, size_t n,
                                       AtOrAbove<T> sat, T *__restrict v, uint8_t *__restrict ok) {
    for (size_t k = 0; k < n; k++) {
        const T x = row[kGridStep * k];
        v[k] = x;
        ok[k] = grid_good(x, HasBad && bad_row[kGridStep * k] != 0, sat);
    }
}

REDML_SIMD_CLONES((template <class T, bool HasBad>), void, grid_row, (<T, HasBad>),
                  (const T *row, const uint8_t *bad_row, size_t n, AtOrAbove<T> sat, T *v, uint8_t *ok),
                  (row, bad_row, n, sat, v, ok), grid_row_body<T, HasBad>(row, bad_row, n, sat, v, ok))

// Sum and count of the values v[i] with ok[i] set and v[i] <= at_most.
template <class T>
using SumCount = std::pair<Sum<T>, size_t>;

template <class T>
REDML_ALWAYS_INLINE SumCount<T> sum_at_most_body(const T *__restrict v, const uint8_t *__restrict ok,
                                                               size_t n, Sum<T> at_most) {
    Sum<T> sum = 0;
    size_t count = 0;
    for (size_t i = 0; i < n; i++) {
        const bool keep = (ok[i] != 0) & (Sum<T>(v[i]) <= at_most);
        sum += keep ? Sum<T>(v[i]) : Sum<T>(0);
        count += keep;
    }
    return {sum, count};
}

REDML_SIMD_CLONES((template <class T>), SumCount<T>, sum_at_most, (<T>),
                  (const T *v, const uint8_t *ok, size_t n, Sum<T> at_most), (v, ok, n, at_most),
                  sum_at_most_body<T>(v, ok, n, at_most))

// A thread's grid values and their flags, kept across frames.
struct GridScratch {
    std::vector<uint8_t> values, ok;  // values: bytes of T
    size_t held() const { return held_bytes(values, ok); }
};
thread_local GridScratch grid_scratch;

}  // namespace

template <class T>
FrameLevels frame_levels(const T *frame, const uint8_t *bad, size_t h, size_t w, Saturated saturated, T threshold,
                         bool background) {
    const AtOrAbove<T> sat{saturated, threshold};
    const bool count = saturated != Saturated::kNone;
    const size_t grid_w = (w + kGridStep - 1) / kGridStep, grid_h = (h + kGridStep - 1) / kGridStep;
    GridScratch &sc = grid_scratch;
    ReleaseIfLarge<GridScratch> release{sc};
    T *values = background ? (T *)scratch(sc.values, grid_w * grid_h * sizeof(T)) : nullptr;
    uint8_t *ok = background ? scratch(sc.ok, grid_w * grid_h) : nullptr;
    FrameLevels out{NAN, 0};
    for (size_t r = 0; r < h; r++) {  // one pass: the grid rows are read while they are hot
        const T *row = frame + r * w;
        const uint8_t *bad_row = bad ? bad + r * w : nullptr;
        if (count) out.saturated += saturated_in_row(row, bad_row, w, sat);
        if (!background || r % kGridStep) continue;
        const size_t k = r / kGridStep * grid_w;
        if (bad_row) grid_row<T, true>(row, bad_row, grid_w, sat, values + k, ok + k);
        else grid_row<T, false>(row, nullptr, grid_w, sat, values + k, ok + k);
    }
    if (!background) return out;
    const size_t n = grid_w * grid_h;
    const Sum<T> top = std::is_integral_v<Sum<T>> ? Sum<T>(std::numeric_limits<T>::max()) : Sum<T>(INFINITY);
    const auto [sum, ngood] = sum_at_most<T>(values, ok, n, top);
    if (ngood == 0) return out;
    const double mean = (double)sum / (double)ngood;
    const double cut = mean + 5 * std::sqrt(std::max(mean, 1.0));  // Bragg spots and zingers away
    // v <= cut as a comparison of sums (of integers: v <= floor(cut))
    const Sum<T> at_most = cut >= double(top) ? top : Sum<T>(std::is_integral_v<Sum<T>> ? std::floor(cut) : cut);
    const auto [kept_sum, kept] = sum_at_most<T>(values, ok, n, at_most);
    out.background = (double)kept_sum / (double)kept;
    return out;
}

#define REDML_LEVELS(T) \
    template FrameLevels frame_levels<T>(const T *, const uint8_t *, size_t, size_t, Saturated, T, bool);
REDML_LEVELS(uint8_t)
REDML_LEVELS(int8_t)
REDML_LEVELS(uint16_t)
REDML_LEVELS(int16_t)
REDML_LEVELS(uint32_t)
REDML_LEVELS(int32_t)
REDML_LEVELS(uint64_t)
REDML_LEVELS(int64_t)
REDML_LEVELS(float)
REDML_LEVELS(double)
#undef REDML_LEVELS

}  // namespace redml
