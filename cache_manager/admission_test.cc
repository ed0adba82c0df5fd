#include "cache_manager/admission.h"

#include <string>
#include <vector>

#include "core/sha256.h"
#include "gtest/gtest.h"

namespace tierkv {
namespace {

BlockKey Key(uint64_t i) {
  Sha256 h;
  h.UpdateU64(i);
  return h.Finish();
}

// Looks up blocks [first, first + n) as one request.
void Lookup(AdmissionController& a, uint64_t first, uint64_t n) {
  std::vector<BlockKey> keys;
  for (uint64_t i = first; i < first + n; ++i) keys.push_back(Key(i));
  std::vector<std::string_view> views;
  for (const BlockKey& k : keys) views.push_back(KeyBytes(k));
  a.OnLookup(views);
}

TEST(AdmissionTest, AllAdmitsEverything) {
  AdmissionController a(AdmissionController::Mode::kAll, 1000, 0);
  EXPECT_TRUE(a.Admit(Key(1)));
  EXPECT_EQ(a.Describe(), "all");
}

TEST(AdmissionTest, SecondUseAdmitsWhatWasAskedForTwice) {
  AdmissionController a(AdmissionController::Mode::kSecondUse, 1000, 0);
  Lookup(a, 0, 10);
  EXPECT_FALSE(a.Admit(Key(3)));
  Lookup(a, 0, 5);
  EXPECT_TRUE(a.Admit(Key(3)));
  EXPECT_FALSE(a.Admit(Key(7)));
  EXPECT_EQ(a.Describe(), "second-use");
}

TEST(AdmissionTest, AutoFollowsWhicheverRuleHitsMore) {
  // 1,600 blocks of room; one page a block.
  AdmissionController a(AdmissionController::Mode::kAuto, 1600, 0);
  a.NoteBlockPages(1);
  EXPECT_FALSE(a.second_use_now());  // Starts as plain LRU.
  // A hot set of 800 blocks asked for again after floods of one-off blocks three times the
  // cache: LRU loses the hot set every time, second use keeps it.
  uint64_t next = 1'000'000;
  for (int round = 0; round < 40; ++round) {
    Lookup(a, 0, 800);
    Lookup(a, next, 4800);
    next += 4800;
  }
  EXPECT_TRUE(a.second_use_now());
  EXPECT_EQ(a.Describe(), "auto (now second-use)");
  // Now every block is asked for twice, shortly apart, and never again: only LRU hits (the
  // second-use rule admits a block only at its second request, too late).
  for (int round = 0; round < 400; ++round) {
    Lookup(a, next, 200);
    Lookup(a, next, 200);
    next += 200;
  }
  EXPECT_FALSE(a.second_use_now());
  EXPECT_GE(a.switches(), 2u);
}

}  // namespace
}  // namespace tierkv
