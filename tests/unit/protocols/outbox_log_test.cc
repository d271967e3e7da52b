// SPDX-License-Identifier: GPL-3.0-or-later
// The outbox file: what it keeps across a reopen, what a torn or corrupt end costs (only the torn
// record), its bounds, that it shrinks once the broker has everything, and the QoS 2 flows it
// keeps towards the devices until their PUBREL.
#include <gtest/gtest.h>

#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
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
  // An Outbox on the file whose store session never opens (no broker).
  std::unique_ptr<Outbox> openBox(OutboxLimits limits = {}) {
    auto box = Outbox::open(path_, limits, [](UpstreamObserver&) {
      return std::expected<std::unique_ptr<Upstream>, std::string>(std::unexpected("no broker"));
    });
    EXPECT_TRUE(box.has_value()) << (box ? "" : box.error());
    return box ? std::move(*box) : nullptr;
  }

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
  auto box = openBox();
  ASSERT_NE(box, nullptr);
  Outgoing m{7, "t/a", {'x'}, 2, false};
  ASSERT_EQ(box->store(m, StoreTicket{1, 7}), Outbox::Stored::New);
  UpstreamObserver& asObserver = *box; // as its store session calls it
  asObserver.upstreamReceived({});     // a release in the same turn: fdatasync now
  EXPECT_TRUE(box->dirty()) << "the ticket is not yet handed over";
  const auto tickets = box->commit();
  ASSERT_EQ(tickets.size(), 1U);
  EXPECT_EQ(tickets[0].token, 7U);
  EXPECT_FALSE(box->dirty());
}

// A QoS 2 message's flow towards its device outlives the message (the broker may have it long
// before the device's PUBREL comes) and a restart; it knows the message by its digest, and its
// close is undone by nothing but a crash before the next sync.
TEST_F(OutboxLogTest, AQos2FlowLastsFromItsMessageUntilItsPubrel) {
  auto log = open();
  const OutboxOrigin origin{"iotgw-valve-0", 7};
  const std::string payload = "open";
  const auto bytes = std::span(reinterpret_cast<const uint8_t*>(payload.data()), payload.size());
  const uint64_t seq = *log->append(2, false, "valve/state", bytes, origin);
  EXPECT_TRUE(log->holds(origin, "valve/state", bytes));
  EXPECT_FALSE(log->holds(origin, "valve/other", bytes)) << "another message under the same id";
  EXPECT_FALSE(log->holds({"iotgw-valve-1", 7}, "valve/state", bytes)) << "another client";
  EXPECT_FALSE(log->holds({"iotgw-valve-0", 8}, "valve/state", bytes));
  EXPECT_EQ(log->read(seq)->topic, "valve/state") << "the flow is not part of what is delivered";
  EXPECT_EQ(payloadOf(*log->read(seq)), "open");
  log->release(seq);
  log->done(seq); // the broker has it; the device has not sent PUBREL yet
  ASSERT_TRUE(log->sync());
  EXPECT_EQ(log->messages(), 0U);
  EXPECT_GT(fileSize(), 8U) << "an open flow keeps the file";
  log.reset();

  log = open();
  EXPECT_EQ(log->flows(), 1U);
  EXPECT_TRUE(log->holds(origin, "valve/state", bytes)) << "across a restart";
  EXPECT_TRUE(log->close(origin));
  EXPECT_FALSE(log->holds(origin, "valve/state", bytes));
  EXPECT_TRUE(log->dirty()) << "the close must be durable before PUBCOMP";
  EXPECT_TRUE(log->close(origin)) << "a repeated PUBREL before the sync: still closing";
  ASSERT_TRUE(log->sync());
  EXPECT_FALSE(log->close(origin)) << "closed: nothing to do";
  EXPECT_EQ(fileSize(), 8U) << "nothing pending, no flow open: only the header is left";
  log.reset();
  log = open();
  EXPECT_EQ(log->flows(), 0U);
}

// A rewrite keeps exactly the flows that are open: one whose message is still pending (in that
// record), one whose message is done (on its own); one replaced by a newer message under the
// same identifier and one closed stay gone.
TEST_F(OutboxLogTest, ARewriteKeepsTheOpenFlowsAndNoClosedOne) {
  auto log = open({.maxMessages = 100'000, .maxBytes = 64 << 20});
  const auto b = [](const std::string& s) {
    return std::span(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  };
  const std::string a = "a", bee = "b", c = "c", d = "d";
  const uint64_t first = *log->append(2, false, "t", b(a), OutboxOrigin{"dev", 1});
  const uint64_t second = *log->append(2, false, "t", b(bee), OutboxOrigin{"dev", 1}); // replaces
  log->done(second);
  const uint64_t third = *log->append(2, false, "t", b(c), OutboxOrigin{"dev", 2});
  EXPECT_TRUE(log->close({"dev", 2}));
  const uint64_t fourth = *log->append(2, false, "t", b(d), OutboxOrigin{"dev", 3});
  log->done(fourth);
  const std::string filler(512, 'p');
  for (int i = 0; i < 2000; ++i) {
    log->done(*log->append(1, false, "f", b(filler)));
  }
  ASSERT_TRUE(log->sync());
  EXPECT_LT(log->fileBytes(), 2000U) << "rewritten";
  for (int round = 0; round < 2; ++round) {
    EXPECT_EQ(log->next(), first);
    EXPECT_EQ(log->next(first), third);
    EXPECT_EQ(log->flows(), 2U);
    EXPECT_FALSE(log->holds({"dev", 1}, "t", b(a))) << "replaced";
    EXPECT_TRUE(log->holds({"dev", 1}, "t", b(bee)));
    EXPECT_FALSE(log->holds({"dev", 2}, "t", b(c))) << "closed";
    EXPECT_TRUE(log->holds({"dev", 3}, "t", b(d)));
    EXPECT_EQ(payloadOf(*log->read(third)), "c");
    log.reset();
    log = open(); // the same after a restart
  }
}

// A flow message torn by a crash is gone with its flow (the device never had its PUBREC); the
// complete ones before it keep theirs.
TEST_F(OutboxLogTest, ATornFlowMessageTakesOnlyItsOwnFlow) {
  auto log = open();
  const std::string p = "x";
  const auto bytes = std::span(reinterpret_cast<const uint8_t*>(p.data()), p.size());
  (void)*log->append(2, false, "t", bytes, OutboxOrigin{"dev", 1});
  ASSERT_TRUE(log->sync());
  const size_t whole = fileSize();
  (void)*log->append(2, false, "t", bytes, OutboxOrigin{"dev", 2});
  ASSERT_TRUE(log->sync());
  log.reset();
  fs::resize_file(path_, fileSize() - 3);
  OutboxLog::Recovered r;
  log = open({}, &r);
  EXPECT_EQ(r.messages, 1U);
  EXPECT_EQ(fileSize(), whole);
  EXPECT_TRUE(log->holds({"dev", 1}, "t", bytes));
  EXPECT_FALSE(log->holds({"dev", 2}, "t", bytes));
}

// A device cannot make the outbox hold unbounded flows (a client that never sends PUBREL, or
// many clients): past kMaxFlows the oldest is closed, durably.
TEST_F(OutboxLogTest, OpenFlowsAreBounded) {
  auto log = open({.maxMessages = 100'000, .maxBytes = 64 << 20});
  const std::string p = "x";
  const auto bytes = std::span(reinterpret_cast<const uint8_t*>(p.data()), p.size());
  for (size_t i = 0; i <= OutboxLog::kMaxFlows; ++i) {
    const std::string client = "c" + std::to_string(i / 60'000);
    log->done(*log->append(2, false, "t", bytes,
                           OutboxOrigin{client, static_cast<uint16_t>(i % 60'000 + 1)}));
  }
  EXPECT_EQ(log->flows(), OutboxLog::kMaxFlows);
  EXPECT_FALSE(log->holds({"c0", 1}, "t", bytes)) << "the oldest went";
  EXPECT_TRUE(log->holds({"c0", 2}, "t", bytes));
  ASSERT_TRUE(log->sync());
  log.reset();
  log = open();
  EXPECT_EQ(log->flows(), OutboxLog::kMaxFlows);
  EXPECT_FALSE(log->holds({"c0", 1}, "t", bytes));
}

// The outbox answers a device's resend (DUP) of a stored QoS 2 message without storing it again,
// also once the broker has it; a new message under the same identifier (no DUP, or other bytes)
// is stored. Its PUBREL closes the flow and waits for the commit; an unknown one is not taken.
TEST_F(OutboxLogTest, TheOutboxTakesAResendOnceAndReleasesItsFlow) {
  auto box = openBox();
  ASSERT_NE(box, nullptr);
  Outbox& o = *box;
  Outgoing m{1, "t/a", {'x'}, 2, false};
  m.origin = 5;
  ASSERT_EQ(o.store(m, StoreTicket{1, 1}, "dev"), Outbox::Stored::New);
  EXPECT_EQ(o.commit().size(), 1U);
  Outgoing resend = m;
  resend.token = 2;
  resend.originDup = true;
  ASSERT_EQ(o.store(resend, StoreTicket{2, 2}, "dev"), Outbox::Stored::Again);
  EXPECT_EQ(o.messages(), 1U);
  const auto again = o.commit();
  ASSERT_EQ(again.size(), 1U) << "answered again";
  EXPECT_EQ(again[0].connection, 2U);
  ASSERT_EQ(o.store(m, StoreTicket{1, 3}, "dev"), Outbox::Stored::New) << "no DUP: a new message";
  Outgoing other = resend;
  other.payload = {'y'};
  ASSERT_EQ(o.store(other, StoreTicket{1, 4}, "dev"), Outbox::Stored::New) << "other bytes";
  EXPECT_EQ(o.messages(), 3U);
  (void)o.commit();

  EXPECT_TRUE(o.release("dev", 5, StoreTicket{1, 9}));
  EXPECT_TRUE(o.dirty());
  const auto closed = o.commit();
  ASSERT_EQ(closed.size(), 1U);
  EXPECT_EQ(closed[0].token, 9U);
  EXPECT_FALSE(o.release("dev", 5, StoreTicket{1, 10}));
  EXPECT_FALSE(o.release("other", 6, StoreTicket{1, 11}));
  ASSERT_EQ(o.store(resend, StoreTicket{2, 12}, "dev"), Outbox::Stored::New)
      << "after its PUBREL the identifier is free";
}

// A flow's close mark that could not be written (the disk full) is not taken as written: the
// sync that its PUBCOMP waits for fails until the mark is on disk, and after a restart the flow
// is closed.
TEST_F(OutboxLogTest, AFailedCloseMarkIsWrittenAgainBeforeItsSyncSucceeds) {
  auto log = open();
  const std::string p = "x";
  const auto bytes = std::span(reinterpret_cast<const uint8_t*>(p.data()), p.size());
  log->done(*log->append(2, false, "t", bytes, OutboxOrigin{"dev", 1}));
  ASSERT_TRUE(log->sync());
  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  const auto previous = ::signal(SIGXFSZ, SIG_IGN);
  rlimit full = saved;
  full.rlim_cur = fileSize(); // past it every write fails (EFBIG), as on a full disk
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &full), 0);
  EXPECT_TRUE(log->close({"dev", 1}));
  EXPECT_FALSE(log->sync()) << "not durable: no PUBCOMP yet";
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &saved), 0);
  ::signal(SIGXFSZ, previous);
  EXPECT_TRUE(log->sync()) << "the disk has room again: the mark is written and synced";
  log.reset();
  log = open();
  EXPECT_EQ(log->flows(), 0U) << "the close survived";
}

// An open flow with nothing pending keeps only itself: the file is rewritten down to it instead
// of keeping everything written before.
TEST_F(OutboxLogTest, AFlowLeftOpenDoesNotKeepTheFileLarge) {
  auto log = open({.maxMessages = 100'000, .maxBytes = 64 << 20});
  const std::string p(100, 'p');
  const auto bytes = std::span(reinterpret_cast<const uint8_t*>(p.data()), p.size());
  log->done(*log->append(2, false, "t", bytes, OutboxOrigin{"never-releases", 1}));
  for (int i = 0; i < 1000; ++i) {
    log->done(*log->append(1, false, "t", bytes));
    if (i % 50 == 0) {
      ASSERT_TRUE(log->sync());
    }
  }
  ASSERT_TRUE(log->sync());
  EXPECT_LT(log->fileBytes(), 70U * 1024) << "rewritten once past 64 KiB";
  ASSERT_TRUE(log->sync());
  log.reset();
  log = open();
  EXPECT_TRUE(log->holds({"never-releases", 1}, "t", bytes));
}

// A file of version 01 (before the flows) is read, and marked 02 before anything is added, so
// that an older iotgwd leaves it alone rather than cutting it off at a kind it does not know.
TEST_F(OutboxLogTest, AVersion01FileIsReadAndMarked02) {
  auto log = open();
  const uint64_t seq = append(*log, "t", "kept");
  ASSERT_TRUE(log->sync());
  log.reset();
  {
    std::fstream f(path_, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(7);
    f.put('1');
  }
  log = open();
  EXPECT_EQ(payloadOf(*log->read(seq)), "kept");
  std::ifstream f(path_, std::ios::binary);
  std::string head(8, '\0');
  f.read(head.data(), 8);
  EXPECT_EQ(head, "IOTGWQ02");
}

// A new message (no DUP) under the identifier of an open flow that the outbox cannot take ends
// that flow: its resend must not be taken for the earlier message with the same bytes.
TEST_F(OutboxLogTest, ARefusedNewMessageEndsTheFlowUnderItsIdentifier) {
  auto box = openBox(OutboxLimits{.maxMessages = 1});
  ASSERT_NE(box, nullptr);
  Outbox& o = *box;
  Outgoing m{1, "t/a", {'x'}, 2, false};
  m.origin = 5;
  ASSERT_EQ(o.store(m, StoreTicket{1, 1}, "dev"), Outbox::Stored::New);
  (void)o.commit();
  ASSERT_EQ(o.store(m, StoreTicket{1, 2}, "dev"), std::unexpected(OutboxLog::Refusal::Full));
  Outgoing resend = m;
  resend.originDup = true;
  EXPECT_EQ(o.store(resend, StoreTicket{1, 3}, "dev"), std::unexpected(OutboxLog::Refusal::Full))
      << "not taken for the first message";
  EXPECT_EQ(o.flows(), 0U);
}

// An outbox does not go (and with it its share of the disk budget) while a flow is open.
TEST_F(OutboxLogTest, AnOutboxStaysWhileAFlowIsOpen) {
  auto box = openBox();
  ASSERT_NE(box, nullptr);
  Outbox& o = *box;
  Outgoing m{1, "t/a", {'x'}, 2, false};
  m.origin = 5;
  ASSERT_EQ(o.store(m, StoreTicket{1, 1}, "dev"), Outbox::Stored::New);
  (void)o.commit();
  ASSERT_TRUE(o.dropOldest()); // the message is gone, its flow is not
  const auto now = Clock::now();
  EXPECT_FALSE(o.service(now, std::chrono::seconds(0)));
  ASSERT_TRUE(o.release("dev", 5, StoreTicket{1, 2}));
  (void)o.commit();
  EXPECT_TRUE(o.service(now + std::chrono::seconds(2), std::chrono::seconds(0)));
}

} // namespace
