#include "cache_client/cache_client.h"

#include <random>

#include "cache_manager/server.h"
#include "gtest/gtest.h"

namespace tierkv {
namespace {

// How the client moves bytes: over UCX with the given transports (both ends), or over the
// gRPC streams.
struct PathParam {
  const char* name;
  bool ucx;
  const char* transports;
};

class CacheClientTest : public ::testing::TestWithParam<PathParam> {
 protected:
  void SetUp() override {
    CacheManagerOptions options;
    options.listen_address = "127.0.0.1:0";
    options.host_capacity_bytes = 64 << 20;
    options.data_plane = GetParam().ucx;
    options.transports = GetParam().transports;
    auto server = CacheManagerServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(server).value();
    client_ = Client(-1);
    spec_ = BuiltinTinyModelSpec();
    std::vector<uint32_t> tokens(16 * 10 + 3);
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = 1000 + i;
    keys_ = *ComputeBlockKeys(spec_, "", tokens);
    for (size_t i = 0; i < keys_.size(); ++i) {
      std::string p(spec_.RawBlockBytes(), '\0');
      std::mt19937 rng(i);
      for (auto& c : p) c = static_cast<char>(rng());
      payloads_.push_back(std::move(p));
    }
  }
  void TearDown() override { server_->Shutdown(); }

  std::unique_ptr<CacheClient> Client(int corrupt_block) {
    CacheClientOptions options;
    options.address = server_->address();
    options.fault_corrupt_block = corrupt_block;
    options.use_data_plane = GetParam().ucx;
    options.transports = GetParam().transports;
    return *CacheClient::Create(options);
  }

  std::unique_ptr<CacheManagerServer> server_;
  std::unique_ptr<CacheClient> client_;
  ModelSpec spec_;
  std::vector<BlockKey> keys_;
  std::vector<std::string> payloads_;
};

TEST_P(CacheClientTest, StoresAndFetchesTheLongestPrefixBitwise) {
  auto stored = client_->Store(spec_, keys_, 0, std::span(payloads_).subspan(0, 6));
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(stored->stored, 6u);
  auto fetched = client_->FetchPrefix(spec_, keys_);
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  ASSERT_EQ(fetched->blocks.size(), 6u);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(fetched->blocks[i], payloads_[i]) << i;
  EXPECT_EQ(client_->data_path(), GetParam().ucx ? DataPath::kUcx : DataPath::kGrpcStreams);
  EXPECT_EQ(fetched->checksum_failures, 0u);
  EXPECT_EQ(*client_->CountCached(spec_, keys_), 6u);
  // Storing an overlapping range writes only what is new.
  stored = client_->Store(spec_, keys_, 4, std::span(payloads_).subspan(4, 6));
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->already_cached, 2u);
  EXPECT_EQ(stored->stored, 4u);
  EXPECT_EQ(*client_->CountCached(spec_, keys_), 10u);
}

TEST_P(CacheClientTest, CorruptedBlockEndsThePrefixAndIsCounted) {
  ASSERT_TRUE(client_->Store(spec_, keys_, 0, std::span(payloads_).subspan(0, 5)).ok());
  auto corrupting = Client(/*corrupt_block=*/3);
  auto fetched = corrupting->FetchPrefix(spec_, keys_);
  ASSERT_TRUE(fetched.ok());
  EXPECT_EQ(fetched->blocks.size(), 3u);  // Blocks 0..2; block 3 failed, nothing after it.
  EXPECT_EQ(fetched->checksum_failures, 1u);
}

TEST_P(CacheClientTest, OtherModelSpecIsAMiss) {
  ASSERT_TRUE(client_->Store(spec_, keys_, 0, std::span(payloads_).subspan(0, 2)).ok());
  ModelSpec other = spec_;
  other.weights_digest = "seed:42";
  // Same keys asked under another fingerprint: the cache refuses them.
  EXPECT_EQ(*client_->CountCached(other, keys_), 0u);
}

TEST_P(CacheClientTest, BadPayloadSizeIsInvalidArgument) {
  std::vector<std::string> wrong = {std::string(10, 'x')};
  EXPECT_EQ(client_->Store(spec_, keys_, 0, wrong).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*client_->CountCached(spec_, keys_), 0u);
}

TEST_P(CacheClientTest, UnreachableCacheManagerIsUnavailable) {
  CacheClientOptions options;
  options.address = "127.0.0.1:1";
  options.timeout = absl::Seconds(2);
  auto client = *CacheClient::Create(options);
  auto fetched = client->FetchPrefix(spec_, keys_);
  EXPECT_EQ(fetched.status().code(), absl::StatusCode::kUnavailable) << fetched.status();
}

INSTANTIATE_TEST_SUITE_P(
    DataPaths, CacheClientTest,
    ::testing::Values(PathParam{"ucx_tcp", true, "tcp"}, PathParam{"ucx_shm", true, "shm"},
                      PathParam{"grpc_streams", false, ""}),
    [](const ::testing::TestParamInfo<PathParam>& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace tierkv
