// scaled_masked_softmax: y = softmax(where(mask, -10000, scale * x)), with a byte mask
// broadcast over batch, heads or query positions through its strides.
#include "softmax_kernels.cuh"

namespace megatron_fused_softmax {

using detail::MaskMode;

cudaError_t scaled_masked_softmax_forward(ElementType type, void* out, const void* in,
                                          MaskLayout mask, RowLayout rows, float scale,
                                          cudaStream_t stream) {
  if (mask.data == nullptr) return cudaErrorInvalidValue;
  return detail::dispatch_forward<MaskMode::kPadding>(type, out, in, mask, rows, scale,
                                                      stream);
}

cudaError_t scaled_masked_softmax_backward(ElementType type, void* grad_in,
                                           const void* grad_out, const void* out,
                                           MaskLayout mask, RowLayout rows, float scale,
                                           cudaStream_t stream) {
  if (mask.data == nullptr) return cudaErrorInvalidValue;
  return detail::dispatch_backward<MaskMode::kPadding>(type, grad_in, grad_out, out, mask,
                                                       rows, scale, stream);
}

}  // namespace megatron_fused_softmax
