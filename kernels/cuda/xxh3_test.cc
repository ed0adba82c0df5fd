// The host build of internal/xxh3.cuh (the code the checksum kernel is made of) against
// libxxhash's XXH3_64bits and core's BlockChecksum, on fresh random inputs of the lengths
// where the long path changes shape; and BlockChecksums' parameter checks, which return
// before any CUDA call. Needs no GPU.
#include "kernels/cuda/internal/xxh3.cuh"

#include <xxhash.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/block_key.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cuda/ops.h"

namespace tierkv::kernels::cuda {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

std::mt19937_64& Rng() {
  static std::mt19937_64 rng(std::random_device{}());
  return rng;
}

std::vector<uint8_t> RandomBytes(size_t n) {
  std::vector<uint8_t> v(n);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint64_t w = Rng()();
    for (int b = 0; b < 8; ++b) v[i + b] = static_cast<uint8_t>(w >> (8 * b));
  }
  for (; i < n; ++i) v[i] = static_cast<uint8_t>(Rng()());
  return v;
}

void ExpectMatches(const uint8_t* data, size_t len) {
  const uint64_t want = XXH3_64bits(data, len);
  EXPECT_EQ(xxh3::HashLong64(data, len), want) << "len " << len;
  EXPECT_EQ(BlockChecksum(data, len), want) << "len " << len;
}

TEST(Xxh3Long, MatchesLibxxhashAtBoundaryLengths) {
  const size_t lengths[] = {241,  255,  256,   1023,       1024,     1025,
                            1087, 4096, 65536, 65536 + 17, 2 * kMiB, 2 * kMiB + 5};
  for (size_t len : lengths) {
    const std::vector<uint8_t> data = RandomBytes(len);
    ExpectMatches(data.data(), len);
  }
}

// Every length from 241 through three 1 KiB blocks: every count of tail stripes, every
// overlap of the last stripe with them, with and without full blocks.
TEST(Xxh3Long, MatchesLibxxhashAtEveryLengthUpTo3KiB) {
  const std::vector<uint8_t> data = RandomBytes(3 * 1024 + 64);
  for (size_t len = xxh3::kMaxShortInput + 1; len <= data.size(); ++len) {
    ASSERT_EQ(xxh3::HashLong64(data.data(), len), XXH3_64bits(data.data(), len)) << "len " << len;
  }
}

TEST(Xxh3Long, MatchesLibxxhashAtRandomLengths) {
  std::uniform_int_distribution<size_t> len_dist(xxh3::kMaxShortInput + 1, 3 * kMiB);
  for (int i = 0; i < 24; ++i) {
    const size_t len = len_dist(Rng());
    const std::vector<uint8_t> data = RandomBytes(len);
    ExpectMatches(data.data(), len);
  }
}

TEST(Xxh3Long, MatchesLibxxhashOnUnalignedInput) {
  const std::vector<uint8_t> data = RandomBytes(70000);
  for (size_t offset = 1; offset < 16; offset += 3) {
    ExpectMatches(data.data() + offset, 65536 + 7);
  }
}

TEST(Xxh3Long, MatchesLibxxhashOnConstantInputs) {
  for (uint8_t fill : {uint8_t{0x00}, uint8_t{0xff}}) {
    for (size_t len : {size_t{241}, size_t{1024}, size_t{1025}, size_t{65536}, 2 * kMiB + 5}) {
      const std::vector<uint8_t> data(len, fill);
      ExpectMatches(data.data(), len);
    }
  }
}

// BlockChecksums checks its params on the host and returns before any CUDA call, so these
// hold on a machine without a GPU (the pointers are never read).
TEST(BlockChecksumsParams, RejectsBadFieldsNamingThem) {
  alignas(16) static uint64_t storage[64];
  const void* data = storage;
  uint64_t* out = storage + 32;
  auto* bytes = reinterpret_cast<uint8_t*>(storage);
  struct Case {
    const void* data;
    size_t block_bytes;
    int64_t num_blocks;
    uint64_t* out;
    std::string field;
  };
  const Case cases[] = {
      {data, 4096, -1, out, "num_blocks"},
      {data, 240, 1, out, "block_bytes"},
      {data, 0, 1, out, "block_bytes"},
      {data, 4096, int64_t{1} << 31, out, "num_blocks"},
      {data, SIZE_MAX / 2, 3, out, "num_blocks"},
      {nullptr, 4096, 1, out, "data"},
      {data, 4096, 1, nullptr, "out"},
      {bytes + 4, 4096, 1, out, "data"},
      {data, 4096, 1, reinterpret_cast<uint64_t*>(bytes + 4 + 256), "out"},
  };
  for (const Case& c : cases) {
    const absl::Status s = BlockChecksums(c.data, c.block_bytes, c.num_blocks, c.out, nullptr);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.field << ": " << s;
    EXPECT_THAT(std::string(s.message()), ::testing::StartsWith(c.field + ":")) << s;
  }
}

TEST(BlockChecksumsParams, ZeroBlocksIsOkWithoutLaunching) {
  EXPECT_TRUE(BlockChecksums(nullptr, 4096, 0, nullptr, nullptr).ok());
}

}  // namespace
}  // namespace tierkv::kernels::cuda
