// pixels.h: dtype dispatch and per-type facts shared by the pipeline stages.
#pragma once
#include <cmath>
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

// A pixel that is never quantized nor used by the background model: non-finite floats,
// negative values (detector masks such as Pilatus gaps, or pedestal noise) and the
// type's maximum (saturation / fill value of photon counters).
template <class T>
inline bool is_special_value(T v) {
    if constexpr (std::is_floating_point<T>::value) {
        return !std::isfinite(v) || v < 0;
    } else {
        return v < 0 || v == std::numeric_limits<T>::max();
    }
}

}  // namespace redml
