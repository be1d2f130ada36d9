// Input checks shared by the CPU and CUDA torch bindings: the Python wrapper checks the same things
// first, these keep a direct call of the extension from reading out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace r1sampler {

inline void check_sample_inputs(const at::Tensor& logits, const at::Tensor& request_ids, double temperature,
                                int64_t top_k, double top_p, int64_t step) {
  TORCH_CHECK_VALUE(logits.dim() == 2, "logits must be [batch, vocab], got ", logits.dim(), " dimensions");
  const auto dt = logits.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
                   "logits must be float32, bfloat16 or float16, got ", dt);
  TORCH_CHECK_VALUE(logits.size(1) >= 1 && logits.size(1) < (int64_t(1) << 23),
                    "vocab size must be in [1, 2^23), got ", logits.size(1));
  TORCH_CHECK_VALUE(logits.stride(1) == 1, "logits rows must be contiguous (stride 1 along the vocab)");
  TORCH_CHECK_TYPE(request_ids.scalar_type() == at::kLong, "request_ids must be int64, got ",
                   request_ids.scalar_type());
  TORCH_CHECK_VALUE(request_ids.dim() == 1 && request_ids.size(0) == logits.size(0),
                    "request_ids must be [batch] = [", logits.size(0), "], got ", request_ids.sizes());
  TORCH_CHECK_VALUE(request_ids.device() == logits.device(), "request_ids must be on the logits' device");
  TORCH_CHECK_VALUE(temperature >= 0, "temperature must be >= 0, got ", temperature);
  TORCH_CHECK_VALUE(top_k >= 0, "top_k must be >= 0, got ", top_k);
  TORCH_CHECK_VALUE(top_p > 0 && top_p <= 1, "top_p must be in (0, 1], got ", top_p);
  TORCH_CHECK_VALUE(step >= 0 && step <= 0xFFFFFFFFll, "step must be in [0, 2^32), got ", step);
}

}  // namespace r1sampler
