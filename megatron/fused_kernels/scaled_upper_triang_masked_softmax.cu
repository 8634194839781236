// scaled_upper_triang_masked_softmax: causal softmax of square score matrices; row i keeps
// columns 0..i, the others are exactly 0 in the output and in the gradient.
#include "softmax_kernels.cuh"

namespace megatron_fused_softmax {

using detail::MaskMode;

cudaError_t scaled_upper_triang_masked_softmax_forward(ElementType type, void* out,
                                                       const void* in, RowLayout rows,
                                                       float scale, cudaStream_t stream) {
  return detail::dispatch_forward<MaskMode::kCausal>(type, out, in, detail::no_mask(), rows,
                                                     scale, stream);
}

cudaError_t scaled_upper_triang_masked_softmax_backward(ElementType type, void* grad_in,
                                                        const void* grad_out, const void* out,
                                                        RowLayout rows, float scale,
                                                        cudaStream_t stream) {
  return detail::dispatch_backward<MaskMode::kCausal>(type, grad_in, grad_out, out,
                                                      detail::no_mask(), rows, scale, stream);
}

}  // namespace megatron_fused_softmax
