// Python bindings of the fused softmax kernels: tensor checks, output allocation, and the
// calls into the launchers of fused_softmax.h on the current CUDA stream.
#include <torch/extension.h>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "fused_softmax.h"

namespace msf = megatron_fused_softmax;

namespace {

msf::ElementType element_type(const at::Tensor& t, const char* what) {
  if (t.scalar_type() == at::kHalf) return msf::ElementType::kFloat16;
  TORCH_CHECK(t.scalar_type() == at::kBFloat16, what, " must be float16 or bfloat16, got ",
              t.scalar_type());
  return msf::ElementType::kBFloat16;
}

void check_scores(const at::Tensor& t, int64_t dims, const char* what) {
  TORCH_CHECK(t.is_cuda(), what, " must be a CUDA tensor");
  TORCH_CHECK(t.dim() == dims, what, " must have ", dims, " dimensions, got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), what, " must be contiguous");
  const int64_t seq_k = t.size(-1);
  TORCH_CHECK(seq_k >= 1 && seq_k <= msf::kMaxKeyLength, what, ": key length ", seq_k,
              " is outside the fused kernels' range [1, ", msf::kMaxKeyLength, "]");
}

void check_like(const at::Tensor& t, const at::Tensor& ref, const char* what) {
  TORCH_CHECK(t.is_cuda() && t.device() == ref.device(), what, " must be on ", ref.device());
  TORCH_CHECK(t.sizes() == ref.sizes(), what, " has shape ", t.sizes(), ", expected ",
              ref.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), what, " has dtype ", t.scalar_type(),
              ", expected ", ref.scalar_type());
  TORCH_CHECK(t.is_contiguous(), what, " must be contiguous");
}

// [batch, heads, seq_q, seq_k] scores -> one row per (batch, head, query).
msf::RowLayout rows_4d(const at::Tensor& t) {
  return msf::RowLayout{t.size(0) * t.size(1) * t.size(2), t.size(2), t.size(1),
                        static_cast<int>(t.size(3))};
}

// [attn_batches, seq_q, seq_k] scores of the causal kernel.
msf::RowLayout rows_3d(const at::Tensor& t) {
  return msf::RowLayout{t.size(0) * t.size(1), t.size(1), 1, static_cast<int>(t.size(2))};
}

// Broadcasts a bool/uint8 mask to the scores' shape without copying it (strides of 0).
at::Tensor expand_mask(const at::Tensor& mask, const at::Tensor& scores) {
  TORCH_CHECK(mask.scalar_type() == at::kBool || mask.scalar_type() == at::kByte,
              "mask must be bool or uint8 (nonzero = masked out), got ", mask.scalar_type());
  TORCH_CHECK(mask.is_cuda() && mask.device() == scores.device(), "mask must be on ",
              scores.device());
  TORCH_CHECK(mask.dim() >= 1 && mask.dim() <= 4, "mask must have 1 to 4 dimensions, got ",
              mask.sizes());
  at::Tensor m = mask.stride(-1) == 1 || mask.size(-1) == 1 ? mask : mask.contiguous();
  m = m.expand(scores.sizes());
  if (m.stride(3) != 1) m = m.contiguous();  // a mask broadcast along the keys
  return m;
}

msf::MaskLayout mask_layout(const at::Tensor& m) {
  return msf::MaskLayout{static_cast<const uint8_t*>(m.data_ptr()), m.stride(0), m.stride(1),
                         m.stride(2)};
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

at::Tensor scaled_softmax_forward(const at::Tensor& input, double scale) {
  check_scores(input, 4, "input");
  const auto type = element_type(input, "input");
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = at::empty_like(input);
  C10_CUDA_CHECK(msf::scaled_softmax_forward(type, out.data_ptr(), input.data_ptr(),
                                             rows_4d(input), static_cast<float>(scale),
                                             current_stream()));
  return out;
}

at::Tensor scaled_softmax_backward(const at::Tensor& grad_out, const at::Tensor& out,
                                   double scale) {
  check_scores(out, 4, "softmax_results");
  check_like(grad_out, out, "output_grads");
  const auto type = element_type(out, "softmax_results");
  const c10::cuda::CUDAGuard guard(out.device());
  at::Tensor grad_in = at::empty_like(out);
  C10_CUDA_CHECK(msf::scaled_softmax_backward(type, grad_in.data_ptr(), grad_out.data_ptr(),
                                              out.data_ptr(), rows_4d(out),
                                              static_cast<float>(scale), current_stream()));
  return grad_in;
}

at::Tensor scaled_masked_softmax_forward(const at::Tensor& input, const at::Tensor& mask,
                                         double scale) {
  check_scores(input, 4, "input");
  const auto type = element_type(input, "input");
  const at::Tensor m = expand_mask(mask, input);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = at::empty_like(input);
  C10_CUDA_CHECK(msf::scaled_masked_softmax_forward(type, out.data_ptr(), input.data_ptr(),
                                                    mask_layout(m), rows_4d(input),
                                                    static_cast<float>(scale),
                                                    current_stream()));
  return out;
}

at::Tensor scaled_masked_softmax_backward(const at::Tensor& grad_out, const at::Tensor& out,
                                          const at::Tensor& mask, double scale) {
  check_scores(out, 4, "softmax_results");
  check_like(grad_out, out, "output_grads");
  const auto type = element_type(out, "softmax_results");
  const at::Tensor m = expand_mask(mask, out);
  const c10::cuda::CUDAGuard guard(out.device());
  at::Tensor grad_in = at::empty_like(out);
  C10_CUDA_CHECK(msf::scaled_masked_softmax_backward(
      type, grad_in.data_ptr(), grad_out.data_ptr(), out.data_ptr(), mask_layout(m),
      rows_4d(out), static_cast<float>(scale), current_stream()));
  return grad_in;
}

void check_square(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.size(1) == t.size(2), what, " must be [attn_batches, seq, seq] for the causal ",
              "kernel, got ", t.sizes());
}

at::Tensor scaled_upper_triang_masked_softmax_forward(const at::Tensor& input, double scale) {
  check_scores(input, 3, "input");
  check_square(input, "input");
  const auto type = element_type(input, "input");
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = at::empty_like(input);
  C10_CUDA_CHECK(msf::scaled_upper_triang_masked_softmax_forward(
      type, out.data_ptr(), input.data_ptr(), rows_3d(input), static_cast<float>(scale),
      current_stream()));
  return out;
}

at::Tensor scaled_upper_triang_masked_softmax_backward(const at::Tensor& grad_out,
                                                       const at::Tensor& out, double scale) {
  check_scores(out, 3, "softmax_results");
  check_square(out, "softmax_results");
  check_like(grad_out, out, "output_grads");
  const auto type = element_type(out, "softmax_results");
  const c10::cuda::CUDAGuard guard(out.device());
  at::Tensor grad_in = at::empty_like(out);
  C10_CUDA_CHECK(msf::scaled_upper_triang_masked_softmax_backward(
      type, grad_in.data_ptr(), grad_out.data_ptr(), out.data_ptr(), rows_3d(out),
      static_cast<float>(scale), current_stream()));
  return grad_in;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused scale + mask + softmax kernels (fp16/bf16) for Megatron attention";
  m.attr("MAX_KEY_LENGTH") = msf::kMaxKeyLength;
  m.def("scaled_softmax_forward", &scaled_softmax_forward,
        "softmax(scale * x) of [b, np, sq, sk] scores", py::arg("input"), py::arg("scale"));
  m.def("scaled_softmax_backward", &scaled_softmax_backward, "gradient of scaled_softmax",
        py::arg("output_grads"), py::arg("softmax_results"), py::arg("scale"));
  m.def("scaled_masked_softmax_forward", &scaled_masked_softmax_forward,
        "softmax(where(mask, -10000, scale * x)) of [b, np, sq, sk] scores; the mask "
        "broadcasts to the scores",
        py::arg("input"), py::arg("mask"), py::arg("scale"));
  m.def("scaled_masked_softmax_backward", &scaled_masked_softmax_backward,
        "gradient of scaled_masked_softmax (0 where masked)", py::arg("output_grads"),
        py::arg("softmax_results"), py::arg("mask"), py::arg("scale"));
  m.def("scaled_upper_triang_masked_softmax_forward",
        &scaled_upper_triang_masked_softmax_forward,
        "causal softmax(scale * x) of [attn_batches, sq, sq] scores", py::arg("input"),
        py::arg("scale"));
  m.def("scaled_upper_triang_masked_softmax_backward",
        &scaled_upper_triang_masked_softmax_backward,
        "gradient of scaled_upper_triang_masked_softmax", py::arg("output_grads"),
        py::arg("softmax_results"), py::arg("scale"));
}
