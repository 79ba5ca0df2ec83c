// levels.cpp: see levels.h. Integer frames give numpy's background to the last bit (their
// sums are exact), float ones to its rounding (numpy sums pairwise).
#include "levels.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
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

// A thread's good grid values, kept across frames.
template <class T>
std::vector<T> &grid_values() {
    thread_local std::vector<T> v;
    return v;
}

}  // namespace

template <class T>
FrameLevels frame_levels(const T *frame, const uint8_t *bad, size_t h, size_t w, Saturated saturated, T threshold,
                         size_t step, bool background) {
    const AtOrAbove<T> sat{saturated, threshold};
    const bool count = saturated != Saturated::kNone;
    const size_t grid_w = (w + step - 1) / step, grid_h = (h + step - 1) / step;
    std::vector<T> &buffer = grid_values<T>();
    T *values = background ? scratch(buffer, grid_w * grid_h) : nullptr;
    size_t ngood = 0;
    Sum<T> sum = 0;
    FrameLevels out{NAN, 0};
    for (size_t r = 0; r < h; r++) {  // one pass: the grid rows are read while they are hot
        const T *row = frame + r * w;
        const uint8_t *bad_row = bad ? bad + r * w : nullptr;
        if (count) out.saturated += saturated_in_row(row, bad_row, w, sat);
        if (!background || r % step) continue;
        auto grid_row = [&](auto has_bad) {  // the loop with and without a bad map
            for (size_t j = 0; j < w; j += step) {
                bool is_bad = false;
                if constexpr (decltype(has_bad)::value) is_bad = bad_row[j] != 0;
                const bool good = grid_good(row[j], is_bad, sat);
                values[ngood] = row[j];  // kept only if good: no branch
                sum += good ? Sum<T>(row[j]) : Sum<T>(0);
                ngood += good;
            }
        };
        if (bad_row) grid_row(std::true_type{});
        else grid_row(std::false_type{});
    }
    if (ngood > 0) {
        const double mean = (double)sum / (double)ngood;
        const double cut = mean + 5 * std::sqrt(std::max(mean, 1.0));  // Bragg spots and zingers away
        // v <= cut as a comparison of sums (int64 for integers: floor(cut), vectorized)
        const Sum<T> top = std::is_integral_v<Sum<T>> ? Sum<T>(std::numeric_limits<T>::max()) : Sum<T>(INFINITY);
        const Sum<T> at_most = cut >= double(top) ? top : Sum<T>(std::is_integral_v<Sum<T>> ? std::floor(cut) : cut);
        Sum<T> kept_sum = 0;
        size_t kept = 0;
        for (size_t i = 0; i < ngood; i++) {
            const bool keep = Sum<T>(values[i]) <= at_most;
            kept_sum += keep ? Sum<T>(values[i]) : Sum<T>(0);
            kept += keep;
        }
        out.background = (double)kept_sum / (double)kept;
    }
    if (held_bytes(buffer) > kKeepScratchBytes) std::vector<T>().swap(buffer);
    return out;
}

#define REDML_LEVELS(T)                                                                                        \
    template FrameLevels frame_levels<T>(const T *, const uint8_t *, size_t, size_t, Saturated, T, size_t, bool);
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
