// The sampler's contract (sampler_common.h) on the CPU, rows spread over torch's intra-op threads.
//
// Per row: the max, then the log-sum-exp and entropy sums (a vectorized float exp into double
// lanes), then the Gumbel-max draw, which computes Philox words and logs only for tokens that can
// still win (the contract's argmax exactly, see gumbel_argmax). Top-k by nth_element and top-p by a
// sort, where the GPU does a radix select. Every decision is on the same integers and the same
// Philox words as the GPU's, so both draw the same token for the same seed unless a float exp/log
// differs in its last bit right at a decision boundary; tests/kernels/test_sampler_cpu.py checks the
// draw token for token against a plain Python reading of the contract. Module r1hpc._cpu_sampling.
// Light headers, not torch/extension.h (the whole C++ frontend): the install compiles in about half the time.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <functional>
#include <utility>
#include <vector>

#include "cpu_exp.h"
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

// Row loops keep kLanes independent accumulators, combined in a fixed order at the end: the compiler
// may vectorize them (the exp sums do) without reassociating anything, so the result does not
// depend on the machine.
constexpr int kLanes = 8;

template <typename T>
float row_max(const Row<T>& row, int64_t V) {  // -inf when every value is -inf or NaN
  float lane_max[kLanes];
  for (int j = 0; j < kLanes; ++j) lane_max[j] = -INFINITY;
  int64_t i = 0;
  for (; i + kLanes <= V; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const float v = row.value(i + j);
      lane_max[j] = v > lane_max[j] ? v : lane_max[j];
    }
  }
  float m = -INFINITY;
  for (; i < V; ++i) m = row.value(i) > m ? row.value(i) : m;
  for (int j = 0; j < kLanes; ++j) m = lane_max[j] > m ? lane_max[j] : m;
  return m;
}

struct SoftmaxSums {
  double s;  // sum exp(z), z = (x - max) / T in float
  double w;  // sum exp(z) z
};

template <typename T>
SoftmaxSums softmax_sums(const Row<T>& row, int64_t V, float x_max, float inv_t) {
  constexpr int kBlock = 64;  // exps of a block in float (vectorized), then added to double lanes
  double s[kLanes] = {}, w[kLanes] = {};
  float e[kBlock], z[kBlock];
  for (int64_t i = 0; i < V; i += kBlock) {
    const int n = static_cast<int>(std::min<int64_t>(kBlock, V - i));
    for (int j = 0; j < n; ++j) {
      const float d = (row.value(i + j) - x_max) * inv_t;
      z[j] = d < -88.0f ? -88.0f : d;  // also -inf -> -88: e = 0 and e z = 0, not nan
      e[j] = exp_nonpositive(z[j]);
    }
    for (int j = n; j < kBlock; ++j) e[j] = z[j] = 0.0f;  // a short last block adds zeros
    for (int k = 0; k < kBlock; k += kLanes) {
      for (int j = 0; j < kLanes; ++j) {
        s[j] += e[k + j];
        w[j] += static_cast<double>(e[k + j]) * z[k + j];
      }
    }
  }
  SoftmaxSums out{0, 0};
  for (int j = 0; j < kLanes; ++j) {
    out.s += s[j];
    out.w += w[j];
  }
  return out;
}

// Upper bounds of the Gumbel noise by the top kBoundBits of the Philox word: g is increasing in the
// word, so bucket b's largest word bounds it (rounded up, plus a margin far above libm's last-bit error).
constexpr int kBoundBits = 12;
struct GumbelBounds {
  float upper[1 << kBoundBits];
  GumbelBounds() {
    for (uint32_t b = 0; b < (1u << kBoundBits); ++b) {
      const uint32_t last = (b << (32 - kBoundBits)) | ((1u << (32 - kBoundBits)) - 1);
      upper[b] = std::nextafter(static_cast<float>(gumbel(last)), INFINITY) + 1e-4f;
    }
  }
};

// The Gumbel-max draw among keys >= threshold. Exact, but it computes the two logs only where a
// token can still win: it starts from the row's max, skips a group of 4 (and its Philox block)
// when no token's x/T + kGumbelMax reaches the winner's score, then a token whose noise bound for
// its word does not. Scores are floats rounded from doubles and rounding is monotone, so a bound
// below the winner's score proves the token loses (an equal bound is checked: ties go to the
// smaller index).
template <typename T>
int64_t gumbel_argmax(const Row<T>& row, int64_t V, const Params& p, uint64_t request, uint32_t threshold,
                      float x_max) {
  static const GumbelBounds bounds;
  uint64_t best = 0;
  float best_score = -INFINITY;
  auto consider = [&](int64_t i, uint32_t word) {
    const uint64_t c = pack_candidate(score_key(row.value(i), p.inv_t, word), static_cast<uint32_t>(i));
    if (c > best) {
      best = c;
      best_score = value_from_f32_key(static_cast<uint32_t>(c >> 32));
    }
  };
  for (int64_t i = 0; i < V; ++i) {  // a strong first winner prunes most of the row
    if (row.value(i) == x_max && row.key(i) >= threshold) {
      consider(i, token_words(p.seed, request, p.step, static_cast<uint32_t>(i / 4)).w[i & 3]);
      break;
    }
  }
  for (int64_t i0 = 0; i0 < V; i0 += 4) {
    const int n = static_cast<int>(std::min<int64_t>(4, V - i0));
    bool live[4] = {false, false, false, false}, any = false;
    for (int j = 0; j < n; ++j) {
      const double scaled = static_cast<double>(row.value(i0 + j) * p.inv_t);
      live[j] = row.key(i0 + j) >= threshold && !(static_cast<float>(scaled + kGumbelMax) < best_score);
      any |= live[j];
    }
    if (!any) continue;
    const Philox4 words = token_words(p.seed, request, p.step, static_cast<uint32_t>(i0 / 4));
    for (int j = 0; j < n; ++j) {
      if (!live[j]) continue;
      const double scaled = static_cast<double>(row.value(i0 + j) * p.inv_t);
      const float bound = static_cast<float>(scaled + bounds.upper[words.w[j] >> (32 - kBoundBits)]);
      if (bound < best_score) continue;
      consider(i0 + j, words.w[j]);
    }
  }
  return candidate_index(best);
}

template <typename T>
void sample_row(const Row<T>& row, int64_t V, const Params& p, uint64_t request, int64_t* token, float* logp,
                float* entropy) {
  const float x_max = row_max(row, V);
  const SoftmaxSums sums = softmax_sums(row, V, x_max, p.inv_t);
  int64_t t;
  if (p.greedy) {
    uint64_t best = 0;
    for (int64_t i = 0; i < V; ++i) best = std::max(best, pack_candidate(row.key(i), static_cast<uint32_t>(i)));
    t = candidate_index(best);
  } else {
    uint32_t threshold = 0;  // keep keys >= threshold
    if (p.top_k > 0 && p.top_k < V) threshold = top_k_threshold(row, V, p.top_k);
    if (p.top_p < 1.0) threshold = top_p_threshold(row, V, x_max, p, threshold);
    t = gumbel_argmax(row, V, p, request, threshold, x_max);
  }
  const double log_s = std::log(sums.s);
  *token = t;
  *logp = static_cast<float>(static_cast<double>((row.value(t) - x_max) * p.inv_t) - log_s);
  *entropy = static_cast<float>(log_s - sums.w / sums.s);
}

template <typename T>
void sample_rows(const at::Tensor& logits, const Params& p, const int64_t* requests, int64_t* tokens, float* logps,
                 float* entropies) {
  const int64_t B = logits.size(0), V = logits.size(1), stride = logits.stride(0);
  const T* base = logits.data_ptr<T>();
  // rows over torch's intra-op threads (each rank's own: torch.set_num_threads); a row's draw depends on
  // its request, step and logits only, so the thread count never changes a result
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      sample_row(Row<T>{base + r * stride}, V, p, static_cast<uint64_t>(requests[r]), tokens + r, logps + r,
                 entropies + r);
    }
  });
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
