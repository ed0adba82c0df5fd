// Real GPU memory through the transfer engine: the CUDA DeviceMemory, and GET/PUT of
// cudaMalloc'ed blocks between two engines over tcp on lo (both paths). Skips, saying why,
// where there is no usable GPU.
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "core/block_key.h"
#include "gtest/gtest.h"
#include "transfer/cuda_device_memory.h"
#include "transfer/engine.h"
#include "transfer/testing/blocks.h"
#include "transfer/testing/peer.h"

namespace tierkv::transfer {
namespace {

constexpr size_t kPool = 64 << 20;

// Why there is no usable GPU, or empty when there is one.
std::string NoGpuReason() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return std::string("cudaGetDeviceCount: ") + cudaGetErrorName(err) + " (" +
           cudaGetErrorString(err) + ")";
  }
  if (count == 0) return "no CUDA device present";
  return "";
}

#define SKIP_WITHOUT_GPU()                                       \
  do {                                                           \
    if (std::string why = NoGpuReason(); !why.empty()) {         \
      std::printf("no usable GPU, skipping: %s\n", why.c_str()); \
      GTEST_SKIP() << "no usable GPU: " << why;                  \
    }                                                            \
  } while (0)

// A cudaMalloc'ed buffer.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    EXPECT_EQ(cudaMalloc(&p_, bytes), cudaSuccess);
  }
  ~DeviceBuffer() { cudaFree(p_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  char* get() const { return static_cast<char*>(p_); }
  std::vector<char> Read() const {
    std::vector<char> host(bytes_);
    EXPECT_EQ(cudaMemcpy(host.data(), p_, bytes_, cudaMemcpyDeviceToHost), cudaSuccess);
    return host;
  }
  void Write(const void* src) {
    EXPECT_EQ(cudaMemcpy(p_, src, bytes_, cudaMemcpyHostToDevice), cudaSuccess);
    // A copy from pageable memory may return before it lands; the engine's lanes are
    // non-blocking streams that would not wait for it.
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }

 private:
  void* p_ = nullptr;
  size_t bytes_;
};

TEST(CudaDeviceMemory, RecognisesDeviceMemoryAndCopiesInOrderPerLane) {
  SKIP_WITHOUT_GPU();
  absl::StatusOr<std::shared_ptr<DeviceMemory>> device = NewCudaDeviceMemory({});
  ASSERT_TRUE(device.ok()) << device.status();
  DeviceBuffer buffer(1 << 20);
  std::vector<char> host(1 << 20);
  EXPECT_TRUE((*device)->IsDevice(buffer.get()));
  EXPECT_TRUE((*device)->IsDevice(buffer.get() + 12345));
  EXPECT_FALSE((*device)->IsDevice(host.data()));
  absl::StatusOr<void*> pinned = (*device)->AllocatePinned(1 << 20);
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  EXPECT_FALSE((*device)->IsDevice(*pinned));
  char* bounce = static_cast<char*>(*pinned);
  testing::FillPattern(bounce, 1 << 20, 3);
  std::vector<char> expected(bounce, bounce + (1 << 20));
  // Two copies on one lane in order: the second reads what the first wrote.
  ASSERT_TRUE((*device)->CopyToDeviceAsync(buffer.get(), bounce, 1 << 20, 1).ok());
  ASSERT_TRUE((*device)->CopyToHostAsync(host.data(), buffer.get(), 1 << 20, 1).ok());
  ASSERT_TRUE((*device)->WaitLane(1).ok());
  EXPECT_EQ(host, expected);
  EXPECT_EQ((*device)->WaitLane(7).code(), absl::StatusCode::kInvalidArgument);
  (*device)->FreePinned(bounce);
}

class CudaEngineTest : public ::testing::TestWithParam<PathPolicy> {};

TEST_P(CudaEngineTest, MovesDeviceBlocksBothWays) {
  SKIP_WITHOUT_GPU();
  absl::StatusOr<std::shared_ptr<DeviceMemory>> device = NewCudaDeviceMemory({});
  ASSERT_TRUE(device.ok()) << device.status();
  EngineOptions options;
  options.transports = "tcp";
  options.net_devices = "lo";
  options.path = GetParam();
  options.op_timeout = absl::Seconds(10);
  auto owner = TransferEngine::Create(options);
  ASSERT_TRUE(owner.ok()) << owner.status();
  options.device_memory = *device;
  options.bounce_bytes = 4 << 20;  // 1 MiB slots: 2 MiB blocks take two each.
  auto reader = TransferEngine::Create(options);
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::vector<char> memory(kPool);
  testing::FillPattern(memory.data(), memory.size(), 9);
  auto region = (*owner)->Register(memory.data(), memory.size());
  ASSERT_TRUE(region.ok()) << region.status();
  auto ep = (*reader)->Connect((*owner)->worker_address());
  ASSERT_TRUE(ep.ok()) << ep.status();

  constexpr int kBlocks = 12;
  constexpr size_t kBlock = (2 << 20) - 100;
  DeviceBuffer buffer(kBlocks * kBlock);
  std::vector<char> poison(kBlocks * kBlock, '\x5a');
  buffer.Write(poison.data());
  std::vector<TransferOp> ops(kBlocks);
  for (int i = 0; i < kBlocks; ++i) {
    ops[i] = {(*region)->remote_key(), reinterpret_cast<uint64_t>(memory.data() + i * kBlock),
              buffer.get() + i * kBlock, kBlock, BlockChecksum(memory.data() + i * kBlock, kBlock)};
  }
  ops[3].checksum = 1;  // DATA_LOSS.
  std::vector<absl::Status> statuses = (*reader)->Get(**ep, ops);
  std::vector<char> got = buffer.Read();
  for (int i = 0; i < kBlocks; ++i) {
    if (i == 3) {
      EXPECT_EQ(statuses[i].code(), absl::StatusCode::kDataLoss) << statuses[i];
      // The last piece of the failed block never reached the device.
      EXPECT_EQ(got[(i + 1) * kBlock - 1], '\x5a');
      continue;
    }
    ASSERT_TRUE(statuses[i].ok()) << i << ": " << statuses[i];
    EXPECT_EQ(std::memcmp(got.data() + i * kBlock, memory.data() + i * kBlock, kBlock), 0) << i;
  }

  // PUT the device blocks back to the owner, shifted by half the pool, asynchronously.
  testing::FillPattern(got.data(), got.size(), 10);
  buffer.Write(got.data());
  for (int i = 0; i < kBlocks; ++i) ops[i].remote_addr += kPool / 2;
  absl::Notification put;
  (*reader)->PutAsync(*ep, ops, [&](std::vector<absl::Status> s) {
    statuses = std::move(s);
    put.Notify();
  });
  ASSERT_TRUE(put.WaitForNotificationWithTimeout(absl::Seconds(60)));
  for (const absl::Status& status : statuses) EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(std::memcmp(memory.data() + kPool / 2, got.data(), got.size()), 0);
}

INSTANTIATE_TEST_SUITE_P(Paths, CudaEngineTest,
                         ::testing::Values(PathPolicy::kOneSided, PathPolicy::kTwoSided),
                         [](const ::testing::TestParamInfo<PathPolicy>& info) {
                           return testing::TransportPathName("tcp", info.param);
                         });

}  // namespace
}  // namespace tierkv::transfer
