#include "storage/host_pool.h"

#include <random>

#include "core/block_key.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tierkv {
namespace {

std::unique_ptr<HostPool> MakePool(uint64_t capacity, uint64_t page = 4096) {
  auto pool = HostPool::Create({.capacity_bytes = capacity, .page_bytes = page});
  EXPECT_TRUE(pool.ok()) << pool.status();
  return std::move(pool).value();
}

TEST(HostPool, RejectsBadOptions) {
  EXPECT_EQ(HostPool::Create({.capacity_bytes = 1 << 20, .page_bytes = 1000}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(HostPool::Create({.capacity_bytes = 100, .page_bytes = 4096}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(HostPool, CapacityIsRoundedDownToPagesAndNeverExceeded) {
  auto pool = MakePool(10 * 4096 + 17);
  EXPECT_EQ(pool->capacity_bytes(), 10 * 4096u);
  auto a = pool->Allocate(6 * 4096);
  ASSERT_TRUE(a.ok());
  auto b = pool->Allocate(5 * 4096);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(pool->used_bytes(), 6 * 4096u);  // The refused call reserved nothing.
  auto c = pool->Allocate(4 * 4096);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(pool->free_bytes(), 0u);
  EXPECT_EQ(pool->Allocate(1).status().code(), absl::StatusCode::kResourceExhausted);
  pool->Free(*a);
  pool->Free(*c);
  EXPECT_EQ(pool->used_bytes(), 0u);
  EXPECT_EQ(pool->FreeRuns(), std::make_pair(uint64_t{1}, uint64_t{10 * 4096}));
}

TEST(HostPool, ZeroSizeIsInvalid) {
  auto pool = MakePool(1 << 20);
  EXPECT_EQ(pool->Allocate(0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(HostPool, PartialPageIsReservedWholeAndExtentsCoverExactSize) {
  auto pool = MakePool(1 << 20);
  auto a = pool->Allocate(5000);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->reserved_bytes, 8192u);
  ASSERT_EQ(a->extents.size(), 1u);
  EXPECT_EQ(a->extents[0].length, 5000u);
  EXPECT_EQ(pool->used_bytes(), 8192u);
}

TEST(HostPool, FragmentedFreeSpaceIsStillUsable) {
  // Fill with one-page blocks, free every other one: no two free pages are adjacent, yet a
  // block of half the pool must fit, in several extents, with its bytes intact.
  auto pool = MakePool(64 * 4096);
  std::vector<PoolAllocation> blocks;
  for (int i = 0; i < 64; ++i) blocks.push_back(*pool->Allocate(4096));
  for (int i = 0; i < 64; i += 2) pool->Free(blocks[i]);
  EXPECT_EQ(pool->FreeRuns().first, 32u);
  auto big = pool->Allocate(32 * 4096 - 100);
  ASSERT_TRUE(big.ok()) << big.status();
  EXPECT_EQ(big->extents.size(), 32u);
  std::vector<uint8_t> data(big->size);
  std::mt19937 rng(7);
  for (auto& b : data) b = rng();
  pool->Write(*big, 0, data.data(), data.size());
  std::vector<uint8_t> back(data.size());
  pool->Read(*big, 0, back.data(), back.size());
  EXPECT_EQ(back, data);
  EXPECT_EQ(pool->Checksum(*big), BlockChecksum(data.data(), data.size()));
  // Unaligned partial reads cross extent boundaries correctly.
  std::vector<uint8_t> mid(10000);
  pool->Read(*big, 4000, mid.data(), mid.size());
  EXPECT_TRUE(std::equal(mid.begin(), mid.end(), data.begin() + 4000));
}

TEST(HostPool, PrefersOneContiguousExtent) {
  auto pool = MakePool(64 * 4096);
  auto a = pool->Allocate(4096);
  auto b = pool->Allocate(10 * 4096);
  auto c = pool->Allocate(4096);
  pool->Free(*b);
  auto d = pool->Allocate(3 * 4096);  // Best fit: the 10-page hole, not the big tail.
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->extents.size(), 1u);
  EXPECT_EQ(d->extents[0].offset, 4096u);
}

TEST(HostPool, ChurnKeepsAccountingExact) {
  auto pool = MakePool(256 * 4096);
  std::mt19937 rng(42);
  std::vector<PoolAllocation> live;
  uint64_t reserved = 0;
  for (int step = 0; step < 20000; ++step) {
    if (live.empty() || rng() % 2 == 0) {
      uint64_t size = 1 + rng() % (9 * 4096);
      auto a = pool->Allocate(size);
      if (a.ok()) {
        EXPECT_EQ(a->reserved_bytes, pool->PagesFor(size) * 4096);
        uint64_t covered = 0;
        for (auto& e : a->extents) covered += e.length;
        EXPECT_EQ(covered, size);
        reserved += a->reserved_bytes;
        live.push_back(*a);
      } else {
        // Refused only when the free pages really do not suffice.
        EXPECT_LT(pool->free_bytes(), pool->PagesFor(size) * 4096);
      }
    } else {
      size_t i = rng() % live.size();
      pool->Free(live[i]);
      reserved -= live[i].reserved_bytes;
      live.erase(live.begin() + i);
    }
    ASSERT_EQ(pool->used_bytes(), reserved);
    ASSERT_LE(pool->used_bytes(), pool->capacity_bytes());
  }
  for (auto& a : live) pool->Free(a);
  EXPECT_EQ(pool->used_bytes(), 0u);
  EXPECT_EQ(pool->FreeRuns().first, 1u);
}

}  // namespace
}  // namespace tierkv
