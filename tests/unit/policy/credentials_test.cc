// SPDX-License-Identifier: GPL-3.0-or-later
#include <gtest/gtest.h>

#include <set>

#include "policy/credentials.h"

using namespace iotgw::policy;

TEST(DefaultCredentials, BuiltinListIsLargeAndUnique) {
  const auto list = builtinDefaultCredentials();
  EXPECT_GE(list.size(), 60u);
  std::set<std::pair<std::string, std::string>> seen;
  for (const auto& p : list) {
    EXPECT_TRUE(seen.emplace(p.username, p.password).second)
        << "duplicate " << p.username << "/" << p.password;
  }
}

TEST(DefaultCredentials, RefusesMiraiPairsExactly) {
  const DefaultCredentials d;
  EXPECT_TRUE(d.matches("root", "xc3511"));
  EXPECT_TRUE(d.matches("admin", "admin"));
  EXPECT_TRUE(d.matches("root", ""));
  EXPECT_TRUE(d.matches("ubnt", "ubnt"));
  EXPECT_TRUE(d.matches("root", "7ujMko0vizxv"));
  // Exact: case, prefixes and extensions do not match.
  EXPECT_FALSE(d.matches("Root", "xc3511"));
  EXPECT_FALSE(d.matches("root", "xc351"));
  EXPECT_FALSE(d.matches("root", "xc35111"));
  EXPECT_FALSE(d.matches("admin", "Admin"));
  EXPECT_FALSE(d.matches("thermo", "s3cret-thermo"));
  EXPECT_FALSE(d.matches("", ""));
}

TEST(DefaultCredentials, ExtendedFromConfiguration) {
  DefaultCredentials d;
  const size_t before = d.size();
  EXPECT_FALSE(d.matches("hub", "hub1234"));
  d.add({"hub", "hub1234"});
  EXPECT_EQ(d.size(), before + 1);
  EXPECT_TRUE(d.matches("hub", "hub1234"));
}

TEST(ConstantTime, ComparesWholeBuffers) {
  EXPECT_TRUE(constantTimeEquals(std::string_view("abc"), std::string_view("abc")));
  EXPECT_FALSE(constantTimeEquals(std::string_view("abc"), std::string_view("abd")));
  EXPECT_FALSE(constantTimeEquals(std::string_view("abc"), std::string_view("abcd")));
  EXPECT_FALSE(constantTimeEquals(std::string_view(""), std::string_view("a")));
  EXPECT_TRUE(constantTimeEquals(std::string_view(""), std::string_view("")));
  // Embedded NULs are compared, not treated as terminators.
  EXPECT_FALSE(constantTimeEquals(std::string_view("a\0b", 3), std::string_view("a\0c", 3)));
}

TEST(PasswordHash, RoundTripsAndVerifies) {
  auto h = PasswordHash::create("correct horse", PasswordHash::kMinIterations);
  ASSERT_TRUE(h);
  EXPECT_TRUE(h->verify("correct horse"));
  EXPECT_FALSE(h->verify("correct horsE"));
  EXPECT_FALSE(h->verify(""));
  auto parsed = PasswordHash::parse(h->str());
  ASSERT_TRUE(parsed) << parsed.error();
  EXPECT_EQ(parsed->str(), h->str());
  EXPECT_TRUE(parsed->verify("correct horse"));
  EXPECT_EQ(h->str().rfind("pbkdf2-sha256$10000$", 0), 0u);
}

TEST(PasswordHash, SaltsDiffer) {
  auto a = PasswordHash::create("same", PasswordHash::kMinIterations);
  auto b = PasswordHash::create("same", PasswordHash::kMinIterations);
  ASSERT_TRUE(a && b);
  EXPECT_NE(a->str(), b->str());
}

TEST(PasswordHash, KnownVector) {
  // Computed independently of wolfCrypt, with Python's hashlib:
  // python3 -c "import hashlib,base64;print(base64.b64encode(hashlib.pbkdf2_hmac('sha256',
  //   b'password', b'saltsaltsalt', 10000)).decode().rstrip('='))"
  auto h = PasswordHash::parse(
      "pbkdf2-sha256$10000$c2FsdHNhbHRzYWx0$Ywhqa9a6UzxJLtjYRT+Z1yOp+8LEJ8K4SHhDCPyIytM");
  ASSERT_TRUE(h) << h.error();
  EXPECT_TRUE(h->verify("password"));
  EXPECT_FALSE(h->verify("Password"));
}

TEST(PasswordHash, RejectsMalformed) {
  EXPECT_FALSE(PasswordHash::parse(""));
  EXPECT_FALSE(PasswordHash::parse("pbkdf2-sha256$10000$c2FsdHNhbHQ"));
  EXPECT_FALSE(PasswordHash::parse("pbkdf2-sha1$10000$c2FsdHNhbHQ$AAAA"));
  EXPECT_FALSE(PasswordHash::parse("pbkdf2-sha256$abc$c2FsdHNhbHQ$AAAA"));
  EXPECT_FALSE(PasswordHash::parse("pbkdf2-sha256$10000$c2FsdHNhbHQ$AAAA")); // short hash
  EXPECT_FALSE(PasswordHash::parse("pbkdf2-sha256$10000$c2FsdHNhbHQ$x$y"));
  EXPECT_FALSE(PasswordHash::parse("pbkdf2-sha256$99999999999$c2FsdHNhbHQ$AAAA"));
}

TEST(Base64, RoundTrips) {
  for (size_t n = 0; n < 20; ++n) {
    std::vector<uint8_t> data(n);
    for (size_t i = 0; i < n; ++i) {
      data[i] = static_cast<uint8_t>(i * 37 + 11);
    }
    auto back = base64Decode(base64Encode(data));
    ASSERT_TRUE(back);
    EXPECT_EQ(*back, data);
  }
  EXPECT_FALSE(base64Decode("A"));
  EXPECT_FALSE(base64Decode("AB=="));
}
