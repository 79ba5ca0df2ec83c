// spots_api.cpp: the C API of redml_spots.h over spots.h and radial.h.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "container.h"  // kMaxPixels
#include "encoder.h"
#include "error.h"
#include "pixels.h"
#include "radial.h"
#include "redml_spots.h"
#include "scratch.h"
#include "spots.h"
#include "threads.h"

using namespace redml;

namespace {

const uint32_t kUsableBandRows = 128;

// The calling thread's usable-pixel map for redml_find_spots, kept across calls like the
// finder's own buffers (a fresh frame-sized map was zeroing and page faults every frame).
struct UsableScratch {
    std::vector<uint8_t> usable;
    size_t held() const { return held_bytes(usable); }
};

UsableScratch &usable_scratch() {
    thread_local UsableScratch sc;
    return sc;
}

// The finder's parameters of the C API, checked (REDML_E_ARG if invalid).
FinderParams finder_params(const redml_finder_params &p) {
    check(p.kernel >= 1 && p.kernel <= 64 && p.min_count >= 2 && p.min_pixels >= 1 &&
          p.max_pixels >= p.min_pixels && std::isfinite(p.sigma_b) && p.sigma_b >= 0 &&
          std::isfinite(p.sigma_s) && p.sigma_s >= 0 && std::isfinite(p.gain) && p.gain > 0 &&
          std::isfinite(p.threshold) && std::isfinite(p.max_separation),
          REDML_E_ARG, "invalid spot finder parameters");
    check(p.markers >= REDML_MARKERS_NEGATIVE && p.markers <= REDML_MARKERS_GAPS, REDML_E_ARG,
          "markers must be negative, extremes or gaps");
    check(std::isfinite(p.read_noise) && (p.read_noise >= 0 || p.read_noise == -1.0f), REDML_E_ARG,
          "read_noise must be a finite number >= 0 or auto (-1)");
    check(p.read_noise == 0 || p.markers != REDML_MARKERS_NEGATIVE, REDML_E_ARG,
          "read_noise models integrating detectors: set markers (negative values are noise there)");
    FinderParams fp;
    fp.kernel = p.kernel;
    fp.sigma_b = p.sigma_b;
    fp.sigma_s = p.sigma_s;
    fp.gain = p.gain;
    fp.min_count = p.min_count;
    fp.threshold = p.threshold;
    fp.min_pixels = p.min_pixels;
    fp.max_pixels = p.max_pixels;
    fp.max_separation = p.max_separation;
    fp.read_noise = p.read_noise;
    fp.markers = p.markers;
    return fp;
}

// The peaks as the C API returns them: a malloc'ed array (at least one element) and its length.
void return_peaks(const std::vector<Peak> &found, redml_peak **peaks, size_t *n_peaks) {
    // Zeroed, fields set one by one: a record's padding bytes are zero, so equal peaks are
    // equal records byte for byte.
    redml_peak *out = (redml_peak *)std::calloc(std::max<size_t>(1, found.size()), sizeof(redml_peak));
    check(out != nullptr, REDML_E_NOMEM, "cannot allocate the peak list");
    for (size_t j = 0; j < found.size(); j++) {
        const Peak &pk = found[j];
        redml_peak &r = out[j];
        r.x = pk.x, r.y = pk.y, r.total = pk.total, r.max = pk.max, r.background = pk.background, r.snr = pk.snr;
        r.npix = pk.npix, r.x0 = pk.x0, r.y0 = pk.y0, r.x1 = pk.x1, r.y1 = pk.y1;
    }
    *peaks = out;
    *n_peaks = found.size();
}

}  // namespace

extern "C" {

void redml_default_finder_params(redml_finder_params *fp) {
    FinderParams d;
    fp->kernel = d.kernel;
    fp->sigma_b = (float)d.sigma_b;
    fp->sigma_s = (float)d.sigma_s;
    fp->gain = (float)d.gain;
    fp->min_count = d.min_count;
    fp->threshold = (float)d.threshold;
    fp->min_pixels = d.min_pixels;
    fp->max_pixels = d.max_pixels;
    fp->max_separation = (float)d.max_separation;
    fp->read_noise = (float)d.read_noise;
    fp->markers = d.markers;
}

redml_status redml_find_spots(const void *frame, redml_dtype dtype, uint32_t height, uint32_t width,
                              const uint8_t *mask, const redml_finder_params *fpp, uint8_t *spot_mask,
                              redml_peak **peaks, size_t *n_peaks, int nthreads) {
    return guarded([&] {
        check(frame && fpp && peaks && n_peaks, REDML_E_ARG, "null argument");
        check(redml_dtype_size(dtype) != 0, REDML_E_ARG, "unsupported dtype");
        check(height >= 1 && width >= 1 && (uint64_t)height * width <= kMaxPixels, REDML_E_ARG,
              "frame shape out of range");
        const FinderParams fp = finder_params(*fpp);
        const size_t N = (size_t)height * width;
        int nt = resolve_threads(nthreads);
        dispatch_dtype(dtype, [&](auto tag) {
            using T = decltype(tag);
            const T *f = (const T *)frame;
            UsableScratch &sc = usable_scratch();
            ReleaseIfLarge<UsableScratch> release{sc};
            uint8_t *usable = scratch(sc.usable, N);
            for_row_bands(height, kUsableBandRows, nt, [&](size_t, uint32_t y0, uint32_t y1) {
                const size_t i0 = (size_t)y0 * width;
                usable_pixels(f + i0, mask ? mask + i0 : nullptr, usable + i0, (size_t)(y1 - y0) * width,
                              fp.markers);
            });
            return_peaks(find_spots(f, usable, height, width, fp, spot_mask, nt), peaks, n_peaks);
        });
    });
}

redml_status redml_encode_spots(const void *frame, redml_dtype dtype, uint32_t height, uint32_t width,
                                const uint8_t *mask, const redml_params *p, const redml_finder_params *fpp,
                                void **out, size_t *out_size, redml_peak **peaks, size_t *n_peaks) {
    return guarded([&] {
        check(p && fpp && out && peaks && n_peaks, REDML_E_ARG, "null argument");
        SpotRequest spots{finder_params(*fpp), {}};
        encode(frame, dtype, height, width, nullptr, mask, *p, &spots, out, out_size);
        try {
            return_peaks(spots.peaks, peaks, n_peaks);
        } catch (...) {  // no chunk without its peaks
            std::free(*out);
            *out = nullptr;
            throw;
        }
    });
}

redml_status redml_dilate(uint8_t *map, uint32_t height, uint32_t width, int margin, int nthreads) {
    return guarded([&] {
        check(map || (size_t)height * width == 0, REDML_E_ARG, "null argument");
        check(margin >= 0, REDML_E_ARG, "margin must be >= 0");
        dilate(map, height, width, margin, resolve_threads(nthreads));
    });
}

redml_status redml_radial_profile(const void *frame, redml_dtype dtype, size_t npix, const int32_t *bins,
                                  int32_t nbins, double clip, int iterations, redml_markers markers, double *mean,
                                  double *sigma, int64_t *count, int nthreads) {
    return guarded([&] {
        check(((frame && bins) || npix == 0) && mean && sigma && count, REDML_E_ARG, "null argument");
        check(redml_dtype_size(dtype) != 0, REDML_E_ARG, "unsupported dtype");
        check(nbins >= 1 && clip > 0 && iterations >= 0, REDML_E_ARG, "invalid radial parameters");
        check(markers >= REDML_MARKERS_NEGATIVE && markers <= REDML_MARKERS_GAPS, REDML_E_ARG,
              "markers must be negative, extremes or gaps");
        dispatch_dtype(dtype, [&](auto tag) {
            using T = decltype(tag);
            RadialProfile p = fit_radial<T>((const T *)frame, bins, npix, nbins, clip, iterations, markers,
                                            resolve_threads(nthreads));
            std::copy(p.mean.begin(), p.mean.end(), mean);
            std::copy(p.sigma.begin(), p.sigma.end(), sigma);
            std::copy(p.count.begin(), p.count.end(), count);
        });
    });
}

}  // extern "C"
