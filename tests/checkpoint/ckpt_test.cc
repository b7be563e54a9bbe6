// The tiered checkpoint engine across real processes: memory tier (POSIX shared memory), the
// durable tier in a directory and in a real S3-compatible server (moto), corruption,
// truncation, missing and foreign manifests, a job killed mid-save, resharding, outages.

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>

#include "checkpoint/aligned_buffer.h"
#include "checkpoint/crc32c.h"
#include "checkpoint/object_store.h"
#include "checkpoint/snapshot.h"
#include "support/process.h"
#include "support/rank_checks.h"
#include "support/s3_server.h"
#include "tenax/checkpoint/engine.h"

using tenax::testing::dump;
using tenax::testing::RankResult;
using tenax::testing::run_command;
using tenax::testing::run_ranks;

namespace fs = std::filesystem;

namespace {

TEST(Crc32cTest, TheStandardCheckValue) {
  EXPECT_EQ(tenax::detail::crc32c("123456789", 9), 0xe3069283u);
  EXPECT_EQ(tenax::detail::crc32c("", 0), 0u);
  // Split input gives the same checksum as one call.
  std::string s(1000, 'x');
  for (size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>(i * 7);
  EXPECT_EQ(tenax::detail::crc32c(s.data() + 333, 667, tenax::detail::crc32c(s.data(), 333)),
            tenax::detail::crc32c(s.data(), s.size()));
}

TEST(CopyOverlapTest, CopiesOnlyTheIntersectionOfTwoPartsOfOneGlobalTensor) {
  // Global 4x6 of int32 g[i][j] = 10 i + j. Source part rows 1..3, cols 0..3; destination
  // part rows 2..3, cols 2..5: they share rows 2..3, cols 2..3.
  std::vector<int32_t> src(3 * 4), dst(2 * 4, -1);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 4; ++j) src[i * 4 + j] = 10 * (i + 1) + j;
  const int64_t n = tenax::detail::copy_overlap(
      reinterpret_cast<char*>(src.data()), {1, 0}, {3, 4}, reinterpret_cast<char*>(dst.data()),
      {2, 2}, {2, 4}, sizeof(int32_t));
  EXPECT_EQ(n, 4);
  EXPECT_EQ(dst, (std::vector<int32_t>{22, 23, -1, -1, 32, 33, -1, -1}));
}

TEST(DirectoryStoreTest, LargeObjectsWithAnOddTailReadBackExactlyAlignedOrNot) {
  // 3 MiB + 1234 bytes: whole 4 KiB blocks go to the device directly from an aligned buffer,
  // the tail through the page cache; from an unaligned pointer everything does.
  const fs::path root = fs::temp_directory_path() / ("tenax-dirstore-" + std::to_string(::getpid()));
  auto store = tenax::detail::open_directory_store(root.string());
  const size_t n = (size_t(3) << 20) + 1234;
  std::string bytes(n + 1, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>((i * 2654435761u) >> 13);
  tenax::detail::AlignedBuffer aligned;
  aligned.reserve(n);
  aligned.append(bytes.data(), n);
  store->put("s/aligned.bin", aligned.data(), n);
  store->put("s/unaligned.bin", bytes.data() + 1, n);
  EXPECT_EQ(fs::file_size(root / "s/aligned.bin"), n);
  EXPECT_TRUE(store->get("s/aligned.bin") == bytes.substr(0, n));
  EXPECT_TRUE(store->get("s/unaligned.bin") == bytes.substr(1, n));
  EXPECT_TRUE(store->get_range("s/aligned.bin", n - 5000, 5000) == bytes.substr(n - 5000, 5000));
  EXPECT_EQ(store->list("s/"), (std::vector<std::string>{"s/aligned.bin", "s/unaligned.bin"}));
  fs::remove_all(root);
}

std::string unique_run(std::string what) {
  std::replace(what.begin(), what.end(), '/', '-');  // parameterised test names
  return what + std::to_string(::getpid());
}

// Runs `n` ranks of one scenario with the given environment; every rank must pass.
std::vector<RankResult> expect_pass(int n, const std::string& scenario,
                                    std::map<std::string, std::string> env) {
  auto results = run_ranks(n, {CKPT_WORKER, scenario}, env, std::chrono::seconds(180));
  tenax::testing::expect_all_pass(results, scenario);
  return results;
}

bool any_output_has(const std::vector<RankResult>& results, const std::string& text) {
  for (const auto& r : results) {
    if (r.output.find(text) != std::string::npos) return true;
  }
  return false;
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    run_ = unique_run(::testing::UnitTest::GetInstance()->current_test_info()->name());
    dir_ = fs::temp_directory_path() / ("tenax-ckpt-" + run_);
  }
  void TearDown() override {
    tenax::CheckpointEngine::remove_memory(run_);
    fs::remove_all(dir_);
  }
  std::map<std::string, std::string> env(std::map<std::string, std::string> extra = {}) const {
    extra.emplace("CKPT_RUN", run_);
    return extra;
  }
  std::string step_dir(int64_t step) const {
    char buf[32];
    std::snprintf(buf, sizeof buf, "step-%012lld", static_cast<long long>(step));
    return (dir_ / run_ / buf).string();
  }
  void flip_byte(const std::string& path, int64_t offset) const {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(f) << path;
    f.seekg(offset);
    char c = 0;
    f.read(&c, 1);
    c ^= 0x5a;
    f.seekp(offset);
    f.write(&c, 1);
  }
  std::string run_;
  fs::path dir_;
};

TEST_F(CheckpointTest, SaveThenRestoreInTheSameJobComesFromMemory) {
  expect_pass(2, "roundtrip", env());
  expect_pass(3, "roundtrip", env({{"CKPT_RUN", run_ + "b"}}));
  tenax::CheckpointEngine::remove_memory(run_ + "b");
}

TEST_F(CheckpointTest, ARestartedJobRestoresTheNewestStepFromSharedMemory) {
  expect_pass(3, "save", env({{"CKPT_STEP", "5"}}));
  expect_pass(3, "restore", env({{"CKPT_EXPECT_TIER", "memory"}, {"CKPT_EXPECT_STEP", "5"}}));
}

TEST_F(CheckpointTest, ARankWhoseHostMemoryIsLostRestoresFromItsPeersReplica) {
  expect_pass(3, "save", env({{"CKPT_STEP", "4"}}));
  // Rank 1's host is gone with its memory; rank 2 holds the replica of rank 1's snapshots
  // (regions are named by their holder).
  int removed = 0;
  for (int slot = 0; slot < 2; ++slot) {
    removed += fs::remove("/dev/shm/tenax-" + run_ + "-r1-s" + std::to_string(slot));
  }
  ASSERT_EQ(removed, 2);
  ASSERT_TRUE(fs::exists("/dev/shm/tenax-" + run_ + "-r2-p0"));
  expect_pass(3, "restore", env({{"CKPT_EXPECT_TIER", "memory,peer,memory"},
                                 {"CKPT_EXPECT_STEP", "4"}}));
}

TEST_F(CheckpointTest, NothingSavedRestoresNothing) {
  expect_pass(2, "restore", env({{"CKPT_EXPECT_TIER", "none"}}));
}

TEST_F(CheckpointTest, DurableDirectoryServesRestoreWhenMemoryIsGoneAndKeepsTheLastK) {
  expect_pass(2, "save", env({{"CKPT_DURABLE", dir_.string()}, {"CKPT_STEP", "6"},
                              {"CKPT_PERSIST_EVERY", "2"}, {"CKPT_KEEP", "2"},
                              {"CKPT_PACED", "1"}}));
  // Steps 2, 4, 6 were persisted; retention keeps 4 and 6.
  EXPECT_FALSE(fs::exists(step_dir(2)));
  EXPECT_TRUE(fs::exists(step_dir(4) + "/manifest.json"));
  EXPECT_TRUE(fs::exists(step_dir(6) + "/manifest.json"));
  tenax::CheckpointEngine::remove_memory(run_);
  expect_pass(2, "restore", env({{"CKPT_DURABLE", dir_.string()}, {"CKPT_EXPECT_TIER", "durable"},
                                 {"CKPT_EXPECT_STEP", "6"}}));
}

TEST_F(CheckpointTest, ReplicatedPartsAreWrittenOnceAndTheManifestListsEveryPart) {
  expect_pass(3, "save", env({{"CKPT_DURABLE", dir_.string()}, {"CKPT_STEP", "1"}}));
  std::ifstream in(step_dir(1) + "/manifest.json");
  auto m = nlohmann::json::parse(in);
  EXPECT_EQ(m["format"], "tenax-checkpoint-1");
  EXPECT_EQ(m["world"], 3);
  std::map<std::string, int> parts;
  for (const auto& t : m["tensors"]) ++parts[t["name"].get<std::string>()];
  EXPECT_EQ(parts["w"], 3);  // one per rank
  EXPECT_EQ(parts["m"], 3);
  EXPECT_EQ(parts["b"], 1);  // replicated: written by one rank only
  EXPECT_EQ(m["ranks"].size(), 3u);
}

class ReshardTest : public CheckpointTest, public ::testing::WithParamInterface<std::pair<int, int>> {};

TEST_P(ReshardTest, RestoreOnAnotherWorldSizeGivesTheSameGlobalTensors) {
  auto [from, to] = GetParam();
  expect_pass(from, "save", env({{"CKPT_DURABLE", dir_.string()}, {"CKPT_STEP", "3"}, {"CKPT_PACED", "1"}}));
  tenax::CheckpointEngine::remove_memory(run_);
  auto results = expect_pass(to, "restore",
                             env({{"CKPT_DURABLE", dir_.string()}, {"CKPT_EXPECT_TIER", "durable"},
                                  {"CKPT_EXPECT_STEP", "3"},
                                  {"CKPT_SAVED_WORLD", std::to_string(from)}}));
  EXPECT_TRUE(any_output_has(results, "resharded")) << dump(results);
}

TEST_F(CheckpointTest, ShardedAdamWStateSavedOnThreeRanksRestoresOnTwo) {
  expect_pass(3, "zero_save", env({{"CKPT_DURABLE", dir_.string()}}));
  tenax::CheckpointEngine::remove_memory(run_);
  expect_pass(2, "zero_restore", env({{"CKPT_DURABLE", dir_.string()}}));
}

INSTANTIATE_TEST_SUITE_P(Worlds, ReshardTest,
                         ::testing::Values(std::make_pair(2, 3), std::make_pair(4, 2),
                                           std::make_pair(3, 1)),
                         [](const auto& info) {
                           return "from" + std::to_string(info.param.first) + "to" +
                                  std::to_string(info.param.second);
                         });

TEST_F(CheckpointTest, ACorruptByteInMemoryIsCaughtAndThePeerThenTheDurableTierIsUsed) {
  expect_pass(2, "save", env({{"CKPT_DURABLE", dir_.string()}, {"CKPT_STEP", "3"}, {"CKPT_PACED", "1"}}));
  // Flip the first data byte (shard "w") of rank 1's own regions: its peer's replica serves.
  auto flip_all = [&](const std::string& regions) {
    for (int slot = 0; slot < 2; ++slot) {
      const std::string path = "/dev/shm/tenax-" + run_ + "-" + regions + std::to_string(slot);
      if (fs::exists(path)) flip_byte(path, 4096);
    }
  };
  flip_all("r1-s");
  auto results = expect_pass(2, "restore", env({{"CKPT_DURABLE", dir_.string()},
                                                {"CKPT_EXPECT_TIER", "memory,peer"},
                                                {"CKPT_EXPECT_STEP", "3"}}));
  EXPECT_TRUE(any_output_has(results, "shard 'w' failed its checksum")) << dump(results);
  // The replica too (rank 0 holds it): the durable tier serves.
  flip_all("r0-p");
  results = expect_pass(2, "restore", env({{"CKPT_DURABLE", dir_.string()},
                                           {"CKPT_EXPECT_TIER", "durable"},
                                           {"CKPT_EXPECT_STEP", "3"}}));
  EXPECT_TRUE(any_output_has(results, "replica on rank 0: shard 'w' failed its checksum"))
      << dump(results);
}

TEST_F(CheckpointTest, ACorruptDurableShardFallsBackToTheOlderStepAndNamesTheShard) {
  expect_pass(2, "save", env({{"CKPT_DURABLE", dir_.string()}, {"CKPT_STEP", "3"}, {"CKPT_PACED", "1"}}));
  tenax::CheckpointEngine::remove_memory(run_);
  flip_byte(step_dir(3) + "/rank-00001.bin", 3);
  auto results = expect_pass(2, "restore", env({{"CKPT_DURABLE", dir_.string()},
                                                {"CKPT_EXPECT_TIER", "durable"},
                                                {"CKPT_EXPECT_STEP", "2"}}));
  EXPECT_TRUE(any_output_has(results, "step 3: shard 'w'")) << dump(results);
  EXPECT_TRUE(any_output_has(results, "failed its checksum")) << dump(results);
}

TEST_F(CheckpointTest, ARestoreThatFailsOnEveryTierLeavesEveryRanksTensorsUntouched) {
  expect_pass(2, "save", env({{"CKPT_DURABLE", dir_.string()}, {"CKPT_STEP", "3"}, {"CKPT_PACED", "1"}}));
  // Rank 1's copies are corrupt everywhere: its own slots, its replica on rank 0, and its
  // object in both durable steps (2 and 3). Rank 0's own copies are intact, so a restore that
  // wrote as it verified would leave rank 0 holding step 3 (or 2) while rank 1 fails.
  for (int slot = 0; slot < 2; ++slot) {
    for (const std::string regions : {"r1-s", "r0-p"}) {
      const std::string path = "/dev/shm/tenax-" + run_ + "-" + regions + std::to_string(slot);
      if (fs::exists(path)) flip_byte(path, 4096);
    }
  }
  flip_byte(step_dir(3) + "/rank-00001.bin", 3);
  flip_byte(step_dir(2) + "/rank-00001.bin", 3);
  auto results = expect_pass(2, "restore_fails", env({{"CKPT_DURABLE", dir_.string()}}));
  EXPECT_TRUE(any_output_has(results, "step 2: shard 'w'")) << dump(results);
  // Rank 0, whose own parts were intact, says which rank the steps failed on.
  EXPECT_NE(results[0].output.find("durable tier: step 2 is not intact on rank 1"),
            std::string::npos)
      << dump(results);
}

TEST_F(CheckpointTest, ATruncatedObjectFallsBackToTheOlderStep) {
  expect_pass(2, "save", env({{"CKPT_DURABLE", dir_.string()}, {"CKPT_STEP", "3"}, {"CKPT_PACED", "1"}}));
  tenax::CheckpointEngine::remove_memory(run_);
  fs::resize_file(step_dir(3) + "/rank-00000.bin", 10);
  auto results = expect_pass(2, "restore", env({{"CKPT_DURABLE", dir_.string()},
                                                {"CKPT_EXPECT_TIER", "durable"},
                                                {"CKPT_EXPECT_STEP", "2"}}));
  EXPECT_TRUE(any_output_has(results, "truncated")) << dump(results);
}

TEST_F(CheckpointTest, AStepWithoutManifestDoesNotExistForReaders) {
  expect_pass(2, "save", env({{"CKPT_DURABLE", dir_.string()}, {"CKPT_STEP", "3"}, {"CKPT_PACED", "1"}}));
  tenax::CheckpointEngine::remove_memory(run_);
  fs::remove(step_dir(3) + "/manifest.json");  // as an upload cut before its commit leaves it
  expect_pass(2, "restore", env({{"CKPT_DURABLE", dir_.string()}, {"CKPT_EXPECT_TIER", "durable"},
                                 {"CKPT_EXPECT_STEP", "2"}}));
}

TEST_F(CheckpointTest, AManifestOfAnotherRunIsRefusedWithAClearError) {
  expect_pass(2, "save", env({{"CKPT_DURABLE", dir_.string()}, {"CKPT_STEP", "1"}}));
  tenax::CheckpointEngine::remove_memory(run_);
  // Plant this run's step under another run's name.
  const std::string other = run_ + "x";
  fs::create_directories(dir_ / other);
  fs::copy(step_dir(1), dir_ / other / "step-000000000001", fs::copy_options::recursive);
  expect_pass(2, "restore", env({{"CKPT_RUN", other}, {"CKPT_DURABLE", dir_.string()},
                                 {"CKPT_EXPECT_ERROR", "belongs to run '" + run_ + "'"}}));
}

TEST_F(CheckpointTest, AJobKilledWhileSavingLeavesAWholeStepToRestore) {
  auto results = run_ranks(2, {CKPT_WORKER, "save"},
                           env({{"CKPT_DURABLE", dir_.string()}, {"CKPT_STEP", "4"},
                                {"CKPT_KILL_DURING", "1"}}),
                           std::chrono::seconds(120));
  for (const auto& r : results) EXPECT_EQ(r.exit_code, 128 + SIGKILL) << dump(results);
  // Memory: step 4, or 5 if its commit won the race with the kill, everywhere whole.
  expect_pass(2, "restore", env({{"CKPT_DURABLE", dir_.string()}, {"CKPT_EXPECT_TIER", "memory"},
                                 {"CKPT_EXPECT_STEP_OR_NEXT", "4"}}));
  // Durable: the same holds without the memory tier.
  tenax::CheckpointEngine::remove_memory(run_);
  expect_pass(2, "restore", env({{"CKPT_DURABLE", dir_.string()}, {"CKPT_EXPECT_TIER", "durable"},
                                 {"CKPT_EXPECT_STEP_OR_NEXT", "4"}}));
}

TEST_F(CheckpointTest, AMemoryBudgetTooSmallIsAClearErrorNotAnOutOfMemory) {
  expect_pass(2, "save", env({{"CKPT_BUDGET", "8192"}, {"CKPT_EXPECT_ERROR", "budget of 8192 bytes"}}));
}

// --- S3 (moto) -----------------------------------------------------------------------------

class S3CheckpointTest : public CheckpointTest {
 protected:
  void SetUp() override {
    CheckpointTest::SetUp();
    server_ = std::make_unique<tenax::testing::S3Server>(TENAX_PYTHON, S3_SERVER, "ckpt");
  }
  void TearDown() override {
    server_.reset();
    CheckpointTest::TearDown();
  }
  std::map<std::string, std::string> s3env(std::map<std::string, std::string> extra = {}) const {
    auto e = env(std::move(extra));
    for (const auto& [k, v] : server_->client_env()) e.emplace(k, v);
    if (!e.count("CKPT_DURABLE")) e["CKPT_DURABLE"] = "s3://ckpt/jobs";
    return e;
  }
  std::unique_ptr<tenax::testing::S3Server> server_;
};

TEST_F(S3CheckpointTest, PersistsToS3AsPlainObjectsTheAwsCliReadsAndRestoresResharded) {
  expect_pass(2, "save", s3env({{"CKPT_STEP", "2"}}));
  // The aws CLI lists and reads what tenax wrote.
  auto env = server_->client_env();
  auto ls = run_command({"/usr/bin/aws", "--endpoint-url", server_->endpoint(), "s3", "ls",
                         "--recursive", "s3://ckpt/jobs/" + run_ + "/"}, env);
  ASSERT_EQ(ls.exit_code, 0) << ls.output;
  EXPECT_NE(ls.output.find("step-000000000002/manifest.json"), std::string::npos) << ls.output;
  EXPECT_NE(ls.output.find("step-000000000002/rank-00001.bin"), std::string::npos) << ls.output;
  auto cp = run_command({"/usr/bin/aws", "--endpoint-url", server_->endpoint(), "s3", "cp",
                         "s3://ckpt/jobs/" + run_ + "/step-000000000002/manifest.json", "-"}, env);
  ASSERT_EQ(cp.exit_code, 0) << cp.output;
  auto m = nlohmann::json::parse(cp.output);
  EXPECT_EQ(m["step"], 2);
  EXPECT_EQ(m["run"], run_);
  tenax::CheckpointEngine::remove_memory(run_);
  expect_pass(3, "restore", s3env({{"CKPT_EXPECT_TIER", "durable"}, {"CKPT_EXPECT_STEP", "2"},
                                   {"CKPT_SAVED_WORLD", "2"}}));
}

TEST_F(S3CheckpointTest, InjectedThrottlingIsRetriedUntilThePersistSucceeds) {
  // Six 503 SlowDown answers: more than one request's three attempts, so the persist itself is
  // retried too.
  auto results = expect_pass(2, "save", s3env({{"CKPT_STEP", "1"}, {"TENAX_FAULT", "s3_fail=6"}}));
  EXPECT_TRUE(any_output_has(results, "HTTP 503 SlowDown")) << dump(results);
  EXPECT_TRUE(any_output_has(results, "retrying")) << dump(results);
}

TEST_F(S3CheckpointTest, LargeShardsGoUpAsParallelMultipartUploads) {
  expect_pass(2, "save", s3env({{"CKPT_STEP", "1"}, {"CKPT_BIG", "1"}}));
  tenax::CheckpointEngine::remove_memory(run_);
  expect_pass(2, "restore", s3env({{"CKPT_EXPECT_TIER", "durable"}, {"CKPT_EXPECT_STEP", "1"},
                                   {"CKPT_BIG", "1"}}));
}

TEST_F(S3CheckpointTest, WrongCredentialsAreAClearErrorAtConfigureTime) {
  expect_pass(2, "save", s3env({{"AWS_ACCESS_KEY_ID", "NOBODY"},
                                {"CKPT_EXPECT_ERROR", "access denied (InvalidAccessKeyId)"}}));
}

TEST_F(S3CheckpointTest, AMissingBucketIsAClearErrorAtConfigureTime) {
  expect_pass(2, "save", s3env({{"CKPT_DURABLE", "s3://no-such-bucket/x"},
                                {"CKPT_EXPECT_ERROR", "bucket 'no-such-bucket' does not exist"}}));
}

TEST_F(S3CheckpointTest, TrainingGoesOnWhileTheEndpointIsDownAndPersistenceResumesAfter) {
  auto results = expect_pass(2, "outage", s3env({{"S3_PID", std::to_string(server_->pid())}}));
  EXPECT_TRUE(any_output_has(results, "retrying")) << dump(results);
}

}  // namespace

// --- tenax-ckpt ------------------------------------------------------------------------------

namespace {

TEST_F(CheckpointTest, TheToolListsVerifiesAndExportsWholeTensorsAsSafetensors) {
  expect_pass(3, "save", env({{"CKPT_DURABLE", dir_.string()}, {"CKPT_STEP", "2"},
                              {"CKPT_PACED", "1"}}));
  auto list = run_command({TENAX_CKPT, "list", "--run", run_, "--durable", dir_.string()});
  ASSERT_EQ(list.exit_code, 0) << list.output;
  EXPECT_NE(list.output.find("step 2: world 3, 7 tensor parts"), std::string::npos) << list.output;
  EXPECT_NE(list.output.find("-r2-s1"), std::string::npos) << list.output;  // memory regions
  auto ok = run_command({TENAX_CKPT, "verify", "--run", run_, "--durable", dir_.string()});
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_NE(ok.output.find("OK run " + run_ + " step 2: 3 tensors, 7 parts"), std::string::npos)
      << ok.output;
  // Whole tensors out; read back with a reader of the safetensors layout (8-byte header size,
  // JSON header, little-endian data).
  const std::string out = (dir_ / "model.safetensors").string();
  auto ex = run_command({TENAX_CKPT, "export", "--run", run_, "--durable", dir_.string(), "--out", out});
  ASSERT_EQ(ex.exit_code, 0) << ex.output;
  const char* reader = R"(
import json, struct, sys
data = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", data[:8])[0]
h = json.loads(data[8:8 + n])
body = data[8 + n:]
def get(name, fmt):
    t = h[name]; a, b = t["data_offsets"]
    return t["shape"], struct.unpack("<%d%s" % ((b - a) // struct.calcsize(fmt), fmt), body[a:b])
shape, w = get("w", "f")
assert shape == [12, 10] and h["w"]["dtype"] == "F32", h["w"]
assert all(w[i] == i + 2000.0 for i in range(120)), w[:12]
shape, m = get("m", "d")
assert shape == [6, 8] and all(m[i] == i * 0.5 - 2 for i in range(48)), m[:8]
assert h["b"]["dtype"] == "BF16" and h["b"]["shape"] == [5]
print("safetensors ok", sorted(k for k in h if k != "__metadata__"))
)";
  auto py = run_command({"python3", "-c", reader, out});
  EXPECT_EQ(py.exit_code, 0) << py.output;
  EXPECT_NE(py.output.find("safetensors ok ['b', 'm', 'w']"), std::string::npos) << py.output;
  // A corrupt byte: verify names the part and fails.
  flip_byte(step_dir(2) + "/rank-00002.bin", 1);
  auto bad = run_command({TENAX_CKPT, "verify", "--run", run_, "--durable", dir_.string()});
  EXPECT_EQ(bad.exit_code, 1) << bad.output;
  EXPECT_NE(bad.output.find("BAD  shard 'w'"), std::string::npos) << bad.output;
}

}  // namespace
