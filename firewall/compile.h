// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// From a policy snapshot to the two tables iotgwd owns (EN 303 645 5.5-5, 5.5-7, 5.6-1, 5.6-5,
// 5.3-15). Pure: the same inputs give the same value.
//
// `inet iotgw`, for traffic entering or leaving the device-segment interfaces:
//  * from_devices (jumped to from input and forward): a packet whose source address is bound to a
//    MAC but arrives from another MAC is dropped (anti-spoofing); the rest is counted (tx);
//  * nat prerouting: device MQTT/CoAP aimed at another host goes to iotgwd (interception);
//  * input: from the segment only the gateway's device-side ports, DNS, DHCP and essential ICMP,
//    and those only on the gateway's addresses on the interface the packet came in on; from
//    anywhere else nothing reaches the device-side listeners, and nothing that claims a device's
//    or the segment's address gets in;
//  * forward: device -> anywhere only where its policy allows; anything -> device never, except
//    replies to what the device was allowed to start;
//  * output: the gateway reaches a device only on the services its policy lists (and for the
//    exposure scan, whose probes carry a mark);
//  * postrouting: traffic to each device counted (rx);
//  * a quarantined device (by address, and by MAC whatever address it uses) reaches DHCP only,
//    and nothing reaches it but DHCP replies (and the ARP/ND both need).
// Traffic that never touches the device segment is not this table's business: base chains
// accept it.
//
// `bridge iotgw`, for frames on the ports of the device bridges (every bridge port that is not a
// port of another bridge), at layer 2, so that it holds whatever br_netfilter is set to:
//  * an enrolled MAC is accepted only on the port it was learned on (or that port's interface
//    group); elsewhere it is dropped before the bridge learns it, and reported; a MAC not yet
//    learned passes and is reported, so that iotgwd binds it;
//  * an enrolled address only from its MAC; ARP and neighbour advertisements that claim an
//    enrolled address only from its MAC, naming its MAC;
//  * from a device port only IPv4, IPv6, ARP and EAPOL: a frame whose type is another VLAN tag
//    (802.1Q inside a priority tag, which the stack strips on its way up) or anything else
//    would carry ARP or IP past every check below;
//  * router advertisements, redirects and DHCP server replies never from a device port;
//  * nothing from one port to another (device to device);
//  * an enrolled device's frames go to its own port only;
//  * a quarantined MAC exchanges ARP, ND and DHCP with the gateway, nothing else.
// What is dropped for a reason iotgwd should know is copied to it over nflog group kLogGroup.

#include <cstdint>
#include <map>
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

// The nflog group the tables report to iotgwd on, and what each report is about (the log
// statement's prefix).
inline constexpr uint16_t kLogGroup = 0x696f;
inline constexpr const char* kReportLearn = "iotgw learn";   // an enrolled MAC not yet bound
inline constexpr const char* kReportPort = "iotgw port";     // an enrolled MAC on another port
inline constexpr const char* kReportSpoof = "iotgw spoof";   // an enrolled address, another MAC
inline constexpr const char* kReportPoison = "iotgw poison"; // ARP/ND claiming an enrolled address
inline constexpr const char* kReportServer = "iotgw server"; // RA, redirect or DHCP server reply
inline constexpr const char* kReportFrame = "iotgw frame";   // not IPv4, IPv6, ARP or EAPOL

// A device-side listener: reached only from the device segment.
struct Listener {
  policy::IpAddress address;
  Service service;
  bool operator==(const Listener&) const = default;
};

// Where an enrolled MAC may appear on the device bridges: the port it was learned on, or, when
// that port belongs to an interface group (`ip link set dev wlan0 group 7`), any port of the
// group, so that a device roams between the ports an administrator declared one place.
struct PortBinding {
  policy::MacAddress mac;
  std::string port;   // when group == 0
  uint32_t group = 0; // != 0: any port of this interface group
  bool operator==(const PortBinding&) const = default;
};

struct CompileOptions {
  std::vector<std::string> interfaces;      // the device segment (bridges or plain interfaces)
  std::vector<Service> gatewayServices;     // iotgwd's listeners devices may reach (DNS added)
  std::vector<Listener> deviceListeners;    // the device-side ones: from the segment only
  std::optional<uint16_t> mqttRedirectPort; // where intercepted MQTT goes; nullopt: not at all
  std::optional<uint16_t> coapRedirectPort;
  std::set<std::string> quarantined;           // device ids
  std::map<std::string, PortBinding> bindings; // device id -> where its MAC was learned
  // Ports of bridges that are not part of the device segment: the bridge table leaves their
  // frames alone. Every other bridge port is a device port (a port that just joined a bridge is
  // a device port until iotgwd learns otherwise).
  std::vector<std::string> foreignPorts;
};

// Table inet iotgw.
[[nodiscard]] Ruleset compile(const policy::PolicySet& policies, const CompileOptions& options);
// Table bridge iotgw.
[[nodiscard]] Ruleset compileBridge(const policy::PolicySet& policies,
                                    const CompileOptions& options);

// Names of the per-device counter objects.
[[nodiscard]] std::string txCounterName(const policy::DeviceId& id);
[[nodiscard]] std::string rxCounterName(const policy::DeviceId& id);

} // namespace iotgw::firewall
