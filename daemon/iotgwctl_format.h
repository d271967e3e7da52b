// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// How iotgwctl prints what the gateway answers: for a person, times as dates and durations as
// "3 h 12 min"; with --json, JSON that is valid whatever the field holds (any byte string, a
// non-finite number, a type this client does not know), times as ISO 8601 in UTC.
//
// Which fields are times is told by their names, as the control API names them:
// `*_expires`, `*_at`, `*_since` are points in time (unix seconds); `*_seconds` (not
// `*_per_second`) are durations, which stay numbers in JSON (their name says the unit).

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace iotgw::ctl {

// A value of an a{sv} answer; monostate is a type this client does not know.
using Value = std::variant<std::monostate, std::string, bool, std::int64_t, std::uint64_t, double>;
using Fields = std::vector<std::pair<std::string, Value>>;

enum class FieldKind { Plain, Time, Duration };
[[nodiscard]] FieldKind kindOf(std::string_view key);

// A JSON string literal: quotes, backslashes and control characters escaped; bytes that are not
// UTF-8 become U+FFFD, so the document stays valid.
[[nodiscard]] std::string jsonString(std::string_view s);
// A JSON value of `v` under `key` (a time becomes an ISO 8601 string; NaN and infinities null).
[[nodiscard]] std::string jsonValue(std::string_view key, const Value& v);
[[nodiscard]] std::string jsonObject(const Fields& fields);

// For a person: "2027-12-31 23:59:59 UTC (in 392 days)" in the local zone; "3 h 12 min".
[[nodiscard]] std::string humanTime(std::int64_t unixSeconds, std::int64_t now);
[[nodiscard]] std::string humanDuration(std::uint64_t seconds);
[[nodiscard]] std::string humanValue(std::string_view key, const Value& v, std::int64_t now);

[[nodiscard]] std::string isoTime(std::int64_t unixSeconds); // 2027-12-31T23:59:59Z

} // namespace iotgw::ctl
