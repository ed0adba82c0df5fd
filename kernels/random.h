// Counter-based pseudo-random numbers: pure functions of (seed, stream, index), so values
// are reproducible on any platform, in any order and on any device. Used for the built-in
// model's weights, for sampling and by tests.
#ifndef TIERKV_KERNELS_RANDOM_H_
#define TIERKV_KERNELS_RANDOM_H_

#include <cstdint>
#include <string_view>

namespace tierkv::kernels {

// SplitMix64's output function applied to x + golden gamma (Steele, Lea, Flood 2014).
constexpr uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// FNV-1a 64 of a string: turns a tensor name into a stream id.
constexpr uint64_t Fnv1a64(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : s) {
    h ^= static_cast<uint8_t>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

// The key of one stream of numbers: SplitMix64(SplitMix64(seed) ^ stream).
constexpr uint64_t StreamKey(uint64_t seed, uint64_t stream) {
  return SplitMix64(SplitMix64(seed) ^ stream);
}

// 64 random bits: element `index` of the stream with key `key`.
constexpr uint64_t RandomBits(uint64_t key, uint64_t index) { return SplitMix64(key ^ index); }

// Uniform in [-1, 1) with 2^-23 resolution, exactly representable in fp32:
// float(bits >> 40) * 2^-23 - 1. Every step is exact, so the value is the same everywhere.
constexpr float UniformPm1(uint64_t bits) {
  return static_cast<float>(bits >> 40) * (1.0f / 8388608.0f) - 1.0f;
}

// Uniform in [0, 1) with 2^-53 resolution.
constexpr double Uniform01(uint64_t bits) {
  return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0);
}

}  // namespace tierkv::kernels

#endif  // TIERKV_KERNELS_RANDOM_H_
