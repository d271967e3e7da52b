// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// What the tables tell iotgwd over nflog (group kLogGroup, see compile.h): a frame they refused
// for a reason iotgwd must know about, or let through because its MAC is enrolled but not yet
// bound to a port. parseReport and readClaim are pure (bytes in, values out, every length
// checked against what remains: the frames come from whoever is on the segment);
// ReportListener owns the socket.

#include <cstdint>
#include <expected>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "policy/device.h"

struct mnl_socket;

namespace iotgw::firewall {

enum class ReportKind : uint8_t {
  Learn,       // an enrolled MAC not yet bound: it passed, iotgwd binds it to this port
  WrongPort,   // an enrolled MAC on a port (or group) it is not bound to
  Spoofed,     // an enrolled address from another MAC
  Poisoning,   // ARP or a neighbour advertisement claiming an enrolled address for another MAC
  RogueServer, // a router advertisement, redirect or DHCP server reply from a device port
  OtherFrame,  // a frame that is not IPv4, IPv6, ARP or EAPOL (a stacked VLAN tag, say)
};

struct Report {
  ReportKind kind = ReportKind::Learn;
  uint32_t port = 0; // the interface it came in on (the bridge port); 0: unknown
  std::optional<policy::MacAddress> source; // its link-layer source
  uint16_t ethertype = 0;                   // host order
  std::vector<uint8_t> packet;              // from the network header on, as far as logged
};

// One netlink message from the log group: a report, or nullopt for anything else (another
// message type, a prefix that is not one of ours, a truncated message).
[[nodiscard]] std::optional<Report> parseReport(std::span<const uint8_t> message);

// What a reported packet claims, read from its headers: the address it speaks for (its source;
// an ARP packet's sender; a neighbour advertisement's target) and the MAC it names for it.
struct Claim {
  std::optional<policy::IpAddress> address;
  std::optional<policy::MacAddress> mac;
  std::string what; // "ARP", "neighbour advertisement", "router advertisement", ...
};
[[nodiscard]] Claim readClaim(const Report& r);

// A netlink socket bound to the log group. Non-blocking; poll fd() for readability.
class ReportListener {
public:
  // Binds the group (one socket per group and network namespace: an error if another process
  // holds it) and asks for each report at once.
  [[nodiscard]] static std::expected<std::unique_ptr<ReportListener>, std::string>
  open(uint16_t group);
  ReportListener(const ReportListener&) = delete;
  ReportListener& operator=(const ReportListener&) = delete;
  ~ReportListener();
  [[nodiscard]] int fd() const;
  // Every report pending (reports lost to a full socket buffer are simply gone: the tables keep
  // dropping what they drop, and the next report of the same kind says so again).
  [[nodiscard]] std::vector<Report> drain();

private:
  explicit ReportListener(mnl_socket* nl) : nl_(nl) {}
  mnl_socket* nl_;
};

} // namespace iotgw::firewall
