#include "core/executor.h"

#include "absl/strings/str_cat.h"

namespace tierkv {

SerialExecutor::SerialExecutor(size_t max_queued)
    : max_queued_(max_queued), thread_([this] { Loop(); }) {}

SerialExecutor::~SerialExecutor() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

absl::Status SerialExecutor::Submit(absl::AnyInvocable<void() &&> job) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("worker is shutting down");
  if (jobs_.size() >= max_queued_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "worker is busy: ", jobs_.size(), " requests already wait; retry later or add workers"));
  }
  jobs_.push_back(std::move(job));
  return absl::OkStatus();
}

size_t SerialExecutor::queued() const {
  absl::MutexLock lock(&mu_);
  return jobs_.size();
}

void SerialExecutor::Loop() {
  while (true) {
    absl::AnyInvocable<void() &&> job;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](SerialExecutor* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mu_) {
            return self->stopping_ || !self->jobs_.empty();
          },
          this));
      if (jobs_.empty()) return;  // Stopping, and everything queued has run.
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    std::move(job)();
  }
}

}  // namespace tierkv
