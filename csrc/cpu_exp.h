// A branch-free float exp for the CPU kernels' row loops (the sampler's softmax sums, the paged
// decode attention's softmax): the compiler vectorises loops that call it, where a libm call per
// element does not.
#pragma once

#include <cstdint>
#include <cstring>

// exp(z) for z <= 0 within a few float ulps (Cody-Waite reduction, degree-7 Taylor polynomial on
// |r| <= ln2/2, truncation 5e-9), 0 at -88. Callers clamp z to [-88, 0] (below -88 the exponent
// bits would wrap). Branch-free, so the row loops vectorize.
inline float exp_nonpositive(float z) {
  constexpr float kLog2e = 1.44269504f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f, kRound = 12582912.0f;
  const float n = (z * kLog2e + kRound) - kRound;  // nearest integer (|z log2 e| < 2^22)
  const float r = (z - n * kLn2Hi) - n * kLn2Lo;
  const float poly =
      1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
  const int32_t biased = (static_cast<int32_t>(n) + 127) << 23;  // n >= -127: biased 0 is the float 0
  float scale;
  memcpy(&scale, &biased, sizeof scale);
  return poly * scale;
}
