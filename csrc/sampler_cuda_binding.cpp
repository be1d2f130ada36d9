// Torch binding of the CUDA sampler (module r1hpc._C): checks, output allocation, the current
// stream; the kernel itself lives in the torch-free sampler_cuda.cu.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/csrc/utils/pybind.h>

#include <vector>

#include "sampler_checks.h"
#include "sampler_cuda.h"

namespace r1sampler {
namespace {

std::vector<at::Tensor> sample(const at::Tensor& logits, double temperature, int64_t top_k, double top_p,
                               int64_t seed, const at::Tensor& request_ids, int64_t step) {
  check_sample_inputs(logits, request_ids, temperature, top_k, top_p, step);
  TORCH_CHECK_VALUE(logits.is_cuda(), "r1hpc._C samples CUDA tensors (r1hpc._cpu_sampling takes CPU ones)");
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor requests = request_ids.contiguous();
  const int64_t B = logits.size(0);
  at::Tensor tokens = at::empty({B}, logits.options().dtype(at::kLong));
  at::Tensor logps = at::empty({B}, logits.options().dtype(at::kFloat));
  at::Tensor entropies = at::empty({B}, logits.options().dtype(at::kFloat));
  SampleArgs args;
  args.logits = logits.data_ptr();
  args.rows = B;
  args.vocab = logits.size(1);
  args.row_stride = logits.stride(0);
  args.dtype = logits.scalar_type() == at::kFloat      ? LogitsDtype::kFloat32
               : logits.scalar_type() == at::kBFloat16 ? LogitsDtype::kBFloat16
                                                       : LogitsDtype::kFloat16;
  args.temperature = temperature;
  args.top_k = top_k;
  args.top_p = top_p;
  args.seed = static_cast<uint64_t>(seed);
  args.request_ids = requests.data_ptr<int64_t>();
  args.step = static_cast<uint32_t>(step);
  args.tokens = tokens.data_ptr<int64_t>();
  args.logps = logps.data_ptr<float>();
  args.entropies = entropies.data_ptr<float>();
  const cudaError_t err = launch_sample(args, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "r1hpc sampler kernel launch failed: ", cudaGetErrorString(err));
  return {tokens, logps, entropies};
}

}  // namespace
}  // namespace r1sampler

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "r1hpc's CUDA kernels: the sampler (temperature, top-k, top-p, Philox draw per request)";
  m.def("sample", &r1sampler::sample, "logits [B, V] -> (tokens, logps, entropies)", py::arg("logits"),
        py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("seed"), py::arg("request_ids"),
        py::arg("step"));
}
