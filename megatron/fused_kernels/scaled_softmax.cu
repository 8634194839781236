// scaled_softmax: y = softmax(scale * x) over the last dimension, no mask.
#include "softmax_kernels.cuh"

namespace megatron_fused_softmax {

using detail::MaskMode;

cudaError_t scaled_softmax_forward(ElementType type, void* out, const void* in,
                                   RowLayout rows, float scale, cudaStream_t stream) {
  return detail::dispatch_forward<MaskMode::kNone>(type, out, in, detail::no_mask(), rows,
                                                   scale, stream);
}

cudaError_t scaled_softmax_backward(ElementType type, void* grad_in, const void* grad_out,
                                    const void* out, RowLayout rows, float scale,
                                    cudaStream_t stream) {
  return detail::dispatch_backward<MaskMode::kNone>(type, grad_in, grad_out, out,
                                                    detail::no_mask(), rows, scale, stream);
}

}  // namespace megatron_fused_softmax
