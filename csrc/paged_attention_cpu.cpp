// Decode attention over a paged KV cache on the CPU: one query token per request, its keys and values
// read in place from the cache blocks its block table names (what flash_attn_with_kvcache does on a
// GPU). The torch path (r1hpc/model/paged_attention.py) gathers every request's whole history into a
// padded copy, masks it and runs SDPA: three passes over the KV history per layer per step. Here each
// request's keys and values are read once, in place, for all its query heads (GQA: a KV head serves
// the query heads that share it), with a two-pass softmax in float; requests are spread over torch's
// intra-op threads. Dot products and sums are vectorised as `omp simd` reductions (reassociated there
// and nowhere else, which exp_nonpositive's rounding trick relies on), so attention is held to the
// float64 reference within a tolerance, not to a bit pattern. Module r1hpc._cpu_attention.
// Light headers, not torch/extension.h (the whole C++ frontend): the install compiles in about half the time.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_exp.h"

namespace r1attn {
namespace {

// The caches as the kernel reads them: token t of block b starts at key + b * key_block + t * token,
// its KV heads one after another (dim floats each).
struct Cache {
  const float* key;
  const float* value;
  int64_t key_block, value_block, block_size, token, heads, dim;
};

// One request (L keys): scores of its Hq query heads against every key, softmax, weighted values.
// Keys and values are read token by token, all KV heads of a token at once (one contiguous row of
// the block), so the history streams from memory once; each KV head serves the `group` query heads
// that share it (GQA). kDim > 0 fixes the head dim at compile time (unrolled loops); 0 reads it from
// `cache`. Compiled for AVX-512, AVX2 and baseline x86-64 side by side; the loader picks the CPU's.
template <int64_t kDim>
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void attend(const Cache& cache, const int64_t* blocks, int64_t L, const float* queries, int64_t Hq, float scale,
            float* scores, float* outs) {
  const int64_t D = kDim > 0 ? kDim : cache.dim, group = Hq / cache.heads;
  for (int64_t start = 0; start < L; start += cache.block_size) {  // block by block: no division per token
    const float* block_keys = cache.key + blocks[start / cache.block_size] * cache.key_block;
    for (int64_t t = start; t < std::min(L, start + cache.block_size); ++t) {
      const float* row = block_keys + (t - start) * cache.token;
      for (int64_t qh = 0; qh < Hq; ++qh) {
        const float* q = queries + qh * D;
        const float* key = row + (qh / group) * D;
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t d = 0; d < D; ++d) sum += q[d] * key[d];
        scores[qh * L + t] = sum * scale;
      }
    }
  }
  std::vector<float> inverse_totals(Hq);
  for (int64_t qh = 0; qh < Hq; ++qh) {
    float* s = scores + qh * L;
    float top = s[0];
    for (int64_t t = 1; t < L; ++t) top = s[t] > top ? s[t] : top;
    float total = 0.f;
#pragma omp simd reduction(+ : total)
    for (int64_t t = 0; t < L; ++t) {
      const float z = s[t] - top;
      s[t] = exp_nonpositive(z < -88.f ? -88.f : z);
      total += s[t];
    }
    inverse_totals[qh] = 1.f / total;
  }
  std::fill(outs, outs + Hq * D, 0.f);
  for (int64_t start = 0; start < L; start += cache.block_size) {
    const float* block_values = cache.value + blocks[start / cache.block_size] * cache.value_block;
    for (int64_t t = start; t < std::min(L, start + cache.block_size); ++t) {
      const float* row = block_values + (t - start) * cache.token;
      for (int64_t qh = 0; qh < Hq; ++qh) {
        const float* value = row + (qh / group) * D;
        const float w = scores[qh * L + t];
        float* o = outs + qh * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] += w * value[d];
      }
    }
  }
  for (int64_t qh = 0; qh < Hq; ++qh)
    for (int64_t d = 0; d < D; ++d) outs[qh * D + d] *= inverse_totals[qh];
}

// q [R, Hq, D], caches [blocks, block_size, Hk, D] (each block contiguous), k_lens [R] (keys per
// request, this step's included), block_table [R, max_blocks] -> [R, Hq, D]
at::Tensor paged_decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                        const at::Tensor& k_lens, const at::Tensor& block_table, double scale) {
  TORCH_CHECK(q.device().is_cpu() && k_cache.device().is_cpu() && v_cache.device().is_cpu(),
              "paged_decode: CPU tensors only");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k_cache.scalar_type() == at::kFloat &&
                  v_cache.scalar_type() == at::kFloat, "paged_decode: float32 query and caches only");
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(),
              "paged_decode: q [R, Hq, D] and caches [blocks, block_size, Hk, D] of one shape");
  const int64_t R = q.size(0), Hq = q.size(1), D = q.size(2);
  const int64_t blocks = k_cache.size(0), block_size = k_cache.size(1), Hk = k_cache.size(2);
  TORCH_CHECK(k_cache.size(3) == D && Hk > 0 && Hq % Hk == 0, "paged_decode: head dims differ or ", Hq,
              " query heads are not a multiple of ", Hk, " KV heads");
  for (const auto* c : {&k_cache, &v_cache})
    TORCH_CHECK(c->stride(3) == 1 && c->stride(2) == D && c->stride(1) == Hk * D,
                "paged_decode: each cache block must be contiguous");
  TORCH_CHECK(k_lens.dim() == 1 && k_lens.size(0) == R && block_table.dim() == 2 && block_table.size(0) == R,
              "paged_decode: k_lens [R] and block_table [R, max_blocks] for R = ", R, " requests");
  const auto qc = q.contiguous();
  const auto lens = k_lens.to(at::kLong).contiguous();
  const auto table = block_table.to(at::kLong).contiguous();
  const int64_t max_blocks = table.size(1);
  const int64_t* len_p = lens.data_ptr<int64_t>();
  const int64_t* table_p = table.data_ptr<int64_t>();
  for (int64_t r = 0; r < R; ++r) {  // every block a request reads must exist: no read outside the pool
    TORCH_CHECK(len_p[r] >= 1 && len_p[r] <= max_blocks * block_size, "paged_decode: request ", r, " has ",
                len_p[r], " keys; its block table holds ", max_blocks * block_size);
    for (int64_t b = 0; b < (len_p[r] + block_size - 1) / block_size; ++b)
      TORCH_CHECK(table_p[r * max_blocks + b] >= 0 && table_p[r * max_blocks + b] < blocks, "paged_decode: request ",
                  r, " names block ", table_p[r * max_blocks + b], " of a cache of ", blocks);
  }
  auto out = at::empty({R, Hq, D}, q.options());
  const float* q_p = qc.data_ptr<float>();
  const float* k_p = k_cache.data_ptr<float>();
  const float* v_p = v_cache.data_ptr<float>();
  float* out_p = out.data_ptr<float>();
  const auto run = D == 64 ? attend<64> : D == 128 ? attend<128> : attend<0>;
  const Cache cache{k_p, v_p, k_cache.stride(0), v_cache.stride(0), block_size, Hk * D, Hk, D};
  at::parallel_for(0, R, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t r = begin; r < end; ++r) {
      scores.resize(Hq * len_p[r]);
      run(cache, table_p + r * max_blocks, len_p[r], q_p + r * Hq * D, Hq, static_cast<float>(scale), scores.data(),
          out_p + r * Hq * D);
    }
  });
  return out;
}

}  // namespace
}  // namespace r1attn

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "r1hpc CPU decode attention over a paged KV cache (see r1hpc/model/paged_attention.py)";
  m.def("paged_decode", &r1attn::paged_decode, "q [R, Hq, D] -> [R, Hq, D], one query per request",
        py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("k_lens"), py::arg("block_table"),
        py::arg("scale"));
}
