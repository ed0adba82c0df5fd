#include "cache_manager/event_log.h"

#include <atomic>

#include "gtest/gtest.h"

namespace tierkv {
namespace {

CacheEvent Stored(uint8_t tag) {
  CacheEvent e;
  e.type = EventType::kStored;
  e.key[0] = tag;
  return e;
}

TEST(EventLog, AssignsIncreasingSequenceNumbersFromOne) {
  EventLog log(8);
  EXPECT_EQ(log.last_sequence(), 0u);
  EXPECT_EQ(log.Append(Stored(1)), 1u);
  EXPECT_EQ(log.Append(Stored(2)), 2u);
  auto r = log.Read(0, 10);
  ASSERT_EQ(r.events.size(), 2u);
  EXPECT_EQ(r.events[0].sequence, 1u);
  EXPECT_EQ(r.events[1].key[0], 2);
  EXPECT_EQ(r.next, 3u);
  EXPECT_EQ(r.missed_from, 0u);
}

TEST(EventLog, ReaderBehindTheBufferIsToldWhatItMissed) {
  EventLog log(4);
  for (int i = 1; i <= 10; ++i) log.Append(Stored(i));
  auto r = log.Read(3, 100);
  EXPECT_EQ(r.missed_from, 3u);
  EXPECT_EQ(r.missed_to, 6u);
  ASSERT_EQ(r.events.size(), 4u);
  EXPECT_EQ(r.events.front().sequence, 7u);
  EXPECT_EQ(r.next, 11u);
  // Caught up: nothing more, nothing missed.
  auto again = log.Read(r.next, 100);
  EXPECT_TRUE(again.events.empty());
  EXPECT_EQ(again.missed_from, 0u);
}

TEST(EventLog, ReadRespectsMax) {
  EventLog log(16);
  for (int i = 1; i <= 10; ++i) log.Append(Stored(i));
  auto r = log.Read(2, 3);
  ASSERT_EQ(r.events.size(), 3u);
  EXPECT_EQ(r.events[2].sequence, 4u);
  EXPECT_EQ(r.next, 5u);
}

TEST(EventLog, SubscribersAreNotifiedUntilUnsubscribed) {
  EventLog log(4);
  std::atomic<int> calls{0};
  uint64_t h = log.Subscribe([&] { ++calls; });
  log.Append(Stored(1));
  log.Append(Stored(2));
  EXPECT_EQ(calls.load(), 2);
  log.Unsubscribe(h);
  log.Append(Stored(3));
  EXPECT_EQ(calls.load(), 2);
}

}  // namespace
}  // namespace tierkv
