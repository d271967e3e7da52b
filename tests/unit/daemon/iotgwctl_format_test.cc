// SPDX-License-Identifier: GPL-3.0-or-later
// What iotgwctl prints: JSON that stays valid whatever a field holds, times for people and
// ISO 8601 for programs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <ctime>
#include <limits>
#include <optional>
#include <string>

#include "daemon/iotgwctl_format.h"

using namespace iotgw::ctl;

namespace {

class UtcZone : public ::testing::Test {
protected:
  void SetUp() override {
    if (const char* tz = std::getenv("TZ")) {
      saved_ = tz;
    }
    setenv("TZ", "UTC", 1);
    tzset();
  }
  void TearDown() override {
    if (saved_) {
      setenv("TZ", saved_->c_str(), 1);
    } else {
      unsetenv("TZ");
    }
    tzset();
  }
  std::optional<std::string> saved_;
};

constexpr std::int64_t k2027 = 1830297599; // 2027-12-31T23:59:59Z

TEST(IotgwctlFormat, JsonStringsEscapeWhatJsonForbids) {
  EXPECT_EQ(jsonString("a\"b\\c"), R"("a\"b\\c")");
  EXPECT_EQ(jsonString("l1\nl2\tx\r"), R"("l1\nl2\tx\r")");
  EXPECT_EQ(jsonString(std::string("\x01\x1f\x7f", 3)), R"("\u0001\u001f\u007f")");
  EXPECT_EQ(jsonString(std::string("nul\0end", 7)), R"("nul\u0000end")");
}

TEST(IotgwctlFormat, JsonStringsKeepUtf8AndReplaceWhatIsNot) {
  EXPECT_EQ(jsonString("Küche 21 °C ✓ 🌡"), "\"Küche 21 °C ✓ 🌡\"");
  EXPECT_EQ(jsonString("\xff"), R"("\ufffd")");
  EXPECT_EQ(jsonString("a\xc3"), R"("a\ufffd")");                             // cut short
  EXPECT_EQ(jsonString("\xc0\xaf"), R"("\ufffd\ufffd")");                     // overlong '/'
  EXPECT_EQ(jsonString("\xed\xa0\x80"), R"("\ufffd\ufffd\ufffd")");           // a UTF-16 surrogate
  EXPECT_EQ(jsonString("\xf4\x90\x80\x80"), R"("\ufffd\ufffd\ufffd\ufffd")"); // above U+10FFFF
}

TEST(IotgwctlFormat, EveryValueTypeIsValidJson) {
  EXPECT_EQ(jsonValue("devices", Value{std::uint64_t{3}}), "3");
  EXPECT_EQ(jsonValue("delta", Value{std::int64_t{-4}}), "-4");
  EXPECT_EQ(jsonValue("firewall", Value{true}), "true");
  EXPECT_EQ(jsonValue("rate", Value{2.5}), "2.5");
  EXPECT_EQ(jsonValue("rate", Value{std::numeric_limits<double>::quiet_NaN()}), "null");
  EXPECT_EQ(jsonValue("rate", Value{std::numeric_limits<double>::infinity()}), "null");
  EXPECT_EQ(jsonValue("future_field", Value{}), "null");
  EXPECT_EQ(jsonObject({{"a", Value{std::string("x")}}, {"b\"", Value{}}}),
            R"({"a": "x", "b\"": null})");
  EXPECT_EQ(jsonObject({}), "{}");
}

TEST(IotgwctlFormat, TimesAreIso8601InJsonAndDurationsStayNumbers) {
  EXPECT_EQ(kindOf("certificate_expires"), FieldKind::Time);
  EXPECT_EQ(kindOf("last_seen_at"), FieldKind::Time);
  EXPECT_EQ(kindOf("quarantined_since"), FieldKind::Time);
  EXPECT_EQ(kindOf("uptime_seconds"), FieldKind::Duration);
  EXPECT_EQ(kindOf("tx_bytes_per_second"), FieldKind::Plain);
  EXPECT_EQ(jsonValue("certificate_expires", Value{k2027}), R"("2027-12-31T23:59:59Z")");
  EXPECT_EQ(jsonValue("certificate_expires", Value{std::uint64_t(k2027)}),
            R"("2027-12-31T23:59:59Z")");
  EXPECT_EQ(jsonValue("uptime_seconds", Value{std::uint64_t{7500}}), "7500");
  EXPECT_EQ(isoTime(0), "1970-01-01T00:00:00Z");
}

TEST_F(UtcZone, TimesForPeopleSayWhenAndHowFar) {
  EXPECT_EQ(humanTime(k2027, k2027 - 392 * 86400 - 5), "2027-12-31 23:59:59 UTC (in 392 days)");
  EXPECT_EQ(humanTime(k2027, k2027 + 3 * 3600), "2027-12-31 23:59:59 UTC (3 hours ago)");
  EXPECT_EQ(humanTime(k2027, k2027 - 1), "2027-12-31 23:59:59 UTC (in 1 second)");
  EXPECT_EQ(humanTime(k2027, k2027 + 300), "2027-12-31 23:59:59 UTC (5 minutes ago)");
  EXPECT_EQ(humanTime(k2027, k2027), "2027-12-31 23:59:59 UTC (now)");
  EXPECT_EQ(humanValue("certificate_expires", Value{k2027}, k2027 - 2 * 86400),
            "2027-12-31 23:59:59 UTC (in 2 days)");
}

TEST(IotgwctlFormat, DurationsForPeople) {
  EXPECT_EQ(humanDuration(0), "0 s");
  EXPECT_EQ(humanDuration(59), "59 s");
  EXPECT_EQ(humanDuration(60), "1 min");
  EXPECT_EQ(humanDuration(125), "2 min 5 s");
  EXPECT_EQ(humanDuration(7500), "2 h 5 min");
  EXPECT_EQ(humanDuration(3 * 86400 + 4 * 3600 + 9), "3 d 4 h");
  EXPECT_EQ(humanValue("uptime_seconds", Value{std::uint64_t{7500}}, 0), "2 h 5 min");
  EXPECT_EQ(humanValue("firewall", Value{false}, 0), "no");
  EXPECT_EQ(humanValue("rx_bytes_per_second", Value{12.26}, 0), "12.3");
  EXPECT_EQ(humanValue("future_field", Value{}, 0), "(a value this iotgwctl cannot show)");
}

} // namespace
