// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// What the bridge table's reports mean for the enrolled devices: which device a report is about,
// whether it binds a device's MAC to the port it came in on, and which event it is. Pure: the
// daemon persists bindings, applies them and raises the events.
//
// The rule (packaging/doc/firewall.md): an enrolled MAC is bound to the first port it is seen on
// after enrolment (or that port's interface group, when the port has one) and stays bound —
// across restarts, while the device is offline, and whatever comes in elsewhere — until an
// administrator releases the binding. Elsewhere it is dropped and reported. A device moved to
// another port is the one case this refuses that a household might expect to work; the event
// says how to release it, and ports that are one place to the household (the gateway's radios,
// the uplinks of its access points) go into one interface group, among whose ports a device
// roams freely.

#include <array>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "firewall/compile.h"
#include "firewall/reports.h"
#include "policy/events.h"
#include "policy/policy_set.h"

namespace iotgw::firewall {

// The port a report came in on, as the gateway knows it.
struct PortInfo {
  std::string name;
  uint32_t group = 0;
};

struct Finding {
  std::optional<std::pair<std::string, PortBinding>> bind; // device id -> its new binding
  std::optional<policy::Event> event;
};

class PortBook {
public:
  explicit PortBook(std::shared_ptr<const policy::PolicySet> policies);
  // What one report means, with the bindings in force and the port it came in on (nullopt when
  // the port is not known yet, e.g. it went between the frame and the report).
  [[nodiscard]] Finding interpret(const Report& r,
                                  const std::map<std::string, PortBinding>& bindings,
                                  const std::optional<PortInfo>& port) const;

private:
  [[nodiscard]] const policy::DevicePolicy* byMac(const policy::MacAddress& m) const;
  std::shared_ptr<const policy::PolicySet> policies_;
  std::map<std::array<uint8_t, 6>, const policy::DevicePolicy*> byMac_;
};

// "port gw-dev" or "interface group 7".
[[nodiscard]] std::string describe(const PortBinding& b);

} // namespace iotgw::firewall
