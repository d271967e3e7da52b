// SPDX-License-Identifier: GPL-3.0-or-later
// iotgwctl's command line: options anywhere and as --opt=value, and an error that names the one
// thing wrong, found before the bus is touched.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "daemon/iotgwctl_args.h"

using iotgw::ctl::Invocation;
using iotgw::ctl::parseCommandLine;

namespace {

// Parses `args` as iotgwctl's argv (getopt permutes it: a copy each time).
std::expected<Invocation, std::string> parse(std::vector<std::string> args) {
  args.insert(args.begin(), "iotgwctl");
  std::vector<char*> argv;
  for (auto& a : args) {
    argv.push_back(a.data());
  }
  argv.push_back(nullptr);
  return parseCommandLine(static_cast<int>(args.size()), argv.data());
}

std::string error(std::vector<std::string> args) {
  const auto r = parse(std::move(args));
  return r ? std::string("(parsed)") : r.error();
}

TEST(IotgwctlArgs, OptionsGoAnywhere) {
  for (const auto& args :
       std::vector<std::vector<std::string>>{{"--json", "status"}, {"status", "--json"}}) {
    const auto r = parse(args);
    ASSERT_TRUE(r) << r.error();
    EXPECT_TRUE(r->json);
    EXPECT_EQ(r->command, "status");
    EXPECT_TRUE(r->operands.empty());
  }
  const auto q = parse({"quarantine", "--reason=telnet open", "cam-01"});
  ASSERT_TRUE(q) << q.error();
  EXPECT_EQ(q->operands, std::vector<std::string>{"cam-01"});
  EXPECT_EQ(q->reason, "telnet open");
  const auto w = parse({"--count", "3", "watch", "--json"});
  ASSERT_TRUE(w) << w.error();
  EXPECT_EQ(w->count, 3U);
  EXPECT_TRUE(w->json);
}

TEST(IotgwctlArgs, StdinIsAFileAndDoubleDashEndsTheOptions) {
  const auto r = parse({"enroll", "thermo-01", "-"});
  ASSERT_TRUE(r) << r.error();
  EXPECT_EQ(r->operands, (std::vector<std::string>{"thermo-01", "-"}));
  const auto d = parse({"enroll", "--", "thermo-01", "--json"});
  ASSERT_TRUE(d) << d.error();
  EXPECT_FALSE(d->json);
  EXPECT_EQ(d->operands[1], "--json") << "a file of that name";
}

TEST(IotgwctlArgs, VersionAndHelpNeedNoCommand) {
  EXPECT_TRUE(parse({"--version"})->version);
  EXPECT_TRUE(parse({"-h"})->help);
  EXPECT_TRUE(parse({"status", "--help"})->help);
}

TEST(IotgwctlArgs, EachMistakeIsNamed) {
  EXPECT_EQ(error({"--json"}), "no command given");
  EXPECT_EQ(error({"stauts"}), "unknown command 'stauts'");
  EXPECT_EQ(error({"status", "--verbose"}), "unknown option '--verbose'");
  EXPECT_EQ(error({"status", "-x"}), "unknown option '-x'");
  EXPECT_EQ(error({"show"}), "'show' takes ID (0 given)");
  EXPECT_EQ(error({"enroll", "thermo-01"}), "'enroll' takes ID FILE (1 given)");
  EXPECT_EQ(error({"status", "extra"}), "'status' takes no arguments (1 given)");
  EXPECT_EQ(error({"show", "Thermo 01"}),
            "'Thermo 01' is not a device id (1 to 63 of a-z 0-9 . _ -, starting with a letter or "
            "digit)");
  EXPECT_EQ(error({"quarantine", "cam-01"}), "'quarantine' needs --reason TEXT");
  EXPECT_EQ(error({"quarantine", "cam-01", "--reason"}), "--reason needs a value");
  EXPECT_EQ(error({"release", "cam-01", "--reason", "x"}),
            "--reason is for 'quarantine', not 'release'");
  EXPECT_EQ(error({"status", "--count=2"}), "--count is for 'watch', not 'status'");
  EXPECT_EQ(error({"watch", "--count", "0"}), "--count needs a number from 1 to 1000000, not '0'");
  EXPECT_EQ(error({"watch", "--count=3x"}), "--count needs a number from 1 to 1000000, not '3x'");
}

} // namespace
