// The sampler's contract (sampler_common.h) on the CPU, one row after another.
//
// Written plainly (a sort where the GPU does a radix select) so that it is a second, independent
// reading of the same definitions: every decision is on the same integers and the same Philox
// words, so the CPU and the GPU draw the same token for the same seed unless a float exp/log
// differs in its last bit right at a decision boundary. Module r1hpc._cpu_sampling.
// Light headers, not torch/extension.h (the whole C++ frontend): the install compiles in about half the time.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <functional>
#include <utility>
#include <vector>

#include "sampler_checks.h"
#include "sampler_common.h"

namespace r1sampler {
namespace {

// Raw value and order-preserving key of element i.
template <typename T>
struct Row;

template <>
struct Row<float> {
  const float* p;
  float value(int64_t i) const { return p[i]; }
  uint32_t key(int64_t i) const {
    uint32_t bits;
    memcpy(&bits, &p[i], sizeof bits);
    return key_from_f32_bits(bits);
  }
};

template <>
struct Row<at::BFloat16> {
  const at::BFloat16* p;
  float value(int64_t i) const { return static_cast<float>(p[i]); }
  uint32_t key(int64_t i) const { return key_from_16_bits(p[i].x); }
};

template <>
struct Row<at::Half> {
  const at::Half* p;
  float value(int64_t i) const { return static_cast<float>(p[i]); }
  uint32_t key(int64_t i) const { return key_from_16_bits(p[i].x); }
};

struct Params {
  bool greedy;
  float inv_t;
  int64_t top_k;
  double top_p;
  uint64_t seed;
  uint32_t step;
};

// Smallest key kept by top-k: the k-th largest key (all its ties stay).
template <typename T>
uint32_t top_k_threshold(const Row<T>& row, int64_t V, int64_t k) {
  std::vector<uint32_t> keys(V);
  for (int64_t i = 0; i < V; ++i) keys[i] = row.key(i);
  std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end(), std::greater<uint32_t>());
  return keys[k - 1];
}

// Smallest key kept by top-p among keys >= min_key: walk the distinct keys from the top while the
// fixed-point mass strictly above stays below top_p * (mass of keys >= min_key).
template <typename T>
uint32_t top_p_threshold(const Row<T>& row, int64_t V, float x_max, const Params& p, uint32_t min_key) {
  std::vector<std::pair<uint32_t, uint64_t>> kept;  // (key, q)
  uint64_t total = 0;
  for (int64_t i = 0; i < V; ++i) {
    const uint32_t key = row.key(i);
    if (key < min_key) continue;
    const uint64_t q = fixed_point_mass((row.value(i) - x_max) * p.inv_t);
    kept.emplace_back(key, q);
    total += q;
  }
  std::sort(kept.begin(), kept.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  const double target = p.top_p * static_cast<double>(total);
  uint64_t above = 0;
  uint32_t threshold = kept.front().first;
  for (size_t i = 0; i < kept.size();) {
    if (!(static_cast<double>(above) < target)) break;
    threshold = kept[i].first;
    size_t j = i;
    for (; j < kept.size() && kept[j].first == threshold; ++j) above += kept[j].second;
    i = j;
  }
  return threshold;
}

template <typename T>
void sample_row(const Row<T>& row, int64_t V, const Params& p, uint64_t request, int64_t* token, float* logp,
                float* entropy) {
  SoftmaxStats<double> st;
  for (int64_t i = 0; i < V; ++i) stats_add(&st, row.value(i), p.inv_t);
  uint64_t best = 0;
  if (p.greedy) {
    for (int64_t i = 0; i < V; ++i) best = std::max(best, pack_candidate(row.key(i), static_cast<uint32_t>(i)));
  } else {
    uint32_t threshold = 0;  // keep keys >= threshold
    if (p.top_k > 0 && p.top_k < V) threshold = top_k_threshold(row, V, p.top_k);
    if (p.top_p < 1.0) threshold = top_p_threshold(row, V, st.m, p, threshold);
    for (int64_t g = 0; g * 4 < V; ++g) {
      const Philox4 words = token_words(p.seed, request, p.step, static_cast<uint32_t>(g));
      for (int64_t i = 4 * g; i < std::min(V, 4 * g + 4); ++i) {
        if (row.key(i) < threshold) continue;
        best = std::max(best, pack_candidate(score_key(row.value(i), p.inv_t, words.w[i & 3]),
                                             static_cast<uint32_t>(i)));
      }
    }
  }
  const int64_t t = candidate_index(best);
  const double log_s = std::log(st.s);
  *token = t;
  *logp = static_cast<float>(static_cast<double>((row.value(t) - st.m) * p.inv_t) - log_s);
  *entropy = static_cast<float>(log_s - st.w / st.s);
}

template <typename T>
void sample_rows(const at::Tensor& logits, const Params& p, const int64_t* requests, int64_t* tokens, float* logps,
                 float* entropies) {
  const int64_t B = logits.size(0), V = logits.size(1), stride = logits.stride(0);
  const T* base = logits.data_ptr<T>();
  for (int64_t r = 0; r < B; ++r) {  // rows one after another: a rank's other cores serve its peers
    sample_row(Row<T>{base + r * stride}, V, p, static_cast<uint64_t>(requests[r]), tokens + r, logps + r,
               entropies + r);
  }
}

std::vector<at::Tensor> sample(const at::Tensor& logits, double temperature, int64_t top_k, double top_p,
                               int64_t seed, const at::Tensor& request_ids, int64_t step) {
  check_sample_inputs(logits, request_ids, temperature, top_k, top_p, step);
  TORCH_CHECK_VALUE(logits.device().is_cpu(), "the CPU sampler needs CPU tensors (r1hpc._C samples on CUDA)");
  const at::Tensor requests = request_ids.contiguous();
  const int64_t B = logits.size(0);
  at::Tensor tokens = at::empty({B}, logits.options().dtype(at::kLong));
  at::Tensor logps = at::empty({B}, logits.options().dtype(at::kFloat));
  at::Tensor entropies = at::empty({B}, logits.options().dtype(at::kFloat));
  if (B == 0) return {tokens, logps, entropies};
  const Params p{temperature <= 0, inverse_temperature(temperature), top_k, top_p, static_cast<uint64_t>(seed),
                 static_cast<uint32_t>(step)};
  const int64_t* req = requests.data_ptr<int64_t>();
  switch (logits.scalar_type()) {
    case at::kFloat:
      sample_rows<float>(logits, p, req, tokens.data_ptr<int64_t>(), logps.data_ptr<float>(),
                         entropies.data_ptr<float>());
      break;
    case at::kBFloat16:
      sample_rows<at::BFloat16>(logits, p, req, tokens.data_ptr<int64_t>(), logps.data_ptr<float>(),
                                entropies.data_ptr<float>());
      break;
    default:
      sample_rows<at::Half>(logits, p, req, tokens.data_ptr<int64_t>(), logps.data_ptr<float>(),
                            entropies.data_ptr<float>());
  }
  return {tokens, logps, entropies};
}

std::vector<int64_t> philox(int64_t c0, int64_t c1, int64_t c2, int64_t c3, int64_t k0, int64_t k1) {
  const Philox4 r = philox4x32_10(static_cast<uint32_t>(c0), static_cast<uint32_t>(c1), static_cast<uint32_t>(c2),
                                  static_cast<uint32_t>(c3), static_cast<uint32_t>(k0), static_cast<uint32_t>(k1));
  return {r.w[0], r.w[1], r.w[2], r.w[3]};
}

}  // namespace
}  // namespace r1sampler

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "r1hpc's sampler on the CPU: temperature, top-k, top-p, Philox draw per request (csrc/)";
  m.def("sample", &r1sampler::sample, "logits [B, V] -> (tokens, logps, entropies)", py::arg("logits"),
        py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("seed"), py::arg("request_ids"),
        py::arg("step"));
  m.def("philox4x32_10", &r1sampler::philox, "one Philox4x32-10 block (for known-answer tests)");
}
