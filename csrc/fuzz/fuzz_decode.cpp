// fuzz_decode.cpp: libFuzzer target for the decoding half of the C API (redml.h):
// redml_inspect, redml_decode, redml_exact_mask, redml_model_shape, redml_model on
// arbitrary bytes. Build and run: `make fuzz` (docs/reliability.md).
//
// Beyond "no crash, no sanitizer report, no leak", it checks the API contract:
//   - every failure is a documented status with a message, never REDML_E_INTERNAL;
//   - a chunk that decodes also yields its exact mask (with n_exact pixels) and model;
//   - too small output buffers are refused with REDML_E_ARG.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "fuzz_common.h"
#include "redml.h"

namespace {

void check_status(redml_status s, bool null_input = false) {
    FUZZ_ASSERT(s == REDML_OK || s == REDML_E_CORRUPT || s == REDML_E_VERSION || s == REDML_E_ENTROPY ||
                (null_input && s == REDML_E_ARG));
    if (s != REDML_OK) {
        const char *msg = redml_last_error();
        FUZZ_ASSERT(msg != nullptr && msg[0] != '\0');
    }
}

void run(const uint8_t *data, size_t size, uint8_t control) {
    redml_info info;
    redml_status s = redml_inspect(data, size, &info);
    check_status(s, data == nullptr);  // an empty input comes as a null pointer
    uint32_t rows = 0, cols = 0;
    redml_status ms = redml_model_shape(data, size, &rows, &cols);
    FUZZ_ASSERT((ms == REDML_OK) == (s == REDML_OK));
    if (s != REDML_OK) {
        // Whatever inspect refuses, decode refuses too (and never writes to the buffer).
        uint8_t sentinel[8] = {0xA5, 0xA5, 0xA5, 0xA5, 0xA5, 0xA5, 0xA5, 0xA5};
        FUZZ_ASSERT(redml_decode(data, size, sentinel, sizeof(sentinel), -1, 1) != REDML_OK);
        for (uint8_t b : sentinel) FUZZ_ASSERT(b == 0xA5);
        return;
    }
    FUZZ_ASSERT(info.version == REDML_FORMAT_VERSION);
    FUZZ_ASSERT(info.height >= 1 && info.width >= 1 && redml_dtype_size(info.dtype) != 0);
    const size_t npix = (size_t)info.height * info.width;
    FUZZ_ASSERT(info.n_exact <= npix);
    const size_t tiles = (size_t)rows * cols;
    if (npix > fuzz::max_pixels() || tiles > fuzz::max_pixels()) return;

    const size_t nbytes = npix * redml_dtype_size(info.dtype);
    // Exactly sized heap buffers, so AddressSanitizer sees any write past the frame.
    std::vector<uint8_t> out(nbytes);
    FUZZ_ASSERT(redml_decode(data, size, out.data(), nbytes - 1, -1, 1) == REDML_E_ARG);
    // control bit 0: override the stored reconstruction with bits 1-2 (0..3)
    int recon = (control & 1) ? (int)((control >> 1) & 3) : -1;
    redml_status ds = redml_decode(data, size, out.data(), nbytes, recon, 1);
    const bool conditional_chunk = info.recon == REDML_RECON_MEAN || info.recon == REDML_RECON_DRAW;
    if (recon >= REDML_RECON_MEAN && !conditional_chunk) {
        FUZZ_ASSERT(ds == REDML_E_ARG);  // mean/draw cannot read other chunks' bins
        ds = redml_decode(data, size, out.data(), nbytes, -1, 1);
    }
    check_status(ds);

    std::vector<uint8_t> mask(npix);
    FUZZ_ASSERT(redml_exact_mask(data, size, mask.data(), npix - 1) == REDML_E_ARG);
    redml_status es = redml_exact_mask(data, size, mask.data(), npix);
    check_status(es);
    std::vector<float> mean(tiles), step(tiles);
    redml_status mos = redml_model(data, size, mean.data(), step.data(), tiles);
    check_status(mos);
    if (ds == REDML_OK) {
        FUZZ_ASSERT(es == REDML_OK && mos == REDML_OK);
        uint64_t n = 0;
        for (uint8_t m : mask) n += m != 0;
        FUZZ_ASSERT(n == info.n_exact);
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
    setenv("REDML_NUM_THREADS", "1", 1);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t control = size ? data[size - 1] : 0;
    {
        // An exactly sized copy: reads past the end are caught by AddressSanitizer.
        std::vector<uint8_t> raw(data, data + size);
        run(raw.data(), raw.size(), control);
    }
    std::vector<uint8_t> fixed(data, data + size);
    if (fuzz::repair_checksums(fixed) && std::memcmp(fixed.data(), data, size) != 0) run(fixed.data(), fixed.size(), control);
    return 0;
}
