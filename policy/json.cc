// SPDX-License-Identifier: GPL-3.0-or-later
#include "policy/json.h"

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <set>

#include "policy/utf8.h"

namespace iotgw::policy {

const JsonValue* JsonValue::member(std::string_view key) const {
  for (const auto& [k, v] : object) {
    if (k == key) {
      return &v;
    }
  }
  return nullptr;
}

std::string_view jsonTypeName(JsonType t) noexcept {
  switch (t) {
  case JsonType::Null:
    return "null";
  case JsonType::Boolean:
    return "boolean";
  case JsonType::Number:
    return "number";
  case JsonType::String:
    return "string";
  case JsonType::Array:
    return "array";
  case JsonType::Object:
    return "object";
  }
  return "unknown";
}

namespace {

// Finds a key among an object's members so far. A device's reading has a handful of keys, and a
// scan of those is cheapest; an object past kScanKeys keys gets an ordered index, so that a
// hostile payload of tens of thousands of keys costs O(n log n) instead of comparing every key
// with every earlier one. Ordered, not hashed: the keys are the attacker's, and a hash table with
// a fixed seed can be flooded with colliding keys back into quadratic time.
class KeyIndex {
public:
  explicit KeyIndex(const std::vector<JsonMember>& members) : members_(members) {}

  [[nodiscard]] bool contains(std::string_view key) const {
    if (!indexed_) {
      return std::ranges::any_of(members_, [&](const JsonMember& m) { return m.key == key; });
    }
    return index_.contains(key);
  }

  // Call after each member is appended.
  void added() {
    if (indexed_) {
      index_.insert(members_.size() - 1);
      return;
    }
    if (members_.size() > kScanKeys) {
      for (size_t i = 0; i < members_.size(); ++i) {
        index_.insert(i);
      }
      indexed_ = true;
    }
  }

private:
  static constexpr size_t kScanKeys = 16;

  // Orders positions in `members` by their keys. Positions, not string_views: the vector may
  // reallocate as members are added, and a moved short string's characters move with it.
  struct ByKey {
    using is_transparent = void;
    const std::vector<JsonMember>* members;
    [[nodiscard]] std::string_view key(size_t i) const { return (*members)[i].key; }
    [[nodiscard]] static std::string_view key(std::string_view k) { return k; }
    template <typename A, typename B> bool operator()(const A& a, const B& b) const {
      return key(a) < key(b);
    }
  };

  const std::vector<JsonMember>& members_;
  std::set<size_t, ByKey> index_{ByKey{&members_}};
  bool indexed_ = false;
};

class Parser {
public:
  explicit Parser(std::string_view text) : s_(text) {}

  std::expected<JsonValue, JsonError> run() {
    JsonValue v;
    skipWs();
    if (!value(v, 0)) {
      return std::unexpected(err_);
    }
    skipWs();
    if (pos_ != s_.size()) {
      fail("unexpected data after the JSON value");
      return std::unexpected(err_);
    }
    return v;
  }

private:
  bool fail(std::string msg) {
    err_ = JsonError{pos_, std::move(msg)};
    return false;
  }

  void skipWs() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) {
      ++pos_;
    }
  }

  bool literal(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) {
      return fail("invalid literal");
    }
    pos_ += word.size();
    return true;
  }

  bool value(JsonValue& out, size_t depth) {
    if (depth > kMaxJsonDepth) {
      return fail("nesting deeper than 32 levels");
    }
    if (pos_ >= s_.size()) {
      return fail("unexpected end of input");
    }
    switch (s_[pos_]) {
    case '{':
      return object(out, depth);
    case '[':
      return array(out, depth);
    case '"':
      out.type = JsonType::String;
      return string(out.string);
    case 't':
      out.type = JsonType::Boolean;
      out.boolean = true;
      return literal("true");
    case 'f':
      out.type = JsonType::Boolean;
      out.boolean = false;
      return literal("false");
    case 'n':
      out.type = JsonType::Null;
      return literal("null");
    default:
      return number(out);
    }
  }

  bool object(JsonValue& out, size_t depth) {
    out.type = JsonType::Object;
    ++pos_; // '{'
    skipWs();
    if (pos_ < s_.size() && s_[pos_] == '}') {
      ++pos_;
      return true;
    }
    KeyIndex keys(out.object);
    while (true) {
      skipWs();
      if (pos_ >= s_.size() || s_[pos_] != '"') {
        return fail("expected a string key");
      }
      std::string key;
      if (!string(key)) {
        return false;
      }
      // Checked before the value is parsed, so the error and its offset are those of the key.
      if (keys.contains(key)) {
        return fail("duplicate object key");
      }
      skipWs();
      if (pos_ >= s_.size() || s_[pos_] != ':') {
        return fail("expected ':'");
      }
      ++pos_;
      skipWs();
      JsonValue v;
      if (!value(v, depth + 1)) {
        return false;
      }
      out.object.push_back(JsonMember{std::move(key), std::move(v)});
      keys.added();
      skipWs();
      if (pos_ >= s_.size()) {
        return fail("unterminated object");
      }
      if (s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (s_[pos_] == '}') {
        ++pos_;
        return true;
      }
      return fail("expected ',' or '}'");
    }
  }

  bool array(JsonValue& out, size_t depth) {
    out.type = JsonType::Array;
    ++pos_; // '['
    skipWs();
    if (pos_ < s_.size() && s_[pos_] == ']') {
      ++pos_;
      return true;
    }
    while (true) {
      skipWs();
      JsonValue v;
      if (!value(v, depth + 1)) {
        return false;
      }
      out.array.push_back(std::move(v));
      skipWs();
      if (pos_ >= s_.size()) {
        return fail("unterminated array");
      }
      if (s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (s_[pos_] == ']') {
        ++pos_;
        return true;
      }
      return fail("expected ',' or ']'");
    }
  }

  bool hex4(uint32_t& v) {
    if (s_.size() - pos_ < 4) {
      return fail("truncated \\u escape");
    }
    v = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = s_[pos_++];
      v <<= 4;
      if (c >= '0' && c <= '9') {
        v |= static_cast<uint32_t>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        v |= static_cast<uint32_t>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        v |= static_cast<uint32_t>(c - 'A' + 10);
      } else {
        return fail("invalid hex digit in \\u escape");
      }
    }
    return true;
  }

  static void appendUtf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  bool string(std::string& out) {
    ++pos_; // opening quote
    const size_t start = pos_;
    while (true) {
      if (pos_ >= s_.size()) {
        return fail("unterminated string");
      }
      const auto c = static_cast<unsigned char>(s_[pos_]);
      if (c == '"') {
        ++pos_;
        break;
      }
      if (c < 0x20) {
        return fail("control character in string");
      }
      if (c != '\\') {
        out.push_back(static_cast<char>(c));
        ++pos_;
        continue;
      }
      ++pos_;
      if (pos_ >= s_.size()) {
        return fail("unterminated escape");
      }
      const char e = s_[pos_++];
      switch (e) {
      case '"':
      case '\\':
      case '/':
        out.push_back(e);
        break;
      case 'b':
        out.push_back('\b');
        break;
      case 'f':
        out.push_back('\f');
        break;
      case 'n':
        out.push_back('\n');
        break;
      case 'r':
        out.push_back('\r');
        break;
      case 't':
        out.push_back('\t');
        break;
      case 'u': {
        uint32_t cp = 0;
        if (!hex4(cp)) {
          return false;
        }
        if (cp >= 0xDC00 && cp <= 0xDFFF) {
          return fail("lone low surrogate escape");
        }
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          uint32_t lo = 0;
          if (s_.substr(pos_, 2) != "\\u") {
            return fail("high surrogate escape without a low one");
          }
          pos_ += 2;
          if (!hex4(lo)) {
            return false;
          }
          if (lo < 0xDC00 || lo > 0xDFFF) {
            return fail("high surrogate escape without a low one");
          }
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        appendUtf8(out, cp);
        break;
      }
      default:
        return fail("invalid escape");
      }
    }
    if (!isValidUtf8(out, true)) {
      pos_ = start;
      return fail("string is not well-formed UTF-8");
    }
    return true;
  }

  bool number(JsonValue& out) {
    const size_t start = pos_;
    bool integral = true;
    if (pos_ < s_.size() && s_[pos_] == '-') {
      ++pos_;
    }
    if (pos_ >= s_.size() || s_[pos_] < '0' || s_[pos_] > '9') {
      return fail("invalid value");
    }
    if (s_[pos_] == '0') {
      ++pos_;
    } else {
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') {
        ++pos_;
      }
    }
    if (pos_ < s_.size() && s_[pos_] == '.') {
      integral = false;
      ++pos_;
      const size_t digits = pos_;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') {
        ++pos_;
      }
      if (pos_ == digits) {
        return fail("digits expected after '.'");
      }
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      integral = false;
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) {
        ++pos_;
      }
      const size_t digits = pos_;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') {
        ++pos_;
      }
      if (pos_ == digits) {
        return fail("digits expected in exponent");
      }
    }
    double v = 0;
    const auto [p, ec] = std::from_chars(s_.data() + start, s_.data() + pos_, v);
    if (ec != std::errc{} || p != s_.data() + pos_) {
      pos_ = start;
      return fail("number out of range");
    }
    out.type = JsonType::Number;
    out.number = v;
    out.integral = integral;
    return true;
  }

  std::string_view s_;
  size_t pos_ = 0;
  JsonError err_;
};

} // namespace

std::expected<JsonValue, JsonError> parseJson(std::string_view text) { return Parser(text).run(); }

} // namespace iotgw::policy
