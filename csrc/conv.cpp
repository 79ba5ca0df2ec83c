// conv.cpp: 3x3 dilated convolution + bias + leaky ReLU on planar float32 (see conv.h).
//
// With a few channels a convolution is bound by how often each input is loaded, not by
// the multiply-adds: oneDNN's few-channel kernels reach ~5 GMAC/s. Here a block of
// NV x 8 consecutive output pixels keeps all CO output channels' sums in vector
// registers, and each shifted input vector, loaded once per (ci, ky, kx), feeds CO x NV
// multiply-adds. Blocks whose taps leave the row (the left and right edges, the ragged
// end) gather their inputs with zeros outside; taps above and below the frame read a
// row of zeros (no branch in the inner loop).
#include "conv.h"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <vector>

#include "threads.h"

namespace redml {
namespace {

// GCC/Clang vector extension: 8 floats, one AVX register where the target has AVX,
// else pairs of SSE registers.
typedef float v8f __attribute__((vector_size(32)));
constexpr ptrdiff_t L = 8;

// Every helper is force-inlined so it is compiled for the instruction set of the entry
// point it lands in (AVX2 + FMA or the portable default; see the entry points below).
#define CONV_INLINE inline __attribute__((always_inline))

struct Args {
    const float *x, *bias;
    const float *packed;  // the weights, per group of output channels as [ci][ky][kx][co]
    const float *zeros;   // a row of w zeros: the taps above and below the frame
    float *out;
    ptrdiff_t cin, h, w, cout, d;
    float slope;
};

// Vectors go by reference, never by value: no ABI question between the two builds.
CONV_INLINE void load(v8f &v, const float *p) { std::memcpy(&v, p, sizeof v); }

// Lanes x0 .. x0 + 7 of a row of w values, zeros outside [0, w).
CONV_INLINE void load_padded(v8f &v, const float *row, ptrdiff_t x0, ptrdiff_t w) {
    float t[L];
    for (ptrdiff_t i = 0; i < L; i++) t[i] = (x0 + i >= 0 && x0 + i < w) ? row[x0 + i] : 0.0f;
    load(v, t);
}

// Output pixels [x0, x0 + NV * 8) of one row, CO channels from `out` on (planes h * w
// apart). rows: the 3 cin input rows the taps read, [ci][ky]. wk: the group's packed
// weights. EDGE: some taps or output pixels lie outside the row.
template <int CO, int NV, bool EDGE>
CONV_INLINE void block(const Args &a, const float *const *rows, const float *wk, const float *bias, float *out,
                       ptrdiff_t x0) {
    v8f acc[CO][NV];
    for (int c = 0; c < CO; c++)
        for (int v = 0; v < NV; v++) acc[c][v] = v8f{} + bias[c];
    const ptrdiff_t ntaps = 3 * a.cin;
    for (ptrdiff_t t = 0; t < ntaps; t++, wk += 3 * CO) {
        const float *row = rows[t];
        for (int kx = 0; kx < 3; kx++) {
            const ptrdiff_t xs = x0 + (kx - 1) * a.d;
            v8f in[NV];
            for (int v = 0; v < NV; v++) {
                if (EDGE)
                    load_padded(in[v], row, xs + v * L, a.w);
                else
                    load(in[v], row + xs + v * L);
            }
            for (int c = 0; c < CO; c++)
                for (int v = 0; v < NV; v++) acc[c][v] += wk[kx * CO + c] * in[v];
        }
    }
    for (int c = 0; c < CO; c++) {
        float t[NV * L];
        float *o = EDGE ? t : out + c * a.h * a.w + x0;  // the edges go through t: only lanes inside the row land
        for (int v = 0; v < NV; v++) {
            const v8f s = acc[c][v];
            const v8f r = s >= 0 ? s : s * a.slope;
            std::memcpy(o + v * L, &r, sizeof r);
        }
        if (EDGE) std::memcpy(out + c * a.h * a.w + x0, t, std::min<ptrdiff_t>(NV * L, a.w - x0) * sizeof(float));
    }
}

// Rows [y0, y1), channels [co0, co0 + CO). Fewer channels, wider blocks: enough
// independent sums to hide the multiply-add latency without running out of registers.
template <int CO>
CONV_INLINE void rows_of_group(const Args &a, ptrdiff_t co0, ptrdiff_t y0, ptrdiff_t y1, const float **rows) {
    constexpr int NV = CO <= 2 ? 4 : CO <= 4 ? 2 : 1;
    constexpr ptrdiff_t B = NV * L;
    const float *wk = a.packed + co0 * a.cin * 9;
    for (ptrdiff_t y = y0; y < y1; y++) {
        for (ptrdiff_t ci = 0; ci < a.cin; ci++)
            for (ptrdiff_t ky = 0; ky < 3; ky++) {
                const ptrdiff_t yy = y + (ky - 1) * a.d;
                rows[ci * 3 + ky] = yy >= 0 && yy < a.h ? a.x + (ci * a.h + yy) * a.w : a.zeros;
            }
        float *out = a.out + (co0 * a.h + y) * a.w;
        for (ptrdiff_t x0 = 0; x0 < a.w; x0 += B) {
            if (x0 - a.d >= 0 && x0 + B + a.d <= a.w)
                block<CO, NV, false>(a, rows, wk, a.bias + co0, out, x0);
            else
                block<CO, NV, true>(a, rows, wk, a.bias + co0, out, x0);
        }
    }
}

// rows: room for 3 cin row pointers.
CONV_INLINE void rows_all_channels(const Args &a, ptrdiff_t y0, ptrdiff_t y1, const float **rows) {
    for (ptrdiff_t co0 = 0; co0 < a.cout; co0 += 8) {
        switch (std::min<ptrdiff_t>(8, a.cout - co0)) {
            case 1: rows_of_group<1>(a, co0, y0, y1, rows); break;
            case 2: rows_of_group<2>(a, co0, y0, y1, rows); break;
            case 3: rows_of_group<3>(a, co0, y0, y1, rows); break;
            case 4: rows_of_group<4>(a, co0, y0, y1, rows); break;
            case 5: rows_of_group<5>(a, co0, y0, y1, rows); break;
            case 6: rows_of_group<6>(a, co0, y0, y1, rows); break;
            case 7: rows_of_group<7>(a, co0, y0, y1, rows); break;
            default: rows_of_group<8>(a, co0, y0, y1, rows); break;
        }
    }
}

// Entry points: the portable build, and on x86-64 an AVX2 + FMA one chosen at run time.
void run_rows_default(const Args &a, ptrdiff_t y0, ptrdiff_t y1, const float **rows) {
    rows_all_channels(a, y0, y1, rows);
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,fma"))) void run_rows_avx2(const Args &a, ptrdiff_t y0, ptrdiff_t y1,
                                                       const float **rows) {
    rows_all_channels(a, y0, y1, rows);
}

bool has_avx2_fma() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

}  // namespace

void conv3x3_leaky(const float *x, size_t cin, size_t h, size_t w, const float *weight, const float *bias,
                   size_t cout, size_t dilation, float slope, float *out, int nthreads) {
    if (h == 0 || w == 0 || cout == 0) return;
    // Weights repacked per group of 8 output channels as [ci][ky][kx][co]: one pointer
    // walks them in the order the taps are summed.
    std::vector<float> packed(cout * cin * 9);
    for (size_t co0 = 0; co0 < cout; co0 += 8) {
        const size_t g = std::min<size_t>(8, cout - co0);
        for (size_t c = 0; c < g; c++)
            for (size_t k = 0; k < cin * 9; k++) packed[co0 * cin * 9 + k * g + c] = weight[(co0 + c) * cin * 9 + k];
    }
    const std::vector<float> zeros(w, 0.0f);
    const Args a{x, bias, packed.data(), zeros.data(), out, (ptrdiff_t)cin, (ptrdiff_t)h, (ptrdiff_t)w,
                 (ptrdiff_t)cout, (ptrdiff_t)dilation, slope};
    void (*run)(const Args &, ptrdiff_t, ptrdiff_t, const float **) = run_rows_default;
#if defined(__x86_64__) && defined(__GNUC__)
    static const bool avx2 = has_avx2_fma();
    if (avx2) run = run_rows_avx2;
#endif
    const int nt = resolve_threads(nthreads);
    // A few bands per thread (the last ones balance the load); one band on one thread.
    const uint32_t band = nt <= 1 ? (uint32_t)h : (uint32_t)std::max<size_t>(8, (h + 4 * nt - 1) / (4 * nt));
    for_row_bands((uint32_t)h, band, nt, [&](size_t, uint32_t y0, uint32_t y1) {
        std::vector<const float *> rows(3 * cin);
        run(a, y0, y1, rows.data());
    });
}

}  // namespace redml
