#include "kernels/thread_pool.h"

#include <algorithm>
#include <atomic>

namespace tierkv::kernels {

ThreadPool::ThreadPool(int num_threads) : num_threads_(std::max(1, num_threads)) {
  workers_.reserve(num_threads_ - 1);
  for (int i = 1; i < num_threads_; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  for (std::thread& t : workers_) t.join();
}

ThreadPool* ThreadPool::Default() {
  static ThreadPool* const pool =
      new ThreadPool(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  return pool;
}

void ThreadPool::RunJob(Job* job) {
  for (;;) {
    const int64_t i = job->next.fetch_add(1, std::memory_order_relaxed);
    if (i >= job->n) return;
    job->fn(i);
  }
}

void ThreadPool::WorkerLoop() {
  auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stop_ || !queue_.empty();
  };
  absl::MutexLock lock(&mu_);
  for (;;) {
    mu_.Await(absl::Condition(&has_work));
    if (stop_) return;
    Job* job = queue_.front();
    if (job->next.load(std::memory_order_relaxed) >= job->n) {
      // Every task is claimed; the job stays alive until its caller sees active == 0.
      queue_.pop_front();
      continue;
    }
    ++job->active;
    mu_.Unlock();
    RunJob(job);
    mu_.Lock();
    // The last touch of `job` by this worker: its caller waits for active == 0 under mu_.
    --job->active;
    if (!queue_.empty() && queue_.front() == job) queue_.pop_front();
  }
}

void ThreadPool::ParallelFor(int64_t n, absl::FunctionRef<void(int64_t)> fn) {
  if (n <= 0) return;
  if (workers_.empty() || n == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  Job job{fn, n};
  {
    absl::MutexLock lock(&mu_);
    queue_.push_back(&job);
  }
  RunJob(&job);
  // All tasks are claimed now; wait for the workers still running one, then make sure the
  // job is no longer queued (a worker may not have looked at it yet).
  absl::MutexLock lock(&mu_);
  auto idle = [&job]() { return job.active == 0; };
  mu_.Await(absl::Condition(&idle));
  auto it = std::find(queue_.begin(), queue_.end(), &job);
  if (it != queue_.end()) queue_.erase(it);
}

}  // namespace tierkv::kernels
