// h5filter.cpp: the redml HDF5 filter plugin (filter id REDML_H5_FILTER_ID).
//
// The plugin does not link against libhdf5, so one .so serves h5py's bundled HDF5 and
// Debian's libhdf5 (h5dump, h5repack, DIALS), whether h5py registers it or HDF5 loads it
// from HDF5_PLUGIN_PATH. The HDF5 calls it makes (element type and chunk shape in
// set_local, H5Epush2 to say why a chunk failed) must go to the very library that called
// it: ids of one libhdf5 mean nothing to another, and a process may hold two (h5py's,
// loaded privately, beside a system one). HDF5 is the only caller of the callbacks, so
// the library that holds a callback's return address is that library (api_at).
//
// cd_values (32-bit each; floats as IEEE-754 bit patterns), see docs/format.md:
//   0 cd layout version (1)   1 mode          2 q            3 codec     4 zstd level
//   5 shuffle                 6 reconstruction 7 tile        8 gain      9 mu_min
//   10 roi_snr               11 roi_margin    12 seed       13 block elements
//   14 dtype code            15 height        16 width      (14-16 appended by set_local)
//   17 read noise (f32)      18 markers       (integrating detectors; optional: a user
//   who sets them gives 19 values, 14-16 being placeholders that set_local overwrites)
#include <dlfcn.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

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

const unsigned H5Z_FLAG_OPTIONAL = 0x0001, H5Z_FLAG_REVERSE = 0x0100;
const int H5PL_TYPE_FILTER = 0;
const int H5T_INTEGER = 0, H5T_FLOAT = 1;
const int H5T_SGN_NONE = 0;
const int H5T_ORDER_LE = 0;

const size_t kUserValues = 14, kAllValues = 17;
const size_t kMaxValues = 19;  // with the optional read noise and markers (17, 18)
const char *const kBadSettings = "settings out of range (tile or roi_margin above 65535, or q not matching the mode)";
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
    // Error reporting: H5Epush2 and the ids of HDF5's error class, the "Data filters" major
    // and the "Filter operation failed" minor (global variables, set when HDF5 initialises).
    herr_t (*Epush2)(hid_t, const char *, const char *, unsigned, hid_t, hid_t, hid_t, const char *, ...) = nullptr;
    const hid_t *err_cls = nullptr, *err_pline = nullptr, *err_cantfilter = nullptr;
    // HDF5 >= 2.0 only: its error stack can be paused (see report()).
    herr_t (*Eis_paused)(hid_t, bool *) = nullptr;
    hid_t (*Eget_current_stack)(void) = nullptr;
    herr_t (*Eset_current_stack)(hid_t) = nullptr;

    bool complete() const {
        return Tget_class && Tget_size && Tget_sign && Tget_order && Pget_chunk && Pget_filter_by_id2 &&
               Pmodify_filter;
    }
    bool can_report() const { return Epush2 && err_cls && err_pline && err_cantfilter; }
};

template <class F>
void resolve(void *handle, const char *name, F &fn) {
    fn = reinterpret_cast<F>(dlsym(handle, name));
}

Hdf5Api load_api(void *handle) {
    Hdf5Api a;
    resolve(handle, "H5Tget_class", a.Tget_class);
    resolve(handle, "H5Tget_size", a.Tget_size);
    resolve(handle, "H5Tget_sign", a.Tget_sign);
    resolve(handle, "H5Tget_order", a.Tget_order);
    resolve(handle, "H5Pget_chunk", a.Pget_chunk);
    resolve(handle, "H5Pget_filter_by_id2", a.Pget_filter_by_id2);
    resolve(handle, "H5Pmodify_filter", a.Pmodify_filter);
    resolve(handle, "H5Epush2", a.Epush2);
    resolve(handle, "H5E_ERR_CLS_g", a.err_cls);
    resolve(handle, "H5E_PLINE_g", a.err_pline);
    resolve(handle, "H5E_CANTFILTER_g", a.err_cantfilter);
    resolve(handle, "H5Eis_paused", a.Eis_paused);
    resolve(handle, "H5Eget_current_stack", a.Eget_current_stack);
    resolve(handle, "H5Eset_current_stack", a.Eset_current_stack);
    return a;
}

// The API of the library holding `address` (dlsym on its handle also searches its
// dependencies); the global scope when that library cannot be named (HDF5 linked
// statically into the program). No state is kept: this runs once per dataset creation
// and once per failed chunk, and any thread may call it.
Hdf5Api api_at(const void *address) {
    Dl_info info;
    void *handle = nullptr;
    if (address && dladdr(address, &info) && info.dli_fname && info.dli_fname[0])
        handle = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
    Hdf5Api a = load_api(handle ? handle : RTLD_DEFAULT);
    if (handle) dlclose(handle);  // drops the reference RTLD_NOLOAD took; the library stays loaded
    return a;
}

// Puts `reason` on the error stack of the HDF5 that called the filter, under HDF5's own
// "filter returned failure" entries, so h5py's exception and h5dump --enable-error-stack
// say why (nothing to do when the caller is not HDF5, e.g. a fuzzer). HDF5 >= 2.0 pauses
// its error stack while a filter runs, which drops anything pushed there: the entry then
// goes onto a copy of the stack, which replaces it (the pause itself is left as it was).
void report(const Hdf5Api &api, const char *func, const std::string &reason) {
    if (!api.can_report()) return;
    bool paused = false;
    hid_t stack = 0;  // H5E_DEFAULT
    if (api.Eis_paused && api.Eget_current_stack && api.Eset_current_stack && api.Eis_paused(0, &paused) >= 0 &&
        paused) {
        stack = api.Eget_current_stack();  // a copy; the current stack is left empty
        if (stack < 0) return;
    }
    api.Epush2(stack, __FILE__, func, __LINE__, *api.err_cls, *api.err_pline, *api.err_cantfilter, "%s",
               ("redml filter: " + reason).c_str());
    if (stack != 0) api.Eset_current_stack(stack);  // copies it back and closes the copy
}

// "corrupt chunk: header checksum mismatch": the status and the core's detail.
std::string why(redml_status s) {
    std::string detail = redml_last_error();
    return std::string(redml_strerror(s)) + (detail.empty() ? "" : ": " + detail);
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
    if (n > 17) p->read_noise = as_float(cd[17]);
    if (n > 18) p->markers = (redml_markers)cd[18];
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

// Called by HDF5 when a dataset is created: checks the settings, element type and chunk
// shape, and stores the full cd_values (dtype and frame shape appended).
herr_t set_local(hid_t dcpl, hid_t type, hid_t) try {
    const Hdf5Api api = api_at(__builtin_return_address(0));
    auto fail = [&api](const std::string &reason) {
        report(api, "set_local", reason);
        return herr_t(-1);
    };
    if (!api.complete()) return fail("the HDF5 library that called it lacks H5Tget_class, H5Pget_chunk or kin");
    unsigned flags = 0, config = 0, cd[kMaxValues + 8];
    size_t n = kMaxValues + 8;
    if (api.Pget_filter_by_id2(dcpl, REDML_H5_FILTER_ID, &flags, &n, cd, 0, nullptr, &config) < 0)
        return fail("cannot read its settings from the dataset creation property list");
    if (n > kMaxValues) return fail(std::to_string(n) + " settings values, at most " + std::to_string(kMaxValues));
    unsigned full[kMaxValues] = {0};  // 17, 18 default to 0: no read noise, negative markers
    default_cd(full);
    for (size_t i = 0; i < n && i < kUserValues; i++) full[i] = cd[i];
    for (size_t i = kAllValues; i < n; i++) full[i] = cd[i];
    // The optional values are kept only where given, so other datasets keep their 17.
    const size_t n_out = n > kAllValues ? kMaxValues : kAllValues;
    if (full[0] != kCdVersion)
        return fail("settings layout " + std::to_string(full[0]) + ", this plugin reads " + std::to_string(kCdVersion));
    redml_params p;
    // refuse at creation, not at the first write
    if (!params_from_cd(n_out, full, &p)) return fail(kBadSettings);
    redml_status st = redml_check_params(&p);
    if (st != REDML_OK) return fail(why(st));

    int cls = api.Tget_class(type);
    size_t size = api.Tget_size(type);
    int sign = api.Tget_sign(type);
    if (api.Tget_order(type) != H5T_ORDER_LE) return fail("big-endian element types are not supported");
    redml_dtype dt;
    if (cls == H5T_INTEGER && size == 2) dt = sign == H5T_SGN_NONE ? REDML_UINT16 : REDML_INT16;
    else if (cls == H5T_INTEGER && size == 4) dt = sign == H5T_SGN_NONE ? REDML_UINT32 : REDML_INT32;
    else if (cls == H5T_FLOAT && size == 4) dt = REDML_FLOAT32;
    else return fail("element type not supported (uint16, int16, uint32, int32, float32)");

    hsize_t dims[32];
    int nd = api.Pget_chunk(dcpl, 32, dims);
    if (nd < 1) return fail("the dataset must be chunked");
    for (int i = 0; i + 2 < nd; i++)
        if (dims[i] != 1) return fail("a chunk must hold one frame: chunks=(1, height, width)");
    hsize_t h = nd >= 2 ? dims[nd - 2] : 1, w = dims[nd - 1];
    if (h == 0 || w == 0 || h > 0xffffffffULL || w > 0xffffffffULL) return fail("frame height or width out of range");
    full[14] = (unsigned)dt;
    full[15] = (unsigned)h;
    full[16] = (unsigned)w;
    // Mandatory: h5py adds filters given by id as optional, and HDF5 would then store a
    // chunk the encoder refused uncompressed, silently. A failed encode must fail the write.
    if (api.Pmodify_filter(dcpl, REDML_H5_FILTER_ID, flags & ~H5Z_FLAG_OPTIONAL, n_out, full) < 0)
        return fail("cannot store its settings in the dataset creation property list");
    return 0;
} catch (...) {  // out of memory for a message: never let an exception into HDF5
    return -1;
}

// "16 x 16 uint16", for messages.
std::string frame_text(redml_dtype dt, uint32_t h, uint32_t w) {
    static const char *const names[] = {"?", "uint16", "int16", "int32", "uint32", "float32"};
    return std::to_string(h) + " x " + std::to_string(w) + " " + names[(unsigned)dt < 6 ? (unsigned)dt : 0];
}

// Sets `reason`; returns 0, the filter's failure.
size_t failed(std::string &reason, std::string text) {
    reason = std::move(text);
    return 0;
}

// Decodes the chunk in *buf in place; 0 with `reason` set on failure.
size_t decode_chunk(size_t n, const unsigned cd[], size_t nbytes, size_t *buf_size, void **buf, std::string &reason) {
    const std::string what = "cannot decode a chunk of " + std::to_string(nbytes) + " bytes: ";
    redml_info info;
    redml_status st = redml_inspect(*buf, nbytes, &info);
    if (st != REDML_OK) return failed(reason, what + why(st));
    if (n >= kAllValues && (cd[14] != (unsigned)info.dtype || cd[15] != info.height || cd[16] != info.width))
        return failed(reason, what + "it holds a " + frame_text(info.dtype, info.height, info.width) + " frame, " +
                                  "the dataset's frames are " + frame_text((redml_dtype)cd[14], cd[15], cd[16]));
    size_t out_size = (size_t)info.height * info.width * redml_dtype_size(info.dtype);
    void *out = std::malloc(out_size);
    if (!out) return failed(reason, what + "out of memory");
    st = redml_decode(*buf, nbytes, out, out_size, -1, 0);
    if (st != REDML_OK) {
        std::free(out);
        return failed(reason, what + why(st));
    }
    std::free(*buf);
    *buf = out;
    *buf_size = out_size;
    return out_size;
}

// Encodes the frame in *buf in place; 0 with `reason` set on failure.
size_t encode_chunk(size_t n, const unsigned cd[], size_t nbytes, size_t *buf_size, void **buf, std::string &reason) {
    if (n < kAllValues || cd[0] != kCdVersion) return failed(reason, "settings incomplete (set_local did not run)");
    redml_params p;
    if (!params_from_cd(n, cd, &p)) return failed(reason, kBadSettings);
    redml_dtype dt = (redml_dtype)cd[14];
    uint32_t h = cd[15], w = cd[16];
    if (redml_dtype_size(dt) == 0 || nbytes != (size_t)h * w * redml_dtype_size(dt))
        return failed(reason, "a chunk of " + std::to_string(nbytes) + " bytes is not one frame of the dataset");
    void *out = nullptr;
    size_t out_size = 0;
    redml_status st = redml_encode(*buf, dt, h, w, nullptr, nullptr, &p, &out, &out_size);
    if (st != REDML_OK) return failed(reason, "cannot encode a " + frame_text(dt, h, w) + " frame: " + why(st));
    std::free(*buf);
    *buf = out;
    *buf_size = out_size;
    return out_size;
}

size_t filter(unsigned flags, size_t n, const unsigned cd[], size_t nbytes, size_t *buf_size, void **buf) try {
    const void *caller = __builtin_return_address(0);
    std::string reason;
    size_t r = (flags & H5Z_FLAG_REVERSE) ? decode_chunk(n, cd, nbytes, buf_size, buf, reason)
                                          : encode_chunk(n, cd, nbytes, buf_size, buf, reason);
    // A failing optional filter is skipped by HDF5 on write, by design: nothing to report.
    if (r == 0 && ((flags & H5Z_FLAG_REVERSE) || !(flags & H5Z_FLAG_OPTIONAL)))
        report(api_at(caller), "filter", reason);
    return r;
} catch (...) {  // out of memory for a message: never let an exception into HDF5
    return 0;
}

const H5Z_class2_t redml_class = {
    1, REDML_H5_FILTER_ID, 1, 1, "redml_reduce: spot-preserving, Poisson-bounded compression of diffraction frames",
    nullptr, set_local, filter,
};

}  // namespace

REDML_EXPORT int H5PLget_plugin_type(void) { return H5PL_TYPE_FILTER; }
REDML_EXPORT const void *H5PLget_plugin_info(void) { return &redml_class; }

// Whether the library at `path` (or one of its dependencies), already loaded, provides
// every HDF5 function the filter needs: 0 yes, -1 no. The plugin finds them by itself when
// called; Python checks h5py's library with this at import, to fail early. The error-stack
// symbols are optional: without them the filter still works, it only cannot say why.
REDML_EXPORT int redml_h5_check(const char *path) {
    void *handle = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
    if (!handle) return -1;
    Hdf5Api a = load_api(handle);
    dlclose(handle);
    return a.complete() ? 0 : -1;
}
