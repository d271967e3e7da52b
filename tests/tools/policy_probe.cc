// SPDX-License-Identifier: GPL-3.0-or-later
// Demo helper: loads device policies with iotgwd's own loader and asks its policy evaluator about
// a scripted series of requests a legacy device (and an attacker) would make, printing each
// decision. It shows the engine that the MQTT and CoAP proxies enforce on the wire.
//
// usage: iotgw-policy-probe DEVICES_DIR PASSWORD
#include <cstdio>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "policy/evaluator.h"
#include "policy/policy_set.h"

using namespace iotgw::policy;

namespace {

int shown = 0;

void show(const std::string& what, const Decision& d) {
  ++shown;
  if (d.allowed()) {
    fmt::print("  {:<64} ALLOW  ({})\n", what, d.rule);
  } else {
    fmt::print("  {:<64} DENY   EN 303 645 {} [{}]: {} -> {}\n", what, d.provision, d.rule,
               d.reason, toString(d.action));
  }
}

std::span<const uint8_t> bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

} // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fputs("usage: iotgw-policy-probe DEVICES_DIR PASSWORD\n", stderr);
    return 2;
  }
  auto devices = loadPolicyDirectories({argv[1]}, 100);
  if (!devices) {
    for (const auto& d : devices.error()) {
      fmt::print(stderr, "{}\n", d.str());
    }
    return 1;
  }
  auto set = PolicySet::build(std::move(*devices));
  if (!set) {
    return 1;
  }
  const DefaultCredentials defaults;
  const std::string password = argv[2];
  const auto peer = IpAddress::parse("192.168.50.10");
  const auto stranger = IpAddress::parse("192.168.50.66");

  // What the session does: the password is checked (off the event loop in iotgwd) in between.
  const auto login = [&](const ConnectFacts& f) {
    const ConnectDecision pending = evaluateConnect(**set, defaults, f);
    if (pending.passwordHash == nullptr) {
      return pending;
    }
    return evaluateVerifiedConnect(pending, pending.passwordHash->verify(f.password.value_or("")),
                                   f);
  };
  fmt::print("MQTT logins\n");
  show("CONNECT root / xc3511 (Mirai's first guess)",
       evaluateConnect(**set, defaults, {"thermo-01", "root", "xc3511", nullptr, stranger, false})
           .decision);
  show("CONNECT admin / admin",
       evaluateConnect(**set, defaults, {"thermo-01", "admin", "admin", nullptr, peer, false})
           .decision);
  show("CONNECT thermo / wrong-password",
       login({"thermo-01", "thermo", "hunter2", nullptr, peer, false}).decision);
  show("CONNECT anonymous from an unknown host",
       evaluateConnect(**set, defaults, {"x", std::nullopt, std::nullopt, nullptr, stranger, false})
           .decision);
  const auto ok = login({"thermo-01", "thermo", password, nullptr, peer, false});
  show("CONNECT thermo / (its own password) from 192.168.50.10", ok.decision);
  if (ok.device == nullptr) {
    return 1;
  }
  const DevicePolicy& thermo = *ok.device;

  fmt::print("Messages from the device\n");
  const auto pub = [&](const std::string& topic, const std::string& payload, uint8_t qos = 0,
                       bool retain = false) {
    show(fmt::format("PUBLISH {} {}", topic,
                     payload.size() > 24 ? "<" + std::to_string(payload.size()) + " bytes>"
                                         : payload),
         evaluatePublish(thermo, {"thermo", topic, qos, retain, bytes(payload)}));
  };
  pub("devices/thermo-01/telemetry/temp", R"({"t":21.5,"unit":"C"})", 1);
  pub("devices/thermo-01/telemetry/temp", R"({"t":900,"unit":"C"})");
  pub("devices/thermo-01/telemetry/temp", R"({"t":21.5})");
  pub("devices/door-lock/cmd/open", "1");
  pub("devices/thermo-01/telemetry/temp", R"({"t":21.5,"unit":"C"})", 2);
  pub("devices/thermo-01/state", "online", 0, true);
  pub("devices/thermo-01/telemetry/temp", std::string(4096, 'A'));
  show("SUBSCRIBE #", evaluateSubscribe(thermo, {"thermo", "#", 0}));
  show("SUBSCRIBE $SYS/#", evaluateSubscribe(thermo, {"thermo", "$SYS/#", 0}));
  const Decision sub = evaluateSubscribe(thermo, {"thermo", "devices/thermo-01/cmd/#", 2});
  show(fmt::format("SUBSCRIBE devices/thermo-01/cmd/# QoS 2 (granted QoS {})", sub.grantedQos),
       sub);

  fmt::print("Messages to the device (its parser is the weak one)\n");
  const auto deliver = [&](const std::string& topic, const std::string& payload) {
    show(fmt::format("deliver {} {}", topic, payload),
         evaluateDelivery(thermo, {"thermo", topic, 0, false, bytes(payload)}));
  };
  deliver("devices/thermo-01/cmd/setpoint", R"({"t":20})");
  deliver("devices/thermo-01/cmd/setpoint", R"({"t":20,"t":99})");

  fmt::print("CoAP requests to the device\n");
  show("GET /sensors/temp",
       evaluateCoapRequest(thermo, {CoapMethod::Get, "/sensors/temp", 0, std::nullopt}));
  show("PUT /firmware", evaluateCoapRequest(thermo, {CoapMethod::Put, "/firmware", 200, 42}));
  return shown > 0 ? 0 : 1;
}
