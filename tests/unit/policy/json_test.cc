// SPDX-License-Identifier: GPL-3.0-or-later
#include <gtest/gtest.h>

#include "policy/json.h"

using namespace iotgw::policy;

TEST(Json, ParsesValues) {
  auto v = parseJson(R"( {"t": 21.5, "unit": "C", "ok": true, "n": null, "a": [1, -2e3, "x"],
                         "o": {"k": "\u00e9\ud83d\ude00\n"}} )");
  ASSERT_TRUE(v) << v.error().message;
  ASSERT_EQ(v->type, JsonType::Object);
  EXPECT_DOUBLE_EQ(v->member("t")->number, 21.5);
  EXPECT_FALSE(v->member("t")->integral);
  EXPECT_EQ(v->member("unit")->string, "C");
  EXPECT_TRUE(v->member("ok")->boolean);
  EXPECT_EQ(v->member("n")->type, JsonType::Null);
  EXPECT_EQ(v->member("a")->array.size(), 3u);
  EXPECT_DOUBLE_EQ(v->member("a")->array[1].number, -2000);
  EXPECT_EQ(v->member("o")->member("k")->string, "\xC3\xA9\xF0\x9F\x98\x80\n");
  EXPECT_EQ(v->member("missing"), nullptr);
}

TEST(Json, RejectsMalformed) {
  for (const char* bad : {"",
                          "{",
                          "{\"a\":}",
                          "{\"a\" 1}",
                          "[1,]",
                          "{\"a\":1,}",
                          "01",
                          "1.",
                          ".5",
                          "-",
                          "1e",
                          "+1",
                          "\"\\x\"",
                          "\"\\u12\"",
                          "\"\\ud800\"",
                          "\"\\udc00\"",
                          "\"a\nb\"",
                          "tru",
                          "nul",
                          "[1] x",
                          "{\"a\":1,\"a\":2}",
                          "\"\xC0\xAF\"",
                          "1e999",
                          "{1:2}",
                          "'a'"}) {
    EXPECT_FALSE(parseJson(bad)) << "accepted: " << bad;
  }
}

TEST(Json, LimitsNesting) {
  std::string deep(kMaxJsonDepth, '[');
  deep += std::string(kMaxJsonDepth, ']');
  EXPECT_TRUE(parseJson(deep));
  std::string tooDeep(kMaxJsonDepth + 2, '[');
  tooDeep += std::string(kMaxJsonDepth + 2, ']');
  auto r = parseJson(tooDeep);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("nesting"), std::string::npos);
  // A hostile payload of 100k brackets must not exhaust the stack.
  EXPECT_FALSE(parseJson(std::string(100000, '[')));
}

// Objects past a handful of keys are checked through an index rather than a scan; it must refuse
// the same duplicates, at the same place, as the scan does.
TEST(Json, RefusesDuplicatesAmongManyKeys) {
  const auto object = [](size_t keys, const std::string& extraKey) {
    std::string s = "{";
    for (size_t i = 0; i < keys; ++i) {
      s += "\"key" + std::to_string(i) + "\":" + std::to_string(i) + ",";
    }
    return s + extraKey + ":true}";
  };
  for (size_t keys : {3u, 16u, 17u, 18u, 1000u, 5000u}) {
    const auto distinct = parseJson(object(keys, "\"last\""));
    ASSERT_TRUE(distinct) << keys << ": " << distinct.error().message;
    EXPECT_EQ(distinct->object.size(), keys + 1);
    EXPECT_TRUE(distinct->member("last")->boolean);

    for (size_t repeat : {size_t{0}, keys / 2, keys - 1}) {
      // Once as written, once spelled with an escape: the keys are compared after unescaping.
      const std::string plain = "\"key" + std::to_string(repeat) + "\"";
      const std::string escaped = "\"\\u006bey" + std::to_string(repeat) + "\"";
      for (const std::string& dup : {plain, escaped}) {
        const std::string text = object(keys, dup);
        const auto r = parseJson(text);
        ASSERT_FALSE(r) << keys << " keys, repeating " << dup;
        EXPECT_EQ(r.error().message, "duplicate object key");
        // Reported just after the repeated key, before its value is read.
        EXPECT_EQ(r.error().offset, text.size() - std::string(":true}").size()) << dup;
      }
    }
  }
  // Each object has its own keys: a nested object's duplicate is found, and the same key in
  // different objects is no duplicate.
  std::string nested = R"({"a":1,"b":{"x":1,"y":2,"x":3}})";
  const auto r = parseJson(nested);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().offset, nested.find("\"x\":3") + 3);
  EXPECT_TRUE(parseJson(R"({"x":{"x":{"x":1}},"y":{"x":2}})"));
}
