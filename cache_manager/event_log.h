// A bounded log of cache events (stored, evicted) with sequence numbers, read by
// WatchEvents streams. A reader that asks for events no longer kept is told which range it
// missed instead of silently skipping it.
//
// Thread-safe.
#ifndef TIERKV_CACHE_MANAGER_EVENT_LOG_H_
#define TIERKV_CACHE_MANAGER_EVENT_LOG_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/block_key.h"

namespace tierkv {

// Values match tierkv.v1.Event.Type.
// Values match v1::Event::Type.
enum class EventType { kStored = 1, kEvicted = 2, kMoved = 4 };

// Tier numbers as in v1::Tier.
inline constexpr uint32_t kTierGpu = 1;
inline constexpr uint32_t kTierHost = 2;
inline constexpr uint32_t kTierSsd = 3;

struct CacheEvent {
  uint64_t sequence = 0;
  EventType type = EventType::kStored;
  BlockKey key{};
  std::optional<BlockKey> parent;
  uint64_t size = 0;
  absl::Time time;
  std::string reason;
  // The tier the event is about: where it was stored, evicted from, or moved to.
  uint32_t tier = kTierHost;
};

class EventLog {
 public:
  // Keeps the latest `capacity` events (at least 1).
  explicit EventLog(size_t capacity);

  // Assigns the next sequence number (the first is 1), keeps the event and notifies
  // subscribers (after releasing the log's lock). Returns the sequence number.
  uint64_t Append(CacheEvent event);

  struct ReadResult {
    std::vector<CacheEvent> events;
    // Non-zero when events [missed_from, missed_to] were asked for but are no longer kept.
    uint64_t missed_from = 0;
    uint64_t missed_to = 0;
    // Sequence number to ask for next.
    uint64_t next = 0;
  };
  // Up to `max` events with sequence >= `from`.
  ReadResult Read(uint64_t from, size_t max) const;

  // Sequence number of the latest event (0 before the first).
  uint64_t last_sequence() const;

  // `notify` runs after every Append, on the appending thread; it must not block or call
  // Subscribe/Unsubscribe. Returns a handle for Unsubscribe, after which `notify` is never
  // called again.
  uint64_t Subscribe(std::function<void()> notify);
  void Unsubscribe(uint64_t handle);

 private:
  const size_t capacity_;
  mutable absl::Mutex mu_;
  std::deque<CacheEvent> events_ ABSL_GUARDED_BY(mu_);
  uint64_t last_ ABSL_GUARDED_BY(mu_) = 0;
  // Subscribers run under their own lock so that Unsubscribe waits for a running notify.
  absl::Mutex subscribers_mu_;
  absl::flat_hash_map<uint64_t, std::function<void()>> subscribers_
      ABSL_GUARDED_BY(subscribers_mu_);
  uint64_t next_handle_ ABSL_GUARDED_BY(subscribers_mu_) = 1;
};

}  // namespace tierkv

#endif  // TIERKV_CACHE_MANAGER_EVENT_LOG_H_
