// The sampler's arithmetic shared by the CPU (sampler_cpu.cpp) and CUDA (sampler_cuda.cu) paths.
// Torch-free on purpose: the CUDA translation unit that includes it compiles with plain nvcc.
//
// Contract (docs/kernels.md): for one row of logits x[0..V) and a temperature T > 0,
//   z_i      = (x_i - max x) / T                    (float)
//   logp_i   = z_i - log sum_j exp(z_j)             the temperature distribution BEFORE top-k/top-p,
//   entropy  = -sum_j p_j log p_j                   as the torch reference (r1hpc/rollout/sampling.py)
//   token    = argmax over kept i of  float(double(x_i / T) + g_i)   (ties: smallest index)
// with g_i = -log(-log(u_i)) Gumbel noise and u_i from Philox4x32-10 keyed by the run's seed and
// counted by (request id, decode step, token index): a request's draw depends on nothing else in
// the batch. The kept set is decided on exact integers (order-independent, so every thread layout,
// the CPU and the GPU decide alike): key(x) is x's bit pattern made order-preserving, and
//   top-k keeps x_i when fewer than k tokens have a strictly larger key (ties at the k-th kept),
//   top-p keeps x_i when the fixed-point mass q_j = round(2^40 exp(z_j)) of the kept-by-top-k
//         tokens with strictly larger key is < top_p * (their total), i.e. the smallest prefix of
//         the sorted distribution that reaches top_p (the torch reference's rule), ties kept together.
// T == 0 is greedy: argmax x (smallest index on ties); logp and entropy then use T = 1.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define R1_HD __host__ __device__ __forceinline__
#else
#define R1_HD inline
#endif

namespace r1sampler {

constexpr int kRadixBits = 8;                      // radix-select digit: 256 buckets per pass
constexpr int kBuckets = 1 << kRadixBits;
constexpr double kMassScale = 1099511627776.0;     // 2^40: q_i <= 2^40, a row of 2^23 tokens fits in u64
constexpr float kGumbelMax = 24.0f;                // > -log(-log(1 - 2^-33)) = 22.2: no score exceeds x/T + this

struct Philox4 {
  uint32_t w[4];
};

R1_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
}

// Philox4x32-10 (Salmon et al., SC'11; Random123's constants and key schedule).
R1_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    if (round) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(0xD2511F53u, c0, &hi0, &lo0);
    mulhilo32(0xCD9E8D57u, c2, &hi1, &lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Four uniform words for tokens 4g..4g+3 of one request at one decode step.
R1_HD Philox4 token_words(uint64_t seed, uint64_t request, uint32_t step, uint32_t group) {
  return philox4x32_10(group, step, static_cast<uint32_t>(request), static_cast<uint32_t>(request >> 32),
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Gumbel noise from a 32-bit word: u = (w + 0.5) / 2^32 lies strictly inside (0, 1).
R1_HD double gumbel(uint32_t word) {
  const double u = (static_cast<double>(word) + 0.5) * (1.0 / 4294967296.0);
  return -log(-log(u));
}

// Order-preserving keys: larger value -> larger unsigned key; -0 is folded onto +0.
R1_HD uint32_t key_from_f32_bits(uint32_t bits) {
  if (bits == 0x80000000u) bits = 0;
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}
R1_HD uint32_t key_from_16_bits(uint32_t bits) {
  bits &= 0xFFFFu;
  if (bits == 0x8000u) bits = 0;
  return (bits & 0x8000u) ? (~bits & 0xFFFFu) : (bits | 0x8000u);
}

R1_HD float value_from_f32_key(uint32_t key) {  // inverse of key_from_f32_bits, as a float
  const uint32_t bits = (key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key;
  float v;
  memcpy(&v, &bits, sizeof v);
  return v;
}

// 1/T in float, computed one way for every path (T > 0; T == 0 means greedy).
R1_HD float inverse_temperature(double temperature) {
  return temperature > 0 ? static_cast<float>(1.0 / temperature) : 1.0f;
}

// The perturbed score of token i: float(double(x / T) + Gumbel), as an order-preserving key.
R1_HD uint32_t score_key(float x, float inv_t, uint32_t word) {
  const float s = static_cast<float>(static_cast<double>(x * inv_t) + gumbel(word));
  uint32_t bits;
  memcpy(&bits, &s, sizeof bits);
  return key_from_f32_bits(bits);
}

// A sampling candidate packed so that one unsigned max picks the highest score, then the smallest index.
R1_HD uint64_t pack_candidate(uint32_t score_key, uint32_t index) {
  return (static_cast<uint64_t>(score_key) << 32) | static_cast<uint64_t>(0xFFFFFFFFu - index);
}
R1_HD uint32_t candidate_index(uint64_t packed) { return 0xFFFFFFFFu - static_cast<uint32_t>(packed); }

R1_HD uint64_t fixed_point_mass(float z) {  // z = (x - max) / T <= 0
  return static_cast<uint64_t>(exp(static_cast<double>(z)) * kMassScale + 0.5);
}

}  // namespace r1sampler
