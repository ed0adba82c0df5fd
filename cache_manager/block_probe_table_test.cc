#include "cache_manager/block_probe_table.h"

#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <vector>

#include "absl/container/flat_hash_map.h"

namespace tierkv {
namespace {

struct Item {
  BlockKey key;
};

// Keys whose first 8 bytes take only `tags` values, so tags collide often.
BlockKey RandomKey(std::mt19937_64& rng, uint64_t tags) {
  BlockKey key;
  const uint64_t words[4] = {tags == 0 ? rng() : rng() % tags, rng(), rng(), rng()};
  std::memcpy(key.data(), words, sizeof(words));
  return key;
}

void Churn(uint64_t tags) {
  std::mt19937_64 rng(tags + 1);
  BlockProbeTable<Item> table;
  absl::flat_hash_map<BlockKey, std::unique_ptr<Item>, BlockKeyHash, BlockKeyEq> truth;
  std::vector<BlockKey> keys;
  for (int step = 0; step < 20000; ++step) {
    if (keys.empty() || rng() % 3 != 0) {
      const BlockKey key = RandomKey(rng, tags);
      if (truth.contains(key)) continue;
      auto item = std::make_unique<Item>(Item{key});
      table.Insert(item.get());
      truth.emplace(key, std::move(item));
      keys.push_back(key);
    } else {
      const size_t i = rng() % keys.size();
      ASSERT_TRUE(table.Erase(keys[i]));
      truth.erase(keys[i]);
      keys[i] = keys.back();
      keys.pop_back();
    }
    if (step % 997 == 0) {
      ASSERT_EQ(table.size(), truth.size());
      for (const auto& [key, item] : truth) ASSERT_EQ(table.Find(key), item.get());
    }
  }
  for (const auto& [key, item] : truth) {
    EXPECT_EQ(table.Find(key), item.get());
    Item* candidate = table.Candidate(key);
    ASSERT_NE(candidate, nullptr);  // Some block with the same tag.
    EXPECT_EQ(std::memcmp(candidate->key.data(), key.data(), 8), 0);
  }
  for (int i = 0; i < 1000; ++i) {
    const BlockKey absent = RandomKey(rng, 0);
    EXPECT_EQ(table.Find(absent), nullptr);
    EXPECT_FALSE(table.Erase(absent));
  }
}

TEST(BlockProbeTable, MatchesAMapUnderChurn) { Churn(0); }
TEST(BlockProbeTable, SharedTagsAreTellApartByTheFullKey) { Churn(16); }
TEST(BlockProbeTable, OneTagForAllKeys) { Churn(1); }

}  // namespace
}  // namespace tierkv
