// radial.cpp: radial background profile (see radial.h).
#include "radial.h"

#include <algorithm>
#include <cmath>

#include "pixels.h"
#include "threads.h"

namespace redml {

template <class T>
RadialProfile fit_radial(const T *frame, const int32_t *bins, size_t npix, int32_t nbins, double clip,
                         int iterations, redml_markers markers, int nthreads) {
    RadialProfile p;
    p.mean.assign(nbins, 0.0);
    p.sigma.assign(nbins, INFINITY);
    p.count.assign(nbins, 0);
    const size_t chunk = 1 << 16, ntasks = (npix + chunk - 1) / chunk;
    // Iterations clip at `clip` sigmas until stable; a last pass at clip + 2 sigmas takes
    // back the Poisson tail that a tight clip removes (its bias on low counts) while
    // still rejecting spots and zingers.
    for (int it = 0; it <= iterations + 1; it++) {
        const bool last = it == iterations + 1;
        const double k = last ? clip + 2.0 : clip;
        // Per-task partial sums, merged afterwards (no locks in the pixel loop).
        std::vector<std::vector<double>> s(ntasks), s2(ntasks);
        std::vector<std::vector<int64_t>> n(ntasks);
        std::vector<double> lo(nbins), hi(nbins);
        for (int32_t b = 0; b < nbins; b++) {
            bool first = it == 0 || p.count[b] < 2;
            lo[b] = first ? -INFINITY : p.mean[b] - k * p.sigma[b];
            hi[b] = first ? INFINITY : p.mean[b] + k * p.sigma[b];
        }
        parallel_for(ntasks, nthreads, [&](size_t t) {
            s[t].assign(nbins, 0.0);
            s2[t].assign(nbins, 0.0);
            n[t].assign(nbins, 0);
            size_t i1 = std::min(npix, (t + 1) * chunk);
            for (size_t i = t * chunk; i < i1; i++) {
                int32_t b = bins[i];
                if (b < 0 || b >= nbins || is_marker(frame[i], markers)) continue;
                double v = (double)frame[i];
                if (v < lo[b] || v > hi[b]) continue;
                s[t][b] += v;
                s2[t][b] += v * v;
                n[t][b]++;
            }
        });
        bool changed = false;
        for (int32_t b = 0; b < nbins; b++) {
            double ss = 0, ss2 = 0;
            int64_t nn = 0;
            for (size_t t = 0; t < ntasks; t++) {
                ss += s[t][b];
                ss2 += s2[t][b];
                nn += n[t][b];
            }
            changed |= nn != p.count[b];
            p.count[b] = nn;
            p.mean[b] = nn ? ss / nn : 0.0;
            p.sigma[b] = nn > 1 ? std::sqrt(std::max(0.0, (ss2 - ss * ss / nn) / (nn - 1))) : 0.0;
        }
        if (last) break;
        if (it > 0 && !changed) it = iterations;  // converged: go to the last pass
    }
    return p;
}

#define REDML_INSTANTIATE(T) \
    template RadialProfile fit_radial<T>(const T *, const int32_t *, size_t, int32_t, double, int, redml_markers, int);
REDML_FOR_EACH_PIXEL_TYPE(REDML_INSTANTIATE)
#undef REDML_INSTANTIATE

}  // namespace redml
