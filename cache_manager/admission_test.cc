#include "cache_manager/admission.h"

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/sha256.h"
#include "gtest/gtest.h"

namespace tierkv {
namespace {

BlockKey Key(uint64_t i) {
  Sha256 h;
  h.UpdateU64(i);
  return h.Finish();
}

// Looks up blocks [first, first + n) as one request, of which the last `missed` (all by
// default) were not found.
void Lookup(AdmissionController& a, uint64_t first, uint64_t n, uint64_t missed = UINT64_MAX) {
  std::vector<BlockKey> keys;
  for (uint64_t i = first; i < first + n; ++i) keys.push_back(Key(i));
  std::vector<std::string_view> views;
  for (const BlockKey& k : keys) views.push_back(KeyBytes(k));
  a.OnLookup(views, n - std::min(n, missed));
}

TEST(AdmissionTest, AllAdmitsEverything) {
  AdmissionController a(AdmissionController::Mode::kAll, 1000, 0);
  EXPECT_TRUE(a.Admit(Key(1), 1000));
  EXPECT_EQ(a.rule_now(), AdmissionController::kAdmitAll);
  EXPECT_EQ(a.Describe(), "all");
}

TEST(AdmissionTest, SecondUseAdmitsWhatWasAskedForTwice) {
  AdmissionController a(AdmissionController::Mode::kSecondUse, 1000, 0);
  Lookup(a, 0, 10);
  EXPECT_FALSE(a.Admit(Key(3), 10));
  EXPECT_FALSE(a.Admit(Key(3), 1));  // However short the request.
  Lookup(a, 0, 5);
  EXPECT_TRUE(a.Admit(Key(3), 10));
  EXPECT_FALSE(a.Admit(Key(7), 10));
  EXPECT_EQ(a.rule_now(), 0u);
  EXPECT_EQ(a.Describe(), "second-use");
}

// A key the sketch counts only through its block while cached (not a sampled one).
uint64_t UnsampledKey(uint64_t from) {
  while (AdmissionController::Sampled(Key(from))) ++from;
  return from;
}

TEST(AdmissionTest, FoundKeysCountThroughTheirBlocksUntilTheyLeave) {
  AdmissionController a(AdmissionController::Mode::kSecondUse, 1000, 0);
  const uint64_t k = UnsampledKey(100);
  Lookup(a, k, 1);  // Missed: counted once.
  EXPECT_FALSE(a.Admit(Key(k), 10));
  const BlockKey key = Key(k);
  std::vector<std::string_view> views = {KeyBytes(key)};
  a.OnLookup(views, /*found=*/1);  // Found: its block counts it, not the sketch.
  EXPECT_FALSE(a.Admit(key, 10));
  a.OnLeave(key, 1);  // The block leaves with that use.
  EXPECT_TRUE(a.Admit(key, 10));
}

TEST(AdmissionTest, SampledFoundKeysCountThroughTheirBlocksToo) {
  AdmissionController a(AdmissionController::Mode::kSecondUse, 1000, 0);
  uint64_t k = 0;
  while (!AdmissionController::Sampled(Key(k))) ++k;
  const BlockKey key = Key(k);
  std::vector<std::string_view> views = {KeyBytes(key)};
  a.OnLookup(views, 0);  // Missed: in the sketch.
  a.OnLookup(views, 1);  // Found: its block counts it (the miniatures add it to the sketch's).
  EXPECT_FALSE(a.Admit(key, 10));
  a.OnLeave(key, 1);
  EXPECT_TRUE(a.Admit(key, 10));
}

TEST(AdmissionTest, BlockUsesAgeWithTheSketch) {
  BlockUses u;
  for (int i = 0; i < 3; ++i) u.Add(5);
  EXPECT_EQ(u.AgedTo(5), 3u);
  EXPECT_EQ(u.AgedTo(6), 1u);
  EXPECT_EQ(u.AgedTo(7), 0u);
  u.Add(7);  // Aged first, then counted.
  EXPECT_EQ(u.AgedTo(7), 1u);
  for (int i = 0; i < 40; ++i) u.Add(7);
  EXPECT_EQ(u.AgedTo(7), FrequencySketch::kMax);
  EXPECT_EQ(u.AgedTo(7 + 100), 0u);
  // A walk that read an older epoch than the block's adds without aging, and the epoch
  // stays.
  BlockUses v;
  for (int i = 0; i < 3; ++i) v.Add(10);
  v.Add(9);
  EXPECT_EQ(v.AgedTo(10), 4u);
  EXPECT_EQ(v.AgedTo(9), 4u);
  EXPECT_EQ(v.epoch, 10u);
  EXPECT_EQ(v.AgedTo(11), 2u);
}

// A slab's pending run counts several Lookups at once (BlockIndex): AddTimes must leave a
// block's uses as that many Adds would, whatever the count and epochs.
TEST(AdmissionTest, BlockUsesAddTimesIsRepeatedAdd) {
  for (uint32_t count : {0u, 1u, 7u, 14u, 15u}) {
    for (uint16_t epoch : {0, 3, 65535}) {
      for (uint64_t now : {uint64_t{0}, uint64_t{3}, uint64_t{5}, uint64_t{12}, uint64_t{65536},
                           uint64_t{70000}}) {
        for (uint64_t times : {0, 1, 2, 13, 16, 300}) {
          BlockUses start;
          start.count = static_cast<uint8_t>(count);
          start.epoch = epoch;
          BlockUses added = start;
          for (uint64_t i = 0; i < times; ++i) added.Add(now);
          BlockUses at_once = start;
          at_once.AddTimes(now, times);
          EXPECT_EQ(at_once.count, added.count)
              << "count " << count << " epoch " << epoch << " now " << now << " times " << times;
          EXPECT_EQ(at_once.aged_epoch(), added.aged_epoch())
              << "count " << count << " epoch " << epoch << " now " << now << " times " << times;
        }
      }
    }
  }
}

TEST(AdmissionTest, SketchHalvesOnAdvanceAndAddsCountedUses) {
  FrequencySketch sketch(64);  // Halves every 640 additions.
  const BlockKey key = Key(1);
  sketch.AddCounted(key, 6);
  EXPECT_EQ(sketch.Estimate(key), 6u);
  // Neighbouring counters of all values halve on their own (no bit crosses a byte).
  std::vector<BlockKey> others;
  for (uint64_t i = 2; i < 40; ++i) {
    others.push_back(Key(i));
    sketch.AddCounted(others.back(), static_cast<uint32_t>(i % 16));
  }
  std::vector<uint32_t> before;
  for (const BlockKey& k : others) before.push_back(sketch.Estimate(k));
  EXPECT_EQ(sketch.halvings(), 0u);
  sketch.Advance(639);
  EXPECT_EQ(sketch.halvings(), 0u);
  sketch.Advance(1);
  EXPECT_EQ(sketch.halvings(), 1u);
  EXPECT_EQ(sketch.Estimate(key), 3u);
  for (size_t i = 0; i < others.size(); ++i) EXPECT_EQ(sketch.Estimate(others[i]), before[i] / 2);
  sketch.AddCounted(key, 100);
  EXPECT_EQ(sketch.Estimate(key), FrequencySketch::kMax);
}

TEST(AdmissionTest, AutoFollowsWhicheverRuleHitsMore) {
  // 1,600 blocks of room; one page a block.
  AdmissionController a(AdmissionController::Mode::kAuto, 1600, 0);
  a.NoteBlockPages(1);
  EXPECT_EQ(a.rule_now(), AdmissionController::kAdmitAll);  // Starts as plain LRU.
  // A hot set of 800 blocks asked for again after floods of one-off blocks three times the
  // cache: LRU loses the hot set every time, second use keeps it.
  uint64_t next = 1'000'000;
  for (int round = 0; round < 40; ++round) {
    Lookup(a, 0, 800);
    Lookup(a, next, 4800);
    next += 4800;
  }
  // Every request here brings more new blocks than any short-request rule lets in, so they
  // all do as well as second use; ties go to the rule admitting more.
  EXPECT_NE(a.rule_now(), AdmissionController::kAdmitAll);
  EXPECT_LT(a.rule_now(), 800u);
  EXPECT_FALSE(a.Admit(Key(next + 1), 800));
  EXPECT_EQ(a.Describe(), "auto (now second-use or up to 64 new blocks)");
  // Now every block is asked for twice, shortly apart, and never again: only LRU hits (the
  // second-use rule admits a block only at its second request, too late).
  for (int round = 0; round < 400; ++round) {
    Lookup(a, next, 200);
    Lookup(a, next, 200);
    next += 200;
  }
  EXPECT_EQ(a.rule_now(), AdmissionController::kAdmitAll);
  EXPECT_GE(a.switches(), 2u);
}

TEST(AdmissionTest, AutoLetsShortRequestsInWhenThatHitsMost) {
  // 1,600 blocks of room. Conversations of 8-block turns, each turn asked for again by the
  // next one a while later (after 3,200 other blocks: more than the cache), between long
  // one-off documents of 200 blocks. Plain LRU loses the turns to the documents, second use
  // admits a turn only when it comes back (too late), admitting short requests at once
  // keeps the turns and keeps the documents out.
  AdmissionController a(AdmissionController::Mode::kAuto, 1600, 0);
  a.NoteBlockPages(1);
  uint64_t next = 1'000'000;
  std::vector<uint64_t> pending;  // First blocks of turns waiting for their follow-up.
  for (int round = 0; round < 400; ++round) {
    // A new turn of 8 blocks, all missed.
    Lookup(a, next, 8);
    pending.push_back(next);
    next += 8;
    // A document of 200 blocks.
    Lookup(a, next, 200);
    next += 200;
    // The follow-up of the turn from 16 rounds ago: its 8 blocks, missed or found (the
    // miniatures count their own hits; `missed` only says what the request brought).
    if (pending.size() > 16) {
      Lookup(a, pending.front(), 8, 0);
      pending.erase(pending.begin());
    }
  }
  const uint32_t rule = a.rule_now();
  EXPECT_NE(rule, AdmissionController::kAdmitAll);
  EXPECT_GE(rule, 8u) << a.Describe();
  EXPECT_LT(rule, 200u) << a.Describe();
  EXPECT_TRUE(a.Admit(Key(next + 1), 8));        // A short request comes in at once...
  EXPECT_FALSE(a.Admit(Key(next + 1), 200));     // ...a long one needs a second use.
  EXPECT_EQ(a.Describe(), absl::StrCat("auto (now second-use or up to ", rule, " new blocks)"));
}

// The miniatures' shortcuts (runs of hits moved as one segment, the next key's entry looked
// for next to the last one's) change nothing: against a controller without them, on
// conversations that ask for their prefixes again in order, partly, after other traffic,
// and in scrambled order, with miniatures small enough to evict all the time.
TEST(AdmissionTest, MiniatureShortcutsMatchPlainLru) {
  for (uint64_t capacity_pages : {200, 1600}) {
    AdmissionController fast(AdmissionController::Mode::kAuto, capacity_pages, 0);
    AdmissionController plain(AdmissionController::Mode::kAuto, capacity_pages, 0);
    plain.DisableShortcutsForTest();
    fast.NoteBlockPages(1);
    plain.NoteBlockPages(1);
    std::mt19937_64 rng(capacity_pages);
    for (int step = 0; step < 3000; ++step) {
      // Chain c is blocks [c * 4096, c * 4096 + 2048); a few chains are popular.
      const uint64_t c = rng() % 4 == 0 ? rng() % 200 : rng() % 12;
      const uint64_t length = 1 + rng() % 2048;
      std::vector<uint64_t> ids;
      const uint64_t start = rng() % 8 == 0 ? rng() % length : 0;  // Mostly whole prefixes.
      for (uint64_t i = start; i < length; ++i) ids.push_back(c * 4096 + i);
      if (rng() % 10 == 0) std::shuffle(ids.begin(), ids.end(), rng);
      std::string packed;
      for (uint64_t id : ids) packed.append(KeyBytes(Key(id)));
      const uint64_t found = rng() % 3 == 0 ? rng() % (ids.size() + 1) : ids.size();
      fast.OnLookup(packed, found);
      plain.OnLookup(packed, found);
      if (rng() % 16 == 0) {  // A cached block leaves with its uses.
        const BlockKey gone = Key(c * 4096 + rng() % length);
        const uint32_t uses = static_cast<uint32_t>(rng() % 4);
        fast.OnLeave(gone, uses);
        plain.OnLeave(gone, uses);
      }
      for (size_t r = 0; r < 5; ++r) {
        ASSERT_EQ(fast.MiniatureForTest(r), plain.MiniatureForTest(r))
            << "rule " << r << " at step " << step << ", capacity " << capacity_pages;
        ASSERT_EQ(fast.MiniatureHitsForTest(r), plain.MiniatureHitsForTest(r))
            << "rule " << r << " at step " << step;
      }
      ASSERT_EQ(fast.rule_now(), plain.rule_now()) << "step " << step;
    }
    EXPECT_EQ(fast.switches(), plain.switches());
    EXPECT_GT(fast.switches(), 0u);
    // The test means something only if the miniatures filled and evicted, and rules switched.
    EXPECT_EQ(fast.MiniatureForTest(0).size(), std::max<uint64_t>(8, capacity_pages / 16));
  }
}

}  // namespace
}  // namespace tierkv
