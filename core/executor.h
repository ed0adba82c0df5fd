// A queue of jobs run one at a time on a thread of its own: how workers keep heavy compute
// off gRPC's threads (a callback handler must not block) and admit a bounded backlog.
//
// Thread-safe.
#ifndef TIERKV_CORE_EXECUTOR_H_
#define TIERKV_CORE_EXECUTOR_H_

#include <cstddef>
#include <deque>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace tierkv {

class SerialExecutor {
 public:
  // At most `max_queued` jobs wait behind the running one.
  explicit SerialExecutor(size_t max_queued);
  // Runs the jobs already queued, then joins the thread.
  ~SerialExecutor();
  SerialExecutor(const SerialExecutor&) = delete;
  SerialExecutor& operator=(const SerialExecutor&) = delete;

  // Queues `job`. RESOURCE_EXHAUSTED (job dropped) when max_queued jobs already wait;
  // UNAVAILABLE after shutdown began.
  absl::Status Submit(absl::AnyInvocable<void() &&> job);

  // Jobs waiting (not counting the running one).
  size_t queued() const;

 private:
  void Loop();

  const size_t max_queued_;
  mutable absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void() &&>> jobs_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace tierkv

#endif  // TIERKV_CORE_EXECUTOR_H_
