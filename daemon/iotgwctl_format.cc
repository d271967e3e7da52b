// SPDX-License-Identifier: GPL-3.0-or-later
#include "daemon/iotgwctl_format.h"

#include <cmath>
#include <ctime>
#include <optional>

#include <fmt/format.h>

namespace iotgw::ctl {

namespace {

// The length of the UTF-8 sequence at the start of `s`, or 0 if it is not one (overlong forms,
// surrogates and code points above U+10FFFF are not).
size_t utf8Length(std::string_view s) {
  const auto b = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  const auto cont = [&](size_t i) { return i < s.size() && (b(i) & 0xC0) == 0x80; };
  const unsigned char c = b(0);
  if (c < 0x80) {
    return 1;
  }
  if (c >= 0xC2 && c <= 0xDF) {
    return cont(1) ? 2 : 0;
  }
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(1) || !cont(2)) {
      return 0;
    }
    const unsigned char c1 = b(1);
    if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 > 0x9F)) {
      return 0; // overlong, or a UTF-16 surrogate
    }
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) {
      return 0;
    }
    const unsigned char c1 = b(1);
    if ((c == 0xF0 && c1 < 0x90) || (c == 0xF4 && c1 > 0x8F)) {
      return 0; // overlong, or above U+10FFFF
    }
    return 4;
  }
  return 0;
}

std::optional<std::int64_t> asSeconds(const Value& v) {
  if (const auto* i = std::get_if<std::int64_t>(&v)) {
    return *i;
  }
  if (const auto* u = std::get_if<std::uint64_t>(&v); u && *u <= INT64_MAX) {
    return static_cast<std::int64_t>(*u);
  }
  return std::nullopt;
}

std::string plural(std::int64_t n, std::string_view unit) {
  return fmt::format("{} {}{}", n, unit, n == 1 ? "" : "s");
}

} // namespace

FieldKind kindOf(std::string_view key) {
  if (key.ends_with("_expires") || key.ends_with("_at") || key.ends_with("_since")) {
    return FieldKind::Time;
  }
  if (key.ends_with("_seconds") || key == "seconds") {
    return FieldKind::Duration;
  }
  return FieldKind::Plain;
}

std::string jsonString(std::string_view s) {
  std::string out = "\"";
  out.reserve(s.size() + 2);
  while (!s.empty()) {
    const auto c = static_cast<unsigned char>(s[0]);
    const size_t n = utf8Length(s);
    if (n == 0) {
      out += "\\ufffd";
      s.remove_prefix(1);
      continue;
    }
    if (n > 1) {
      out.append(s.substr(0, n));
    } else if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7F) {
      out += fmt::format("\\u{:04x}", c);
    } else {
      out += static_cast<char>(c);
    }
    s.remove_prefix(n);
  }
  return out + "\"";
}

std::string isoTime(std::int64_t unixSeconds) {
  const std::time_t t = unixSeconds;
  std::tm tm{};
  char buf[40];
  if (gmtime_r(&t, &tm) == nullptr ||
      std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) {
    return std::to_string(unixSeconds);
  }
  return buf;
}

std::string humanDuration(std::uint64_t s) {
  if (s < 60) {
    return fmt::format("{} s", s);
  }
  if (s < 3600) {
    return s % 60 ? fmt::format("{} min {} s", s / 60, s % 60) : fmt::format("{} min", s / 60);
  }
  if (s < 86400) {
    const auto m = s % 3600 / 60;
    return m ? fmt::format("{} h {} min", s / 3600, m) : fmt::format("{} h", s / 3600);
  }
  const auto h = s % 86400 / 3600;
  return h ? fmt::format("{} d {} h", s / 86400, h) : fmt::format("{} d", s / 86400);
}

std::string humanTime(std::int64_t unixSeconds, std::int64_t now) {
  const std::time_t t = unixSeconds;
  std::tm tm{};
  char buf[64];
  if (localtime_r(&t, &tm) == nullptr ||
      std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S %Z", &tm) == 0) {
    return std::to_string(unixSeconds);
  }
  // Far apart in whole days, near in hours, minutes or seconds.
  const bool future = unixSeconds > now;
  const std::uint64_t d = future ? std::uint64_t(unixSeconds) - std::uint64_t(now)
                                 : std::uint64_t(now) - std::uint64_t(unixSeconds);
  std::string rel;
  if (d == 0) {
    rel = "now";
  } else {
    const auto n = static_cast<std::int64_t>(d >= 2 * 86400  ? d / 86400
                                             : d >= 2 * 3600 ? d / 3600
                                             : d >= 120      ? d / 60
                                                             : d);
    const std::string_view unit = d >= 2 * 86400  ? "day"
                                  : d >= 2 * 3600 ? "hour"
                                  : d >= 120      ? "minute"
                                                  : "second";
    rel = future ? "in " + plural(n, unit) : plural(n, unit) + " ago";
  }
  return fmt::format("{} ({})", buf, rel);
}

std::string jsonValue(std::string_view key, const Value& v) {
  if (kindOf(key) == FieldKind::Time) {
    if (const auto s = asSeconds(v)) {
      return jsonString(isoTime(*s));
    }
  }
  return std::visit(
      [](const auto& x) -> std::string {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::monostate>) {
          return "null";
        } else if constexpr (std::is_same_v<T, std::string>) {
          return jsonString(x);
        } else if constexpr (std::is_same_v<T, bool>) {
          return x ? "true" : "false";
        } else if constexpr (std::is_same_v<T, double>) {
          return std::isfinite(x) ? fmt::format("{}", x) : "null";
        } else {
          return std::to_string(x);
        }
      },
      v);
}

std::string jsonObject(const Fields& fields) {
  std::string out = "{";
  for (const auto& [k, v] : fields) {
    out += (out.size() > 1 ? ", " : "") + jsonString(k) + ": " + jsonValue(k, v);
  }
  return out + "}";
}

std::string humanValue(std::string_view key, const Value& v, std::int64_t now) {
  const auto kind = kindOf(key);
  if (const auto s = asSeconds(v); s && kind != FieldKind::Plain) {
    return kind == FieldKind::Time
               ? humanTime(*s, now)
               : (*s < 0 ? std::to_string(*s) : humanDuration(std::uint64_t(*s)));
  }
  return std::visit(
      [](const auto& x) -> std::string {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::monostate>) {
          return "(a value this iotgwctl cannot show)";
        } else if constexpr (std::is_same_v<T, std::string>) {
          return x;
        } else if constexpr (std::is_same_v<T, bool>) {
          return x ? "yes" : "no";
        } else if constexpr (std::is_same_v<T, double>) {
          return fmt::format("{:.1f}", x);
        } else {
          return std::to_string(x);
        }
      },
      v);
}

} // namespace iotgw::ctl
