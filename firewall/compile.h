// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// From a policy snapshot to the ruleset of table `inet iotgw` (EN 303 645 5.5-5, 5.5-7, 5.6-1,
// 5.6-5, 5.3-15). Pure: the same inputs give the same value.
//
// What the table says, for traffic entering or leaving the device-segment interfaces:
//  * prerouting: a packet whose source address is bound to a MAC but arrives from another MAC is
//    dropped (anti-spoofing); the rest is counted per device (tx);
//  * nat prerouting: device MQTT/CoAP aimed at another host goes to iotgwd (interception);
//  * input: from the segment only the gateway's device-side ports, DHCP, DNS and essential ICMP;
//  * forward: device -> anywhere only where its policy allows; anything -> device never, except
//    replies to what the device was allowed to start;
//  * output: the gateway reaches a device only on the services its policy lists (and for the
//    exposure scan, whose probes carry a mark);
//  * postrouting: traffic to each device counted (rx);
//  * a quarantined device reaches DHCP only, and nothing reaches it but DHCP replies.
// Traffic that never touches the device segment is not this table's business: base chains
// accept it.

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "firewall/ruleset.h"
#include "policy/policy_set.h"

namespace iotgw::firewall {

// The exposure scan's probes carry this mark, so that the output chain lets them through to ports
// the device's policy does not list ("iotg").
inline constexpr uint32_t kScanMark = 0x696f7467;

struct Service {
  uint8_t protocol = 6; // IPPROTO_TCP / IPPROTO_UDP
  uint16_t port = 0;
  auto operator<=>(const Service&) const = default;
};

struct CompileOptions {
  std::vector<std::string> interfaces;  // the device segment
  std::vector<Service> gatewayServices; // iotgwd's device-side listeners (DHCP, DNS added)
  std::optional<uint16_t> mqttRedirectPort; // where intercepted MQTT goes; nullopt: not at all
  std::optional<uint16_t> coapRedirectPort;
  std::set<std::string> quarantined; // device ids
};

[[nodiscard]] Ruleset compile(const policy::PolicySet& policies, const CompileOptions& options);

// Names of the per-device counter objects.
[[nodiscard]] std::string txCounterName(const policy::DeviceId& id);
[[nodiscard]] std::string rxCounterName(const policy::DeviceId& id);

} // namespace iotgw::firewall
