#include "cache_manager/event_log.h"

#include <algorithm>

namespace tierkv {

EventLog::EventLog(size_t capacity) : capacity_(std::max<size_t>(capacity, 1)) {}

uint64_t EventLog::Append(CacheEvent event) {
  uint64_t seq;
  {
    absl::MutexLock lock(&mu_);
    seq = ++last_;
    event.sequence = seq;
    if (events_.size() == capacity_) events_.pop_front();
    events_.push_back(std::move(event));
  }
  absl::MutexLock lock(&subscribers_mu_);
  for (auto& [handle, notify] : subscribers_) notify();
  return seq;
}

EventLog::ReadResult EventLog::Read(uint64_t from, size_t max) const {
  absl::MutexLock lock(&mu_);
  ReadResult out;
  if (from == 0) from = 1;
  const uint64_t oldest = events_.empty() ? last_ + 1 : events_.front().sequence;
  if (from < oldest) {
    out.missed_from = from;
    out.missed_to = oldest - 1;
    from = oldest;
  }
  for (uint64_t seq = from; seq <= last_ && out.events.size() < max; ++seq) {
    out.events.push_back(events_[seq - oldest]);
  }
  out.next = from + out.events.size();
  return out;
}

uint64_t EventLog::last_sequence() const {
  absl::MutexLock lock(&mu_);
  return last_;
}

uint64_t EventLog::Subscribe(std::function<void()> notify) {
  absl::MutexLock lock(&subscribers_mu_);
  uint64_t handle = next_handle_++;
  subscribers_.emplace(handle, std::move(notify));
  return handle;
}

void EventLog::Unsubscribe(uint64_t handle) {
  absl::MutexLock lock(&subscribers_mu_);
  subscribers_.erase(handle);
}

}  // namespace tierkv
