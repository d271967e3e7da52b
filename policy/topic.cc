// SPDX-License-Identifier: GPL-3.0-or-later
#include "policy/topic.h"

#include "policy/utf8.h"

namespace iotgw::policy {

namespace {

constexpr size_t kMaxTopicBytes = 65535;

std::optional<TopicError> validateCommon(std::string_view s) noexcept {
  if (s.empty()) {
    return TopicError::Empty;
  }
  if (s.size() > kMaxTopicBytes) {
    return TopicError::TooLong;
  }
  if (s.find('\0') != std::string_view::npos) {
    return TopicError::NulCharacter;
  }
  if (!isValidUtf8(s)) {
    return TopicError::BadUtf8;
  }
  if (firstDiscouragedCodePoint(s)) {
    return TopicError::ControlCharacter;
  }
  return std::nullopt;
}

// Splits at '/', calling fn(level, isLast) for each level; stops early when fn returns false.
template <typename Fn> bool forEachLevel(std::string_view s, Fn&& fn) {
  size_t start = 0;
  while (true) {
    const size_t slash = s.find('/', start);
    const bool last = slash == std::string_view::npos;
    const std::string_view level = s.substr(start, last ? std::string_view::npos : slash - start);
    if (!fn(level, last)) {
      return false;
    }
    if (last) {
      return true;
    }
    start = slash + 1;
  }
}

std::optional<TopicError> validateFilterLevels(std::string_view filter, bool pattern) noexcept {
  std::optional<TopicError> err;
  forEachLevel(filter, [&](std::string_view level, bool last) {
    if (level.find('#') != std::string_view::npos && (level != "#" || !last)) {
      err = TopicError::MisplacedHash;
      return false;
    }
    if (level.find('+') != std::string_view::npos && level != "+") {
      err = TopicError::MisplacedPlus;
      return false;
    }
    if (pattern && level.find('%') != std::string_view::npos && level != "%d" && level != "%c" &&
        level != "%u") {
      err = TopicError::BadSubstitution;
      return false;
    }
    return true;
  });
  return err;
}

// Pops the next level off `s`; returns false when there are no more levels.
bool nextLevel(std::string_view& s, bool& done, std::string_view& level) {
  if (done) {
    return false;
  }
  const size_t slash = s.find('/');
  if (slash == std::string_view::npos) {
    level = s;
    done = true;
  } else {
    level = s.substr(0, slash);
    s.remove_prefix(slash + 1);
  }
  return true;
}

} // namespace

std::string_view describe(TopicError e) noexcept {
  switch (e) {
  case TopicError::Empty:
    return "topic is empty";
  case TopicError::TooLong:
    return "topic is longer than 65535 bytes";
  case TopicError::BadUtf8:
    return "topic is not well-formed UTF-8";
  case TopicError::NulCharacter:
    return "topic contains U+0000";
  case TopicError::ControlCharacter:
    return "topic contains a control character or a Unicode non-character";
  case TopicError::WildcardInName:
    return "topic name contains a wildcard";
  case TopicError::MisplacedHash:
    return "'#' must be the whole last level of a filter";
  case TopicError::MisplacedPlus:
    return "'+' must be a whole level of a filter";
  case TopicError::BadSubstitution:
    return "'%' may only appear as a whole level \"%d\", \"%c\" or \"%u\"";
  }
  return "invalid topic";
}

std::string_view clause(TopicError e) noexcept {
  switch (e) {
  case TopicError::Empty:
    return "MQTT-4.7.3-1";
  case TopicError::TooLong:
    return "MQTT-1.5.3-2";
  case TopicError::BadUtf8:
    return "MQTT-1.5.3-1";
  case TopicError::NulCharacter:
    return "MQTT-1.5.3-2";
  case TopicError::ControlCharacter:
    return "MQTT-1.5.4";
  case TopicError::WildcardInName:
    return "MQTT-3.3.2-2";
  case TopicError::MisplacedHash:
    return "MQTT-4.7.1-2";
  case TopicError::MisplacedPlus:
    return "MQTT-4.7.1-3";
  case TopicError::BadSubstitution:
    return "iotgw-policy";
  }
  return "MQTT-4.7";
}

std::optional<TopicError> validateTopicName(std::string_view name) noexcept {
  if (auto e = validateCommon(name)) {
    return e;
  }
  if (name.find_first_of("+#") != std::string_view::npos) {
    return TopicError::WildcardInName;
  }
  return std::nullopt;
}

std::optional<TopicError> validateTopicFilter(std::string_view filter) noexcept {
  if (auto e = validateCommon(filter)) {
    return e;
  }
  return validateFilterLevels(filter, false);
}

std::optional<TopicError> validateTopicPattern(std::string_view pattern) noexcept {
  if (auto e = validateCommon(pattern)) {
    return e;
  }
  return validateFilterLevels(pattern, true);
}

bool topicMatches(std::string_view filter, std::string_view topic) noexcept {
  if (!topic.empty() && topic.front() == '$' && !filter.empty() &&
      (filter.front() == '+' || filter.front() == '#')) {
    return false; // MQTT-4.7.2-1
  }
  bool fDone = false;
  bool tDone = false;
  std::string_view f;
  std::string_view t;
  while (nextLevel(filter, fDone, f)) {
    if (f == "#") {
      return true; // matches the parent level and everything below it
    }
    if (!nextLevel(topic, tDone, t)) {
      return false;
    }
    if (f != "+" && f != t) {
      return false;
    }
  }
  return tDone; // the topic must not have more levels than the filter
}

bool filterCovers(std::string_view allowed, std::string_view requested) noexcept {
  if (!requested.empty() && requested.front() == '$' && !allowed.empty() &&
      (allowed.front() == '+' || allowed.front() == '#')) {
    return false;
  }
  bool aDone = false;
  bool rDone = false;
  std::string_view a;
  std::string_view r;
  while (nextLevel(allowed, aDone, a)) {
    if (a == "#") {
      return true;
    }
    if (!nextLevel(requested, rDone, r)) {
      return false; // allowed is longer: "a/b" does not cover "a"
    }
    if (r == "#") {
      return false; // requested reaches deeper than a non-# allowed level
    }
    if (a == "+") {
      continue; // covers any single literal level, and '+'
    }
    if (r == "+" || a != r) {
      return false;
    }
  }
  return rDone;
}

namespace {

// A value that can stand for a whole level without widening the rule or reaching system topics.
bool safeLevel(std::string_view v) {
  return !v.empty() && v.find_first_of("/+#") == std::string_view::npos && v.front() != '$';
}

// Rebuilds `pattern` with its placeholders replaced: `fill(value)` says what an unsafe value
// becomes (nullopt: the whole substitution fails).
template <typename Fill>
std::optional<std::string> replacePlaceholders(std::string_view pattern, const TopicScope& scope,
                                               Fill&& fill) {
  std::string out;
  out.reserve(pattern.size() + scope.deviceId.size());
  bool ok = true;
  forEachLevel(pattern, [&](std::string_view level, bool last) {
    if (level == "%d" || level == "%c" || level == "%u") {
      const std::string_view v = level == "%d"   ? scope.deviceId
                                 : level == "%c" ? scope.clientId
                                                 : scope.username;
      const std::optional<std::string_view> put = safeLevel(v) ? std::optional(v) : fill(v);
      if (!put) {
        ok = false;
        return false;
      }
      out.append(*put);
    } else {
      out.append(level);
    }
    if (!last) {
      out.push_back('/');
    }
    return true;
  });
  if (!ok) {
    return std::nullopt;
  }
  return out;
}

} // namespace

std::optional<std::string> substitutePattern(std::string_view pattern, const TopicScope& scope) {
  return replacePlaceholders(pattern, scope,
                             [](std::string_view) { return std::optional<std::string_view>(); });
}

std::string widenPattern(std::string_view pattern, const TopicScope& scope) {
  return *replacePlaceholders(
      pattern, scope, [](std::string_view) { return std::optional<std::string_view>("+"); });
}

bool patternUses(std::string_view pattern, std::string_view placeholder) noexcept {
  return !forEachLevel(pattern, [&](std::string_view level, bool) { return level != placeholder; });
}

} // namespace iotgw::policy
