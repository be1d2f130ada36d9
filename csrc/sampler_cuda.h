// Torch-free entry point of the CUDA sampler (sampler_cuda.cu): raw pointers and a stream, so the
// kernel compiles with plain nvcc (the CI compile check) and the torch binding stays a thin .cpp.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace r1sampler {

enum class LogitsDtype { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

struct SampleArgs {
  const void* logits;       // [rows, vocab], element (r, i) at logits + r * row_stride + i
  int64_t rows;
  int64_t vocab;
  int64_t row_stride;       // in elements
  LogitsDtype dtype;
  double temperature;       // 0 = greedy
  int64_t top_k;            // 0 = off
  double top_p;             // 1 = off
  uint64_t seed;
  const int64_t* request_ids;  // [rows] on the device: the Philox counter's request part
  uint32_t step;
  int64_t* tokens;          // [rows] outputs on the device
  float* logps;
  float* entropies;
};

// Enqueues one block per row on `stream`; returns the launch status.
cudaError_t launch_sample(const SampleArgs& args, cudaStream_t stream);

}  // namespace r1sampler
