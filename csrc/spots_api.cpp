// spots_api.cpp: the C API of redml_spots.h over spots.h and radial.h.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "container.h"  // kMaxPixels
#include "error.h"
#include "pixels.h"
#include "radial.h"
#include "redml_spots.h"
#include "spots.h"
#include "threads.h"

using namespace redml;

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
}

redml_status redml_find_spots(const void *frame, redml_dtype dtype, uint32_t height, uint32_t width,
                              const uint8_t *mask, const redml_finder_params *fpp, uint8_t *spot_mask,
                              redml_peak **peaks, size_t *n_peaks, int nthreads) {
    return guarded([&] {
        check(frame && fpp && peaks && n_peaks, REDML_E_ARG, "null argument");
        check(redml_dtype_size(dtype) != 0, REDML_E_ARG, "unsupported dtype");
        check(height >= 1 && width >= 1 && (uint64_t)height * width <= kMaxPixels, REDML_E_ARG,
              "frame shape out of range");
        check(fpp->kernel >= 1 && fpp->kernel <= 64 && fpp->min_count >= 2 && fpp->min_pixels >= 1 &&
                  fpp->max_pixels >= fpp->min_pixels && std::isfinite(fpp->sigma_b) && fpp->sigma_b >= 0 &&
                  std::isfinite(fpp->sigma_s) && fpp->sigma_s >= 0 && std::isfinite(fpp->gain) && fpp->gain > 0 &&
                  std::isfinite(fpp->threshold) && std::isfinite(fpp->max_separation),
              REDML_E_ARG, "invalid spot finder parameters");
        FinderParams fp;
        fp.kernel = fpp->kernel;
        fp.sigma_b = fpp->sigma_b;
        fp.sigma_s = fpp->sigma_s;
        fp.gain = fpp->gain;
        fp.min_count = fpp->min_count;
        fp.threshold = fpp->threshold;
        fp.min_pixels = fpp->min_pixels;
        fp.max_pixels = fpp->max_pixels;
        fp.max_separation = fpp->max_separation;
        const size_t N = (size_t)height * width;
        int nt = resolve_threads(nthreads);
        dispatch_dtype(dtype, [&](auto tag) {
            using T = decltype(tag);
            const T *f = (const T *)frame;
            std::vector<uint8_t> usable(N);
            for (size_t i = 0; i < N; i++) usable[i] = !(mask && mask[i]) && !is_special_value(f[i]);
            std::vector<Peak> found = find_spots(f, usable.data(), height, width, fp, spot_mask, nt);
            redml_peak *out = (redml_peak *)std::malloc(sizeof(redml_peak) * std::max<size_t>(1, found.size()));
            check(out != nullptr, REDML_E_NOMEM, "cannot allocate the peak list");
            for (size_t j = 0; j < found.size(); j++) {
                const Peak &pk = found[j];
                out[j] = redml_peak{pk.x, pk.y, pk.total, pk.max, pk.background, pk.snr, pk.npix,
                                    pk.x0, pk.y0, pk.x1, pk.y1};
            }
            *peaks = out;
            *n_peaks = found.size();
        });
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
                                  int32_t nbins, double clip, int iterations, double *mean, double *sigma,
                                  int64_t *count, int nthreads) {
    return guarded([&] {
        check(((frame && bins) || npix == 0) && mean && sigma && count, REDML_E_ARG, "null argument");
        check(redml_dtype_size(dtype) != 0, REDML_E_ARG, "unsupported dtype");
        check(nbins >= 1 && clip > 0 && iterations >= 0, REDML_E_ARG, "invalid radial parameters");
        dispatch_dtype(dtype, [&](auto tag) {
            using T = decltype(tag);
            RadialProfile p = fit_radial<T>((const T *)frame, bins, npix, nbins, clip, iterations,
                                            resolve_threads(nthreads));
            std::copy(p.mean.begin(), p.mean.end(), mean);
            std::copy(p.sigma.begin(), p.sigma.end(), sigma);
            std::copy(p.count.begin(), p.count.end(), count);
        });
    });
}

}  // extern "C"
