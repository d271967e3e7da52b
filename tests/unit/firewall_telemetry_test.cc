// SPDX-License-Identifier: GPL-3.0-or-later
#include "firewall/telemetry.h"

#include <gtest/gtest.h>

using iotgw::firewall::DeviceCounters;
using iotgw::firewall::TrafficWatch;
using namespace std::chrono_literals;

namespace {

// A camera that sends `bytesPerSecond` for `seconds`, read every second.
struct Feed {
  TrafficWatch watch;
  TrafficWatch::Clock::time_point t{};
  std::map<std::string, DeviceCounters> totals;

  std::vector<iotgw::firewall::Surge> second(std::map<std::string, uint64_t> bytesPerSecond) {
    t += 1s;
    for (const auto& [id, b] : bytesPerSecond) {
      totals[id].tx.bytes += b;
      totals[id].tx.packets += b / 100;
      totals[id].rx.bytes += b / 10;
    }
    return watch.sample(totals, t);
  }
};

} // namespace

TEST(TrafficWatch, RatesFromSuccessiveReadings) {
  Feed f;
  EXPECT_TRUE(f.second({{"cam", 50'000}}).empty()); // first reading: no interval yet
  EXPECT_TRUE(f.second({{"cam", 50'000}}).empty());
  const auto& r = f.watch.rates().at("cam");
  EXPECT_DOUBLE_EQ(r.txBytesPerSecond, 50'000);
  EXPECT_DOUBLE_EQ(r.rxBytesPerSecond, 5'000);
  EXPECT_DOUBLE_EQ(r.txPacketsPerSecond, 500);
  EXPECT_EQ(f.watch.counters().at("cam").tx.bytes, 100'000u);
}

TEST(TrafficWatch, AFloodIsASurgeOnceUntilItSubsides) {
  Feed f;
  for (int i = 0; i < 6; ++i) {
    EXPECT_TRUE(f.second({{"cam", 50'000}, {"plug", 100}}).empty());
  }
  // The camera floods: 40 MB/s, 800 times its usual rate; the plug goes on as before.
  auto s = f.second({{"cam", 40'000'000}, {"plug", 100}});
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].device, "cam");
  EXPECT_DOUBLE_EQ(s[0].txBytesPerSecond, 40'000'000);
  EXPECT_NEAR(s[0].baselineTxBytesPerSecond, 50'000, 1);
  // Still flooding: no second event, and the flood does not become the new normal.
  EXPECT_TRUE(f.second({{"cam", 40'000'000}}).empty());
  EXPECT_TRUE(f.watch.rates().at("cam").surging);
  EXPECT_NEAR(f.watch.rates().at("cam").baselineTxBytesPerSecond, 50'000, 1);
  // Back to normal, then a second flood is a second surge.
  EXPECT_TRUE(f.second({{"cam", 50'000}}).empty());
  EXPECT_FALSE(f.watch.rates().at("cam").surging);
  EXPECT_EQ(f.second({{"cam", 40'000'000}}).size(), 1u);
}

TEST(TrafficWatch, QuietDevicesAndNewcomersDoNotAlarm) {
  Feed f;
  for (int i = 0; i < 6; ++i) {
    f.second({{"sensor", 10}});
  }
  // 100 times its rate, but 1 KB/s: under the floor.
  EXPECT_TRUE(f.second({{"sensor", 1'000}}).empty());
  // A device that just appeared is learning, whatever it sends.
  EXPECT_TRUE(f.second({{"sensor", 10}, {"new", 10'000'000}}).empty());
  EXPECT_TRUE(f.second({{"new", 50'000'000}}).empty());
}

TEST(TrafficWatch, CountersGoingBackwardsStartOver) {
  Feed f;
  for (int i = 0; i < 6; ++i) {
    f.second({{"cam", 50'000}});
  }
  // Removed and enrolled again: its counters restart from zero.
  f.totals["cam"] = {};
  EXPECT_TRUE(f.second({{"cam", 1'000}}).empty());
  EXPECT_DOUBLE_EQ(f.watch.rates().at("cam").txBytesPerSecond, 0); // no rate across the reset
  EXPECT_TRUE(f.second({{"cam", 40'000'000}}).empty()); // learning again, nothing to compare with
  EXPECT_DOUBLE_EQ(f.watch.rates().at("cam").txBytesPerSecond, 40'000'000);
}
