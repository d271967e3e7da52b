// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// MQTT topic names and topic filters (MQTT 3.1.1 §4.7, MQTT 5.0 §4.7), and the policy's topic
// patterns, which are filters that may name the device id (%d), its pinned client id (%c) or its
// verified user name (%u) as a whole level.

#include <optional>
#include <string>
#include <string_view>

namespace iotgw::policy {

enum class TopicError {
  Empty,            // MQTT-4.7.3-1
  TooLong,          // more than 65535 bytes
  BadUtf8,          // MQTT-1.5.3-1 / MQTT-1.5.4-1
  NulCharacter,     // MQTT-1.5.3-2 / MQTT-1.5.4-2
  ControlCharacter, // MQTT 5 §1.5.4: a control character or non-character (may be malformed)
  WildcardInName,   // MQTT-3.3.2-2
  MisplacedHash,    // MQTT-4.7.1-2: '#' alone in the last level
  MisplacedPlus,    // MQTT-4.7.1-3: '+' fills a whole level
  BadSubstitution,  // a policy pattern uses '%' other than a whole %d, %c or %u level
};

[[nodiscard]] std::string_view describe(TopicError e) noexcept;
// The specification clause a TopicError violates, e.g. "MQTT-4.7.1-2".
[[nodiscard]] std::string_view clause(TopicError e) noexcept;

[[nodiscard]] std::optional<TopicError> validateTopicName(std::string_view name) noexcept;
[[nodiscard]] std::optional<TopicError> validateTopicFilter(std::string_view filter) noexcept;
// A policy pattern: a valid filter in which a level may be exactly "%d", "%c" or "%u".
[[nodiscard]] std::optional<TopicError> validateTopicPattern(std::string_view pattern) noexcept;

// Does `filter` match the topic name `topic`? Both must be valid. Follows §4.7.2: filters that
// start with a wildcard do not match topics starting with '$'.
[[nodiscard]] bool topicMatches(std::string_view filter, std::string_view topic) noexcept;

// Does every topic matched by `requested` also match `allowed`? Used to decide whether a
// SUBSCRIBE stays inside what the policy permits ("a/+/c" is within "a/#", "a/#" is not within
// "a/+").
[[nodiscard]] bool filterCovers(std::string_view allowed, std::string_view requested) noexcept;

// What a pattern's placeholders stand for, taken only from verified identity: %d the device id,
// %c the client id the device's policy pins (empty when it pins none), %u the user name the
// session logged in with its password (empty for a certificate or address login).
struct TopicScope {
  std::string_view deviceId;
  std::string_view clientId;
  std::string_view username;
};

// Replaces whole "%d", "%c" and "%u" levels of a pattern. A value that is empty, contains '/',
// '+', '#', or starts with '$' cannot be substituted safely (it would widen the rule or reach
// system topics), and the result is nullopt: such a rule matches nothing.
[[nodiscard]] std::optional<std::string> substitutePattern(std::string_view pattern,
                                                           const TopicScope& scope);

// Like substitutePattern, but a placeholder without a safe value becomes "+": for rules that
// restrict (payload rules), which must then cover more topics, never fewer.
[[nodiscard]] std::string widenPattern(std::string_view pattern, const TopicScope& scope);

// Whether `pattern` names `placeholder` ("%c") as one of its levels.
[[nodiscard]] bool patternUses(std::string_view pattern, std::string_view placeholder) noexcept;

} // namespace iotgw::policy
