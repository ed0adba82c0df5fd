// Prefill and decode workers with the cache manager, all in one process on 127.0.0.1 (as
// `tierkv up` runs them), driven over gRPC like a frontend.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <fstream>
#include <random>

#include "cache_client/cache_client.h"
#include "cli/all_in_one.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/kv_cache.h"
#include "prefill_worker/prefill.h"
#include "tierkv/v1/decode_service.grpc.pb.h"
#include "tierkv/v1/prefill_service.grpc.pb.h"

namespace tierkv {
namespace {

using ::testing::HasSubstr;

class EndToEndTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    AllInOneOptions options;
    options.cache.listen_address = "127.0.0.1:0";
    options.cache.host_capacity_bytes = 256 << 20;
    options.runtime.device = "cpu";  // Bitwise checks below assume the CPU runtime.
    auto all = AllInOne::Start(options);
    ASSERT_TRUE(all.ok()) << all.status();
    all_ = std::move(all).value().release();
  }
  static void TearDownTestSuite() {
    delete all_;
    all_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(all_, nullptr);
    auto channel = grpc::CreateChannel(all_->address(), grpc::InsecureChannelCredentials());
    prefill_ = v1::PrefillService::NewStub(channel);
    decode_ = v1::DecodeService::NewStub(channel);
  }

  static std::vector<uint32_t> Prompt(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<uint32_t> tokens(n);
    for (auto& t : tokens) t = rng() % all_->model().vocab_size();
    return tokens;
  }

  static std::unique_ptr<grpc::ClientContext> Ctx() {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(2));
    return ctx;
  }

  grpc::Status Prefill(const std::vector<uint32_t>& tokens, v1::PrefillResponse* response,
                       const std::string& salt = "", const std::string& model_id = "") {
    v1::PrefillRequest request;
    request.mutable_tokens()->Add(tokens.begin(), tokens.end());
    request.set_salt(salt);
    request.set_model_id(model_id);
    return prefill_->Prefill(Ctx().get(), request, response);
  }

  struct Generated {
    grpc::Status status;
    std::vector<uint32_t> tokens;
    v1::GenerateResponse last;
  };
  Generated Generate(const std::vector<uint32_t>& tokens, uint32_t n, const std::string& salt = "",
                     v1::SamplingParams sampling = {}) {
    v1::GenerateRequest request;
    request.mutable_tokens()->Add(tokens.begin(), tokens.end());
    request.set_max_new_tokens(n);
    request.set_salt(salt);
    *request.mutable_sampling() = sampling;
    Generated out;
    auto ctx = Ctx();
    auto reader = decode_->Generate(ctx.get(), request);
    v1::GenerateResponse message;
    while (reader->Read(&message)) {
      out.tokens.insert(out.tokens.end(), message.tokens().begin(), message.tokens().end());
      out.last = message;
    }
    out.status = reader->Finish();
    return out;
  }

  static AllInOne* all_;
  std::unique_ptr<v1::PrefillService::Stub> prefill_;
  std::unique_ptr<v1::DecodeService::Stub> decode_;
};

AllInOne* EndToEndTest::all_ = nullptr;

TEST_F(EndToEndTest, WarmGenerationYieldsExactlyTheTokensOfAColdRun) {
  const auto prompt = Prompt(16 * 12 + 5, 1);
  // Cold: nothing cached for this prompt, the decode worker computes everything.
  Generated cold = Generate(prompt, 12, "cold-then-warm");
  ASSERT_TRUE(cold.status.ok()) << cold.status.error_message();
  EXPECT_EQ(cold.last.cached_tokens(), 0u);
  EXPECT_EQ(cold.last.finish_reason(), "length");
  ASSERT_EQ(cold.tokens.size(), 12u);

  v1::PrefillResponse stored;
  ASSERT_TRUE(Prefill(prompt, &stored, "cold-then-warm").ok());
  EXPECT_EQ(stored.cached_tokens(), 0u);
  EXPECT_EQ(stored.stored_blocks(), 12u);
  EXPECT_EQ(stored.first_token(), cold.tokens[0]);

  Generated warm = Generate(prompt, 12, "cold-then-warm");
  ASSERT_TRUE(warm.status.ok()) << warm.status.error_message();
  EXPECT_EQ(warm.last.cached_tokens(), 16u * 12);
  EXPECT_EQ(warm.last.computed_tokens(), 5u);
  EXPECT_EQ(warm.tokens, cold.tokens);
}

TEST_F(EndToEndTest, FetchedKvIsBitwiseTheLocallyComputedKv) {
  const auto prompt = Prompt(16 * 6 + 3, 2);
  v1::PrefillResponse stored;
  ASSERT_TRUE(Prefill(prompt, &stored, "bitwise").ok());
  ASSERT_EQ(stored.stored_blocks(), 6u);

  const Runtime& model = all_->model();
  auto local = *model.NewSequence(static_cast<int64_t>(prompt.size()));
  ASSERT_TRUE(model.Prefill(prompt, local.get()).ok());
  CacheClientOptions options;
  options.address = all_->address();
  auto client = *CacheClient::Create(options);
  auto keys = *ComputeBlockKeys(model.spec(), "bitwise", prompt);
  auto fetched = client->FetchPrefix(model.spec(), keys);
  ASSERT_TRUE(fetched.ok()) << fetched.status();
  ASSERT_EQ(fetched->blocks.size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    auto expected = local->ExtractBlock(i);
    ASSERT_TRUE(expected.ok());
    EXPECT_TRUE(fetched->blocks[i] == *expected) << "block " << i << " differs";
  }
}

// The workers of tierkv up read cached blocks where they lie in the host tier; a block whose
// bytes do not match its checksum there ends the prefix and is never handed to the model.
TEST_F(EndToEndTest, InPlaceReadsFromTheHostTierStopAtACorruptBlock) {
  const auto prompt = Prompt(16 * 6 + 3, 5);
  v1::PrefillResponse stored;
  ASSERT_TRUE(Prefill(prompt, &stored, "in-place").ok());
  ASSERT_EQ(stored.stored_blocks(), 6u);
  const Runtime& model = all_->model();

  for (const int corrupt : {-1, 2}) {
    CacheClientOptions options;
    options.address = all_->address();
    options.fault_corrupt_block = corrupt;
    auto client = *CacheClient::Create(options);
    EXPECT_FALSE(client->HasLocalHostTier());
    client->SetLocalHostTier(all_->cache_manager().HostTierRegion());
    ASSERT_TRUE(client->HasLocalHostTier());
    auto seq = PrepareSequence(model, client.get(), "in-place", prompt, /*cache_required=*/true);
    ASSERT_TRUE(seq.ok()) << seq.status();
    const uint32_t expect = corrupt < 0 ? 6 : static_cast<uint32_t>(corrupt);
    EXPECT_EQ(seq->cached_blocks, expect) << "corrupt block " << corrupt;
    EXPECT_EQ(seq->checksum_failures, corrupt < 0 ? 0u : 1u);
    EXPECT_EQ(seq->computed_tokens, prompt.size() - 16 * expect);
    // Whatever was reused or recomputed, the KV is the cold run's, bit for bit.
    auto local = *model.NewSequence(static_cast<int64_t>(prompt.size()));
    auto logits = model.Prefill(prompt, local.get());
    ASSERT_TRUE(logits.ok());
    EXPECT_EQ(seq->logits, *logits);
    for (uint64_t b = 0; b < 6; ++b) {
      EXPECT_EQ(*seq->seq->ExtractBlock(b), *local->ExtractBlock(b)) << "block " << b;
    }
  }
}

// A block whose bytes went bad in the host tier is dropped when a reader finds it (the
// cache manager checks the bytes itself), so the next prefill stores a good one in its place
// instead of skipping it as cached; every reader meanwhile gets the cold run's KV.
TEST_F(EndToEndTest, ACorruptBlockIsDroppedAndStoredAgain) {
  const auto prompt = Prompt(16 * 6 + 3, 7);
  v1::PrefillResponse stored;
  ASSERT_TRUE(Prefill(prompt, &stored, "drop").ok());
  ASSERT_EQ(stored.stored_blocks(), 6u);
  const Runtime& model = all_->model();
  auto local = *model.NewSequence(static_cast<int64_t>(prompt.size()));
  const auto cold_logits = model.Prefill(prompt, local.get());
  ASSERT_TRUE(cold_logits.ok());

  // Flip a bit of block 3 where it lies in the host tier (found by its bytes).
  const std::string block3 = *local->ExtractBlock(3);
  const std::span<uint8_t> region = all_->cache_manager().HostTierRegion();
  uint8_t* at = std::search(region.data(), region.data() + region.size(),
                            reinterpret_cast<const uint8_t*>(block3.data()),
                            reinterpret_cast<const uint8_t*>(block3.data()) + 256);
  ASSERT_NE(at, region.data() + region.size()) << "block 3 not found in the host tier";
  at[100] ^= 0x04;

  CacheClientOptions options;
  options.address = all_->address();
  auto client = *CacheClient::Create(options);
  client->SetLocalHostTier(all_->cache_manager().HostTierRegion());
  const auto keys = *ComputeBlockKeys(model.spec(), "drop", prompt);
  {
    auto seq = PrepareSequence(model, client.get(), "drop", prompt, /*cache_required=*/true);
    ASSERT_TRUE(seq.ok()) << seq.status();
    EXPECT_EQ(seq->cached_blocks, 3u);
    EXPECT_EQ(seq->checksum_failures, 1u);
    EXPECT_EQ(seq->logits, *cold_logits);
  }
  // Dropped with the blocks after it (unreachable without it).
  EXPECT_EQ(*client->CountCached(model.spec(), keys), 3u);
  EXPECT_EQ(*client->ReportCorrupt(keys[1]), 0u) << "an intact block stays";
  v1::PrefillResponse again;
  ASSERT_TRUE(Prefill(prompt, &again, "drop").ok());
  EXPECT_EQ(again.cached_tokens(), 16u * 3);
  EXPECT_EQ(again.stored_blocks(), 3u);
  auto seq = PrepareSequence(model, client.get(), "drop", prompt, /*cache_required=*/true);
  ASSERT_TRUE(seq.ok()) << seq.status();
  EXPECT_EQ(seq->cached_blocks, 6u);
  EXPECT_EQ(seq->checksum_failures, 0u);
  EXPECT_EQ(seq->logits, *cold_logits);
}

TEST_F(EndToEndTest, SharedPrefixIsReusedAndSaltsIsolateTenants) {
  const auto prompt = Prompt(16 * 8, 3);
  v1::PrefillResponse first;
  ASSERT_TRUE(Prefill(prompt, &first, "tenant-a").ok());
  auto other = prompt;
  other.resize(16 * 5);
  const auto tail = Prompt(40, 4);
  other.insert(other.end(), tail.begin(), tail.end());
  v1::PrefillResponse second;
  ASSERT_TRUE(Prefill(other, &second, "tenant-a").ok());
  EXPECT_EQ(second.cached_tokens(), 16u * 5);
  v1::PrefillResponse isolated;
  ASSERT_TRUE(Prefill(prompt, &isolated, "tenant-b").ok());
  EXPECT_EQ(isolated.cached_tokens(), 0u);
  // A prompt of whole blocks still computes its last block (the first token needs it).
  v1::PrefillResponse again;
  ASSERT_TRUE(Prefill(prompt, &again, "tenant-a").ok());
  EXPECT_EQ(again.cached_tokens(), 16u * 7);
  EXPECT_EQ(again.computed_tokens(), 16u);
  EXPECT_EQ(again.stored_blocks(), 0u);
  EXPECT_EQ(again.first_token(), first.first_token());
}

TEST_F(EndToEndTest, BadRequestsGetSpecificCodes) {
  v1::PrefillResponse r;
  auto s = Prefill({}, &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  s = Prefill({1, 2, 3}, &r, "", "some-other-model");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("builtin:tiny"));
  s = Prefill({1, static_cast<uint32_t>(all_->model().vocab_size())}, &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("token 1"));
  std::vector<uint32_t> too_long(all_->model().max_positions() + 1, 1);
  s = Prefill(too_long, &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::OUT_OF_RANGE) << s.error_message();
  Generated g = Generate({1, 2, 3}, 0);
  EXPECT_EQ(g.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::SamplingParams bad;
  bad.set_temperature(-1);
  g = Generate({1, 2, 3}, 2, "", bad);
  EXPECT_EQ(g.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(EndToEndTest, SeededSamplingIsRepeatable) {
  const auto prompt = Prompt(50, 5);
  v1::SamplingParams sampling;
  sampling.set_temperature(0.8f);
  sampling.set_top_p(0.9f);
  sampling.set_seed(99);
  Generated a = Generate(prompt, 6, "", sampling);
  Generated b = Generate(prompt, 6, "", sampling);
  ASSERT_TRUE(a.status.ok());
  EXPECT_EQ(a.tokens, b.tokens);
}

// Workers whose cache manager is unreachable: Prefill says so; Generate computes anyway.
TEST(WorkersWithoutCache, PrefillIsUnavailableGenerateStillServes) {
  auto model = Runtime::Load("builtin:tiny", {.device = "cpu"});
  ASSERT_TRUE(model.ok());
  CacheClientOptions options;
  options.address = "127.0.0.1:1";
  options.timeout = absl::Seconds(2);
  auto cache = *CacheClient::Create(options);
  v1::PrefillRequest request;
  for (uint32_t t = 0; t < 40; ++t) request.add_tokens(t + 7);
  auto r = RunPrefill(**model, *cache, request);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  auto seq = PrepareSequence(**model, cache.get(), "", std::vector<uint32_t>(40, 9), false);
  ASSERT_TRUE(seq.ok());
  EXPECT_TRUE(seq->cache_unavailable);
  EXPECT_EQ(seq->computed_tokens, 40u);
}

// tierkv up with a pattern file: a plan whose indices cover everything answers as dense does;
// a bad file stops the start with the file's path and the JSON path of the mistake.
TEST(SparsePrefill, PatternFileIsUsedAndBadFilesFailToStart) {
  const std::string dir = testing::TempDir();
  const std::string good = dir + "/sparse_everything.json";
  const std::string bad = dir + "/sparse_bad.json";
  {
    std::ofstream(good) << R"({"format": "tierkv-sparse-patterns/v1", "min_tokens": 64,
      "default": {"pattern": "vertical_slash", "vertical": 1000000, "slash": 1000000}})";
    std::ofstream(bad) << R"({"format": "tierkv-sparse-patterns/v1",
      "layers": {"0": {"99": {"pattern": "a_shape"}}}})";
  }
  auto start = [](const std::string& patterns) {
    AllInOneOptions options;
    options.cache.listen_address = "127.0.0.1:0";
    options.cache.host_capacity_bytes = 64 << 20;
    options.runtime.device = "cpu";
    options.sparse_patterns = patterns;
    return AllInOne::Start(options);
  };
  auto failed = start(bad);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(failed.status().message(), HasSubstr("sparse_bad.json"));
  EXPECT_THAT(failed.status().message(), HasSubstr("layers.0.99"));

  auto dense = start("");
  auto sparse = start(good);
  ASSERT_TRUE(dense.ok()) << dense.status();
  ASSERT_TRUE(sparse.ok()) << sparse.status();
  std::mt19937 rng(8);
  std::vector<uint32_t> prompt(300);
  for (auto& t : prompt) t = rng() % (*dense)->model().vocab_size();
  auto first_token = [&](AllInOne& all) -> int64_t {
    auto stub = v1::PrefillService::NewStub(
        grpc::CreateChannel(all.address(), grpc::InsecureChannelCredentials()));
    v1::PrefillRequest request;
    request.mutable_tokens()->Add(prompt.begin(), prompt.end());
    v1::PrefillResponse response;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(2));
    grpc::Status s = stub->Prefill(&ctx, request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return s.ok() ? response.first_token() : -1;
  };
  EXPECT_EQ(first_token(**sparse), first_token(**dense));
  (*dense)->Shutdown();
  (*sparse)->Shutdown();
}

}  // namespace
}  // namespace tierkv
