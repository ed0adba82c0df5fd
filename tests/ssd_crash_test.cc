// Crash consistency of the SSD tier: a real tierkv-cache-manager process (write-through, so
// that Commit means durable) is killed with SIGKILL at random moments while several clients
// write. After every restart on the same data directory, each block whose Commit returned
// OK is served with exactly its bytes, and no block that was never committed is visible.
//
// The server binds 127.0.0.1 on a port of its choosing, every wait is bounded, and the
// process is stopped by its PID.
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "cache_client/cache_client.h"
#include "core/block_key.h"
#include "core/process.h"
#include "gtest/gtest.h"
#include "tierkv/v1/admin_service.grpc.pb.h"
#include "tierkv/v1/cache_service.grpc.pb.h"

namespace tierkv {
namespace {

namespace fs = std::filesystem;

constexpr int kRounds = 5;
constexpr int kWriters = 4;
constexpr absl::Duration kStartTimeout = absl::Seconds(30);

std::string Bytes(const BlockKey& k) { return std::string(KeyBytes(k)); }

// A block's size and bytes follow from its key, so a reader needs only the key to check.
uint64_t SizeOf(const BlockKey& key) { return 4096 + (key[3] % 48) * 4096 + key[4] * 7; }
std::string Payload(const BlockKey& key) {
  std::string data(SizeOf(key), '\0');
  std::mt19937_64 rng(key[0] | key[1] << 8 | uint64_t{key[2]} << 16);
  for (auto& c : data) c = static_cast<char>(rng());
  return data;
}

class Server {
 public:
  Server(const fs::path& workdir, const fs::path& data_dir) : workdir_(workdir) {
    const fs::path port_file = workdir / "port";
    fs::remove(port_file);
    std::vector<std::string> args = {
        TIERKV_CACHE_MANAGER_BINARY, "--listen", "127.0.0.1:0", "--port-file",
        port_file.string(), "--no-data-plane", "--host-capacity", "32MiB", "--page-size", "4KiB",
        "--data-dir", data_dir.string(), "--ssd-capacity", "1GiB", "--ssd-slab-size", "64MiB",
        "--ssd-write-through"};
    auto pid = SpawnLogged(args, (workdir / "cache_manager.log").string(), /*truncate_log=*/false);
    if (!pid.ok()) {
      ADD_FAILURE() << pid.status();
      return;
    }
    pid_ = *pid;
    auto port = WaitForPortFile(pid_, port_file.string(), kStartTimeout);
    if (!port.ok()) {
      if (port.status().code() == absl::StatusCode::kUnavailable) pid_ = 0;  // Reaped.
      ADD_FAILURE() << "cache manager did not start: " << port.status() << "\n" << Log();
      return;
    }
    address_ = absl::StrCat("127.0.0.1:", *port);
    channel_ = grpc::CreateChannel(address_, grpc::InsecureChannelCredentials());
  }
  ~Server() { Stop(SIGTERM); }

  void Stop(int sig) {
    StopProcess(pid_, sig, absl::Seconds(10));
    pid_ = 0;
  }

  std::string Log() const {
    std::ifstream in(workdir_ / "cache_manager.log");
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  bool ok() const { return !address_.empty(); }
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }

 private:
  fs::path workdir_;
  pid_t pid_ = 0;
  std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
};

std::unique_ptr<grpc::ClientContext> Context() {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  return ctx;
}

// What the writers did, by key.
struct Ledger {
  absl::Mutex mu;
  std::vector<BlockKey> acknowledged ABSL_GUARDED_BY(mu);  // Commit returned OK.
  std::vector<BlockKey> never_committed ABSL_GUARDED_BY(mu);
};

// False once the server is gone (killed: the writer stops); any other error fails the test.
bool Alive(const grpc::Status& status, const char* what) {
  if (status.ok()) return true;
  if (status.error_code() != grpc::StatusCode::UNAVAILABLE &&
      status.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED &&
      status.error_code() != grpc::StatusCode::CANCELLED) {
    ADD_FAILURE() << what << ": " << status.error_message();
  }
  return false;
}

// Stores chains until the server dies: allocate, put, then commit (or, one time in five,
// leave the blocks uncommitted or abort them).
void Writer(std::shared_ptr<grpc::Channel> channel, uint32_t seed, Ledger* ledger) {
  auto stub = v1::CacheService::NewStub(channel);
  std::mt19937 rng(seed);
  v1::ModelSpec model;
  ModelSpecToProto(BuiltinTinyModelSpec(), &model);
  for (int iteration = 0;; ++iteration) {
    std::vector<uint32_t> tokens((1 + rng() % 4) * 16);
    for (auto& t : tokens) t = rng();
    auto keys = *ComputeBlockKeys(BuiltinTinyModelSpec(), "", tokens);
    v1::AllocateRequest alloc;
    *alloc.mutable_model() = model;
    for (size_t i = 0; i < keys.size(); ++i) {
      auto* b = alloc.add_blocks();
      b->set_key(Bytes(keys[i]));
      if (i > 0) b->set_parent_key(Bytes(keys[i - 1]));
      b->set_size(SizeOf(keys[i]));
    }
    v1::AllocateResponse allocated;
    if (!Alive(stub->Allocate(Context().get(), alloc, &allocated), "Allocate")) return;
    for (const BlockKey& key : keys) {  // One Put stream per block.
      auto ctx = Context();
      v1::PutResponse put_response;
      auto put = stub->Put(ctx.get(), &put_response);
      const std::string data = Payload(key);
      for (size_t off = 0; off < data.size(); off += 64 * 1024) {
        v1::PutRequest chunk;
        chunk.set_allocation_id(allocated.allocation_id());
        chunk.set_key(Bytes(key));
        chunk.set_offset(off);
        chunk.set_data(data.substr(off, 64 * 1024));
        if (!put->Write(chunk)) break;
      }
      put->WritesDone();
      if (!Alive(put->Finish(), "Put")) return;
    }
    const uint32_t choice = rng() % 10;
    if (choice == 0 || choice == 1) {
      {
        absl::MutexLock lock(&ledger->mu);
        ledger->never_committed.insert(ledger->never_committed.end(), keys.begin(), keys.end());
      }
      if (choice == 1) {
        v1::AbortRequest abort;
        abort.set_allocation_id(allocated.allocation_id());
        v1::AbortResponse aborted;
        if (!Alive(stub->Abort(Context().get(), abort, &aborted), "Abort")) return;
      }
      continue;
    }
    v1::CommitRequest commit;
    commit.set_allocation_id(allocated.allocation_id());
    for (const BlockKey& key : keys) {
      auto* b = commit.add_blocks();
      b->set_key(Bytes(key));
      const std::string data = Payload(key);
      b->set_checksum(BlockChecksum(data.data(), data.size()));
    }
    v1::CommitResponse committed;
    // A failure here leaves the outcome unknown: the block is neither acknowledged nor
    // counted as never committed.
    if (!Alive(stub->Commit(Context().get(), commit, &committed), "Commit")) return;
    absl::MutexLock lock(&ledger->mu);
    ledger->acknowledged.insert(ledger->acknowledged.end(), keys.begin(), keys.end());
  }
}

// Every acknowledged block reads back exactly; nothing never committed is found.
void Verify(const Server& server, Ledger& ledger, int round) {
  auto stub = v1::CacheService::NewStub(server.channel());
  std::vector<BlockKey> acknowledged, never;
  {
    absl::MutexLock lock(&ledger.mu);
    acknowledged = ledger.acknowledged;
    never = ledger.never_committed;
  }
  ASSERT_FALSE(acknowledged.empty()) << "round " << round << ": no commit was acknowledged";
  size_t bad = 0;
  for (const BlockKey& key : acknowledged) {
    v1::GetRequest get;
    get.set_key(Bytes(key));
    auto ctx = Context();
    auto reader = stub->Get(ctx.get(), get);
    std::string data;
    v1::GetResponse chunk;
    while (reader->Read(&chunk)) data += chunk.data();
    grpc::Status status = reader->Finish();
    if (!status.ok() || data != Payload(key)) {
      if (++bad <= 5) {
        ADD_FAILURE() << "round " << round << ": acknowledged block " << ToHex(key).substr(0, 16)
                      << " " << (status.ok() ? "differs" : status.error_message());
      }
    }
  }
  EXPECT_EQ(bad, 0u) << "of " << acknowledged.size() << " acknowledged blocks";
  size_t visible = 0;
  for (const BlockKey& key : never) {
    v1::LookupRequest lookup;
    lookup.set_keys(Bytes(key));
    v1::LookupResponse found;
    ASSERT_TRUE(stub->Lookup(Context().get(), lookup, &found).ok());
    visible += found.found();
  }
  EXPECT_EQ(visible, 0u) << "of " << never.size() << " never-committed blocks are visible";
  auto admin = v1::AdminService::NewStub(server.channel());
  // Every block served at all (acknowledged, or committed as the process died) is intact.
  size_t listed = 0;
  std::string token;
  do {
    v1::ListBlocksRequest list;
    list.set_page_size(1000);
    list.set_page_token(token);
    v1::ListBlocksResponse page;
    ASSERT_TRUE(admin->ListBlocks(Context().get(), list, &page).ok());
    for (const v1::BlockInfo& info : page.blocks()) {
      ++listed;
      const std::string expected = Payload(*BlockKeyFromBytes(info.key()));
      EXPECT_EQ(info.size(), expected.size());
      EXPECT_EQ(info.checksum(), BlockChecksum(expected.data(), expected.size()));
    }
    token = page.next_page_token();
  } while (!token.empty());
  EXPECT_GE(listed, acknowledged.size());
  v1::StatsResponse stats;
  ASSERT_TRUE(admin->Stats(Context().get(), {}, &stats).ok());
  EXPECT_EQ(stats.ssd_read_failures(), 0u);
  std::cout << "round " << round << ": " << acknowledged.size() << " acknowledged blocks intact, "
            << never.size() << " never committed and invisible, " << stats.ssd_recovered_blocks()
            << " recovered from the catalog\n";
}

TEST(SsdCrashTest, AcknowledgedBlocksSurviveSigkill) {
  std::string tmpl = (fs::current_path() / "ssd-crash-XXXXXX").string();
  ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
  const fs::path workdir = tmpl;
  const fs::path data_dir = workdir / "data";
  Ledger ledger;
  std::mt19937 rng(absl::ToUnixNanos(absl::Now()));
  for (int round = 1; round <= kRounds; ++round) {
    {
      Server server(workdir, data_dir);
      ASSERT_TRUE(server.ok());
      if (round > 1) Verify(server, ledger, round - 1);
      std::vector<std::thread> writers;
      for (int w = 0; w < kWriters; ++w) {
        writers.emplace_back(Writer, server.channel(), rng(), &ledger);
      }
      absl::SleepFor(absl::Milliseconds(300 + rng() % 1200));
      server.Stop(SIGKILL);
      for (auto& t : writers) t.join();
      if (HasFailure()) {
        std::cerr << server.Log();
        break;
      }
    }
  }
  {
    Server server(workdir, data_dir);
    ASSERT_TRUE(server.ok());
    Verify(server, ledger, kRounds);
    if (HasFailure()) std::cerr << server.Log();
  }
  fs::remove_all(workdir);
}

}  // namespace
}  // namespace tierkv
