#include "core/executor.h"

#include <atomic>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace tierkv {
namespace {

TEST(SerialExecutor, RunsJobsInOrderOneAtATime) {
  std::vector<int> order;
  std::atomic<int> running{0};
  std::atomic<int> max_running{0};
  {
    SerialExecutor executor(100);
    for (int i = 0; i < 50; ++i) {
      ASSERT_TRUE(executor
                      .Submit([&, i] {
                        int now = ++running;
                        max_running = std::max(max_running.load(), now);
                        order.push_back(i);
                        --running;
                      })
                      .ok());
    }
  }  // The destructor runs what is queued.
  ASSERT_EQ(order.size(), 50u);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(order[i], i);
  EXPECT_EQ(max_running.load(), 1);
}

TEST(SerialExecutor, RefusesBeyondItsBacklog) {
  SerialExecutor executor(1);
  absl::Notification started, release;
  ASSERT_TRUE(executor.Submit([&] {
    started.Notify();
    release.WaitForNotification();
  }).ok());
  started.WaitForNotification();
  ASSERT_TRUE(executor.Submit([] {}).ok());  // Waits behind the running job.
  EXPECT_EQ(executor.Submit([] {}).code(), absl::StatusCode::kResourceExhausted);
  release.Notify();
}

}  // namespace
}  // namespace tierkv
