// SPDX-License-Identifier: GPL-3.0-or-later
// The outbox file: what it keeps across a reopen, what a torn or corrupt end costs (only the torn
// record), its bounds, and that it shrinks once the broker has everything.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "protocols/mqtt/outbox.h"
#include "protocols/mqtt/outbox_log.h"

using namespace iotgw::mqtt;
namespace fs = std::filesystem;

namespace {

class OutboxLogTest : public ::testing::Test {
protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "outbox-test-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    path_ = dir_ / "device.queue";
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::unique_ptr<OutboxLog> open(OutboxLimits limits = {}, OutboxLog::Recovered* r = nullptr) {
    auto log = OutboxLog::open(path_, limits, r);
    EXPECT_TRUE(log.has_value()) << (log ? "" : log.error());
    return log ? std::move(*log) : nullptr;
  }
  static uint64_t append(OutboxLog& log, const std::string& topic, const std::string& payload,
                         uint8_t qos = 1) {
    auto seq =
        log.append(qos, false, topic,
                   std::span(reinterpret_cast<const uint8_t*>(payload.data()), payload.size()));
    EXPECT_TRUE(seq.has_value());
    return seq.value_or(0);
  }
  static std::string payloadOf(const OutboxMessage& m) {
    return {m.payload.begin(), m.payload.end()};
  }
  // The pending messages' payloads, in order.
  static std::vector<std::string> pending(const OutboxLog& log) {
    std::vector<std::string> out;
    for (auto seq = log.next(); seq; seq = log.next(*seq)) {
      auto m = log.read(*seq);
      EXPECT_TRUE(m.has_value());
      out.push_back(m ? payloadOf(*m) : "?");
    }
    return out;
  }
  [[nodiscard]] size_t fileSize() const { return static_cast<size_t>(fs::file_size(path_)); }

  fs::path dir_;
  fs::path path_;
};

// A done mark is written at once but asks for no sync of its own: delivery is not bounded by the
// disk's sync rate. A message or a release does; the next sync takes the marks with it.
TEST_F(OutboxLogTest, DoneMarksWaitForTheNextSyncAndReleasesDoNot) {
  auto log = open();
  const uint64_t a = append(*log, "t/a", "one");
  const uint64_t b = append(*log, "t/b", "two", 2);
  ASSERT_TRUE(log->sync());
  log->done(a);
  EXPECT_FALSE(log->dirty()) << "a done mark needs no fdatasync of its own";
  EXPECT_FALSE(log->settled());
  log->release(b);
  EXPECT_TRUE(log->dirty()) << "a release must be durable before its PUBREL";
  ASSERT_TRUE(log->sync());
  EXPECT_TRUE(log->settled());
  EXPECT_EQ(log->syncs(), 2U);
  log->done(b);
  ASSERT_TRUE(log->sync()) << "settling the marks: nothing pending, the file is truncated";
  EXPECT_EQ(log->syncs(), 3U);
  EXPECT_EQ(fileSize(), 8U) << "the header only";
}

TEST_F(OutboxLogTest, KeepsPendingMessagesInOrderAcrossAReopen) {
  {
    auto log = open();
    const uint64_t a = append(*log, "t/a", "one");
    const uint64_t b = append(*log, "t/b", "two", 2);
    append(*log, "t/c", "three");
    EXPECT_LT(a, b);
    log->done(a);
    log->release(b);
    ASSERT_TRUE(log->sync());
    EXPECT_EQ(log->syncs(), 1U);
  }
  OutboxLog::Recovered r;
  auto log = open({}, &r);
  EXPECT_EQ(r.messages, 2U);
  EXPECT_EQ(r.tornBytes, 0U);
  EXPECT_EQ(pending(*log), (std::vector<std::string>{"two", "three"}));
  auto two = log->read(*log->next());
  ASSERT_TRUE(two.has_value());
  EXPECT_EQ(two->topic, "t/b");
  EXPECT_EQ(two->qos, 2);
  EXPECT_TRUE(two->released);
  // Sequence numbers go on from the highest seen, the done one's included.
  EXPECT_GT(append(*log, "t/d", "four"), two->seq + 1);
  EXPECT_EQ((fs::status(path_).permissions() & fs::perms::all),
            fs::perms::owner_read | fs::perms::owner_write);
}

// Power lost in the middle of the last write: every cut of the last record keeps the complete
// ones before it, and the file takes appends again after the cut.
TEST_F(OutboxLogTest, TornLastRecordKeepsEveryCompleteMessage) {
  size_t before = 0;
  size_t whole = 0;
  {
    auto log = open();
    append(*log, "t", "first");
    append(*log, "t", "second");
    ASSERT_TRUE(log->sync());
    before = fileSize();
    append(*log, "t", "third, the one being written when the power went");
    ASSERT_TRUE(log->sync());
    whole = fileSize();
  }
  std::ifstream in(path_, std::ios::binary);
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), {});
  for (size_t cut = before + 1; cut < whole; ++cut) {
    {
      std::ofstream out(path_, std::ios::binary | std::ios::trunc);
      out.write(bytes.data(), static_cast<std::streamsize>(cut));
    }
    OutboxLog::Recovered r;
    auto log = open({}, &r);
    ASSERT_TRUE(log);
    EXPECT_EQ(pending(*log), (std::vector<std::string>{"first", "second"})) << "cut at " << cut;
    EXPECT_EQ(r.tornBytes, cut - before);
    EXPECT_EQ(fileSize(), before);
    append(*log, "t", "after");
    ASSERT_TRUE(log->sync());
  }
  OutboxLog::Recovered r;
  auto log = open({}, &r);
  EXPECT_EQ(pending(*log), (std::vector<std::string>{"first", "second", "after"}));
}

TEST_F(OutboxLogTest, CorruptLastRecordIsCutOff) {
  {
    auto log = open();
    append(*log, "t", "kept");
    append(*log, "t", "flipped");
    ASSERT_TRUE(log->sync());
  }
  {
    std::fstream f(path_, std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(static_cast<std::streamoff>(fileSize() - 2));
    f.put('X'); // one byte of the last payload: its CRC no longer matches
  }
  OutboxLog::Recovered r;
  auto log = open({}, &r);
  EXPECT_EQ(pending(*log), (std::vector<std::string>{"kept"}));
  EXPECT_GT(r.tornBytes, 0U);
}

TEST_F(OutboxLogTest, GarbageAfterTheLastRecordIsCutOff) {
  {
    auto log = open();
    append(*log, "t", "kept");
    ASSERT_TRUE(log->sync());
  }
  const size_t size = fileSize();
  {
    std::ofstream out(path_, std::ios::binary | std::ios::app);
    out << std::string("\xff\xff\xff\x7f garbage that claims a huge record", 38);
  }
  OutboxLog::Recovered r;
  auto log = open({}, &r);
  EXPECT_EQ(pending(*log), (std::vector<std::string>{"kept"}));
  EXPECT_EQ(r.tornBytes, 38U);
  EXPECT_EQ(fileSize(), size);
}

TEST_F(OutboxLogTest, AFileOfAnotherFormatIsLeftAlone) {
  {
    std::ofstream out(path_, std::ios::binary);
    out << "SQLite format 3";
  }
  auto log = OutboxLog::open(path_, {});
  ASSERT_FALSE(log.has_value());
  EXPECT_NE(log.error().find("not an outbox"), std::string::npos) << log.error();
  EXPECT_EQ(fileSize(), 15U);
}

TEST_F(OutboxLogTest, OneWriterAtATime) {
  auto log = open();
  auto second = OutboxLog::open(path_, {});
  ASSERT_FALSE(second.has_value());
  EXPECT_NE(second.error().find("in use by another process"), std::string::npos) << second.error();
  log.reset();
  EXPECT_TRUE(OutboxLog::open(path_, {}).has_value());
}

TEST_F(OutboxLogTest, RefusesPastItsBoundsAndTakesAgainOnceDone) {
  DiskBudget budget{.limit = 1 << 20};
  auto log = open({.maxMessages = 2, .maxBytes = 1 << 20, .budget = &budget});
  const uint64_t a = append(*log, "t", "1");
  append(*log, "t", "2");
  EXPECT_FALSE(log->fits(1, 1));
  auto refused = log->append(1, false, "t", {});
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error(), OutboxLog::Refusal::Full);
  log->done(a);
  EXPECT_TRUE(log->fits(1, 1));
  append(*log, "t", "3");
  EXPECT_EQ(pending(*log), (std::vector<std::string>{"2", "3"}));

  // The bytes a device may hold.
  auto small = OutboxLog::open(dir_ / "small.queue", {.maxMessages = 100, .maxBytes = 100});
  ASSERT_TRUE(small.has_value());
  const std::string big(200, 'x');
  auto tooBig = (*small)->append(
      1, false, "t", std::span(reinterpret_cast<const uint8_t*>(big.data()), big.size()));
  EXPECT_EQ(tooBig.error(), OutboxLog::Refusal::Full);
}

TEST_F(OutboxLogTest, DiskBudgetIsSharedAndGivenBack) {
  DiskBudget budget{.limit = 420};
  const std::string payload(100, 'p');
  const auto bytes = std::span(reinterpret_cast<const uint8_t*>(payload.data()), payload.size());
  auto a = OutboxLog::open(dir_ / "a.queue", {.budget = &budget});
  auto b = OutboxLog::open(dir_ / "b.queue", {.budget = &budget});
  ASSERT_TRUE(a && b);
  EXPECT_EQ(budget.used, 16U); // two headers
  ASSERT_TRUE((*a)->append(1, false, "t", bytes).has_value());
  ASSERT_TRUE((*b)->append(1, false, "t", bytes).has_value());
  ASSERT_TRUE((*a)->append(1, false, "t", bytes).has_value());
  auto refused = (*b)->append(1, false, "t", bytes);
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error(), OutboxLog::Refusal::DiskFull);
  (*a)->done(*(*a)->next());
  (*a)->done(*(*a)->next());
  ASSERT_TRUE((*a)->sync()); // all done: truncated, its bytes given back
  EXPECT_EQ((*a)->fileBytes(), 8U);
  EXPECT_TRUE((*b)->append(1, false, "t", bytes).has_value());
  b->reset();
  a->reset();
  EXPECT_EQ(budget.used, 0U);
}

TEST_F(OutboxLogTest, ShrinksOnceTheMarksOutweighWhatIsPending) {
  auto log = open({.maxMessages = 100'000, .maxBytes = 64 << 20});
  const std::string payload(512, 'p');
  const auto bytes = std::span(reinterpret_cast<const uint8_t*>(payload.data()), payload.size());
  const uint64_t keep = *log->append(1, false, "t/keep", bytes);
  for (int i = 0; i < 2000; ++i) {
    log->done(*log->append(1, false, "t", bytes));
  }
  EXPECT_GT(log->fileBytes(), 1'000'000U);
  ASSERT_TRUE(log->sync());
  EXPECT_LT(log->fileBytes(), 2000U);
  EXPECT_EQ(fileSize(), log->fileBytes());
  EXPECT_EQ(log->next(), keep);
  log.reset();
  auto again = open();
  EXPECT_EQ(pending(*again).size(), 1U);
  EXPECT_EQ(again->read(keep)->topic, "t/keep");
}

TEST_F(OutboxLogTest, EraseRemovesTheFileAndTakesNothingMore) {
  DiskBudget budget;
  auto log = open({.budget = &budget});
  append(*log, "t", "secret reading");
  ASSERT_TRUE(log->sync());
  log->erase();
  EXPECT_FALSE(fs::exists(path_));
  EXPECT_EQ(budget.used, 0U);
  EXPECT_EQ(log->messages(), 0U);
  auto after = log->append(1, false, "t", {});
  EXPECT_FALSE(after.has_value());
  EXPECT_FALSE(fs::exists(path_));
}

// A message stored in the same turn of the loop as a PUBREC's release (which syncs at once, before
// its PUBREL goes) or as the done marks settling is durable already, but its device still waits
// for the acknowledgement: the outbox stays due for commit() until it has handed the ticket over.
TEST_F(OutboxLogTest, AMessageSyncedByAnotherPathIsStillAcknowledged) {
  auto box = Outbox::open(path_, {}, [](UpstreamObserver&) {
    return std::expected<std::unique_ptr<Upstream>, std::string>(std::unexpected("no broker"));
  });
  ASSERT_TRUE(box.has_value());
  Outgoing m{7, "t/a", {'x'}, 2, false};
  ASSERT_FALSE((*box)->store(m, StoreTicket{1, 7}).has_value());
  UpstreamObserver& asObserver = **box; // as its store session calls it
  asObserver.upstreamReceived({});      // a release in the same turn: fdatasync now
  EXPECT_TRUE((*box)->dirty()) << "the ticket is not yet handed over";
  const auto tickets = (*box)->commit();
  ASSERT_EQ(tickets.size(), 1U);
  EXPECT_EQ(tickets[0].token, 7U);
  EXPECT_FALSE((*box)->dirty());
}

} // namespace
