// spots.cpp: spot finder (see spots.h).
#include "spots.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>

#include "pixels.h"
#include "stages.h"
#include "threads.h"

namespace redml {

namespace {

const uint32_t kRowsPerBand = 128;

// Box sums over a (2r+1)^2 window, clipped to the frame, of weight w, w*v and (if
// Squares) w*v^2 for every pixel of rows [y0, y1). load(y, w, v) fills one row of weights
// and values; emit(y, n, s, s2) receives one row of sums. Column sums slide down the rows
// and row sums slide along x (exact for integer data: all sums stay below 2^53).
template <bool Squares, class Load, class Emit>
void box_sums_band(uint32_t H, uint32_t W, int r, uint32_t y0, uint32_t y1, Load load, Emit emit) {
    std::vector<double> cn(W, 0.0), cs(W, 0.0), cs2(Squares ? W : 0, 0.0), w(W), v(W);
    auto add_row = [&](int64_t y, double sign) {
        if (y < 0 || y >= (int64_t)H) return;
        load((uint32_t)y, w.data(), v.data());
        double *__restrict n = cn.data(), *__restrict s = cs.data();
        const double *__restrict wp = w.data(), *__restrict vp = v.data();
        for (uint32_t x = 0; x < W; x++) {
            n[x] += sign * wp[x];
            s[x] += sign * wp[x] * vp[x];
        }
        if constexpr (Squares) {
            double *__restrict s2 = cs2.data();
            for (uint32_t x = 0; x < W; x++) s2[x] += sign * wp[x] * vp[x] * vp[x];
        }
    };
    for (int64_t y = (int64_t)y0 - r; y <= (int64_t)y0 + r; y++) add_row(y, 1.0);
    std::vector<double> n(W), s(W), s2(Squares ? W : 0);
    for (uint32_t y = y0; y < y1; y++) {
        if (y > y0) {
            add_row((int64_t)y + r, 1.0);
            add_row((int64_t)y - r - 1, -1.0);
        }
        double bn = 0, bs = 0, bs2 = 0;
        for (uint32_t x = 0; x < std::min<uint32_t>(W, (uint32_t)r); x++) {
            bn += cn[x];
            bs += cs[x];
            if constexpr (Squares) bs2 += cs2[x];
        }
        for (uint32_t x = 0; x < W; x++) {
            if (x + r < W) {
                bn += cn[x + r];
                bs += cs[x + r];
                if constexpr (Squares) bs2 += cs2[x + r];
            }
            if (x >= (uint32_t)r + 1) {
                bn -= cn[x - r - 1];
                bs -= cs[x - r - 1];
                if constexpr (Squares) bs2 -= cs2[x - r - 1];
            }
            n[x] = bn;
            s[x] = bs;
            if constexpr (Squares) s2[x] = bs2;
        }
        emit(y, n.data(), s.data(), Squares ? s2.data() : nullptr);
    }
}

// AND of a (2r+1)^2 window (clipped to the frame): erosion of a byte map.
void erode(const uint8_t *in, uint8_t *out, uint32_t H, uint32_t W, int r, int nthreads) {
    std::vector<uint8_t> rows((size_t)H * W);
    for_row_bands(H, kRowsPerBand, nthreads, [&](size_t, uint32_t y0, uint32_t y1) {
        for (uint32_t y = y0; y < y1; y++) {
            const uint8_t *a = in + (size_t)y * W;
            uint8_t *o = rows.data() + (size_t)y * W;
            for (uint32_t x = 0; x < W; x++) {
                uint32_t x0 = x >= (uint32_t)r ? x - r : 0, x1 = std::min<uint32_t>(W - 1, x + r);
                uint8_t v = 1;
                for (uint32_t xx = x0; xx <= x1 && v; xx++) v = a[xx];
                o[x] = v;
            }
        }
    });
    for_row_bands(H, kRowsPerBand, nthreads, [&](size_t, uint32_t y0, uint32_t y1) {
        for (uint32_t y = y0; y < y1; y++) {
            uint32_t ya = y >= (uint32_t)r ? y - r : 0, yb = std::min<uint32_t>(H - 1, y + r);
            uint8_t *o = out + (size_t)y * W;
            std::memcpy(o, rows.data() + (size_t)ya * W, W);
            for (uint32_t yy = ya + 1; yy <= yb; yy++) {
                const uint8_t *__restrict a = rows.data() + (size_t)yy * W;
                for (uint32_t x = 0; x < W; x++) o[x] &= a[x];
            }
        }
    });
}

struct Run {
    uint32_t y, x0, x1;  // [x0, x1)
    uint32_t label;
};

uint32_t find_root(std::vector<uint32_t> &parent, uint32_t a) {
    while (parent[a] != a) {
        parent[a] = parent[parent[a]];
        a = parent[a];
    }
    return a;
}

}  // namespace

void dilate(uint8_t *map, uint32_t H, uint32_t W, int r, int nthreads) {
    if (r <= 0) return;
    std::vector<uint8_t> wide((size_t)H * W, 0);
    for_row_bands(H, kRowsPerBand, nthreads, [&](size_t, uint32_t y0, uint32_t y1) {
        for (uint32_t y = y0; y < y1; y++) {
            const uint8_t *in = map + (size_t)y * W;
            uint8_t *out = wide.data() + (size_t)y * W;
            for (uint32_t x = 0; x < W; x++) {
                if (!in[x]) continue;
                uint32_t a = x >= (uint32_t)r ? x - r : 0, b = std::min<uint32_t>(W - 1, x + r);
                std::memset(out + a, 1, b - a + 1);
            }
        }
    });
    for_row_bands(H, kRowsPerBand, nthreads, [&](size_t, uint32_t y0, uint32_t y1) {
        for (uint32_t y = y0; y < y1; y++) {
            uint32_t ya = y >= (uint32_t)r ? y - r : 0, yb = std::min<uint32_t>(H - 1, y + r);
            uint8_t *__restrict out = map + (size_t)y * W;
            std::memcpy(out, wide.data() + (size_t)ya * W, W);
            for (uint32_t yy = ya + 1; yy <= yb; yy++) {
                const uint8_t *__restrict in = wide.data() + (size_t)yy * W;
                for (uint32_t x = 0; x < W; x++) out[x] |= in[x];
            }
        }
    });
}

template <class T>
std::vector<Peak> find_spots(const T *frame, const uint8_t *usable, uint32_t H, uint32_t W,
                             const FinderParams &fp, uint8_t *spot_mask, int nthreads) {
    const size_t N = (size_t)H * W;
    const int k = std::max(1, fp.kernel);
    const double g = fp.gain;

    // 1. dispersion candidates
    std::vector<uint8_t> cand(N, 0);
    auto load_usable = [&](uint32_t y, double *w, double *v) {
        const T *f = frame + (size_t)y * W;
        const uint8_t *ok = usable + (size_t)y * W;
        for (uint32_t x = 0; x < W; x++) {
            w[x] = ok[x] ? 1.0 : 0.0;
            v[x] = ok[x] ? (double)f[x] : 0.0;
        }
    };
    // (m - 1) + sigma_b * sqrt(2 (m - 1)) for every possible count m in a window
    const int max_count = (2 * k + 1) * (2 * k + 1);
    std::vector<double> dispersion_bound(max_count + 1, 0.0);
    for (int m = 2; m <= max_count; m++) dispersion_bound[m] = (m - 1) + fp.sigma_b * std::sqrt(2.0 * (m - 1));
    for_row_bands(H, kRowsPerBand, nthreads, [&](size_t, uint32_t y0, uint32_t y1) {
        box_sums_band<true>(H, W, k, y0, y1, load_usable, [&](uint32_t y, const double *n, const double *s, const double *s2) {
            uint8_t *c = cand.data() + (size_t)y * W;
            const uint8_t *ok = usable + (size_t)y * W;
            for (uint32_t x = 0; x < W; x++) {
                double sx = s[x];
                int m = (int)(n[x] + 0.5);
                if (!ok[x]) {
                    c[x] = fp.masked_pixels_neutral;  // never strong itself: strong needs ok[x]
                    continue;
                }
                if (m < fp.min_count || sx < 0 || m < 2) continue;
                double a = m * s2[x] - sx * sx;
                c[x] = a > g * sx * dispersion_bound[m];
            }
        });
    });
    stage_mark("dispersion 7x7");
    // 2. erosion by the window: the candidate cores
    std::vector<uint8_t> core(N);
    erode(cand.data(), core.data(), H, W, k - 1, nthreads);
    std::vector<uint8_t>().swap(cand);
    stage_mark("erosion");
    // 3. strong pixels against the background without the cores
    std::vector<uint8_t> strong(N, 0);
    // Local background, written and read only at strong pixels: left uninitialised so the
    // untouched pages of this frame-sized buffer are never faulted in.
    std::unique_ptr<float[]> bg(new float[N]);
    auto load_background = [&](uint32_t y, double *w, double *v) {
        const T *f = frame + (size_t)y * W;
        const uint8_t *ok = usable + (size_t)y * W;
        const uint8_t *c = core.data() + (size_t)y * W;
        for (uint32_t x = 0; x < W; x++) {
            bool use = ok[x] && !c[x];
            w[x] = use ? 1.0 : 0.0;
            v[x] = use ? (double)f[x] : 0.0;
        }
    };
    for_row_bands(H, kRowsPerBand, nthreads, [&](size_t, uint32_t y0, uint32_t y1) {
        box_sums_band<false>(H, W, k + 2, y0, y1, load_background, [&](uint32_t y, const double *n, const double *s, const double *) {
            const T *f = frame + (size_t)y * W;
            const uint8_t *ok = usable + (size_t)y * W, *c = core.data() + (size_t)y * W;
            uint8_t *st = strong.data() + (size_t)y * W;
            float *b = bg.get() + (size_t)y * W;
            for (uint32_t x = 0; x < W; x++) {
                if (!ok[x] || !c[x]) continue;
                double mean = n[x] >= 2 ? s[x] / n[x] : 0.0;
                double v = (double)f[x];
                st[x] = v > fp.threshold && v >= mean + fp.sigma_s * std::sqrt(g * std::max(mean, 0.0));
                if (st[x]) b[x] = (float)mean;
            }
        });
    });
    std::vector<uint8_t>().swap(core);
    stage_mark("background 11x11");

    // 4. 8-connected components over row runs (runs are few: sequential union-find)
    std::vector<Run> runs;
    std::vector<size_t> row_start(H + 1, 0);
    for (uint32_t y = 0; y < H; y++) {
        row_start[y] = runs.size();
        const uint8_t *st = strong.data() + (size_t)y * W;
        for (uint32_t x = 0; x < W;) {
            if (!st[x]) {
                x++;
                continue;
            }
            uint32_t x0 = x;
            while (x < W && st[x]) x++;
            runs.push_back({y, x0, x, (uint32_t)runs.size()});
        }
    }
    row_start[H] = runs.size();
    std::vector<uint32_t> parent(runs.size());
    std::iota(parent.begin(), parent.end(), 0u);
    for (uint32_t y = 1; y < H; y++) {
        size_t a = row_start[y - 1], a_end = row_start[y], b_end = row_start[y + 1];
        for (size_t b = row_start[y]; b < b_end; b++) {
            while (a < a_end && runs[a].x1 + 1 <= runs[b].x0) a++;  // previous run ends left of b
            for (size_t c = a; c < a_end && runs[c].x0 <= runs[b].x1; c++) {
                uint32_t ra = find_root(parent, (uint32_t)c), rb = find_root(parent, (uint32_t)b);
                if (ra != rb) parent[std::max(ra, rb)] = std::min(ra, rb);
            }
        }
    }
    // 5. per-spot statistics and filters
    struct Acc {
        double sw = 0, swx = 0, swy = 0, total = 0, var = 0, bgsum = 0, max = -INFINITY;
        uint32_t maxx = 0, maxy = 0;
        int npix = 0;
        uint32_t x0 = UINT32_MAX, y0 = UINT32_MAX, x1 = 0, y1 = 0;
    };
    std::vector<int64_t> slot(runs.size(), -1);
    std::vector<Acc> acc;
    for (size_t r = 0; r < runs.size(); r++) {
        uint32_t root = find_root(parent, (uint32_t)r);
        if (slot[root] < 0) {
            slot[root] = (int64_t)acc.size();
            acc.emplace_back();
        }
        Acc &a = acc[(size_t)slot[root]];
        const Run &run = runs[r];
        for (uint32_t x = run.x0; x < run.x1; x++) {
            size_t i = (size_t)run.y * W + x;
            double v = (double)frame[i], b = bg[i];
            double wgt = std::max(v, 0.0);  // centroid weights: the counts, as DIALS does
            a.sw += wgt;
            a.swx += wgt * (x + 0.5);
            a.swy += wgt * (run.y + 0.5);
            a.total += v - b;
            a.var += g * std::max(v, 0.0);
            a.bgsum += b;
            if (v > a.max) {
                a.max = v;
                a.maxx = x;
                a.maxy = run.y;
            }
            a.npix++;
        }
        a.x0 = std::min(a.x0, run.x0);
        a.x1 = std::max(a.x1, run.x1);
        a.y0 = std::min(a.y0, run.y);
        a.y1 = std::max(a.y1, run.y + 1);
    }
    std::vector<uint8_t> accepted(acc.size(), 0);
    std::vector<Peak> peaks;
    for (size_t s = 0; s < acc.size(); s++) {
        const Acc &a = acc[s];
        if (a.npix < fp.min_pixels || a.npix > fp.max_pixels || a.sw <= 0) continue;
        double cx = a.swx / a.sw, cy = a.swy / a.sw;
        if (fp.max_separation > 0 &&
            std::hypot(a.maxx + 0.5 - cx, a.maxy + 0.5 - cy) > fp.max_separation)
            continue;
        accepted[s] = 1;
        Peak p;
        p.x = cx;
        p.y = cy;
        p.total = a.total;
        p.max = a.max;
        p.background = a.bgsum / a.npix;
        p.snr = a.var > 0 ? a.total / std::sqrt(a.var) : 0.0;
        p.npix = a.npix;
        p.x0 = (int)a.x0;
        p.y0 = (int)a.y0;
        p.x1 = (int)a.x1;
        p.y1 = (int)a.y1;
        peaks.push_back(p);
    }
    stage_mark("labelling");
    if (spot_mask) {
        std::memset(spot_mask, 0, N);
        for (size_t r = 0; r < runs.size(); r++) {
            if (!fp.mask_all_strong && !accepted[(size_t)slot[find_root(parent, (uint32_t)r)]]) continue;
            std::memset(spot_mask + (size_t)runs[r].y * W + runs[r].x0, 1, runs[r].x1 - runs[r].x0);
        }
    }
    stage_mark("spot mask");
    return peaks;
}

#define REDML_INSTANTIATE(T)                                                                      \
    template std::vector<Peak> find_spots<T>(const T *, const uint8_t *, uint32_t, uint32_t,      \
                                             const FinderParams &, uint8_t *, int);
REDML_FOR_EACH_PIXEL_TYPE(REDML_INSTANTIATE)
#undef REDML_INSTANTIATE

}  // namespace redml
