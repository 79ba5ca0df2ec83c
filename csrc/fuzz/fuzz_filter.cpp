// fuzz_filter.cpp: libFuzzer target for the HDF5 filter entry point in decode direction,
// called the way HDF5 calls it: through H5PLget_plugin_info() and the H5Z_class2_t filter
// callback, with a malloc'ed buffer the callback takes ownership of. `make fuzz`.
//
// Input: one control byte, then the chunk bytes.
//   bits 0-1: the cd_values HDF5 passes: none / the 14 user values / all 17 with the
//             chunk's own dtype and shape / all 17 with another shape (must be refused);
//   bit 2:    the buffer is larger than nbytes, its tail garbage (HDF5 does that).
// Checks: a failed call leaves the buffer with the caller; a successful one returns
// exactly the frame redml_decode gives, and only for chunks of the dataset's shape.
#include <cstdint>
#include <cstring>
#include <vector>

#include "fuzz_common.h"
#include "redml.h"

namespace {

uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void decode_case(uint8_t control, const uint8_t *chunk, size_t size) {
    redml_info info;
    bool valid = redml_inspect(chunk, size, &info) == REDML_OK;
    if (valid && (size_t)info.height * info.width > fuzz::max_pixels()) return;
    using fuzz::float_bits;
    unsigned cd[17] = {1, 0, 0, 3, 1, 1, 0, 32, float_bits(1.0f), float_bits(1.0f), float_bits(4.0f), 2,
                       0x5eed1234u, 1u << 18, 0, 0, 0};
    size_t n = 0;
    bool foreign = false;
    switch (control & 3) {
        case 0: n = 0; break;
        case 1: n = 14; break;
        default:
            n = 17;
            if (size >= 20) {
                cd[14] = chunk[5];
                cd[15] = get_u32(chunk + 12);
                cd[16] = get_u32(chunk + 16) + ((control & 3) == 3);
                foreign = (control & 3) == 3;
            }
            break;
    }
    bool ok = false;
    std::vector<uint8_t> out = fuzz::call_filter(fuzz::kReverse, n, cd, chunk, size, (control & 4) ? 61 : 0, &ok);
    if (!ok) return;
    FUZZ_ASSERT(valid && !foreign);
    size_t nbytes = (size_t)info.height * info.width * redml_dtype_size(info.dtype);
    FUZZ_ASSERT(out.size() == nbytes);
    std::vector<uint8_t> ref(nbytes);
    FUZZ_ASSERT(redml_decode(chunk, size, ref.data(), nbytes, -1, 1) == REDML_OK);
    FUZZ_ASSERT(std::memcmp(ref.data(), out.data(), nbytes) == 0);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
    setenv("REDML_NUM_THREADS", "1", 1);  // the filter decodes with nthreads = 0
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    const uint8_t control = data[0];
    std::vector<uint8_t> chunk(data + 1, data + size);
    decode_case(control, chunk.data(), chunk.size());
    if (fuzz::repair_checksums(chunk)) decode_case(control, chunk.data(), chunk.size());
    return 0;
}
