// XXH3-64 (seed 0, default secret) for inputs longer than 240 bytes, as pieces that compile
// for both the host (g++, from .cc files) and the device (nvcc). The pieces are what the
// GPU kernel of checksum.cu splits across a warp; HashLong64 strings them together in the
// order of the published algorithm and is the single-thread reference that xxh3_test checks
// against libxxhash's XXH3_64bits.
//
// The long path, for an input of len > 240 bytes (all arithmetic modulo 2^64, all loads
// little-endian 64-bit words):
//   acc[0..7] = kInitAcc.
//   The input is read in 64-byte stripes; a stripe at byte offset o, with secret offset s,
//   adds for each lane i (data = word i of the stripe, key = secret word at s + 8 i):
//     acc[i ^ 1] += data;   acc[i] += lo32(data ^ key) * hi32(data ^ key).
//   Stripes group into 1 KiB blocks of 16 stripes (stripe k of a block uses secret offset
//   8 k). After each full block every lane is scrambled with the secret at offset 128:
//     acc ^= acc >> 47;  acc ^= key;  acc *= kPrime32_1.
//   There are (len - 1) / 1024 full blocks. Then the stripes of the last partial block
//   ((len - 1) % 1024 / 64 of them, secret offsets 8 k as before, no scramble), then one
//   last stripe at offset len - 64 (it may overlap the previous ones) with secret offset 121.
//   The result: avalanche(len * kPrime64_1 + sum_{j<4} fold(acc[2j] ^ key_a, acc[2j+1] ^ key_b))
//   with key_a, key_b the secret words at 11 + 16 j and 19 + 16 j, fold(a, b) the xor of the
//   two halves of the 128-bit product a * b, and avalanche(h) = xorshift 37, multiply by
//   0x165667919E3779F9, xorshift 32.
//
// Within a block the contributions of the 16 stripes are independent of each other and of
// acc: they can be computed in any order (or by different threads) and summed before the
// scramble. Only the scramble makes consecutive blocks sequential.
#ifndef TIERKV_KERNELS_CUDA_INTERNAL_XXH3_CUH_
#define TIERKV_KERNELS_CUDA_INTERNAL_XXH3_CUH_

#include <cstddef>
#include <cstdint>

// Marks the functions below for both compilers; g++ sees plain inline functions.
#ifndef TIERKV_HD
#if defined(__CUDACC__)
#define TIERKV_HD __host__ __device__
#else
#define TIERKV_HD
#endif
#endif

namespace tierkv::kernels::cuda::xxh3 {

constexpr size_t kStripeBytes = 64;
constexpr size_t kSecretBytes = 192;
constexpr size_t kStripesPerBlock = (kSecretBytes - kStripeBytes) / 8;                // 16
constexpr size_t kBlockBytes = kStripeBytes * kStripesPerBlock;                       // 1024
constexpr int kScrambleSecretOffset = static_cast<int>(kSecretBytes - kStripeBytes);  // 128
constexpr int kLastStripeSecretOffset = kScrambleSecretOffset - 7;                    // 121
constexpr int kMergeSecretOffset = 11;
// Inputs up to this length take XXH3's short paths, which are not implemented here.
constexpr size_t kMaxShortInput = 240;

constexpr uint64_t kPrime32_1 = 0x9E3779B1u;
constexpr uint64_t kPrime32_2 = 0x85EBCA77u;
constexpr uint64_t kPrime32_3 = 0xC2B2AE3Du;
constexpr uint64_t kPrime64_1 = 0x9E3779B185EBCA87ull;
constexpr uint64_t kPrime64_2 = 0xC2B2AE3D27D4EB4Full;
constexpr uint64_t kPrime64_3 = 0x165667B19E3779F9ull;
constexpr uint64_t kPrime64_4 = 0x85EBCA77C2B2AE63ull;
constexpr uint64_t kPrime64_5 = 0x27D4EB2F165667C5ull;
constexpr uint64_t kAvalancheMul = 0x165667919E3779F9ull;

// Initial value of accumulator lane `lane` (0..7).
TIERKV_HD inline uint64_t InitAcc(int lane) {
  switch (lane) {
    case 0:
      return kPrime32_3;
    case 1:
      return kPrime64_1;
    case 2:
      return kPrime64_2;
    case 3:
      return kPrime64_3;
    case 4:
      return kPrime64_4;
    case 5:
      return kPrime32_2;
    case 6:
      return kPrime64_5;
    default:
      return kPrime32_1;
  }
}

// The little-endian 64-bit word of the default secret at byte `offset` (any offset in
// [0, kSecretBytes - 8]; the merge and last-stripe offsets are not multiples of 8).
TIERKV_HD inline uint64_t SecretWord(int offset) {
  // XXH3's default secret (kSecret), the 192 bytes every seed-0 hash uses.
  // clang-format off
  static constexpr uint8_t kSecret[kSecretBytes] = {
      0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
      0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
      0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
      0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
      0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
      0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
      0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
      0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
      0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
      0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
      0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
      0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
  };
  // clang-format on
  uint64_t w = 0;
  for (int i = 7; i >= 0; --i) w = (w << 8) | kSecret[offset + i];
  return w;
}

// Little-endian 64-bit load with no alignment requirement.
TIERKV_HD inline uint64_t ReadLE64(const uint8_t* p) {
  uint64_t w = 0;
  for (int i = 7; i >= 0; --i) w = (w << 8) | p[i];
  return w;
}

// What lane i of a stripe adds to acc[i] (the lane's own product); acc[i ^ 1] gets `data`.
TIERKV_HD inline uint64_t LaneProduct(uint64_t data, uint64_t key) {
  const uint64_t dk = data ^ key;
  return (dk & 0xFFFFFFFFull) * (dk >> 32);
}

TIERKV_HD inline uint64_t ScrambleLane(uint64_t acc, uint64_t key) {
  acc ^= acc >> 47;
  acc ^= key;
  return acc * kPrime32_1;
}

// Low 64 bits xor high 64 bits of the 128-bit product a * b.
TIERKV_HD inline uint64_t Mul128Fold64(uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH__)
  return (a * b) ^ __umul64hi(a, b);
#else
  // Schoolbook on 32-bit halves; g++ would also take unsigned __int128, but this stays
  // within ISO C++.
  const uint64_t a_lo = a & 0xFFFFFFFFull, a_hi = a >> 32;
  const uint64_t b_lo = b & 0xFFFFFFFFull, b_hi = b >> 32;
  const uint64_t lo_lo = a_lo * b_lo;
  const uint64_t hi_lo = a_hi * b_lo;
  const uint64_t lo_hi = a_lo * b_hi;
  const uint64_t hi_hi = a_hi * b_hi;
  const uint64_t cross = (lo_lo >> 32) + (hi_lo & 0xFFFFFFFFull) + lo_hi;
  const uint64_t upper = (hi_lo >> 32) + (cross >> 32) + hi_hi;
  const uint64_t lower = (cross << 32) | (lo_lo & 0xFFFFFFFFull);
  return lower ^ upper;
#endif
}

TIERKV_HD inline uint64_t Avalanche(uint64_t h) {
  h ^= h >> 37;
  h *= kAvalancheMul;
  return h ^ (h >> 32);
}

// Folds the pair (acc[2 j], acc[2 j + 1]) into its term of the final sum.
TIERKV_HD inline uint64_t MergePair(uint64_t acc_even, uint64_t acc_odd, int j) {
  return Mul128Fold64(acc_even ^ SecretWord(kMergeSecretOffset + 16 * j),
                      acc_odd ^ SecretWord(kMergeSecretOffset + 16 * j + 8));
}

// One stripe into acc (secret words from `secret_offset`).
TIERKV_HD inline void AccumulateStripe(uint64_t acc[8], const uint8_t* stripe, int secret_offset) {
  for (int i = 0; i < 8; ++i) {
    const uint64_t data = ReadLE64(stripe + 8 * i);
    acc[i ^ 1] += data;
    acc[i] += LaneProduct(data, SecretWord(secret_offset + 8 * i));
  }
}

// XXH3_64bits(data, len) for len > kMaxShortInput, one stripe after another (the reference;
// the GPU kernel computes the same value with a warp per input).
TIERKV_HD inline uint64_t HashLong64(const void* data, size_t len) {
  const uint8_t* in = static_cast<const uint8_t*>(data);
  uint64_t acc[8];
  for (int i = 0; i < 8; ++i) acc[i] = InitAcc(i);
  const size_t full_blocks = (len - 1) / kBlockBytes;
  for (size_t n = 0; n < full_blocks; ++n) {
    for (size_t k = 0; k < kStripesPerBlock; ++k) {
      AccumulateStripe(acc, in + n * kBlockBytes + k * kStripeBytes, static_cast<int>(8 * k));
    }
    for (int i = 0; i < 8; ++i) {
      acc[i] = ScrambleLane(acc[i], SecretWord(kScrambleSecretOffset + 8 * i));
    }
  }
  const size_t tail = full_blocks * kBlockBytes;
  const size_t tail_stripes = ((len - 1) - tail) / kStripeBytes;
  for (size_t k = 0; k < tail_stripes; ++k) {
    AccumulateStripe(acc, in + tail + k * kStripeBytes, static_cast<int>(8 * k));
  }
  AccumulateStripe(acc, in + len - kStripeBytes, kLastStripeSecretOffset);
  uint64_t h = static_cast<uint64_t>(len) * kPrime64_1;
  for (int j = 0; j < 4; ++j) h += MergePair(acc[2 * j], acc[2 * j + 1], j);
  return Avalanche(h);
}

}  // namespace tierkv::kernels::cuda::xxh3

#endif  // TIERKV_KERNELS_CUDA_INTERNAL_XXH3_CUH_
