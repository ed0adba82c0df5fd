// BlockChecksums (kernels/cuda/ops.h) against core's BlockChecksum (libxxhash's XXH3_64bits)
// over a sweep of block sizes and counts, with fresh random bytes and poisoned outputs, for
// each load width the kernel picks; and a timing print of 2048 blocks of 2 MiB. Needs an
// sm_90 GPU; every test skips, saying why, where there is none. The parameter checks, which
// need no GPU, are in xxh3_test.cc.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "core/block_key.h"
#include "gtest/gtest.h"
#include "kernels/cuda/gpu_test_support.h"
#include "kernels/cuda/memory.h"
#include "kernels/cuda/ops.h"

namespace tierkv::kernels::cuda {
namespace {


constexpr size_t kMiB = size_t{1} << 20;
constexpr int kPoison = 0xa5;

std::mt19937_64& Rng() {
  static std::mt19937_64 rng(std::random_device{}());
  return rng;
}

std::vector<uint8_t> RandomBytes(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; i += 8) {
    const uint64_t w = Rng()();
    for (size_t b = 0; b < 8 && i + b < n; ++b) v[i + b] = static_cast<uint8_t>(w >> (8 * b));
  }
  return v;
}

// Hashes num_blocks blocks of block_bytes lying `offset` bytes into a device buffer (so an
// offset of 8 makes the kernel use 8-byte loads) and checks every one.
void CheckBlocks(size_t block_bytes, int64_t num_blocks, size_t offset) {
  SCOPED_TRACE("block_bytes " + std::to_string(block_bytes) + ", num_blocks " +
               std::to_string(num_blocks) + ", offset " + std::to_string(offset));
  const size_t bytes = block_bytes * static_cast<size_t>(num_blocks);
  const std::vector<uint8_t> host = RandomBytes(bytes);
  absl::StatusOr<DeviceBuffer> data = DeviceBuffer::Allocate(bytes + offset);
  ASSERT_TRUE(data.ok()) << data.status();
  ASSERT_TRUE(CopyToDevice(data->as<uint8_t>() + offset, host.data(), bytes).ok());
  absl::StatusOr<DeviceBuffer> out = DeviceBuffer::Allocate(num_blocks * sizeof(uint64_t));
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_TRUE(FillBytes(out->data(), kPoison, out->size()).ok());
  absl::StatusOr<StreamOwner> stream = StreamOwner::Create();
  ASSERT_TRUE(stream.ok()) << stream.status();

  ASSERT_TRUE(BlockChecksums(data->as<uint8_t>() + offset, block_bytes, num_blocks,
                             out->as<uint64_t>(), stream->get())
                  .ok());
  ASSERT_TRUE(stream->Synchronize().ok());
  absl::StatusOr<std::vector<uint64_t>> got = Download<uint64_t>(out->data(), num_blocks);
  ASSERT_TRUE(got.ok()) << got.status();
  int mismatches = 0;
  for (int64_t i = 0; i < num_blocks; ++i) {
    const uint64_t want = BlockChecksum(host.data() + i * block_bytes, block_bytes);
    if ((*got)[i] != want && ++mismatches <= 5) {
      ADD_FAILURE() << "block " << i << ": got " << std::hex << (*got)[i] << ", want " << want;
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(BlockChecksumsGpu, MatchesBlockChecksumForEverySize) {
  TIERKV_REQUIRE_GPU();
  const size_t sizes[] = {241,        248,        256,       1000,     1023,
                          1024,       1025,       1088,      4096 + 8, 65536,
                          65536 + 16, 65536 + 17, kMiB + 64, 2 * kMiB, 2 * kMiB + 40};
  for (size_t block_bytes : sizes) {
    // Counts that leave the last CTA partly empty, up to about 32 MiB per size.
    int64_t num_blocks = static_cast<int64_t>(32 * kMiB / block_bytes);
    if (num_blocks > 1001) num_blocks = 1001;
    if (num_blocks < 7) num_blocks = 7;
    CheckBlocks(block_bytes, num_blocks, /*offset=*/0);
    CheckBlocks(block_bytes, num_blocks, /*offset=*/8);
  }
  CheckBlocks(64 * 1024, 1, 0);
  CheckBlocks(4096, 2, 0);
  CheckBlocks(4096, 3, 8);
}

TEST(BlockChecksumsGpu, MatchesBlockChecksumOnConstantBlocks) {
  TIERKV_REQUIRE_GPU();
  for (int fill : {0x00, 0xff}) {
    const size_t block_bytes = 65536;
    const int64_t num_blocks = 5;
    absl::StatusOr<DeviceBuffer> data = DeviceBuffer::Allocate(block_bytes * num_blocks);
    ASSERT_TRUE(data.ok()) << data.status();
    ASSERT_TRUE(FillBytes(data->data(), fill, data->size()).ok());
    absl::StatusOr<DeviceBuffer> out = DeviceBuffer::Allocate(num_blocks * sizeof(uint64_t));
    ASSERT_TRUE(out.ok()) << out.status();
    ASSERT_TRUE(FillBytes(out->data(), kPoison, out->size()).ok());
    ASSERT_TRUE(
        BlockChecksums(data->data(), block_bytes, num_blocks, out->as<uint64_t>(), nullptr).ok());
    ASSERT_TRUE(SynchronizeDevice().ok());
    absl::StatusOr<std::vector<uint64_t>> got = Download<uint64_t>(out->data(), num_blocks);
    ASSERT_TRUE(got.ok()) << got.status();
    const std::vector<uint8_t> host(block_bytes, static_cast<uint8_t>(fill));
    for (int64_t i = 0; i < num_blocks; ++i) {
      EXPECT_EQ((*got)[i], BlockChecksum(host.data(), block_bytes)) << "fill " << fill;
    }
  }
}

// BlockChecksumsAt: blocks scattered over a buffer in shuffled order (as a cache tier's pages
// hold them), for each load width.
TEST(BlockChecksumsGpu, ScatteredBlocksMatchBlockChecksum) {
  TIERKV_REQUIRE_GPU();
  for (const size_t alignment : {size_t{16}, size_t{8}, size_t{1}}) {
    for (const size_t block_bytes : {size_t{4096}, size_t{65536 + 16}, 2 * kMiB}) {
      SCOPED_TRACE("alignment " + std::to_string(alignment) + ", block_bytes " +
                   std::to_string(block_bytes));
      const int64_t num_blocks = 37;
      const size_t slot = block_bytes + 64;  // Room to shift each start.
      const std::vector<uint8_t> host = RandomBytes(slot * num_blocks);
      absl::StatusOr<DeviceBuffer> data = DeviceBuffer::Allocate(host.size());
      ASSERT_TRUE(data.ok()) << data.status();
      ASSERT_TRUE(CopyToDevice(data->data(), host.data(), host.size()).ok());
      std::vector<size_t> order(num_blocks);
      for (int64_t i = 0; i < num_blocks; ++i) order[i] = static_cast<size_t>(i);
      std::shuffle(order.begin(), order.end(), Rng());
      std::vector<const void*> starts(num_blocks);
      std::vector<size_t> offsets(num_blocks);
      for (int64_t i = 0; i < num_blocks; ++i) {
        // Shifted by a multiple of the alignment (odd multiples where it is 1 or 8).
        offsets[i] = order[i] * slot + (alignment == 16 ? 16 : alignment * 3);
        starts[i] = data->as<uint8_t>() + offsets[i];
      }
      absl::StatusOr<DeviceBuffer> device_starts = DeviceBuffer::Allocate(num_blocks * 8);
      ASSERT_TRUE(device_starts.ok());
      ASSERT_TRUE(CopyToDevice(device_starts->data(), starts.data(), num_blocks * 8).ok());
      absl::StatusOr<DeviceBuffer> out = DeviceBuffer::Allocate(num_blocks * sizeof(uint64_t));
      ASSERT_TRUE(out.ok());
      ASSERT_TRUE(FillBytes(out->data(), kPoison, out->size()).ok());
      ASSERT_TRUE(BlockChecksumsAt(device_starts->as<const void*>(), alignment, block_bytes,
                                   num_blocks, out->as<uint64_t>(), nullptr)
                      .ok());
      ASSERT_TRUE(SynchronizeDevice().ok());
      absl::StatusOr<std::vector<uint64_t>> got = Download<uint64_t>(out->data(), num_blocks);
      ASSERT_TRUE(got.ok()) << got.status();
      for (int64_t i = 0; i < num_blocks; ++i) {
        EXPECT_EQ((*got)[i], BlockChecksum(host.data() + offsets[i], block_bytes)) << "block " << i;
      }
    }
  }
  // Bad parameters change nothing and say which.
  EXPECT_EQ(BlockChecksumsAt(nullptr, 4, 4096, 1, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

// Not an assertion: prints GB/s of 2048 blocks of 2 MiB (4 GiB), beside a device-to-device
// copy of 2 GiB (4 GiB of memory traffic) measured in the same run as the baseline.
TEST(BlockChecksumsGpu, PrintsThroughputOf2048BlocksOf2MiB) {
  TIERKV_REQUIRE_GPU();
  const size_t block_bytes = 2 * kMiB;
  const int64_t num_blocks = 2048;
  const size_t bytes = block_bytes * num_blocks;
  absl::StatusOr<DeviceBuffer> data = DeviceBuffer::Allocate(bytes);
  ASSERT_TRUE(data.ok()) << data.status();
  ASSERT_TRUE(FillSeeded(data->as<Bf16>(), static_cast<int64_t>(bytes / sizeof(Bf16)),
                         /*key=*/Rng()(), /*offset=*/0, /*scale=*/1.0f, /*shift=*/0.0f, nullptr)
                  .ok());
  absl::StatusOr<DeviceBuffer> out = DeviceBuffer::Allocate(num_blocks * sizeof(uint64_t));
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_TRUE(FillBytes(out->data(), kPoison, out->size()).ok());
  absl::StatusOr<StreamOwner> stream = StreamOwner::Create();
  ASSERT_TRUE(stream.ok()) << stream.status();
  ASSERT_TRUE(SynchronizeDevice().ok());

  auto run = [&] {
    return BlockChecksums(data->data(), block_bytes, num_blocks, out->as<uint64_t>(),
                          stream->get());
  };
  ASSERT_TRUE(run().ok());  // Warm-up.
  ASSERT_TRUE(stream->Synchronize().ok());
  constexpr int kReps = 10;
  auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < kReps; ++r) ASSERT_TRUE(run().ok());
  ASSERT_TRUE(stream->Synchronize().ok());
  const double hash_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / kReps;

  absl::StatusOr<DeviceBuffer> copy = DeviceBuffer::Allocate(bytes / 2);
  ASSERT_TRUE(copy.ok()) << copy.status();
  ASSERT_TRUE(CopyAsync(copy->data(), data->data(), bytes / 2, stream->get()).ok());
  ASSERT_TRUE(stream->Synchronize().ok());
  t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < kReps; ++r) {
    ASSERT_TRUE(CopyAsync(copy->data(), data->data(), bytes / 2, stream->get()).ok());
  }
  ASSERT_TRUE(stream->Synchronize().ok());
  const double copy_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / kReps;

  // The same blocks through a pointer array in shuffled order (BlockChecksumsAt).
  std::vector<const void*> starts(num_blocks);
  for (int64_t i = 0; i < num_blocks; ++i) starts[i] = data->as<uint8_t>() + i * block_bytes;
  std::shuffle(starts.begin(), starts.end(), Rng());
  absl::StatusOr<DeviceBuffer> device_starts = DeviceBuffer::Allocate(num_blocks * 8);
  ASSERT_TRUE(device_starts.ok());
  ASSERT_TRUE(CopyToDevice(device_starts->data(), starts.data(), num_blocks * 8).ok());
  absl::StatusOr<DeviceBuffer> out_at = DeviceBuffer::Allocate(num_blocks * sizeof(uint64_t));
  ASSERT_TRUE(out_at.ok());
  auto run_at = [&] {
    return BlockChecksumsAt(device_starts->as<const void*>(), 16, block_bytes, num_blocks,
                            out_at->as<uint64_t>(), stream->get());
  };
  ASSERT_TRUE(run_at().ok());
  ASSERT_TRUE(stream->Synchronize().ok());
  t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < kReps; ++r) ASSERT_TRUE(run_at().ok());
  ASSERT_TRUE(stream->Synchronize().ok());
  const double at_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / kReps;

  std::printf(
      "BlockChecksums: %lld blocks of %zu bytes in %.3f ms: %.0f GB/s read; "
      "BlockChecksumsAt (shuffled pointers): %.3f ms, %.0f GB/s; "
      "baseline cudaMemcpy D2D of %zu bytes: %.3f ms, %.0f GB/s read+write\n",
      static_cast<long long>(num_blocks), block_bytes, hash_s * 1e3,
      static_cast<double>(bytes) / hash_s / 1e9, at_s * 1e3,
      static_cast<double>(bytes) / at_s / 1e9, bytes / 2, copy_s * 1e3,
      static_cast<double>(bytes) / copy_s / 1e9);

  // The timed result is checked too, on a sample of blocks.
  absl::StatusOr<std::vector<uint64_t>> got = Download<uint64_t>(out->data(), num_blocks);
  ASSERT_TRUE(got.ok()) << got.status();
  std::vector<uint8_t> host(block_bytes);
  for (int64_t i : {int64_t{0}, int64_t{1}, int64_t{777}, num_blocks - 1}) {
    ASSERT_TRUE(CopyToHost(host.data(), data->as<uint8_t>() + i * block_bytes, block_bytes).ok());
    EXPECT_EQ((*got)[i], BlockChecksum(host.data(), block_bytes)) << "block " << i;
  }
}

}  // namespace
}  // namespace tierkv::kernels::cuda
