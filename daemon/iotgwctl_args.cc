// SPDX-License-Identifier: GPL-3.0-or-later
#include "daemon/iotgwctl_args.h"

#include <getopt.h>

#include <charconv>
#include <cstring>
#include <string_view>

#include <fmt/format.h>

#include "policy/device.h"

namespace iotgw::ctl {

const char* const kUsage = R"(usage: iotgwctl [--json] COMMAND [ARGS]

  devices                      list enrolled devices
  show ID                      a device's policy, state and traffic counters
  status                       the gateway's state
  enroll ID FILE               enrol a device with a policy document (FILE or - for stdin)
  set-policy ID FILE           replace an API-enrolled device's policy
  remove ID                    remove a device and everything kept about it
  quarantine ID --reason TEXT  cut a device off (DHCP only) and end its sessions
  release ID                   end a quarantine
  reload                       re-read the configuration and devices.d/ (as SIGHUP)
  watch [--count N]            print the gateway's signals as they come (DeviceChanged,
                               PolicyViolation, DeviceQuarantined, DeviceCount changes),
                               one line each; stop after N of them

Options go anywhere, as --opt VALUE or --opt=VALUE:
  --json                       read commands print JSON
  --version                    iotgwctl's version
  --help, -h                   this text

Exit codes: 0 ok, 1 failed, 2 invalid input, 3 access denied, 4 iotgwd not running.
)";

namespace {

struct Command {
  std::string_view name;
  std::vector<std::string_view> operands; // their names, in order
  bool reason = false;                    // takes (and needs) --reason
  bool count = false;                     // takes --count
};

const std::vector<Command>& commands() {
  static const std::vector<Command> all = {
      {"devices", {}},
      {"show", {"ID"}},
      {"status", {}},
      {"enroll", {"ID", "FILE"}},
      {"set-policy", {"ID", "FILE"}},
      {"remove", {"ID"}},
      {"quarantine", {"ID"}, true},
      {"release", {"ID"}},
      {"reload", {}},
      {"watch", {}, false, true},
  };
  return all;
}

std::string takes(const Command& c) {
  std::string s = fmt::format("'{}' takes", c.name);
  if (c.operands.empty()) {
    return s + " no arguments";
  }
  for (const auto o : c.operands) {
    s += fmt::format(" {}", o);
  }
  return s;
}

std::optional<unsigned> countOf(std::string_view text) {
  unsigned long n = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec != std::errc() || end != text.data() + text.size() || n == 0 || n > 1'000'000) {
    return std::nullopt;
  }
  return static_cast<unsigned>(n);
}

} // namespace

std::expected<Invocation, std::string> parseCommandLine(int argc, char** argv) {
  enum : int { kJson = 1000, kReason, kCount, kVersion };
  static const option longOptions[] = {
      {"json", no_argument, nullptr, kJson},
      {"help", no_argument, nullptr, 'h'},
      {"version", no_argument, nullptr, kVersion},
      {"reason", required_argument, nullptr, kReason},
      {"count", required_argument, nullptr, kCount},
      {nullptr, 0, nullptr, 0},
  };
  Invocation inv;
  std::optional<std::string> countText;
  opterr = 0; // our messages, not getopt's
  optind = 0; // GNU: start over (and permute: options after operands are options too)
  for (;;) {
    const int c = getopt_long(argc, argv, ":h", longOptions, nullptr);
    if (c == -1) {
      break;
    }
    // The element getopt has just looked at (it moves past it, also when it is wrong).
    const std::string given = optind > 0 && optind <= argc ? argv[optind - 1] : "";
    switch (c) {
    case kJson:
      inv.json = true;
      break;
    case 'h':
      inv.help = true;
      break;
    case kVersion:
      inv.version = true;
      break;
    case kReason:
      inv.reason = optarg;
      break;
    case kCount:
      countText = optarg;
      break;
    case ':':
      return std::unexpected(fmt::format("{} needs a value", given.substr(0, given.find('='))));
    default:
      return std::unexpected(optopt != 0 ? fmt::format("unknown option '-{}'", char(optopt))
                                         : fmt::format("unknown option '{}'", given));
    }
  }
  if (inv.help || inv.version) {
    return inv;
  }
  if (optind >= argc) {
    return std::unexpected("no command given");
  }
  inv.command = argv[optind];
  for (int i = optind + 1; i < argc; ++i) {
    inv.operands.emplace_back(argv[i]);
  }
  const Command* cmd = nullptr;
  for (const auto& c : commands()) {
    if (c.name == inv.command) {
      cmd = &c;
    }
  }
  if (cmd == nullptr) {
    return std::unexpected(fmt::format("unknown command '{}'", inv.command));
  }
  if (inv.operands.size() != cmd->operands.size()) {
    return std::unexpected(fmt::format("{} ({} given)", takes(*cmd), inv.operands.size()));
  }
  for (size_t i = 0; i < cmd->operands.size(); ++i) {
    if (cmd->operands[i] == "ID" && !policy::DeviceId::parse(inv.operands[i])) {
      return std::unexpected(fmt::format("'{}' is not a device id (1 to 63 of a-z 0-9 . _ -, "
                                         "starting with a letter or digit)",
                                         inv.operands[i]));
    }
  }
  if (inv.reason && !cmd->reason) {
    return std::unexpected(fmt::format("--reason is for 'quarantine', not '{}'", cmd->name));
  }
  if (cmd->reason && (!inv.reason || inv.reason->empty())) {
    return std::unexpected("'quarantine' needs --reason TEXT");
  }
  if (countText && !cmd->count) {
    return std::unexpected(fmt::format("--count is for 'watch', not '{}'", cmd->name));
  }
  if (countText) {
    inv.count = countOf(*countText);
    if (!inv.count) {
      return std::unexpected(
          fmt::format("--count needs a number from 1 to 1000000, not '{}'", *countText));
    }
  }
  return inv;
}

} // namespace iotgw::ctl
