// Device code shared by the three fused softmax operations (see fused_softmax.h).
//
// Design: a row of seq_k scores is owned by `tpr` consecutive threads (a power of two,
// 1..1024), each holding up to kElemsPerThread values in registers, so a row is read from
// global memory once and written once. Thread t of a row owns the elements
// (it * tpr + t) * kVec + v, which makes every load instruction of a warp touch one
// contiguous span (coalesced). kVec = 4 uses 8-byte vector loads when the row length and the
// pointers allow it, kVec = 1 handles any length. Rows of up to 512 keys (tpr <= 32) are
// reduced with warp shuffles, several rows per block; longer rows span several warps and
// combine the per-warp partials through shared memory. Arithmetic is done in fp32.
#pragma once

#include <cmath>
#include <cstdint>
#include <climits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "fused_softmax.h"

namespace megatron_fused_softmax {
namespace detail {

enum class MaskMode : int { kNone = 0, kPadding = 1, kCausal = 2 };

constexpr int kWarpSize = 32;
constexpr int kElemsPerThread = 16;
constexpr int kMaxThreadsPerRow = kMaxKeyLength / kElemsPerThread;
constexpr int kBlockThreads = 128;  // block size when several rows share a block
constexpr int kVecWidth = 4;
// The value a masked score takes in scaled_masked_softmax; the same constant as the torch
// path's masked_fill, so fully masked rows give the same (uniform) distribution.
constexpr float kPaddingFill = -10000.0f;

static_assert(kMaxThreadsPerRow <= 1024, "a row must fit in one thread block");
static_assert(kMaxThreadsPerRow / kWarpSize <= kWarpSize, "per-warp partials fit one warp");

template <typename T>
struct Convert;

template <>
struct Convert<__half> {
  __device__ __forceinline__ static float to_float(__half v) { return __half2float(v); }
  __device__ __forceinline__ static __half from_float(float v) { return __float2half_rn(v); }
};

template <>
struct Convert<__nv_bfloat16> {
  __device__ __forceinline__ static float to_float(__nv_bfloat16 v) {
    return __bfloat162float(v);
  }
  __device__ __forceinline__ static __nv_bfloat16 from_float(float v) {
    return __float2bfloat16_rn(v);
  }
};

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

struct MaxOp {
  __device__ __forceinline__ static float apply(float a, float b) { return fmaxf(a, b); }
};

struct SumOp {
  __device__ __forceinline__ static float apply(float a, float b) { return a + b; }
};

// Combines `value` over the tpr threads owning one row; every thread of the block must call
// it (it may synchronise the block). `scratch` holds one float per warp of the block.
template <typename Op>
__device__ __forceinline__ float row_reduce(float value, int tpr, float* scratch) {
  const int width = tpr < kWarpSize ? tpr : kWarpSize;
  for (int offset = width >> 1; offset > 0; offset >>= 1) {
    value = Op::apply(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  if (tpr <= kWarpSize) return value;
  const int warp = threadIdx.x / kWarpSize;
  const int warps_per_row = tpr / kWarpSize;
  const int first_warp = (warp / warps_per_row) * warps_per_row;
  if (threadIdx.x % kWarpSize == 0) scratch[warp] = value;
  __syncthreads();
  float total = scratch[first_warp];
  for (int w = 1; w < warps_per_row; ++w) total = Op::apply(total, scratch[first_warp + w]);
  return total;
}

// Where the calling thread sits: its row, whether that row exists, its index in the row.
struct RowSlot {
  int64_t row;
  bool valid;
  int t;
};

__device__ __forceinline__ RowSlot row_slot(const RowLayout& rows, int tpr) {
  RowSlot slot;
  slot.t = threadIdx.x & (tpr - 1);
  slot.row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / tpr) + threadIdx.x / tpr;
  slot.valid = slot.row < rows.num_rows;
  if (!slot.valid) slot.row = 0;  // keeps the addresses below in range; nothing is stored
  return slot;
}

// Number of leading columns of the row that take part in the softmax.
template <MaskMode kMode>
__device__ __forceinline__ int active_columns(const RowSlot& slot, const RowLayout& rows) {
  if (!slot.valid) return 0;
  if constexpr (kMode == MaskMode::kCausal) {
    const int64_t q = slot.row % rows.seq_q;
    return q + 1 < rows.seq_k ? static_cast<int>(q + 1) : rows.seq_k;
  }
  return rows.seq_k;
}

__device__ __forceinline__ const uint8_t* mask_row_ptr(const MaskLayout& mask,
                                                       const RowSlot& slot,
                                                       const RowLayout& rows) {
  const int64_t q = slot.row % rows.seq_q;
  const int64_t batch_head = slot.row / rows.seq_q;
  const int64_t head = batch_head % rows.heads;
  const int64_t batch = batch_head / rows.heads;
  return mask.data + batch * mask.stride_batch + head * mask.stride_head + q * mask.stride_q;
}

template <typename T, MaskMode kMode, int kVec>
__global__ void __launch_bounds__(kMaxThreadsPerRow)
    softmax_forward_kernel(T* __restrict__ out, const T* __restrict__ in, MaskLayout mask,
                           RowLayout rows, float scale, int tpr) {
  constexpr int kIters = kElemsPerThread / kVec;
  __shared__ float scratch_max[kWarpSize];
  __shared__ float scratch_sum[kWarpSize];
  const RowSlot slot = row_slot(rows, tpr);
  const int seq_k = rows.seq_k;
  const int limit = active_columns<kMode>(slot, rows);
  const uint8_t* mask_row = nullptr;
  if constexpr (kMode == MaskMode::kPadding) mask_row = mask_row_ptr(mask, slot, rows);
  const T* in_row = in + slot.row * seq_k;

  float vals[kElemsPerThread];
  float local_max = -INFINITY;
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int col0 = (it * tpr + slot.t) * kVec;
    if (col0 < limit) {
      const Pack<T, kVec> pack = *reinterpret_cast<const Pack<T, kVec>*>(in_row + col0);
#pragma unroll
      for (int v = 0; v < kVec; ++v) {
        float x = Convert<T>::to_float(pack.v[v]) * scale;
        if constexpr (kMode == MaskMode::kCausal) {
          if (col0 + v >= limit) x = -INFINITY;
        }
        if constexpr (kMode == MaskMode::kPadding) {
          if (mask_row[col0 + v] != 0) x = kPaddingFill;
        }
        vals[it * kVec + v] = x;
        local_max = fmaxf(local_max, x);
      }
    } else {
#pragma unroll
      for (int v = 0; v < kVec; ++v) vals[it * kVec + v] = -INFINITY;
    }
  }
  const float row_max = row_reduce<MaxOp>(local_max, tpr, scratch_max);

  float local_sum = 0.0f;
#pragma unroll
  for (int i = 0; i < kElemsPerThread; ++i) {
    const float e = vals[i] == -INFINITY ? 0.0f : expf(vals[i] - row_max);
    vals[i] = e;
    local_sum += e;
  }
  const float row_sum = row_reduce<SumOp>(local_sum, tpr, scratch_sum);
  if (!slot.valid) return;  // only after the last block-wide reduction

  const float inv_sum = 1.0f / row_sum;
  T* out_row = out + slot.row * seq_k;
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int col0 = (it * tpr + slot.t) * kVec;
    if (col0 < seq_k) {  // causal: the columns past `limit` hold e = 0 and are written as 0
      Pack<T, kVec> pack;
#pragma unroll
      for (int v = 0; v < kVec; ++v) {
        pack.v[v] = Convert<T>::from_float(vals[it * kVec + v] * inv_sum);
      }
      *reinterpret_cast<Pack<T, kVec>*>(out_row + col0) = pack;
    }
  }
}

template <typename T, MaskMode kMode, int kVec>
__global__ void __launch_bounds__(kMaxThreadsPerRow)
    softmax_backward_kernel(T* __restrict__ grad_in, const T* __restrict__ grad_out,
                            const T* __restrict__ out, MaskLayout mask, RowLayout rows,
                            float scale, int tpr) {
  constexpr int kIters = kElemsPerThread / kVec;
  __shared__ float scratch_dot[kWarpSize];
  const RowSlot slot = row_slot(rows, tpr);
  const int seq_k = rows.seq_k;
  const int limit = active_columns<kMode>(slot, rows);
  const uint8_t* mask_row = nullptr;
  if constexpr (kMode == MaskMode::kPadding) mask_row = mask_row_ptr(mask, slot, rows);
  const int64_t offset = slot.row * seq_k;

  // Kept in the storage type (half the registers of fp32) until the gradient is formed.
  T grads[kElemsPerThread];
  T probs[kElemsPerThread];
  float local_dot = 0.0f;
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int col0 = (it * tpr + slot.t) * kVec;
    if (col0 < limit) {
      const Pack<T, kVec> g = *reinterpret_cast<const Pack<T, kVec>*>(grad_out + offset + col0);
      const Pack<T, kVec> y = *reinterpret_cast<const Pack<T, kVec>*>(out + offset + col0);
#pragma unroll
      for (int v = 0; v < kVec; ++v) {
        grads[it * kVec + v] = g.v[v];
        probs[it * kVec + v] = y.v[v];
        bool inside = true;
        if constexpr (kMode == MaskMode::kCausal) inside = col0 + v < limit;
        if (inside) local_dot += Convert<T>::to_float(g.v[v]) * Convert<T>::to_float(y.v[v]);
      }
    }
  }
  const float dot = row_reduce<SumOp>(local_dot, tpr, scratch_dot);
  if (!slot.valid) return;

#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int col0 = (it * tpr + slot.t) * kVec;
    if (col0 < seq_k) {
      Pack<T, kVec> result;
#pragma unroll
      for (int v = 0; v < kVec; ++v) {
        const int col = col0 + v;
        const int i = it * kVec + v;
        bool masked = false;
        if constexpr (kMode == MaskMode::kCausal) masked = col >= limit;
        if constexpr (kMode == MaskMode::kPadding) masked = mask_row[col] != 0;
        const bool loaded = col0 < limit;  // the masked tail of a causal row is never read
        const float r = (masked || !loaded)
                            ? 0.0f
                            : scale * Convert<T>::to_float(probs[i]) *
                                  (Convert<T>::to_float(grads[i]) - dot);
        result.v[v] = Convert<T>::from_float(r);
      }
      *reinterpret_cast<Pack<T, kVec>*>(grad_in + offset + col0) = result;
    }
  }
}

// Smallest power of two of threads that covers seq_k with kElemsPerThread each.
inline int threads_per_row(int seq_k) {
  int tpr = 1;
  while (tpr * kElemsPerThread < seq_k) tpr <<= 1;
  return tpr;
}

inline bool is_aligned(const void* pointer, size_t bytes) {
  return reinterpret_cast<uintptr_t>(pointer) % bytes == 0;
}

struct LaunchShape {
  dim3 grid;
  dim3 block;
  int tpr;
};

inline cudaError_t launch_shape(const RowLayout& rows, LaunchShape* shape) {
  if (rows.seq_k < 1 || rows.seq_k > kMaxKeyLength || rows.seq_q < 1 || rows.heads < 1 ||
      rows.num_rows < 1) {
    return cudaErrorInvalidValue;
  }
  const int tpr = threads_per_row(rows.seq_k);
  const int block = tpr > kBlockThreads ? tpr : kBlockThreads;
  const int64_t rows_per_block = block / tpr;
  const int64_t blocks = (rows.num_rows + rows_per_block - 1) / rows_per_block;
  if (blocks > INT_MAX) return cudaErrorInvalidValue;
  shape->grid = dim3(static_cast<unsigned int>(blocks));
  shape->block = dim3(static_cast<unsigned int>(block));
  shape->tpr = tpr;
  return cudaSuccess;
}

template <typename T, MaskMode kMode>
cudaError_t launch_forward(void* out, const void* in, MaskLayout mask, RowLayout rows,
                           float scale, cudaStream_t stream) {
  if (rows.num_rows == 0) return cudaSuccess;
  LaunchShape s;
  const cudaError_t status = launch_shape(rows, &s);
  if (status != cudaSuccess) return status;
  T* o = static_cast<T*>(out);
  const T* x = static_cast<const T*>(in);
  const size_t vec_bytes = sizeof(T) * kVecWidth;
  if (rows.seq_k % kVecWidth == 0 && is_aligned(out, vec_bytes) && is_aligned(in, vec_bytes)) {
    softmax_forward_kernel<T, kMode, kVecWidth>
        <<<s.grid, s.block, 0, stream>>>(o, x, mask, rows, scale, s.tpr);
  } else {
    softmax_forward_kernel<T, kMode, 1><<<s.grid, s.block, 0, stream>>>(o, x, mask, rows, scale,
                                                                        s.tpr);
  }
  return cudaGetLastError();
}

template <typename T, MaskMode kMode>
cudaError_t launch_backward(void* grad_in, const void* grad_out, const void* out,
                            MaskLayout mask, RowLayout rows, float scale, cudaStream_t stream) {
  if (rows.num_rows == 0) return cudaSuccess;
  LaunchShape s;
  const cudaError_t status = launch_shape(rows, &s);
  if (status != cudaSuccess) return status;
  T* gi = static_cast<T*>(grad_in);
  const T* go = static_cast<const T*>(grad_out);
  const T* y = static_cast<const T*>(out);
  const size_t vec_bytes = sizeof(T) * kVecWidth;
  if (rows.seq_k % kVecWidth == 0 && is_aligned(grad_in, vec_bytes) &&
      is_aligned(grad_out, vec_bytes) && is_aligned(out, vec_bytes)) {
    softmax_backward_kernel<T, kMode, kVecWidth>
        <<<s.grid, s.block, 0, stream>>>(gi, go, y, mask, rows, scale, s.tpr);
  } else {
    softmax_backward_kernel<T, kMode, 1>
        <<<s.grid, s.block, 0, stream>>>(gi, go, y, mask, rows, scale, s.tpr);
  }
  return cudaGetLastError();
}

template <MaskMode kMode>
cudaError_t dispatch_forward(ElementType type, void* out, const void* in, MaskLayout mask,
                             RowLayout rows, float scale, cudaStream_t stream) {
  switch (type) {
    case ElementType::kFloat16:
      return launch_forward<__half, kMode>(out, in, mask, rows, scale, stream);
    case ElementType::kBFloat16:
      return launch_forward<__nv_bfloat16, kMode>(out, in, mask, rows, scale, stream);
  }
  return cudaErrorInvalidValue;
}

template <MaskMode kMode>
cudaError_t dispatch_backward(ElementType type, void* grad_in, const void* grad_out,
                              const void* out, MaskLayout mask, RowLayout rows, float scale,
                              cudaStream_t stream) {
  switch (type) {
    case ElementType::kFloat16:
      return launch_backward<__half, kMode>(grad_in, grad_out, out, mask, rows, scale, stream);
    case ElementType::kBFloat16:
      return launch_backward<__nv_bfloat16, kMode>(grad_in, grad_out, out, mask, rows, scale,
                                                   stream);
  }
  return cudaErrorInvalidValue;
}

inline MaskLayout no_mask() { return MaskLayout{nullptr, 0, 0, 0}; }

}  // namespace detail
}  // namespace megatron_fused_softmax
