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
  for (const char* bad : {"", "{", "{\"a\":}", "{\"a\" 1}", "[1,]", "{\"a\":1,}", "01", "1.",
                          ".5", "-", "1e", "+1", "\"\\x\"", "\"\\u12\"", "\"\\ud800\"",
                          "\"\\udc00\"", "\"a\nb\"", "tru", "nul", "[1] x", "{\"a\":1,\"a\":2}",
                          "\"\xC0\xAF\"", "1e999", "{1:2}", "'a'"}) {
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
