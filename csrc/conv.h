// conv.h: a 3x3 dilated convolution fused with its bias and leaky ReLU, for the learned
// spot finder's few-channel layers (redml_reduce.ml.models.LocalCNN) on the CPU, where
// oneDNN is slow with 2-8 channels.
#pragma once
#include <cstddef>

namespace redml {

// out[co, y, x] = leaky(bias[co] + sum_{ci, ky, kx} weight[co, ci, ky, kx]
//                                 * x[ci, y + (ky - 1) * dilation, x + (kx - 1) * dilation])
// with leaky(v) = v >= 0 ? v : slope * v, and x read as 0 outside the frame (zero padding
// of `dilation` pixels: the same output size, as torch's conv2d(padding=dilation,
// dilation=dilation) then leaky_relu(slope); the cross-correlation torch calls convolution).
//
// Layout: planar float32, C-contiguous: x (cin, h, w), weight (cout, cin, 3, 3), bias
// (cout), out (cout, h, w); out must not overlap x. Fast for cin, cout <= 8 (any cin, cout
// work). dilation >= 1; h, w >= 1. nthreads: 1 runs on the calling thread, 0 resolves as
// resolve_threads (threads.h); rows are split between threads.
void conv3x3_leaky(const float *x, size_t cin, size_t h, size_t w, const float *weight, const float *bias,
                   size_t cout, size_t dilation, float slope, float *out, int nthreads);

}  // namespace redml
