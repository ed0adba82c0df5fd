// A small fixed-size thread pool shared by the CPU kernels.
//
// Kernels split their work into independent tasks (output tiles, heads) and run them with
// ParallelFor. Which thread runs which task never changes a result: every kernel in
// kernels/ops.h computes each output element with the same arithmetic whatever the
// partitioning, so results are bitwise identical for any pool size.
#ifndef TIERKV_KERNELS_THREAD_POOL_H_
#define TIERKV_KERNELS_THREAD_POOL_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"

namespace tierkv::kernels {

// Thread-safe: several threads may call ParallelFor on one pool at once (for example a
// prefill and a decode sharing the process-wide pool); their tasks share the workers.
class ThreadPool {
 public:
  // `num_threads` is the total parallelism including the thread that calls ParallelFor, so
  // the pool starts num_threads - 1 workers. Values below 1 mean 1 (everything inline).
  explicit ThreadPool(int num_threads);
  ~ThreadPool();  // Joins the workers; no ParallelFor may be running.
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }

  // Runs fn(i) once for every i in [0, n) on the workers and the calling thread, and returns
  // when all have finished. Tasks are handed out in increasing i as threads free up, so put
  // the most expensive tasks first. `fn` must not throw. A task may itself call
  // ParallelFor (the caller always helps, so this cannot deadlock).
  void ParallelFor(int64_t n, absl::FunctionRef<void(int64_t)> fn);

  // The process-wide pool with std::thread::hardware_concurrency() threads, created on
  // first use and never destroyed.
  static ThreadPool* Default();

 private:
  struct Job {
    absl::FunctionRef<void(int64_t)> fn;
    int64_t n;
    std::atomic<int64_t> next{0};
    int active = 0;  // Workers inside RunJob; guarded by mu_.
  };

  void WorkerLoop();
  // Claims and runs tasks of `job` until none are left.
  static void RunJob(Job* job);

  // Constant after construction.
  const int num_threads_;
  std::vector<std::thread> workers_;

  absl::Mutex mu_;
  std::deque<Job*> queue_ ABSL_GUARDED_BY(mu_);  // Jobs that may have unclaimed tasks.
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
};

// Runs fn(i) for i in [0, n) on `pool`, or inline in increasing order when pool is null.
inline void ParallelFor(ThreadPool* pool, int64_t n, absl::FunctionRef<void(int64_t)> fn) {
  if (pool == nullptr || pool->num_threads() <= 1 || n <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  pool->ParallelFor(n, fn);
}

}  // namespace tierkv::kernels

#endif  // TIERKV_KERNELS_THREAD_POOL_H_
