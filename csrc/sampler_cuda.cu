// The sampler's contract (sampler_common.h) on the GPU: one thread block per row of logits.
//
// How often the row is read:
//   * once, when no top-k/top-p filter is on (greedy, or plain sampling at any temperature: what RL
//     rollouts use). One pass computes the online max / sum-exp / entropy terms and, at the same
//     time, the Gumbel-max draw over the whole vocabulary.
//   * 1 + R per filter otherwise (R = 2 radix digits of 8 bits for bf16/fp16 keys, 4 for fp32):
//     the first pass gives the max, which the fixed-point masses of top-p need; each radix-select
//     pass then fixes 8 more bits of the threshold key from a 256-bucket histogram of counts and
//     masses, and the last pass also draws the sample (the best Gumbel score per bucket and above
//     the bucket), so no extra pass is spent on the draw. A real vocabulary row (152k tokens) does
//     not fit in shared memory (608 KB in fp32, 304 KB in bf16, the H100 has 228 KB per SM), so a
//     sorted copy is not an option; re-reads of a row come mostly from L2. benchmarks/gpu_check.py
//     measures the time per call against the torch sort-based reference.
// Every decision is on integers or on an order-independent max (histograms are integer atomics,
// masses are 2^-40 fixed point, the draw is a packed (score, index) max), so the result does not
// depend on thread scheduling: tensor-parallel ranks that sample the same gathered logits with the
// same seed draw the same token.
//
// Compiles without torch (nvcc -c -arch=sm_90a csrc/sampler_cuda.cu); build with --fmad=false so
// that no multiply-add is contracted and the arithmetic is the CPU path's.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "sampler_common.h"
#include "sampler_cuda.h"

namespace r1sampler {
namespace {

R1_HD float exp_of(float v) { return expf(v); }

// Online (max, sum exp, sum exp * z) with z relative to the running max, for log-sum-exp and
// entropy: a few hundred tokens per thread in float, then a tree.
template <typename Acc>
struct SoftmaxStats {
  float m = -INFINITY;  // running max of x (raw logits)
  Acc s = 0;            // sum exp((x - m) * inv_t)
  Acc w = 0;            // sum exp((x - m) * inv_t) * (x - m) * inv_t
};

template <typename Acc>
R1_HD void stats_rescale(SoftmaxStats<Acc>* st, float new_m, float inv_t) {
  if (st->s > Acc(0)) {
    const Acc d = static_cast<Acc>((st->m - new_m) * inv_t);
    const Acc r = exp_of(d);
    st->w = r * (st->w + st->s * d);
    st->s = st->s * r;
  }
  st->m = new_m;
}

template <typename Acc>
R1_HD void stats_add(SoftmaxStats<Acc>* st, float x, float inv_t) {
  if (x == -INFINITY) return;  // no mass; (x - m) would be nan when m is -inf too
  if (x > st->m) stats_rescale(st, x, inv_t);
  const Acc z = static_cast<Acc>((x - st->m) * inv_t);
  const Acc e = exp_of(z);
  st->s += e;
  if (e > Acc(0)) st->w += e * z;
}

template <typename Acc>
R1_HD void stats_merge(SoftmaxStats<Acc>* a, SoftmaxStats<Acc> b, float inv_t) {
  if (!(b.s > Acc(0))) return;
  if (b.m > a->m) {
    stats_rescale(a, b.m, inv_t);
  } else {
    stats_rescale(&b, a->m, inv_t);
  }
  a->s += b.s;
  a->w += b.w;
}

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xFFFFFFFFu;
constexpr int kPerLane = kBuckets / 32;  // buckets each lane of the scanning warp owns
constexpr uint32_t kNoBucket = 0xFFFFFFFFu;

// Loads element i as a float and as its order-preserving key.
template <LogitsDtype D>
struct Elem;

template <>
struct Elem<LogitsDtype::kFloat32> {
  using T = float;
  static constexpr int kKeyBits = 32;
  __device__ static void load(const T* p, int i, float* x, uint32_t* key) {
    const float v = p[i];
    *x = v;
    *key = key_from_f32_bits(__float_as_uint(v));
  }
};

template <>
struct Elem<LogitsDtype::kBFloat16> {
  using T = unsigned short;  // raw bits
  static constexpr int kKeyBits = 16;
  __device__ static void load(const T* p, int i, float* x, uint32_t* key) {
    const unsigned short b = p[i];
    *x = __uint_as_float(static_cast<uint32_t>(b) << 16);
    *key = key_from_16_bits(b);
  }
};

template <>
struct Elem<LogitsDtype::kFloat16> {
  using T = unsigned short;
  static constexpr int kKeyBits = 16;
  __device__ static void load(const T* p, int i, float* x, uint32_t* key) {
    const unsigned short b = p[i];
    *x = __half2float(__ushort_as_half(b));
    *key = key_from_16_bits(b);
  }
};

struct Shared {
  uint32_t count[kBuckets];
  unsigned long long mass[kBuckets];
  unsigned long long best[kBuckets];
  float red_m[kWarps], red_s[kWarps], red_w[kWarps];
  unsigned long long red_u64[kWarps];
  float m, s, w;
  unsigned long long winner;
  uint32_t bucket;
  unsigned long long base_count, base_mass, kept_mass, bucket_best;
};

__device__ unsigned long long warp_max_u64(unsigned long long v) {
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

__device__ unsigned long long block_max_u64(unsigned long long v, Shared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_max_u64(v);
  if (lane == 0) sh.red_u64[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = warp_max_u64(lane < kWarps ? sh.red_u64[lane] : 0ull);
    if (lane == 0) sh.winner = v;
  }
  __syncthreads();
  return sh.winner;
}

__device__ void warp_merge_stats(SoftmaxStats<float>* st, float inv_t) {
  for (int o = 16; o > 0; o >>= 1) {
    SoftmaxStats<float> other;
    other.m = __shfl_xor_sync(kFullMask, st->m, o);
    other.s = __shfl_xor_sync(kFullMask, st->s, o);
    other.w = __shfl_xor_sync(kFullMask, st->w, o);
    // merge in a fixed order (lower lane first) so that both partners compute the same bits
    if ((threadIdx.x & o) == 0) {
      stats_merge(st, other, inv_t);
    } else {
      stats_merge(&other, *st, inv_t);
      *st = other;
    }
  }
}

// Block-wide log-sum-exp terms, left in sh.m / sh.s / sh.w.
__device__ void block_stats(SoftmaxStats<float> st, float inv_t, Shared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  warp_merge_stats(&st, inv_t);
  if (lane == 0) {
    sh.red_m[warp] = st.m;
    sh.red_s[warp] = st.s;
    sh.red_w[warp] = st.w;
  }
  __syncthreads();
  if (warp == 0) {
    SoftmaxStats<float> t;
    if (lane < kWarps) {
      t.m = sh.red_m[lane];
      t.s = sh.red_s[lane];
      t.w = sh.red_w[lane];
    }
    warp_merge_stats(&t, inv_t);
    if (lane == 0) {
      sh.m = t.m;
      sh.s = t.s;
      sh.w = t.w;
    }
  }
  __syncthreads();
}

struct Draw {
  uint64_t seed, request;
  uint32_t step;
  float inv_t;
};

// Best packed candidate among the flagged tokens of group i0..i0+3, skipping the Philox block when
// no flagged token can beat `best` (a token's score is below x/T + kGumbelMax).
__device__ unsigned long long consider(const float* xs, const bool* flag, int n, int i0, const Draw& d,
                                       unsigned long long best, Philox4* words, bool* have_words) {
  const float bound = best ? value_from_f32_key(static_cast<uint32_t>(best >> 32)) : -INFINITY;
  for (int j = 0; j < n; ++j) {
    if (!flag[j] || xs[j] * d.inv_t + kGumbelMax < bound) continue;
    if (!*have_words) {
      *words = token_words(d.seed, d.request, d.step, static_cast<uint32_t>(i0 / 4));
      *have_words = true;
    }
    best = max(best, static_cast<unsigned long long>(
                         pack_candidate(score_key(xs[j], d.inv_t, words->w[j]), static_cast<uint32_t>(i0 + j))));
  }
  return best;
}

struct Selected {
  uint32_t threshold;            // smallest kept key
  unsigned long long kept_mass;  // fixed-point mass of the kept keys (if masses were counted)
  unsigned long long sample;     // packed winner among kept keys (if sampling)
};

// Radix select of the smallest kept key among keys >= min_key: by count (top-k: fewer than `k`
// strictly larger keys) or by mass (top-p: strictly larger mass < fraction * total; total 0 = all
// mass >= min_key). With `sample`, the last pass also draws among the kept keys.
template <LogitsDtype D>
__device__ Selected radix_select(const typename Elem<D>::T* x, int V, float x_max, const Draw& d, bool by_mass,
                                 bool need_mass, uint64_t k, double fraction, unsigned long long total_mass,
                                 uint32_t min_key, bool sample, Shared& sh) {
  using E = Elem<D>;
  constexpr int kRounds = E::kKeyBits / kRadixBits;
  uint32_t prefix = 0;
  unsigned long long base_count = 0, base_mass = 0, above_best = 0;
  double target = 0;  // top-p target mass; held by the scanning warp
  for (int r = 0; r < kRounds; ++r) {
    const int shift = E::kKeyBits - kRadixBits * (r + 1);
    const bool draw = sample && r == kRounds - 1;
    for (int b = threadIdx.x; b < kBuckets; b += kThreads) {
      sh.count[b] = 0;
      sh.mass[b] = 0;
      sh.best[b] = 0;
    }
    __syncthreads();
    for (int g = threadIdx.x; g * 4 < V; g += kThreads) {
      const int i0 = 4 * g, n = min(4, V - i0);
      float xs[4];
      uint32_t ks[4];
      bool match[4], above[4];
      for (int j = 0; j < n; ++j) {
        E::load(x, i0 + j, &xs[j], &ks[j]);
        const bool in = ks[j] >= min_key;
        const uint32_t hi = r == 0 ? 0u : (ks[j] >> (shift + kRadixBits));
        match[j] = in && hi == prefix;
        above[j] = in && hi > prefix;
        if (match[j]) {
          const uint32_t b = (ks[j] >> shift) & (kBuckets - 1);
          atomicAdd(&sh.count[b], 1u);
          if (need_mass) {
            atomicAdd(&sh.mass[b], static_cast<unsigned long long>(fixed_point_mass((xs[j] - x_max) * d.inv_t)));
          }
        }
      }
      if (draw) {
        Philox4 words;
        bool have_words = false;
        above_best = consider(xs, above, n, i0, d, above_best, &words, &have_words);
        for (int j = 0; j < n; ++j) {
          if (!match[j]) continue;
          const bool one[4] = {j == 0, j == 1, j == 2, j == 3};
          const unsigned long long c = consider(xs, one, n, i0, d, above_best, &words, &have_words);
          if (c != above_best) atomicMax(&sh.best[(ks[j] >> shift) & (kBuckets - 1)], c);
        }
      }
    }
    __syncthreads();
    if (threadIdx.x < 32) {  // one warp scans the histogram from the top bucket down
      const int lane = threadIdx.x;
      unsigned long long c[kPerLane], ms[kPerLane], lc = 0, lm = 0;
      for (int q = 0; q < kPerLane; ++q) {
        c[q] = sh.count[lane * kPerLane + q];
        ms[q] = sh.mass[lane * kPerLane + q];
        lc += c[q];
        lm += ms[q];
      }
      unsigned long long sc = lc, sm = lm;  // inclusive suffix sums over lanes >= lane
      for (int o = 1; o < 32; o <<= 1) {
        const unsigned long long tc = __shfl_down_sync(kFullMask, sc, o), tm = __shfl_down_sync(kFullMask, sm, o);
        if (lane + o < 32) {
          sc += tc;
          sm += tm;
        }
      }
      if (r == 0 && by_mass) {
        const unsigned long long all = total_mass ? total_mass : __shfl_sync(kFullMask, sm, 0);
        target = fraction * static_cast<double>(all);
      }
      unsigned long long cum_c = base_count + (sc - lc), cum_m = base_mass + (sm - lm);
      uint32_t cand = kNoBucket;
      unsigned long long cand_c = 0, cand_m = 0, cand_kept = 0;
      for (int q = kPerLane - 1; q >= 0; --q) {
        const bool ok = by_mass ? static_cast<double>(cum_m) < target : cum_c < k;
        if (!ok) break;
        if (c[q] > 0) {
          cand = lane * kPerLane + q;
          cand_c = cum_c;
          cand_m = cum_m;
          cand_kept = cum_m + ms[q];
        }
        cum_c += c[q];
        cum_m += ms[q];
      }
      uint32_t lowest = cand;
      for (int o = 16; o > 0; o >>= 1) lowest = min(lowest, __shfl_xor_sync(kFullMask, lowest, o));
      unsigned long long bb = 0;
      if (draw) {
        for (int q = 0; q < kPerLane; ++q) {
          if (static_cast<uint32_t>(lane * kPerLane + q) >= lowest) bb = max(bb, sh.best[lane * kPerLane + q]);
        }
        bb = warp_max_u64(bb);
      }
      if (cand == lowest && cand != kNoBucket) {
        sh.bucket = cand;
        sh.base_count = cand_c;
        sh.base_mass = cand_m;
        sh.kept_mass = cand_kept;
        sh.bucket_best = bb;
      }
    }
    __syncthreads();
    prefix = (prefix << kRadixBits) | sh.bucket;
    base_count = sh.base_count;
    base_mass = sh.base_mass;
  }
  Selected out{prefix, sh.kept_mass, 0};
  if (sample) out.sample = max(block_max_u64(above_best, sh), sh.bucket_best);
  __syncthreads();  // the next select clears the histograms this one read last
  return out;
}

template <LogitsDtype D>
__global__ void __launch_bounds__(kThreads) sample_kernel(SampleArgs a) {
  using E = Elem<D>;
  using T = typename E::T;
  __shared__ Shared sh;
  const int row = blockIdx.x, V = static_cast<int>(a.vocab);
  const T* x = static_cast<const T*>(a.logits) + static_cast<int64_t>(row) * a.row_stride;
  const bool greedy = !(a.temperature > 0);
  const bool use_k = !greedy && a.top_k > 0 && a.top_k < V;
  const bool use_p = !greedy && a.top_p < 1.0;
  const bool draw_now = !greedy && !use_k && !use_p;
  const Draw d{a.seed, static_cast<uint64_t>(a.request_ids[row]), a.step, inverse_temperature(a.temperature)};

  // Pass 1: log-sum-exp and entropy terms; greedy argmax or the unfiltered draw on the way.
  SoftmaxStats<float> st;
  unsigned long long best = 0;
  const bool all[4] = {true, true, true, true};
  for (int g = threadIdx.x; g * 4 < V; g += kThreads) {
    const int i0 = 4 * g, n = min(4, V - i0);
    float xs[4];
    uint32_t ks[4];
    for (int j = 0; j < n; ++j) {
      E::load(x, i0 + j, &xs[j], &ks[j]);
      stats_add(&st, xs[j], d.inv_t);
      if (greedy) best = max(best, static_cast<unsigned long long>(pack_candidate(ks[j], i0 + j)));
    }
    if (draw_now) {
      Philox4 words;
      bool have_words = false;
      best = consider(xs, all, n, i0, d, best, &words, &have_words);
    }
  }
  block_stats(st, d.inv_t, sh);
  const float x_max = sh.m;
  best = block_max_u64(best, sh);

  if (use_k || use_p) {
    uint32_t min_key = 0;
    unsigned long long kept_mass = 0;
    if (use_k) {
      const Selected s = radix_select<D>(x, V, x_max, d, false, use_p, static_cast<uint64_t>(a.top_k), 0.0, 0ull,
                                         0u, !use_p, sh);
      min_key = s.threshold;
      kept_mass = s.kept_mass;
      best = s.sample;
    }
    if (use_p) {
      best = radix_select<D>(x, V, x_max, d, true, true, 0, a.top_p, kept_mass, min_key, true, sh).sample;
    }
  }

  if (threadIdx.x == 0) {
    const int t = min(static_cast<int>(candidate_index(best)), V - 1);  // a winner always exists; never read out of row
    float xt;
    uint32_t kt;
    E::load(x, t, &xt, &kt);
    const double log_s = log(static_cast<double>(sh.s));
    a.tokens[row] = t;
    a.logps[row] = static_cast<float>(static_cast<double>((xt - x_max) * d.inv_t) - log_s);
    a.entropies[row] = static_cast<float>(log_s - static_cast<double>(sh.w) / static_cast<double>(sh.s));
  }
}

}  // namespace

cudaError_t launch_sample(const SampleArgs& args, cudaStream_t stream) {
  if (args.rows == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(args.rows));
  switch (args.dtype) {
    case LogitsDtype::kFloat32:
      sample_kernel<LogitsDtype::kFloat32><<<grid, kThreads, 0, stream>>>(args);
      break;
    case LogitsDtype::kBFloat16:
      sample_kernel<LogitsDtype::kBFloat16><<<grid, kThreads, 0, stream>>>(args);
      break;
    case LogitsDtype::kFloat16:
      sample_kernel<LogitsDtype::kFloat16><<<grid, kThreads, 0, stream>>>(args);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace r1sampler
