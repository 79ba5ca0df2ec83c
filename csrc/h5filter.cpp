// h5filter.cpp: the redml HDF5 filter plugin (filter id REDML_H5_FILTER_ID).
//
// The plugin does not link against libhdf5, so one .so serves h5py's bundled HDF5 and
// Debian's libhdf5 (h5dump, h5repack, DIALS). Decoding needs no HDF5 call at all. The
// few calls set_local needs (element type, chunk shape) are resolved at run time: from
// the library handed to redml_h5_init() (Python passes h5py's extension module, which
// links h5py's libhdf5), else from the symbols already loaded in the process (C tools).
//
// cd_values (32-bit each; floats as IEEE-754 bit patterns), see docs/format.md:
//   0 cd layout version (1)   1 mode          2 q            3 codec     4 zstd level
//   5 shuffle                 6 reconstruction 7 tile        8 gain      9 mu_min
//   10 roi_snr               11 roi_margin    12 seed       13 block elements
//   14 dtype code            15 height        16 width      (14-16 appended by set_local)
#include <dlfcn.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "redml.h"

// The plugin's exports (also listed in h5filter.map, the version script that hides the rest).
#define REDML_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

// The subset of HDF5's public ABI this plugin uses (stable since HDF5 1.10).
typedef int64_t hid_t;
typedef int herr_t;
typedef int htri_t;
typedef unsigned long long hsize_t;
typedef int H5Z_filter_t;
typedef htri_t (*H5Z_can_apply_func_t)(hid_t, hid_t, hid_t);
typedef herr_t (*H5Z_set_local_func_t)(hid_t, hid_t, hid_t);
typedef size_t (*H5Z_func_t)(unsigned, size_t, const unsigned[], size_t, size_t *, void **);

struct H5Z_class2_t {
    int version;  // H5Z_CLASS_T_VERS = 1
    H5Z_filter_t id;
    unsigned encoder_present;
    unsigned decoder_present;
    const char *name;
    H5Z_can_apply_func_t can_apply;
    H5Z_set_local_func_t set_local;
    H5Z_func_t filter;
};

const unsigned H5Z_FLAG_REVERSE = 0x0100;
const int H5PL_TYPE_FILTER = 0;
const int H5T_INTEGER = 0, H5T_FLOAT = 1;
const int H5T_SGN_NONE = 0;
const int H5T_ORDER_LE = 0;

const size_t kUserValues = 14, kAllValues = 17;
const unsigned kCdVersion = 1;

struct Hdf5Api {
    int (*Tget_class)(hid_t) = nullptr;
    size_t (*Tget_size)(hid_t) = nullptr;
    int (*Tget_sign)(hid_t) = nullptr;
    int (*Tget_order)(hid_t) = nullptr;
    int (*Pget_chunk)(hid_t, int, hsize_t *) = nullptr;
    herr_t (*Pget_filter_by_id2)(hid_t, H5Z_filter_t, unsigned *, size_t *, unsigned *, size_t, char *,
                                 unsigned *) = nullptr;
    herr_t (*Pmodify_filter)(hid_t, H5Z_filter_t, unsigned, size_t, const unsigned *) = nullptr;
    bool complete() const {
        return Tget_class && Tget_size && Tget_sign && Tget_order && Pget_chunk && Pget_filter_by_id2 &&
               Pmodify_filter;
    }
};
Hdf5Api api;

template <class F>
void resolve(void *handle, const char *name, F &fn) {
    fn = reinterpret_cast<F>(dlsym(handle, name));
}

bool load_api(void *handle) {
    Hdf5Api a;
    resolve(handle, "H5Tget_class", a.Tget_class);
    resolve(handle, "H5Tget_size", a.Tget_size);
    resolve(handle, "H5Tget_sign", a.Tget_sign);
    resolve(handle, "H5Tget_order", a.Tget_order);
    resolve(handle, "H5Pget_chunk", a.Pget_chunk);
    resolve(handle, "H5Pget_filter_by_id2", a.Pget_filter_by_id2);
    resolve(handle, "H5Pmodify_filter", a.Pmodify_filter);
    if (!a.complete()) return false;
    api = a;
    return true;
}

float as_float(unsigned v) {
    float f;
    std::memcpy(&f, &v, 4);
    return f;
}

// Fills params from cd_values (missing trailing values keep their defaults). False when a
// value does not fit its field. This parser and the Python table of the settings
// (redml_reduce.codec.SETTINGS, which writes and reads these values) must agree.
bool params_from_cd(size_t n, const unsigned cd[], redml_params *p) {
    redml_default_params(p);
    if (n > 1) p->mode = (redml_mode)cd[1];
    if (n > 2) p->q = as_float(cd[2]);
    if (n > 3) p->codec = (redml_codec)cd[3];
    if (n > 4) p->level = (int)(int32_t)cd[4];
    if (n > 5) p->shuffle = (redml_shuffle)cd[5];
    if (n > 6) p->recon = (redml_recon)cd[6];
    if (n > 7) p->tile = (uint16_t)cd[7];
    if (n > 8) p->gain = as_float(cd[8]);
    if (n > 9) p->mu_min = as_float(cd[9]);
    if (n > 10) p->roi_snr = as_float(cd[10]);
    if (n > 11) p->roi_margin = (uint16_t)cd[11];
    if (n > 12) p->seed = cd[12];
    if (n > 13) p->block_elems = cd[13];
    if ((n > 7 && cd[7] > 0xFFFF) || (n > 11 && cd[11] > 0xFFFF)) return false;  // 16-bit fields
    // q is stored in quantized mode only (> 0 there); the other modes store 0.0.
    return p->mode == REDML_MODE_QUANTIZED ? p->q > 0 : (n <= 2 || cd[2] == 0);
}

// Defaults of the user values, as their 32-bit words.
void default_cd(unsigned cd[kUserValues]) {
    redml_params p;
    redml_default_params(&p);
    auto bits = [](float f) {
        unsigned u;
        std::memcpy(&u, &f, 4);
        return u;
    };
    unsigned d[kUserValues] = {kCdVersion, (unsigned)p.mode, bits(p.q), (unsigned)p.codec, (unsigned)p.level,
                               (unsigned)p.shuffle, (unsigned)p.recon, p.tile, bits(p.gain), bits(p.mu_min),
                               bits(p.roi_snr), p.roi_margin, p.seed, p.block_elems};
    std::memcpy(cd, d, sizeof(d));
}

herr_t set_local(hid_t dcpl, hid_t type, hid_t) {
    if (!api.complete() && !load_api(RTLD_DEFAULT)) return -1;
    unsigned flags = 0, config = 0, cd[kAllValues + 8];
    size_t n = kAllValues + 8;
    if (api.Pget_filter_by_id2(dcpl, REDML_H5_FILTER_ID, &flags, &n, cd, 0, nullptr, &config) < 0) return -1;
    if (n > kAllValues) return -1;
    unsigned full[kAllValues];
    default_cd(full);
    for (size_t i = 0; i < n && i < kUserValues; i++) full[i] = cd[i];
    if (full[0] != kCdVersion) return -1;
    redml_params p;
    // refuse at creation, not at the first write
    if (!params_from_cd(kUserValues, full, &p) || redml_check_params(&p) != REDML_OK) return -1;

    int cls = api.Tget_class(type);
    size_t size = api.Tget_size(type);
    int sign = api.Tget_sign(type);
    if (api.Tget_order(type) != H5T_ORDER_LE) return -1;
    redml_dtype dt;
    if (cls == H5T_INTEGER && size == 2) dt = sign == H5T_SGN_NONE ? REDML_UINT16 : REDML_INT16;
    else if (cls == H5T_INTEGER && size == 4) dt = sign == H5T_SGN_NONE ? REDML_UINT32 : REDML_INT32;
    else if (cls == H5T_FLOAT && size == 4) dt = REDML_FLOAT32;
    else return -1;

    hsize_t dims[32];
    int nd = api.Pget_chunk(dcpl, 32, dims);
    if (nd < 1) return -1;
    for (int i = 0; i + 2 < nd; i++)
        if (dims[i] != 1) return -1;  // one chunk = one frame
    hsize_t h = nd >= 2 ? dims[nd - 2] : 1, w = dims[nd - 1];
    if (h == 0 || w == 0 || h > 0xffffffffULL || w > 0xffffffffULL) return -1;
    full[14] = (unsigned)dt;
    full[15] = (unsigned)h;
    full[16] = (unsigned)w;
    // Mandatory: h5py adds filters given by id as optional, and HDF5 would then store a
    // chunk the encoder refused uncompressed, silently. A failed encode must fail the write.
    const unsigned H5Z_FLAG_OPTIONAL = 0x0001;
    return api.Pmodify_filter(dcpl, REDML_H5_FILTER_ID, flags & ~H5Z_FLAG_OPTIONAL, kAllValues, full) < 0 ? -1 : 0;
}

size_t filter(unsigned flags, size_t n, const unsigned cd[], size_t nbytes, size_t *buf_size, void **buf) {
    if (flags & H5Z_FLAG_REVERSE) {
        redml_info info;
        if (redml_inspect(*buf, nbytes, &info) != REDML_OK) return 0;
        if (n >= kAllValues && (cd[14] != (unsigned)info.dtype || cd[15] != info.height || cd[16] != info.width))
            return 0;  // chunk does not belong to this dataset
        size_t out_size = (size_t)info.height * info.width * redml_dtype_size(info.dtype);
        void *out = std::malloc(out_size);
        if (!out) return 0;
        if (redml_decode(*buf, nbytes, out, out_size, -1, 0) != REDML_OK) {
            std::free(out);
            return 0;
        }
        std::free(*buf);
        *buf = out;
        *buf_size = out_size;
        return out_size;
    }
    if (n < kAllValues || cd[0] != kCdVersion) return 0;
    redml_params p;
    if (!params_from_cd(n, cd, &p)) return 0;
    redml_dtype dt = (redml_dtype)cd[14];
    uint32_t h = cd[15], w = cd[16];
    if (redml_dtype_size(dt) == 0 || nbytes != (size_t)h * w * redml_dtype_size(dt)) return 0;
    void *out = nullptr;
    size_t out_size = 0;
    if (redml_encode(*buf, dt, h, w, nullptr, nullptr, &p, &out, &out_size) != REDML_OK) return 0;
    std::free(*buf);
    *buf = out;
    *buf_size = out_size;
    return out_size;
}

const H5Z_class2_t redml_class = {
    1, REDML_H5_FILTER_ID, 1, 1, "redml_reduce: spot-preserving, Poisson-bounded compression of diffraction frames",
    nullptr, set_local, filter,
};

}  // namespace

REDML_EXPORT int H5PLget_plugin_type(void) { return H5PL_TYPE_FILTER; }
REDML_EXPORT const void *H5PLget_plugin_info(void) { return &redml_class; }

// Resolves the HDF5 functions set_local needs from the library at `path` (or one of its
// dependencies). Returns 0 on success, -1 if they cannot be found.
REDML_EXPORT int redml_h5_init(const char *path) {
    void *handle = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
    if (!handle) handle = dlopen(path, RTLD_LAZY | RTLD_LOCAL);
    if (!handle) return -1;
    return load_api(handle) ? 0 : -1;
}
