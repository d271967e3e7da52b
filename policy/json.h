// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// A strict RFC 8259 JSON parser for payload rules. Untrusted input: bounded nesting depth, no
// duplicate object keys (an ambiguity attackers use against differing parsers), strings must be
// well-formed UTF-8 after unescaping, no lone surrogate escapes.

#include <cstddef>
#include <expected>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace iotgw::policy {

enum class JsonType { Null, Boolean, Number, String, Array, Object };

struct JsonMember;

struct JsonValue {
  JsonType type = JsonType::Null;
  bool boolean = false;
  double number = 0;
  bool integral = false; // written without fraction or exponent
  std::string string;
  std::vector<JsonValue> array;
  std::vector<JsonMember> object; // in document order; keys are unique

  [[nodiscard]] const JsonValue* member(std::string_view key) const;
};

struct JsonMember {
  std::string key;
  JsonValue value;
};

struct JsonError {
  size_t offset = 0;
  std::string message;
};

inline constexpr size_t kMaxJsonDepth = 32;

[[nodiscard]] std::expected<JsonValue, JsonError> parseJson(std::string_view text);

[[nodiscard]] std::string_view jsonTypeName(JsonType t) noexcept;

} // namespace iotgw::policy
