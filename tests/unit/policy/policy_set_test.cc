// SPDX-License-Identifier: GPL-3.0-or-later
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "policy/policy_set.h"

using namespace iotgw::policy;
namespace fs = std::filesystem;

namespace {

class TempDir {
public:
  TempDir() {
    char tmpl[] = "/tmp/iotgw-test-XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  [[nodiscard]] const fs::path& path() const { return path_; }
  void write(const std::string& name, const std::string& text) const {
    std::ofstream(path_ / name) << text;
  }

private:
  fs::path path_;
};

std::string device(const std::string& id, const std::string& mac, const std::string& addr) {
  return "[device]\nid = \"" + id + "\"\nmac = \"" + mac + "\"\naddresses = [\"" + addr + "\"]\n";
}

} // namespace

TEST(PolicySet, LoadsDirectoriesInOrder) {
  TempDir a;
  TempDir b;
  a.write("z-dev.toml", device("z-dev", "02:00:00:00:00:01", "192.168.50.1"));
  a.write("a-dev.toml", device("a-dev", "02:00:00:00:00:02", "192.168.50.2"));
  a.write("README", "not a policy");
  b.write("m-dev.toml", device("m-dev", "02:00:00:00:00:03", "192.168.50.3"));
  auto devices = loadPolicyDirectories({a.path(), b.path(), "/nonexistent/dir"}, 100);
  ASSERT_TRUE(devices) << devices.error().front().str();
  auto set = PolicySet::build(std::move(*devices));
  ASSERT_TRUE(set);
  ASSERT_EQ((*set)->size(), 3u);
  EXPECT_EQ((*set)->devices()[0].id.str(), "a-dev");
  EXPECT_NE((*set)->find(*DeviceId::parse("m-dev")), nullptr);
  EXPECT_EQ((*set)->find(*DeviceId::parse("q-dev")), nullptr);
  EXPECT_EQ((*set)->findByAddress(*IpAddress::parse("192.168.50.3"))->id.str(), "m-dev");
}

TEST(PolicySet, FileNameMustMatchId) {
  TempDir a;
  a.write("wrong.toml", device("right", "02:00:00:00:00:01", "192.168.50.1"));
  auto devices = loadPolicyDirectories({a.path()}, 100);
  ASSERT_FALSE(devices);
  EXPECT_EQ(devices.error().front().line, 2u);
  EXPECT_NE(devices.error().front().message.find("does not match the file name"),
            std::string::npos);
}

TEST(PolicySet, OneBadFileRejectsAll) {
  TempDir a;
  a.write("good.toml", device("good", "02:00:00:00:00:01", "192.168.50.1"));
  a.write("bad.toml", "[device]\nid = \"bad\"\nmac = 7\n");
  auto devices = loadPolicyDirectories({a.path()}, 100);
  ASSERT_FALSE(devices);
  EXPECT_EQ(devices.error().front().source, (a.path() / "bad.toml").string());
  EXPECT_EQ(devices.error().front().line, 3u);
}

TEST(PolicySet, RefusesConflictingIdentities) {
  TempDir a;
  a.write("one.toml", device("one", "02:00:00:00:00:01", "192.168.50.1"));
  a.write("two.toml", device("two", "02:00:00:00:00:01", "192.168.50.1"));
  auto devices = loadPolicyDirectories({a.path()}, 100);
  ASSERT_TRUE(devices);
  auto set = PolicySet::build(std::move(*devices));
  ASSERT_FALSE(set);
  ASSERT_EQ(set.error().size(), 2u);
  EXPECT_EQ(set.error()[0].line, 3u); // mac of two.toml
  EXPECT_NE(set.error()[0].message.find("already belongs to device 'one'"), std::string::npos);
  EXPECT_EQ(set.error()[1].line, 4u); // address
  EXPECT_EQ(set.error()[1].column, 14u);
}

TEST(PolicySet, EnforcesDeviceLimit) {
  TempDir a;
  for (int i = 0; i < 5; ++i) {
    const std::string id = "d" + std::to_string(i);
    a.write(id + ".toml",
            device(id, "02:00:00:00:00:1" + std::to_string(i), "192.168.50.1" + std::to_string(i)));
  }
  EXPECT_TRUE(loadPolicyDirectories({a.path()}, 5));
  auto over = loadPolicyDirectories({a.path()}, 4);
  ASSERT_FALSE(over);
  EXPECT_NE(over.error().back().message.find("more than 4 devices"), std::string::npos);
}
