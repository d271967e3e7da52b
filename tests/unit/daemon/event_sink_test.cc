// SPDX-License-Identifier: GPL-3.0-or-later
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "daemon/event_catalog.h"
#include "daemon/event_sink.h"

using namespace iotgw::daemon;
using namespace iotgw::policy;
using namespace std::chrono_literals;

namespace {

class RecordingBackend final : public EventBackend {
public:
  explicit RecordingBackend(std::vector<Event>& out) : out_(out) {}
  void write(const Event& e) override { out_.push_back(e); }
  [[nodiscard]] std::string_view name() const override { return "recording"; }

private:
  std::vector<Event>& out_;
};

Event violation(const std::string& device, EventType type = EventType::AccessDenied) {
  Event e;
  e.type = type;
  e.device = device;
  e.rule = "mqtt.publish";
  e.message = "topic is not in the device's publish list";
  return e;
}

} // namespace

TEST(EventSink, RateLimitsPerDeviceAndTypeThenSummarises) {
  std::vector<Event> written;
  Clock::time_point now = Clock::time_point{} + 1000s;
  EventsConfig cfg;
  cfg.burst = 3;
  cfg.interval = 60s;
  EventSink sink(std::make_unique<RecordingBackend>(written), cfg, [&] { return now; });

  for (int i = 0; i < 100; ++i) {
    sink.emit(violation("hostile"));
  }
  sink.emit(violation("quiet"));                               // another device: own budget
  sink.emit(violation("hostile", EventType::PayloadRejected)); // another type: own budget
  EXPECT_EQ(written.size(), 5u);
  EXPECT_EQ(sink.suppressed(), 97u);

  sink.flushSuppressed();
  ASSERT_EQ(written.size(), 6u);
  const Event& summary = written.back();
  EXPECT_EQ(summary.type, EventType::EventsSuppressed);
  EXPECT_EQ(summary.device, "hostile");
  EXPECT_EQ(summary.rule, "access-denied");
  EXPECT_NE(summary.message.find("suppressed 97 access-denied events"), std::string::npos);

  // Nothing more to report; after the interval the budget refills.
  sink.flushSuppressed();
  EXPECT_EQ(written.size(), 6u);
  now += 20s; // one token per 20 s at 3 per 60 s
  sink.emit(violation("hostile"));
  sink.emit(violation("hostile"));
  EXPECT_EQ(written.size(), 7u);
}

TEST(EventSink, TheObserverSeesEveryEventAndWhetherTheJournalTookIt) {
  std::vector<Event> written;
  std::vector<std::pair<EventType, bool>> observed;
  EventsConfig cfg;
  cfg.burst = 10;
  cfg.interval = 60s;
  const Clock::time_point now = Clock::time_point{} + 1000s;
  EventSink sink(std::make_unique<RecordingBackend>(written), cfg, [&] { return now; });
  sink.setObserver(
      [&](const Event& e, bool journaled) { observed.emplace_back(e.type, journaled); });
  for (int i = 0; i < 12; ++i) {
    sink.emit(violation("thermo-01", EventType::DeviceChanged)); // a companion app's edits
  }
  // The journal keeps its budget; the observer (D-Bus signals) hears of all twelve.
  EXPECT_EQ(written.size(), 10u);
  ASSERT_EQ(observed.size(), 12u);
  EXPECT_EQ(std::ranges::count(observed, std::pair{EventType::DeviceChanged, true}), 10);
  EXPECT_EQ(std::ranges::count(observed, std::pair{EventType::DeviceChanged, false}), 2);
}

TEST(EventSink, FillsDefaultProvision) {
  std::vector<Event> written;
  EventSink sink(std::make_unique<RecordingBackend>(written), EventsConfig{});
  Event e;
  e.type = EventType::DefaultCredentialRefused;
  sink.emit(e);
  ASSERT_EQ(written.size(), 1u);
  EXPECT_EQ(written[0].provision, "5.1-1");
}

TEST(EventSink, TextLineCarriesFieldsAndNeutralisesControlCharacters) {
  Event e = violation("cam-1");
  e.peer = "192.168.50.9:40000";
  e.protocol = "mqtt";
  e.action = "drop";
  e.provision = "5.13-1";
  e.message = "forged\nIOTGW_DEVICE=other";
  const std::string line = formatEventLine(e);
  EXPECT_EQ(line.find('\n'), std::string::npos);
  EXPECT_NE(line.find("MESSAGE_ID=ebe4e7671e0849c987d61e94eb2b3ae1"), std::string::npos);
  EXPECT_NE(line.find("IOTGW_DEVICE=cam-1"), std::string::npos);
  EXPECT_NE(line.find("IOTGW_PROVISION=5.13-1"), std::string::npos);
  EXPECT_NE(line.find("IOTGW_PEER=192.168.50.9:40000"), std::string::npos);
  EXPECT_NE(line.find("IOTGW_ACTION=drop"), std::string::npos);
}

TEST(EventTypes, IdsAreUniqueWellFormedAndInTheCatalog) {
  std::ifstream in(IOTGW_SOURCE_DIR "/systemd/iotgwd.catalog");
  ASSERT_TRUE(in) << "systemd/iotgwd.catalog missing";
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string catalog = ss.str();
  std::set<std::string_view> ids;
  const std::regex hex32("^[0-9a-f]{32}$");
  size_t index = 0;
  ASSERT_EQ(allEventTypes().size(), journalEntries().size());
  for (const auto& t : allEventTypes()) {
    const JournalEntry& j = journalEntries()[index];
    EXPECT_EQ(static_cast<size_t>(t.type), index) << t.name << " out of order";
    EXPECT_EQ(static_cast<size_t>(j.type), index++) << t.name << "'s journal entry out of order";
    EXPECT_TRUE(std::regex_match(std::string(j.messageId), hex32)) << t.name;
    EXPECT_TRUE(ids.insert(j.messageId).second) << "duplicate id for " << t.name;
    EXPECT_NE(catalog.find("-- " + std::string(j.messageId) + "\n"), std::string::npos)
        << t.name << " has no catalog entry";
  }
  // Every catalog entry names a provision or says it has none, and tells the operator what to do.
  std::regex entry("-- ([0-9a-f]{32})\\n");
  size_t entries = 0;
  for (auto it = std::sregex_iterator(catalog.begin(), catalog.end(), entry);
       it != std::sregex_iterator(); ++it) {
    ++entries;
    EXPECT_TRUE(ids.contains((*it)[1].str())) << "catalog id without event type: " << (*it)[1];
  }
  EXPECT_EQ(entries, ids.size());
}
