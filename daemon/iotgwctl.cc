// SPDX-License-Identifier: GPL-3.0-or-later
// iotgwctl: the reference client of iotgwd's control API (org.iotgw.Gateway1 on the system bus).
//
// Exit codes: 0 done; 1 the gateway could not do it (Rejected, Failed, other errors); 2 invalid
// input (usage, a malformed id or policy, no such device, ...); 3 access denied; 4 iotgwd is not
// running (or the bus is not there).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <sdbus-c++/sdbus-c++.h>

#include "daemon/iotgwctl_args.h"
#include "daemon/iotgwctl_format.h"
#include "iotgw/build_config.h"
#include "org.iotgw.Gateway1_proxy.h"

namespace {

using iotgw::ctl::Fields;
using iotgw::ctl::Invocation;
using iotgw::ctl::jsonObject;
using iotgw::ctl::jsonString;

enum Exit { Ok = 0, Failed = 1, Invalid = 2, Denied = 3, NotRunning = 4 };

Fields fieldsOf(const std::map<std::string, sdbus::Variant>& m);
std::int64_t now();

class Gateway final
    : public sdbus::ProxyInterfaces<org::iotgw::Gateway1::Manager_proxy, sdbus::Properties_proxy> {
public:
  Gateway(sdbus::IConnection& c)
      : ProxyInterfaces(c, "org.iotgw.Gateway1", "/org/iotgw/Gateway1"), connection_(c) {
    registerProxy();
  }
  ~Gateway() { unregisterProxy(); }

  // `iotgwctl watch`: print signals until `count` of them (0: forever) have come.
  void watch(bool asJson, unsigned count) {
    asJson_ = asJson;
    remaining_ = count;
    watching_ = true;
    connection_.enterEventLoop();
  }

private:
  // One line per signal: "Signal field..." or a JSON object with the signal's argument names.
  void print(const char* signal, std::initializer_list<std::pair<const char*, std::string>> args) {
    if (!watching_) {
      return;
    }
    std::string line = asJson_ ? fmt::format("{{\"signal\": {}", jsonString(signal)) : signal;
    for (const auto& [name, value] : args) {
      line += asJson_ ? fmt::format(", {}: {}", jsonString(name), value) : " " + value;
    }
    std::puts((line + (asJson_ ? "}" : "")).c_str());
    std::fflush(stdout);
    if (remaining_ != 0 && --remaining_ == 0) {
      connection_.leaveEventLoop();
    }
  }
  std::string quoted(const std::string& s) const { return asJson_ ? jsonString(s) : s; }

  void onDeviceChanged(const std::string& id, const std::string& what) override {
    print("DeviceChanged", {{"id", quoted(id)}, {"change", quoted(what)}});
  }
  void onPolicyViolation(const std::string& id, const std::string& rule,
                         const std::string& provision, const std::string& action) override {
    print("PolicyViolation", {{"id", quoted(id)},
                              {"rule", quoted(rule)},
                              {"provision", quoted(provision)},
                              {"action", quoted(action)}});
  }
  void onDeviceQuarantined(const std::string& id, const std::string& reason) override {
    print("DeviceQuarantined", {{"id", quoted(id)}, {"reason", quoted(reason)}});
  }
  void onPropertiesChanged(const std::string& interface,
                           const std::map<std::string, sdbus::Variant>& changed,
                           const std::vector<std::string>&) override {
    print("PropertiesChanged", {{"interface", quoted(interface)},
                                {"changed", asJson_ ? jsonObject(fieldsOf(changed)) : [&] {
                                   std::string out;
                                   for (const auto& [k, v] : fieldsOf(changed)) {
                                     out += (out.empty() ? "" : " ") + k + "=" +
                                            iotgw::ctl::humanValue(k, v, now());
                                   }
                                   return out;
                                 }()}});
  }

  sdbus::IConnection& connection_;
  bool asJson_ = false;
  bool watching_ = false;
  unsigned remaining_ = 0;
};

// The a{sv} answer as values this client prints; a type it does not know stays unknown (null).
Fields fieldsOf(const std::map<std::string, sdbus::Variant>& m) {
  Fields out;
  for (const auto& [k, v] : m) {
    const std::string sig = v.peekValueType();
    iotgw::ctl::Value value;
    if (sig == "s" || sig == "o" || sig == "g") {
      value = v.get<std::string>();
    } else if (sig == "b") {
      value = v.get<bool>();
    } else if (sig == "y") {
      value = std::uint64_t{v.get<uint8_t>()};
    } else if (sig == "q") {
      value = std::uint64_t{v.get<uint16_t>()};
    } else if (sig == "u") {
      value = std::uint64_t{v.get<uint32_t>()};
    } else if (sig == "t") {
      value = v.get<uint64_t>();
    } else if (sig == "n") {
      value = std::int64_t{v.get<int16_t>()};
    } else if (sig == "i") {
      value = std::int64_t{v.get<int32_t>()};
    } else if (sig == "x") {
      value = v.get<int64_t>();
    } else if (sig == "d") {
      value = v.get<double>();
    }
    out.emplace_back(k, std::move(value));
  }
  return out;
}

std::int64_t now() { return static_cast<std::int64_t>(std::time(nullptr)); }

int fromError(const sdbus::Error& e) {
  const std::string& n = e.getName();
  const auto say = [](const std::string& what) {
    std::fprintf(stderr, "iotgwctl: %s\n", what.c_str());
  };
  if (n == "org.freedesktop.DBus.Error.AccessDenied") {
    // The bus refused before iotgwd saw the call; its own message names rules, not people.
    say("access denied by the bus policy: changing the gateway needs root or group iotgw-admin, "
        "reading it group iotgw");
    return Denied;
  }
  if (n == "org.freedesktop.DBus.Error.ServiceUnknown" ||
      n == "org.freedesktop.DBus.Error.NameHasNoOwner" ||
      n == "org.freedesktop.DBus.Error.NoServer" ||
      n == "org.freedesktop.DBus.Error.FileNotFound" ||
      n == "org.freedesktop.DBus.Error.Disconnected" || n.starts_with("System.Error.ENOENT") ||
      n.starts_with("System.Error.ECONNREFUSED")) {
    say("iotgwd is not running (no org.iotgw.Gateway1 on the system bus: " + e.getMessage() + ")");
    return NotRunning;
  }
  say(e.getMessage().empty() ? n : e.getMessage());
  if (n == "org.iotgw.Gateway1.Error.AccessDenied") {
    return Denied;
  }
  for (const char* invalid :
       {"InvalidPolicy", "InvalidArgument", "NoSuchDevice", "DeviceExists", "ReadOnly"}) {
    if (n == std::string("org.iotgw.Gateway1.Error.") + invalid) {
      return Invalid;
    }
  }
  return Failed;
}

bool readDocument(const std::string& file, std::string& out) {
  if (file == "-") {
    out.assign(std::istreambuf_iterator<char>(std::cin), {});
    return true;
  }
  std::ifstream f(file, std::ios::binary);
  if (!f) {
    std::fprintf(stderr, "iotgwctl: cannot read %s\n", file.c_str());
    return false;
  }
  std::ostringstream ss;
  ss << f.rdbuf();
  out = ss.str();
  return true;
}

// A usage error: what is wrong, and where the rest is.
int usage(const std::string& why) {
  std::fprintf(stderr, "iotgwctl: %s\nTry 'iotgwctl --help'.\n", why.c_str());
  return Invalid;
}

// The command line is checked (iotgwctl_args.h); `document` is the FILE of enroll and set-policy.
int run(Gateway& gw, const Invocation& inv, const std::string& document) {
  const std::string& cmd = inv.command;
  const bool asJson = inv.json;
  std::vector<std::string> a{cmd};
  a.insert(a.end(), inv.operands.begin(), inv.operands.end());
  if (cmd == "devices") {
    const auto devices = gw.ListDevices();
    if (asJson) {
      std::string out = "[";
      for (const auto& d : devices) {
        out += fmt::format("{}{{\"id\": {}, \"source\": {}, \"quarantined\": {}}}",
                           out.size() > 1 ? ", " : "", jsonString(d.get<0>()),
                           jsonString(d.get<1>()), d.get<2>() ? "true" : "false");
      }
      std::puts((out + "]").c_str());
    } else {
      for (const auto& d : devices) {
        std::printf("%-32s %-5s%s\n", d.get<0>().c_str(), d.get<1>().c_str(),
                    d.get<2>() ? "  quarantined" : "");
      }
    }
    return Ok;
  }
  if (cmd == "show") {
    const auto [policy, state] = gw.GetDevice(a[1]);
    if (asJson) {
      std::printf("{\"id\": %s, \"state\": %s, \"policy\": %s}\n", jsonString(a[1]).c_str(),
                  jsonObject(fieldsOf(state)).c_str(), jsonString(policy).c_str());
    } else {
      std::printf("device %s\n", a[1].c_str());
      for (const auto& [k, v] : fieldsOf(state)) {
        std::printf("  %-25s %s\n", k.c_str(), iotgw::ctl::humanValue(k, v, now()).c_str());
      }
      std::printf("policy:\n%s%s", policy.c_str(), policy.ends_with("\n") ? "" : "\n");
    }
    return Ok;
  }
  if (cmd == "status") {
    const auto s = gw.GetStatus();
    if (asJson) {
      std::puts(jsonObject(fieldsOf(s)).c_str());
    } else {
      for (const auto& [k, v] : fieldsOf(s)) {
        std::printf("%-25s %s\n", k.c_str(), iotgw::ctl::humanValue(k, v, now()).c_str());
      }
    }
    return Ok;
  }
  if (cmd == "enroll" || cmd == "set-policy") {
    if (cmd == "enroll") {
      gw.EnrollDevice(a[1], document);
      std::printf("%s enrolled\n", a[1].c_str());
    } else {
      gw.SetDevicePolicy(a[1], document);
      std::printf("%s: policy replaced\n", a[1].c_str());
    }
    return Ok;
  }
  if (cmd == "remove") {
    gw.RemoveDevice(a[1]);
    std::printf("%s removed\n", a[1].c_str());
    return Ok;
  }
  if (cmd == "quarantine") {
    gw.Quarantine(a[1], *inv.reason);
    std::printf("%s quarantined\n", a[1].c_str());
    return Ok;
  }
  if (cmd == "release") {
    gw.Release(a[1]);
    std::printf("%s released\n", a[1].c_str());
    return Ok;
  }
  if (cmd == "watch") {
    const unsigned count = inv.count.value_or(0);
    gw.Version(); // fails with "not running" now rather than waiting on silence
    if (!asJson) {
      std::puts("watching org.iotgw.Gateway1 (Ctrl-C to stop)");
      std::fflush(stdout);
    }
    gw.watch(asJson, count);
    return Ok;
  }
  if (cmd == "reload") {
    gw.Reload();
    std::puts("reloaded");
    return Ok;
  }
  return usage("unknown command '" + cmd + "'"); // the parser knows every command above
}

} // namespace

int main(int argc, char** argv) {
  if (argc == 1) {
    std::fputs(iotgw::ctl::kUsage, stderr);
    return Invalid;
  }
  const auto inv = iotgw::ctl::parseCommandLine(argc, argv);
  if (!inv) {
    return usage(inv.error());
  }
  if (inv->help) {
    std::fputs(iotgw::ctl::kUsage, stdout);
    return Ok;
  }
  if (inv->version) {
    std::printf("iotgwctl %s\n", IOTGW_VERSION);
    return Ok;
  }
  // Read before the bus is touched: a missing file is the caller's mistake, found at once.
  std::string document;
  if ((inv->command == "enroll" || inv->command == "set-policy") &&
      !readDocument(inv->operands[1], document)) {
    return Invalid;
  }
  try {
    auto connection = sdbus::createSystemBusConnection();
    Gateway gw(*connection);
    return run(gw, *inv, document);
  } catch (const sdbus::Error& e) {
    return fromError(e);
  }
}
