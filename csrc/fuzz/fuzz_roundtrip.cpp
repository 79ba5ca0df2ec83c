// fuzz_roundtrip.cpp: libFuzzer target for the encoder: arbitrary pixels and settings are
// encoded (through the HDF5 filter callback, or redml_encode with roi and mask maps) and
// decoded back through the filter, and the codec's promises are checked:
//   - a valid frame with valid settings always encodes, and its chunk always decodes;
//   - lossless chunks decode byte-exact;
//   - exact pixels (exact mask), special values (negative, dtype maximum, NaN, inf) and the
//     roi and mask pixels decode byte-exact;
//   - background pixels are within half their tile's step, and that half-step is within
//     q * sigma / 2 of the stored model (the documented bound);
//   - nonnegative inputs never decode negative; finite values stay finite.
// Input: control byte (bit 6: redml_encode with maps; bit 2: oversized filter buffer),
// 8 parameter bytes (dtype, width, mode, q, codec/shuffle, tile, recon/gain/mu_min/block,
// roi settings), then the raw pixels. `make fuzz`.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "fuzz_common.h"
#include "redml.h"

namespace {

template <class T>
bool is_special(T v) {
    if constexpr (std::is_floating_point<T>::value) return !std::isfinite(v) || v < 0;
    else return v < 0 || v == std::numeric_limits<T>::max();
}

template <class T>
void check_roundtrip(const T *x, const T *y, size_t N, size_t W, const uint8_t *chunk, size_t size, int mode,
                     const uint8_t *roi, const uint8_t *mask) {
    if (mode == REDML_MODE_LOSSLESS) {
        FUZZ_ASSERT(std::memcmp(x, y, N * sizeof(T)) == 0);
        return;
    }
    std::vector<uint8_t> exact(N);
    FUZZ_ASSERT(redml_exact_mask(chunk, size, exact.data(), N) == REDML_OK);
    uint32_t rows, cols;
    FUZZ_ASSERT(redml_model_shape(chunk, size, &rows, &cols) == REDML_OK);
    std::vector<float> mean((size_t)rows * cols), step((size_t)rows * cols);
    FUZZ_ASSERT(redml_model(chunk, size, mean.data(), step.data(), mean.size()) == REDML_OK);
    redml_info info;
    FUZZ_ASSERT(redml_inspect(chunk, size, &info) == REDML_OK);
    const size_t tile = info.tile;
    for (size_t i = 0; i < N; i++) {
        if (is_special(x[i]) || (roi && roi[i]) || (mask && mask[i])) FUZZ_ASSERT(exact[i]);
        if (exact[i]) {
            FUZZ_ASSERT(std::memcmp(&x[i], &y[i], sizeof(T)) == 0);
            continue;
        }
        const double xv = (double)x[i], yv = (double)y[i];
        FUZZ_ASSERT(std::isfinite(yv));
        if (xv >= 0) FUZZ_ASSERT(yv >= 0);
        if (mode != REDML_MODE_QUANTIZED) continue;
        const size_t t = (i / W / tile) * cols + (i % W) / tile;
        const double s = step[t];
        const double half = std::is_floating_point<T>::value ? s / 2 : (s - 1) / 2;
        FUZZ_ASSERT(std::fabs(yv - xv) <= half);
        const double mu = (double)mean[t] / info.gain;
        const double sigma = info.gain * std::sqrt(std::max(mu, (double)info.mu_min));
        FUZZ_ASSERT(half <= info.q * sigma / 2 * (1 + 1e-6) + 1e-12);
    }
}

template <class T>
void roundtrip(uint8_t control, const uint8_t *p, const uint8_t *pix, size_t npix_bytes) {
    const uint32_t W = 1 + p[1] % 48;
    const size_t H = npix_bytes / sizeof(T) / W;
    if (H == 0) return;
    const size_t N = H * W;
    std::vector<T> frame(N);
    std::memcpy(frame.data(), pix, N * sizeof(T));
    const int mode = p[2] % 3;
    const float q = mode == REDML_MODE_QUANTIZED ? 0.25f * (1 + p[3] % 32) : 0.0f;
    const unsigned codec = 1 + p[4] % 3;
    const unsigned shuffle = codec == REDML_CODEC_RANS ? (p[4] / 3) % 2 : (p[4] / 3) % 3;
    const unsigned tile = 1 + p[5] % 40;
    const unsigned recon = (mode == REDML_MODE_SPARSE && (p[6] & 1)) ? 1 : 0;
    const float gain = (p[6] & 2) ? 2.5f : 1.0f, mu_min = (p[6] & 4) ? 0.0f : 1.0f;
    const unsigned block = 256u << ((p[6] >> 3) % 3);
    const unsigned margin = p[7] % 4;
    const float snr = 1.0f + (p[7] >> 2) % 8;
    const unsigned dt = (unsigned)(p[0] % 5) + 1;
    using fuzz::float_bits;
    const unsigned cd[17] = {1, (unsigned)mode, float_bits(q), codec, 1, shuffle, recon, tile, float_bits(gain),
                             float_bits(mu_min), float_bits(snr), margin, 0x5eed1234u ^ p[3], block, dt,
                             (unsigned)H, W};
    std::vector<uint8_t> roi, mask, chunk;
    bool ok = false;
    if (control & 0x40) {  // the C API with roi and mask maps
        roi.resize(N);
        mask.resize(N);
        for (size_t i = 0; i < N; i++) {
            uint32_t h = (uint32_t)(i * 2654435761u) ^ (p[7] * 0x9e3779b9u);
            roi[i] = ((h >> 13) & 7) == 0;
            mask[i] = ((h >> 21) & 15) == 0;
        }
        redml_params prm;
        redml_default_params(&prm);
        prm.mode = (redml_mode)mode;
        prm.q = q;
        prm.codec = (redml_codec)codec;
        prm.shuffle = (redml_shuffle)shuffle;
        prm.recon = (redml_recon)recon;
        prm.tile = (uint16_t)tile;
        prm.gain = gain;
        prm.mu_min = mu_min;
        prm.block_elems = block;
        prm.roi_margin = (uint16_t)margin;
        prm.roi_snr = snr;
        prm.seed = cd[12];
        prm.nthreads = 1;
        void *out = nullptr;
        size_t out_size = 0;
        redml_status s = redml_encode(frame.data(), (redml_dtype)dt, (uint32_t)H, W, roi.data(), mask.data(), &prm,
                                      &out, &out_size);
        if (s != REDML_OK) std::fprintf(stderr, "encode failed: %s\n", redml_last_error());
        FUZZ_ASSERT(s == REDML_OK);
        chunk.assign((uint8_t *)out, (uint8_t *)out + out_size);
        std::free(out);
    } else {
        chunk = fuzz::call_filter(0, 17, cd, (const uint8_t *)frame.data(), N * sizeof(T), (control & 4) ? 13 : 0,
                                  &ok);
        if (!ok) std::fprintf(stderr, "filter encode failed: %s\n", redml_last_error());
        FUZZ_ASSERT(ok);
    }
    std::vector<uint8_t> back = fuzz::call_filter(fuzz::kReverse, 17, cd, chunk.data(), chunk.size(), 0, &ok);
    if (!ok) std::fprintf(stderr, "filter decode failed: %s\n", redml_last_error());
    FUZZ_ASSERT(ok && back.size() == N * sizeof(T));
    check_roundtrip<T>(frame.data(), (const T *)back.data(), N, W, chunk.data(), chunk.size(), mode,
                       roi.empty() ? nullptr : roi.data(), mask.empty() ? nullptr : mask.data());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
    setenv("REDML_NUM_THREADS", "1", 1);  // the filter encodes and decodes with nthreads = 0
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 9) return 0;
    const uint8_t control = data[0];
    const uint8_t *p = data + 1;
    const uint8_t *pix = data + 9;
    const size_t n = size - 9;
    switch (p[0] % 5 + 1) {
        case REDML_UINT16: roundtrip<uint16_t>(control, p, pix, n); break;
        case REDML_INT16: roundtrip<int16_t>(control, p, pix, n); break;
        case REDML_INT32: roundtrip<int32_t>(control, p, pix, n); break;
        case REDML_UINT32: roundtrip<uint32_t>(control, p, pix, n); break;
        default: roundtrip<float>(control, p, pix, n); break;
    }
    return 0;
}
