// pybind.cpp: redml_reduce._core, a thin binding of redml.h, redml_spots.h and redml_jungfrau.h. Argument checking with
// user-facing messages happens in redml_reduce/codec.py; the core re-checks everything.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>

#include "internal.h"
#include "redml.h"
#include "redml_jungfrau.h"
#include "redml_spots.h"

namespace py = pybind11;

namespace {

[[noreturn]] void raise(redml_status s) {
    std::string msg = std::string(redml_strerror(s)) + ": " + redml_last_error();
    if (s == REDML_E_ARG) throw py::value_error(msg);
    if (s == REDML_E_NOMEM) throw std::bad_alloc();
    throw py::value_error(msg);  // mapped to redml_reduce.RedmlError by the Python layer
}

redml_dtype dtype_code(const py::dtype &dt) {
    std::string s = py::str(dt.attr("str"));  // e.g. "<u2"; the chunk format is little-endian
    if (s == "<u2") return REDML_UINT16;
    if (s == "<i2") return REDML_INT16;
    if (s == "<i4") return REDML_INT32;
    if (s == "<u4") return REDML_UINT32;
    if (s == "<f4") return REDML_FLOAT32;
    throw py::type_error("unsupported dtype " + std::string(py::str(dt)));
}

py::dtype numpy_dtype(redml_dtype d) {
    switch (d) {
        case REDML_UINT16: return py::dtype::of<uint16_t>();
        case REDML_INT16: return py::dtype::of<int16_t>();
        case REDML_INT32: return py::dtype::of<int32_t>();
        case REDML_UINT32: return py::dtype::of<uint32_t>();
        case REDML_FLOAT32: return py::dtype::of<float>();
    }
    throw py::value_error("unknown dtype code");
}

using U8Array = py::array_t<uint8_t, py::array::c_style>;

const uint8_t *optional_map(const py::object &obj, size_t n, const char *what) {
    if (obj.is_none()) return nullptr;
    U8Array a = obj.cast<U8Array>();
    if ((size_t)a.size() != n) throw py::value_error(std::string(what) + " must have the frame's shape");
    return a.data();
}

// The finder's parameters from their fields in the order of redml_finder_params.
redml_finder_params finder_params(const py::tuple &t) {
    if (t.size() != 11) throw py::value_error("spots: the 11 fields of the finder's parameters");
    return redml_finder_params{t[0].cast<int>(),   t[1].cast<float>(), t[2].cast<float>(),
                               t[3].cast<float>(), t[4].cast<int>(),   t[5].cast<float>(),
                               t[6].cast<int>(),   t[7].cast<int>(),   t[8].cast<float>(),
                               t[9].cast<float>(), (redml_markers)t[10].cast<int>()};
}

// The crystals of a lattice region (redml_reduce.lattice.LatticeRegion.records()): a float64
// (n, 21) array of the fields of redml_lattice in their order, and n centring letters.
std::vector<redml_lattice> lattice_models(py::object lattice) {
    std::vector<redml_lattice> out;
    if (lattice.is_none()) return out;
    py::tuple t = lattice.cast<py::tuple>();
    if (t.size() != 2) throw py::value_error("lattice must be (records, centrings)");
    auto rec = t[0].cast<py::array_t<double, py::array::c_style | py::array::forcecast>>();
    const std::string centrings = t[1].cast<std::string>();
    if (rec.ndim() != 2 || rec.shape(1) != (py::ssize_t)redml::kLatticeDoubles ||
        (size_t)rec.shape(0) != centrings.size())
        throw py::value_error("lattice records must be (n, 21) with one centring letter each");
    for (py::ssize_t i = 0; i < rec.shape(0); i++) {
        out.push_back(redml::lattice_model_from_doubles(rec.data() + redml::kLatticeDoubles * i, centrings[(size_t)i]));
    }
    return out;
}

// A chunk; with spots (the finder's parameters, a tuple), (chunk, peak records) of
// redml_encode_spots: the ROI is the spots' dilated mask and roi must be None.
// With lattice (lattice_models), the crystals' discs are kept exact besides roi, stored as the models.
py::object encode(py::array frame, py::object roi, py::object mask, int mode, float q, float gain, float mu_min,
                  int codec, int level, int shuffle, int recon, int tile, float roi_snr, int roi_margin,
                  uint32_t seed, uint32_t block_elems, int nthreads, float read_noise, int markers,
                  py::object spots, py::object lattice) {
    if (frame.ndim() != 2) throw py::value_error("frame must be 2-D");
    if (!(frame.flags() & py::array::c_style)) throw py::value_error("frame must be C-contiguous");
    if (tile < 1 || tile > 65535 || roi_margin < 0 || roi_margin > 65535)
        throw py::value_error("tile and roi_margin must be in [1, 65535] and [0, 65535]");
    redml_dtype dt = dtype_code(frame.dtype());
    uint32_t h = (uint32_t)frame.shape(0), w = (uint32_t)frame.shape(1);
    size_t n = (size_t)frame.shape(0) * (size_t)frame.shape(1);
    // Keep the converted maps alive while the GIL is released.
    py::object roi_arr = roi.is_none() ? roi : py::object(roi.cast<U8Array>());
    py::object mask_arr = mask.is_none() ? mask : py::object(mask.cast<U8Array>());
    const uint8_t *roi_p = optional_map(roi_arr, n, "roi");
    const uint8_t *mask_p = optional_map(mask_arr, n, "mask");
    redml_params p;
    redml_default_params(&p);
    p.mode = (redml_mode)mode;
    p.q = q;
    p.gain = gain;
    p.mu_min = mu_min;
    p.codec = (redml_codec)codec;
    p.level = level;
    p.shuffle = (redml_shuffle)shuffle;
    p.recon = (redml_recon)recon;
    p.tile = (uint16_t)tile;
    p.roi_snr = roi_snr;
    p.roi_margin = (uint16_t)roi_margin;
    p.seed = seed;
    p.block_elems = block_elems;
    p.nthreads = nthreads;
    p.read_noise = read_noise;
    p.markers = (redml_markers)markers;
    const bool want_spots = !spots.is_none();
    if (want_spots && roi_p) throw py::value_error("roi and spots are exclusive");
    const std::vector<redml_lattice> crystals = lattice_models(lattice);
    if (want_spots && !crystals.empty()) throw py::value_error("a lattice region and spots are exclusive");
    const redml_finder_params fp = want_spots ? finder_params(spots.cast<py::tuple>()) : redml_finder_params{};
    void *out = nullptr;
    size_t out_size = 0;
    redml_peak *peaks = nullptr;
    size_t npeaks = 0;
    redml_status s;
    {
        py::gil_scoped_release release;
        if (want_spots)
            s = redml_encode_spots(frame.data(), dt, h, w, mask_p, &p, &fp, &out, &out_size, &peaks, &npeaks);
        else if (!lattice.is_none())
            s = redml_encode_lattice(frame.data(), dt, h, w, roi_p, mask_p, &p, crystals.data(), crystals.size(), &out,
                                     &out_size);
        else
            s = redml_encode(frame.data(), dt, h, w, roi_p, mask_p, &p, &out, &out_size);
    }
    if (s != REDML_OK) raise(s);
    py::bytes result((const char *)out, out_size);
    std::free(out);
    if (!want_spots) return std::move(result);
    py::bytes raw((const char *)peaks, npeaks * sizeof(redml_peak));
    redml_free(peaks);
    return py::make_tuple(result, raw);
}

redml_info inspect_buffer(const py::buffer_info &b) {
    redml_info info;
    redml_status s = redml_inspect(b.ptr, (size_t)b.size * b.itemsize, &info);
    if (s != REDML_OK) raise(s);
    return info;
}

py::array decode(py::buffer chunk, int recon, int nthreads) {
    py::buffer_info b = chunk.request();
    redml_info info = inspect_buffer(b);
    py::array out(numpy_dtype(info.dtype), {(py::ssize_t)info.height, (py::ssize_t)info.width});
    size_t cap = (size_t)out.nbytes();
    void *dst = out.mutable_data();
    redml_status s;
    {
        py::gil_scoped_release release;
        s = redml_decode(b.ptr, (size_t)b.size * b.itemsize, dst, cap, recon, nthreads);
    }
    if (s != REDML_OK) raise(s);
    return out;
}

py::dict inspect(py::buffer chunk) {
    redml_info i = inspect_buffer(chunk.request());
    py::dict d;
    d["version"] = i.version;
    d["dtype"] = numpy_dtype(i.dtype);
    d["mode"] = (int)i.mode;
    d["codec"] = (int)i.codec;
    d["recon"] = (int)i.recon;
    d["shape"] = py::make_tuple(i.height, i.width);
    d["tile"] = i.tile;
    d["q"] = i.q;
    d["gain"] = i.gain;
    d["mu_min"] = i.mu_min;
    d["seed"] = i.seed;
    d["n_exact"] = i.n_exact;
    d["read_noise"] = i.read_noise;
    return d;
}

// The crystals of a chunk's lattice section as lattice_models takes them: (records, centrings).
py::tuple lattice_records(py::buffer chunk) {
    py::buffer_info b = chunk.request();
    const size_t size = (size_t)b.size * b.itemsize;
    size_t n = 0;
    redml_status s = redml_lattice_crystals(b.ptr, size, nullptr, 0, &n);
    if (s != REDML_OK) raise(s);
    std::vector<redml_lattice> crystals(n);
    if (n && (s = redml_lattice_crystals(b.ptr, size, crystals.data(), n, &n)) != REDML_OK) raise(s);
    py::array_t<double> rec({(py::ssize_t)n, (py::ssize_t)redml::kLatticeDoubles});
    std::string centrings;
    for (size_t i = 0; i < n; i++) {
        redml::lattice_model_doubles(crystals[i], rec.mutable_data() + redml::kLatticeDoubles * i);
        centrings.push_back(crystals[i].centring);
    }
    return py::make_tuple(rec, centrings);
}

py::array exact_mask(py::buffer chunk) {
    py::buffer_info b = chunk.request();
    redml_info info = inspect_buffer(b);
    py::array_t<bool> out({(py::ssize_t)info.height, (py::ssize_t)info.width});
    redml_status s = redml_exact_mask(b.ptr, (size_t)b.size * b.itemsize, (uint8_t *)out.mutable_data(),
                                      (size_t)out.nbytes());
    if (s != REDML_OK) raise(s);
    return out;
}

py::dict model(py::buffer chunk) {
    py::buffer_info b = chunk.request();
    size_t size = (size_t)b.size * b.itemsize;
    uint32_t rows = 0, cols = 0;
    redml_status s = redml_model_shape(b.ptr, size, &rows, &cols);
    if (s != REDML_OK) raise(s);
    py::array_t<float> mean({(py::ssize_t)rows, (py::ssize_t)cols}), step({(py::ssize_t)rows, (py::ssize_t)cols});
    s = redml_model(b.ptr, size, mean.mutable_data(), step.mutable_data(), (size_t)rows * cols);
    if (s != REDML_OK) raise(s);
    py::dict d;
    d["mean"] = mean;
    d["step"] = step;
    return d;
}

// Peak list as a numpy structured array (fields of redml_peak) and the spot mask.
py::tuple find_spots(py::array frame, py::object mask, int kernel, float sigma_b, float sigma_s, float gain,
                     int min_count, float threshold, int min_pixels, int max_pixels, float max_separation,
                     float read_noise, int markers, int nthreads) {
    if (frame.ndim() != 2) throw py::value_error("frame must be 2-D");
    if (!(frame.flags() & py::array::c_style)) throw py::value_error("frame must be C-contiguous");
    redml_dtype dt = dtype_code(frame.dtype());
    uint32_t h = (uint32_t)frame.shape(0), w = (uint32_t)frame.shape(1);
    size_t n = (size_t)frame.shape(0) * (size_t)frame.shape(1);
    py::object mask_arr = mask.is_none() ? mask : py::object(mask.cast<U8Array>());
    const uint8_t *mask_p = optional_map(mask_arr, n, "mask");
    redml_finder_params fp{kernel,     sigma_b,    sigma_s,        gain,       min_count,           threshold,
                           min_pixels, max_pixels, max_separation, read_noise, (redml_markers)markers};
    py::array_t<bool> spot_mask({(py::ssize_t)h, (py::ssize_t)w});
    uint8_t *sm = (uint8_t *)spot_mask.mutable_data();
    redml_peak *peaks = nullptr;
    size_t npeaks = 0;
    redml_status s;
    {
        py::gil_scoped_release release;
        s = redml_find_spots(frame.data(), dt, h, w, mask_p, &fp, sm, &peaks, &npeaks, nthreads);
    }
    if (s != REDML_OK) raise(s);
    py::bytes raw((const char *)peaks, npeaks * sizeof(redml_peak));
    redml_free(peaks);
    return py::make_tuple(raw, spot_mask);
}

// Radial profile: (mean, sigma, count) per bin, from a per-pixel bin map.
py::tuple radial_profile(py::array frame, py::array_t<int32_t, py::array::c_style> bins, int32_t nbins,
                         double clip, int iterations, int nthreads, int markers) {
    if (!(frame.flags() & py::array::c_style)) throw py::value_error("frame must be C-contiguous");
    if ((size_t)bins.size() != (size_t)frame.size()) throw py::value_error("bins must have the frame's shape");
    if (nbins < 1 || !(clip > 0) || iterations < 0) throw py::value_error("invalid radial parameters");
    redml_dtype dt = dtype_code(frame.dtype());
    py::array_t<double> mean(nbins), sigma(nbins);
    py::array_t<int64_t> count(nbins);
    double *mean_p = mean.mutable_data(), *sigma_p = sigma.mutable_data();
    int64_t *count_p = count.mutable_data();
    redml_status s;
    {
        py::gil_scoped_release release;
        s = redml_radial_profile(frame.data(), dt, (size_t)frame.size(), bins.data(), nbins, clip, iterations,
                                 (redml_markers)markers, mean_p, sigma_p, count_p, nthreads);
    }
    if (s != REDML_OK) raise(s);
    return py::make_tuple(mean, sigma, count);
}

// The acquisition indicators' (background, saturated) of a 2-D frame of any numeric dtype
// (levels.h). saturated: 0 none, 1 all, 2 at or above threshold (redml_reduce/acquire/indicators.py
// gives an integer frame's in its range, a float frame's as a number rounded here).
template <class T>
redml::FrameLevels levels_of(const py::array &frame, const uint8_t *bad, int saturated, const py::object &threshold,
                             bool background) {
    T t{};
    if (saturated == 2) {
        if constexpr (std::is_floating_point_v<T>) {
            const double d = threshold.cast<double>(), top = std::numeric_limits<T>::max();
            t = d > top ? T(INFINITY) : d < -top ? T(-INFINITY) : T(d);  // numpy's cast, no overflow
        } else {
            t = threshold.cast<T>();
        }
    }
    const T *p = (const T *)frame.data();
    const size_t h = (size_t)frame.shape(0), w = (size_t)frame.shape(1);
    py::gil_scoped_release release;
    return redml::frame_levels<T>(p, bad, h, w, (redml::Saturated)saturated, t, background);
}

py::tuple frame_levels(py::array frame, py::object bad, int saturated, py::object threshold, bool background) {
    if (frame.ndim() != 2 || !(frame.flags() & py::array::c_style) || !frame.dtype().attr("isnative").cast<bool>())
        throw py::value_error("frame must be a 2-D C-contiguous array in native byte order");
    if (saturated < 0 || saturated > 2) throw py::value_error("frame_levels: saturated must be 0, 1 or 2");
    py::object bad_arr = bad.is_none() ? bad : py::object(bad.cast<U8Array>());
    const uint8_t *bad_p = optional_map(bad_arr, (size_t)frame.size(), "bad");
    const char kind = frame.dtype().kind();
    const size_t size = (size_t)frame.itemsize();
    auto run = [&](auto zero) {  // with the frame's type
        return levels_of<decltype(zero)>(frame, bad_p, saturated, threshold, background);
    };
    redml::FrameLevels out;
    if (kind == 'u' && size == 1) out = run(uint8_t{});
    else if (kind == 'i' && size == 1) out = run(int8_t{});
    else if (kind == 'u' && size == 2) out = run(uint16_t{});
    else if (kind == 'i' && size == 2) out = run(int16_t{});
    else if (kind == 'u' && size == 4) out = run(uint32_t{});
    else if (kind == 'i' && size == 4) out = run(int32_t{});
    else if (kind == 'u' && size == 8) out = run(uint64_t{});
    else if (kind == 'i' && size == 8) out = run(int64_t{});
    else if (kind == 'f' && size == 4) out = run(float{});
    else if (kind == 'f' && size == 8) out = run(double{});
    else throw py::type_error("frame_levels: unsupported dtype " + std::string(py::str(frame.dtype())));
    return py::make_tuple(out.background, out.saturated);
}

py::array_t<bool> dilate_mask(py::array_t<uint8_t, py::array::c_style | py::array::forcecast> map, int margin,
                              int nthreads) {
    if (map.ndim() != 2) throw py::value_error("mask must be 2-D");
    if (margin < 0) throw py::value_error("margin must be >= 0");
    uint32_t h = (uint32_t)map.shape(0), w = (uint32_t)map.shape(1);
    py::array_t<bool> out({(py::ssize_t)h, (py::ssize_t)w});
    uint8_t *o = (uint8_t *)out.mutable_data();
    const uint8_t *in = map.data();
    redml_status s;
    {
        py::gil_scoped_release release;  // the copy too: a frame-sized loop must not hold the GIL
        for (size_t i = 0; i < (size_t)h * w; i++) o[i] = in[i] != 0;
        s = redml_dilate(o, h, w, margin, nthreads);
    }
    if (s != REDML_OK) raise(s);
    return out;
}

// JUNGFRAU raw -> photons (redml_jf_convert). The Python layer (redml_reduce/jungfrau.py)
// checks shapes and dtypes with user-facing messages; the core re-checks them.
py::tuple jf_convert(py::array_t<uint16_t, py::array::c_style> raw, py::array_t<float, py::array::c_style> pedestal,
                     py::array_t<float, py::array::c_style> gain, py::object mask, py::object track,
                     py::object modules, py::object gap_index, uint32_t out_height, uint32_t out_width,
                     float energy_keV, int out_dtype, bool want_kev, bool want_status, float track_alpha,
                     float track_threshold, int nthreads, py::object out) {
    if (raw.ndim() != 2) throw py::value_error("raw frame must be 2-D");
    uint32_t h = (uint32_t)raw.shape(0), w = (uint32_t)raw.shape(1);
    size_t n = (size_t)raw.size();
    if ((size_t)pedestal.size() != 3 * n || (size_t)gain.size() != 3 * n)
        throw py::value_error("pedestal and gain must be [3][frame] planes");
    py::object mask_arr = mask.is_none() ? mask : py::object(mask.cast<U8Array>());
    const uint8_t *mask_p = optional_map(mask_arr, n, "mask");
    float *track_p = nullptr;
    if (!track.is_none()) {
        // Updated in place: it must be a float32 C-contiguous array already, not a converted copy.
        if (!py::isinstance<py::array_t<float, py::array::c_style>>(track))
            throw py::type_error("track must be a C-contiguous float32 array");
        auto t = track.cast<py::array_t<float, py::array::c_style>>();
        if ((size_t)t.size() != n) throw py::value_error("track must have the frame's shape");
        track_p = t.mutable_data();  // the caller's own float32 array, updated in place
    }
    py::array_t<int32_t, py::array::c_style> mods;
    py::array_t<uint32_t, py::array::c_style> gaps;
    const redml_jf_module *mods_p = nullptr;
    uint32_t n_mods = 0;
    if (!modules.is_none()) {
        mods = modules.cast<py::array_t<int32_t, py::array::c_style>>();
        if (mods.ndim() != 2 || mods.shape(1) != 6) throw py::value_error("modules must be (n, 6) int32");
        static_assert(sizeof(redml_jf_module) == 6 * sizeof(int32_t), "redml_jf_module layout");
        mods_p = (const redml_jf_module *)mods.data();
        n_mods = (uint32_t)mods.shape(0);
        gaps = gap_index.cast<py::array_t<uint32_t, py::array::c_style>>();
    }
    redml_dtype dt = out_dtype == 16 ? REDML_INT16 : REDML_INT32;
    py::array photons;
    if (out.is_none()) {
        photons = py::array(numpy_dtype(dt), {(py::ssize_t)out_height, (py::ssize_t)out_width});
    } else {  // the caller's buffer (reused frame after frame: no page faults for a new array)
        photons = out.cast<py::array>();
        if (!photons.dtype().is(numpy_dtype(dt)) || photons.ndim() != 2 || photons.shape(0) != (py::ssize_t)out_height ||
            photons.shape(1) != (py::ssize_t)out_width || !(photons.flags() & py::array::c_style) || !photons.writeable())
            throw py::value_error("out must be a writeable C-contiguous array of the photons' dtype and shape");
    }
    py::object kev = py::none(), status = py::none();
    float *kev_p = nullptr;
    uint8_t *status_p = nullptr;
    if (want_kev) {
        py::array_t<float> k({(py::ssize_t)out_height, (py::ssize_t)out_width});
        kev_p = k.mutable_data();
        kev = k;
    }
    if (want_status) {
        py::array_t<uint8_t> st({(py::ssize_t)h, (py::ssize_t)w});
        status_p = st.mutable_data();
        status = st;
    }
    redml_jf_params p{energy_keV, dt, track_alpha, track_threshold, nthreads};
    uint64_t counts[REDML_JF_NSTATUS];
    void *dst = photons.mutable_data();
    redml_status s;
    {
        py::gil_scoped_release release;
        s = redml_jf_convert(raw.data(), h, w, pedestal.data(), gain.data(), mask_p, track_p, mods_p, n_mods,
                             mods_p ? gaps.data() : nullptr, mods_p ? (size_t)gaps.size() : 0, out_height, out_width,
                             &p, dst, kev_p, status_p, counts);
    }
    if (s != REDML_OK) raise(s);
    py::tuple c((size_t)REDML_JF_NSTATUS);
    for (int k = 0; k < REDML_JF_NSTATUS; k++) c[k] = counts[k];
    return py::make_tuple(photons, kev, status, c);
}

// 3x3 dilated convolution + bias + leaky ReLU (conv.h) on planar float32 arrays.
py::array_t<float> conv3x3_leaky(py::array x, py::array weight, py::array bias, int dilation, float slope,
                                 int nthreads) {
    // No silent conversions: the caller (redml_reduce.ml.models) passes float32 C-contiguous
    // arrays, and anything else is a bug there, better seen than copied.
    for (const py::array *a : {&x, &weight, &bias})
        if (!a->dtype().is(py::dtype::of<float>()) || !(a->flags() & py::array::c_style))
            throw py::value_error("conv3x3_leaky: x, weight and bias must be C-contiguous float32 arrays");
    if (x.ndim() != 3) throw py::value_error("conv3x3_leaky: x must be (cin, H, W)");
    const py::ssize_t cin = x.shape(0), h = x.shape(1), w = x.shape(2);
    if (weight.ndim() != 4 || weight.shape(1) != cin || weight.shape(2) != 3 || weight.shape(3) != 3)
        throw py::value_error("conv3x3_leaky: weight must be (cout, cin, 3, 3) with x's cin");
    const py::ssize_t cout = weight.shape(0);
    if (bias.ndim() != 1 || bias.shape(0) != cout) throw py::value_error("conv3x3_leaky: bias must be (cout,)");
    if (dilation < 1) throw py::value_error("conv3x3_leaky: dilation must be >= 1");
    if (nthreads < 0) throw py::value_error("conv3x3_leaky: nthreads must be >= 0");
    py::array_t<float> out({cout, h, w});
    const float *xp = (const float *)x.data(), *wp = (const float *)weight.data(), *bp = (const float *)bias.data();
    float *op = out.mutable_data();
    {
        py::gil_scoped_release release;
        redml::conv3x3_leaky(xp, (size_t)cin, (size_t)h, (size_t)w, wp, bp, (size_t)cout, (size_t)dilation, slope, op,
                             nthreads);
    }
    return out;
}

// ---- lattice prediction (lattice.h) ----
py::tuple lattice_predict(py::array_t<double, py::array::c_style | py::array::forcecast> A, double beam_x,
                          double beam_y, double distance_mm, double pixel_mm, double wavelength_a,
                          double sensor_mu_per_mm, double sensor_thickness_mm, uint32_t height,
                          uint32_t width, double domain_size_a, double half_mosaicity_deg, double bandwidth,
                          double d_min, double margin, const std::string &centring) {
    if (A.ndim() != 2 || A.shape(0) != 3 || A.shape(1) != 3) throw py::value_error("A must be a 3x3 matrix");
    if (centring.size() != 1) throw py::value_error("centring must be one letter (P, A, B, C, I, F, R)");
    double a[9];
    for (int i = 0; i < 9; i++) a[i] = A.data()[i];
    redml::LatticeGeometry g{beam_x, beam_y, distance_mm, pixel_mm, wavelength_a, sensor_mu_per_mm, sensor_thickness_mm};
    redml::ExcitationProfile prof{domain_size_a, half_mosaicity_deg, bandwidth};
    std::vector<redml::Prediction> pred;
    const char *error = nullptr;
    bool ok;
    {
        py::gil_scoped_release release;
        ok = redml::predict_reflections(a, g, height, width, prof, d_min, margin, centring[0], pred, &error);
    }
    if (!ok) throw py::value_error(error ? error : "invalid prediction arguments");
    const py::ssize_t n = (py::ssize_t)pred.size();
    py::array_t<int32_t> hkl({n, (py::ssize_t)3});
    py::array_t<double> xy({n, (py::ssize_t)2});
    py::array_t<double> rotation(n);
    int32_t *hp = hkl.mutable_data();
    double *xp = xy.mutable_data(), *rp = rotation.mutable_data();
    for (py::ssize_t i = 0; i < n; i++) {
        hp[3 * i] = pred[i].h, hp[3 * i + 1] = pred[i].k, hp[3 * i + 2] = pred[i].l;
        xp[2 * i] = pred[i].x, xp[2 * i + 1] = pred[i].y;
        rp[i] = pred[i].rotation;
    }
    return py::make_tuple(hkl, xy, rotation);
}

// Marks the pixels within `radius` of each (x, y) in `map` (uint8, C-contiguous, modified in place).
void lattice_paint(py::array_t<uint8_t, py::array::c_style> map, py::array_t<double, py::array::c_style> xy,
                   double radius) {
    if (map.ndim() != 2) throw py::value_error("map must be 2-D");
    if (xy.ndim() != 2 || xy.shape(1) != 2) throw py::value_error("xy must be (n, 2)");
    if (!(radius >= 0 && radius <= 1e4)) throw py::value_error("radius must be in [0, 1e4] pixels");
    const size_t n = (size_t)xy.shape(0);
    std::vector<redml::Prediction> pred(n);
    for (size_t i = 0; i < n; i++) pred[i] = redml::Prediction{0, 0, 0, xy.data()[2 * i], xy.data()[2 * i + 1], 0.0};
    uint8_t *mp = map.mutable_data();
    const uint32_t h = (uint32_t)map.shape(0), w = (uint32_t)map.shape(1);
    py::gil_scoped_release release;
    redml::paint_discs(pred.data(), n, radius, h, w, mp);
}

// ---- the known-cell still indexer (index.h); settings are checked in redml_reduce/lattice/index.py ----
using F64Array = py::array_t<double, py::array::c_style | py::array::forcecast>;

py::object index_still(F64Array x, F64Array y, py::object weight, F64Array B, double beam_x, double beam_y,
                       double distance_mm, double pixel_size_mm, double wavelength_a, const std::string &centring,
                       double tolerance_px, double spread_deg, double length_tolerance, double angle_tolerance_deg,
                       int max_spots, int neighbours, int max_trials, int min_indexed, double min_fraction,
                       double accept_fraction) {
    size_t n = (size_t)x.size();
    if (x.ndim() != 1 || y.ndim() != 1 || (size_t)y.size() != n) throw py::value_error("x and y must be 1-D, one per spot");
    if (B.size() != 9) throw py::value_error("B must be 3x3");
    if (centring.size() != 1) throw py::value_error("centring must be one letter");
    F64Array w;
    if (!weight.is_none()) {
        w = weight.cast<F64Array>();
        if (w.ndim() != 1 || (size_t)w.size() != n) throw py::value_error("intensities must be 1-D, one per spot");
    }
    redml::IndexGeometry g{beam_x, beam_y, distance_mm, pixel_size_mm, wavelength_a};
    redml::IndexSettings s;
    s.centring = centring[0];
    s.tolerance_px = tolerance_px, s.spread_deg = spread_deg, s.length_tolerance = length_tolerance;
    s.angle_tolerance_deg = angle_tolerance_deg, s.max_spots = max_spots, s.neighbours = neighbours;
    s.max_trials = max_trials, s.min_indexed = min_indexed, s.min_fraction = min_fraction;
    s.accept_fraction = accept_fraction;
    redml::IndexResult r;
    try {
        py::gil_scoped_release release;
        r = redml::index_still(x.data(), y.data(), weight.is_none() ? nullptr : w.data(), n, g, B.data(), s);
    } catch (const std::invalid_argument &e) {
        throw py::value_error(e.what());
    }
    py::dict out;
    out["indexed"] = r.indexed;
    out["trials"] = r.trials;
    if (!r.indexed) return std::move(out);
    py::array_t<double> A({3, 3});
    std::copy(r.A, r.A + 9, A.mutable_data());
    py::array_t<int32_t> hkl({(py::ssize_t)n, (py::ssize_t)3});
    std::copy(r.hkl.begin(), r.hkl.end(), hkl.mutable_data());
    py::array_t<bool> mask((py::ssize_t)n);
    std::copy(r.is_indexed.begin(), r.is_indexed.end(), mask.mutable_data());
    out["A"] = A, out["hkl"] = hkl, out["is_indexed"] = mask;
    out["n_indexed"] = r.n_indexed, out["rmsd_px"] = r.rmsd_px;
    return std::move(out);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "redml_reduce C++ core (see csrc/redml.h)";
    m.def("encode", &encode, py::arg("frame"), py::arg("roi"), py::arg("mask"), py::arg("mode"), py::arg("q"),
          py::arg("gain"), py::arg("mu_min"), py::arg("codec"), py::arg("level"), py::arg("shuffle"),
          py::arg("recon"), py::arg("tile"), py::arg("roi_snr"), py::arg("roi_margin"), py::arg("seed"),
          py::arg("block_elems"), py::arg("nthreads"), py::arg("read_noise") = 0.0f, py::arg("markers") = 0,
          py::arg("spots") = py::none(), py::arg("lattice") = py::none());
    m.def("decode", &decode, py::arg("chunk"), py::arg("recon") = -1, py::arg("nthreads") = 0);
    m.def("inspect", &inspect, py::arg("chunk"));
    m.def("exact_mask", &exact_mask, py::arg("chunk"));
    m.def("lattice_records", &lattice_records, py::arg("chunk"));
    m.def("model", &model, py::arg("chunk"));
    m.def("find_spots", &find_spots, py::arg("frame"), py::arg("mask"), py::arg("kernel"), py::arg("sigma_b"),
          py::arg("sigma_s"), py::arg("gain"), py::arg("min_count"), py::arg("threshold"), py::arg("min_pixels"),
          py::arg("max_pixels"), py::arg("max_separation"), py::arg("read_noise") = 0.0f, py::arg("markers") = 0,
          py::arg("nthreads"));
    m.attr("PEAK_RECORD_SIZE") = sizeof(redml_peak);
    // The codec's per-pixel pseudo-random uniform (quantize.h), for reference implementations in tests.
    m.def("hash_uniform", [](uint32_t seed, uint64_t idx, uint32_t stream) { return redml_uniform(seed, idx, stream); },
          py::arg("seed"), py::arg("idx"), py::arg("stream"));
    m.def("frame_levels", &frame_levels, py::arg("frame"), py::arg("bad"), py::arg("saturated"), py::arg("threshold"),
          py::arg("background"));
    m.def("dilate", &dilate_mask, py::arg("mask"), py::arg("margin"), py::arg("nthreads") = 0);
    m.def("radial_profile", &radial_profile, py::arg("frame"), py::arg("bins"), py::arg("nbins"), py::arg("clip"),
          py::arg("iterations"), py::arg("nthreads"), py::arg("markers") = 0);
    m.def("jf_convert", &jf_convert, py::arg("raw"), py::arg("pedestal"), py::arg("gain"), py::arg("mask"),
          py::arg("track"), py::arg("modules"), py::arg("gap_index"), py::arg("out_height"), py::arg("out_width"),
          py::arg("energy_keV"), py::arg("out_dtype"), py::arg("want_kev"), py::arg("want_status"),
          py::arg("track_alpha"), py::arg("track_threshold"), py::arg("nthreads"), py::arg("out") = py::none());
    m.def("conv3x3_leaky", &conv3x3_leaky, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("dilation"),
          py::arg("slope"), py::arg("nthreads") = 0);
    m.def("_spots_force_simd", &redml::spots_force_simd, py::arg("level"),
          "Test hook: the SIMD build of the spot finder's loops at most (1 portable, 2 AVX2, 3 AVX-512; 0 auto)");
    m.def("_rans_force_simd", &redml::rans_force_simd, py::arg("level"),
          "Test hook: the rANS decoder's and encoder's build (0 best, 1 portable, 2 AVX2, 3 AVX-512).");
    m.def(
        "_rans_encode",
        [](const py::bytes &plane) {
            // Test hook: the core's rANS coder on a plane of over 1000 bytes.
            const std::string raw = plane;
            std::string stream(raw.size() + raw.size() / 16 + 1024, '\0');  // (the library's bound)
            const size_t size = redml::rans_encode_o0x32((const uint8_t *)raw.data(), raw.size(),
                                                         (uint8_t *)stream.data(), stream.size());
            return py::bytes(stream.data(), size);
        },
        py::arg("plane"));
    m.def("_codec_force_simd", &redml::codec_force_simd, py::arg("level"),
          "Test hook: the build of the codec decoder's SIMD loops (0 best, 1 portable, 2 AVX2, 3 AVX-512, 4 AVX-512 with VBMI2).");
    // Debug aid for benchmarks/speed.py: per-stage times of this thread's last encode.
    m.def("stage_timing", [](bool on) { redml::stage_times().enabled = on; }, py::arg("enable"));
    m.def("last_stages", [] {
        py::dict d;
        for (const auto &entry : redml::stage_times().ms) d[py::str(entry.first)] = entry.second;
        return d;
    });
    // The known-cell still indexer (redml_reduce/lattice/index.py).
    m.def("index_still", &index_still, py::arg("x"), py::arg("y"), py::arg("weight"), py::arg("B"),
          py::arg("beam_x"), py::arg("beam_y"), py::arg("distance_mm"), py::arg("pixel_size_mm"),
          py::arg("wavelength_a"), py::arg("centring"), py::arg("tolerance_px"), py::arg("spread_deg"),
          py::arg("length_tolerance"), py::arg("angle_tolerance_deg"), py::arg("max_spots"), py::arg("neighbours"),
          py::arg("max_trials"), py::arg("min_indexed"), py::arg("min_fraction"), py::arg("accept_fraction"));
    m.attr("FORMAT_VERSION") = REDML_FORMAT_VERSION;
    m.attr("VERSION_NUMBER") = redml_version_number();
    m.attr("FILTER_ID") = REDML_H5_FILTER_ID;
    // Lattice prediction (lattice.h): redml_reduce.lattice.predict
    m.def("lattice_predict", &lattice_predict, py::arg("A"), py::arg("beam_x"), py::arg("beam_y"),
          py::arg("distance_mm"), py::arg("pixel_mm"), py::arg("wavelength_a"), py::arg("sensor_mu_per_mm"),
          py::arg("sensor_thickness_mm"), py::arg("height"), py::arg("width"),
          py::arg("domain_size_a"), py::arg("half_mosaicity_deg"), py::arg("bandwidth"), py::arg("d_min"),
          py::arg("margin"), py::arg("centring"));
    m.def("lattice_paint", &lattice_paint, py::arg("map"), py::arg("xy"), py::arg("radius"));
    m.def("lattice_exp", &redml::deterministic_exp, py::arg("x"));
}
