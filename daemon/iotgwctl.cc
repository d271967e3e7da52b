// SPDX-License-Identifier: GPL-3.0-or-later
// iotgwctl: the reference client of iotgwd's control API (org.iotgw.Gateway1 on the system bus).
//
// Exit codes: 0 done; 1 the gateway could not do it (Rejected, Failed, other errors); 2 invalid
// input (usage, a malformed id or policy, no such device, ...); 3 access denied; 4 iotgwd is not
// running (or the bus is not there).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
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
#include "iotgw/build_config.h"
#include "org.iotgw.Gateway1_proxy.h"

namespace {

using iotgw::ctl::Invocation;

enum Exit { Ok = 0, Failed = 1, Invalid = 2, Denied = 3, NotRunning = 4 };

std::string json(const std::string& s);
std::string jsonObject(const std::map<std::string, sdbus::Variant>& m);

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
    std::string line = asJson_ ? fmt::format("{{\"signal\": {}", json(signal)) : signal;
    for (const auto& [name, value] : args) {
      line += asJson_ ? fmt::format(", {}: {}", json(name), value) : " " + value;
    }
    std::puts((line + (asJson_ ? "}" : "")).c_str());
    std::fflush(stdout);
    if (remaining_ != 0 && --remaining_ == 0) {
      connection_.leaveEventLoop();
    }
  }
  std::string quoted(const std::string& s) const { return asJson_ ? json(s) : s; }

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
    print("PropertiesChanged",
          {{"interface", quoted(interface)}, {"changed", asJson_ ? jsonObject(changed) : [&] {
                                                std::string out;
                                                for (const auto& [k, v] : changed) {
                                                  out += (out.empty() ? "" : " ") + k + "=" +
                                                         (v.peekValueType() == "u"
                                                              ? std::to_string(v.get<uint32_t>())
                                                              : std::string("?"));
                                                }
                                                return out;
                                              }()}});
  }

  sdbus::IConnection& connection_;
  bool asJson_ = false;
  bool watching_ = false;
  unsigned remaining_ = 0;
};

std::string json(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
    case '"':
      out += "\\\"";
      break;
    case '\\':
      out += "\\\\";
      break;
    case '\n':
      out += "\\n";
      break;
    case '\r':
      out += "\\r";
      break;
    case '\t':
      out += "\\t";
      break;
    default:
      if (c < 0x20) {
        out += fmt::format("\\u{:04x}", c);
      } else {
        out += static_cast<char>(c);
      }
    }
  }
  return out + "\"";
}

std::string text(const sdbus::Variant& v) {
  const std::string sig = v.peekValueType();
  if (sig == "s") {
    return v.get<std::string>();
  }
  if (sig == "b") {
    return v.get<bool>() ? "true" : "false";
  }
  if (sig == "u") {
    return std::to_string(v.get<uint32_t>());
  }
  if (sig == "t") {
    return std::to_string(v.get<uint64_t>());
  }
  if (sig == "x") {
    return std::to_string(v.get<int64_t>());
  }
  if (sig == "d") {
    return fmt::format("{:.1f}", v.get<double>());
  }
  return "?";
}

std::string jsonValue(const sdbus::Variant& v) {
  return v.peekValueType() == "s" ? json(v.get<std::string>()) : text(v);
}

std::string jsonObject(const std::map<std::string, sdbus::Variant>& m) {
  std::string out = "{";
  for (const auto& [k, v] : m) {
    out += (out.size() > 1 ? ", " : "") + json(k) + ": " + jsonValue(v);
  }
  return out + "}";
}

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
                           out.size() > 1 ? ", " : "", json(d.get<0>()), json(d.get<1>()),
                           d.get<2>() ? "true" : "false");
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
      std::printf("{\"id\": %s, \"state\": %s, \"policy\": %s}\n", json(a[1]).c_str(),
                  jsonObject(state).c_str(), json(policy).c_str());
    } else {
      std::printf("device %s\n", a[1].c_str());
      for (const auto& [k, v] : state) {
        std::printf("  %-22s %s\n", k.c_str(), text(v).c_str());
      }
      std::printf("policy:\n%s%s", policy.c_str(), policy.ends_with("\n") ? "" : "\n");
    }
    return Ok;
  }
  if (cmd == "status") {
    const auto s = gw.GetStatus();
    if (asJson) {
      std::puts(jsonObject(s).c_str());
    } else {
      for (const auto& [k, v] : s) {
        std::printf("%-18s %s\n", k.c_str(), text(v).c_str());
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
