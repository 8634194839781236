// Host-side interface of the fused softmax kernels.
//
// Three operations on rows of attention scores, each with a forward and a backward:
//   scaled_softmax                      y = softmax(scale * x)
//   scaled_masked_softmax               y = softmax(where(mask, -10000, scale * x))
//   scaled_upper_triang_masked_softmax  y = softmax(scale * x) over columns j <= i of row i,
//                                       exactly 0 for j > i (causal attention)
// The backward of each returns dL/dx = scale * y * (g - sum(g * y)), and exactly 0 where the
// forward masked the input, which is what autograd gives for the torch formulas above.
//
// The launchers take raw device pointers so that the CUDA translation units need no ATen
// headers (they compile in seconds); fused_softmax_bindings.cpp does the tensor checks.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace megatron_fused_softmax {

// Longest key row a kernel handles: 1024 threads per row, 16 elements held by each.
constexpr int kMaxKeyLength = 16384;

enum class ElementType : int { kFloat16 = 0, kBFloat16 = 1 };

// Rows of length seq_k, laid out contiguously. Row r is query position r % seq_q of the
// (batch, head) pair r / seq_q, so that head = (r / seq_q) % heads, batch = r / seq_q / heads.
struct RowLayout {
  int64_t num_rows;
  int64_t seq_q;
  int64_t heads;
  int seq_k;
};

// A byte mask (nonzero = masked out) addressed by element strides; a stride of 0 broadcasts
// that dimension. The key dimension is contiguous.
struct MaskLayout {
  const uint8_t* data;
  int64_t stride_batch;
  int64_t stride_head;
  int64_t stride_q;
};

cudaError_t scaled_softmax_forward(ElementType type, void* out, const void* in,
                                   RowLayout rows, float scale, cudaStream_t stream);
cudaError_t scaled_softmax_backward(ElementType type, void* grad_in, const void* grad_out,
                                    const void* out, RowLayout rows, float scale,
                                    cudaStream_t stream);

cudaError_t scaled_masked_softmax_forward(ElementType type, void* out, const void* in,
                                          MaskLayout mask, RowLayout rows, float scale,
                                          cudaStream_t stream);
cudaError_t scaled_masked_softmax_backward(ElementType type, void* grad_in,
                                           const void* grad_out, const void* out,
                                           MaskLayout mask, RowLayout rows, float scale,
                                           cudaStream_t stream);

cudaError_t scaled_upper_triang_masked_softmax_forward(ElementType type, void* out,
                                                       const void* in, RowLayout rows,
                                                       float scale, cudaStream_t stream);
cudaError_t scaled_upper_triang_masked_softmax_backward(ElementType type, void* grad_in,
                                                        const void* grad_out, const void* out,
                                                        RowLayout rows, float scale,
                                                        cudaStream_t stream);

}  // namespace megatron_fused_softmax
