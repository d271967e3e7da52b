// SPDX-License-Identifier: GPL-3.0-or-later
#include "firewall/ports.h"

#include <fmt/format.h>

namespace iotgw::firewall {

namespace {

using policy::Event;
using policy::EventType;

bool holds(const PortBinding& b, const PortInfo& p) {
  return b.group != 0 ? p.group == b.group : p.name == b.port;
}

std::string where(const std::optional<PortInfo>& p) {
  return p ? fmt::format("port {}", p->name) : std::string("an unknown port");
}

Event event(EventType type, std::string device, std::string rule, std::string action,
            std::string peer, std::string message) {
  Event e;
  e.type = type;
  e.device = std::move(device);
  e.protocol = "nftables";
  e.rule = std::move(rule);
  e.action = std::move(action);
  e.peer = std::move(peer);
  e.message = std::move(message);
  return e;
}

} // namespace

std::string describe(const PortBinding& b) {
  return b.group != 0 ? fmt::format("interface group {}", b.group) : fmt::format("port {}", b.port);
}

PortBook::PortBook(std::shared_ptr<const policy::PolicySet> policies)
    : policies_(std::move(policies)) {
  for (const auto& d : policies_->devices()) {
    if (d.mac) {
      byMac_[d.mac->bytes] = &d;
    }
  }
}

const policy::DevicePolicy* PortBook::byMac(const policy::MacAddress& m) const {
  auto it = byMac_.find(m.bytes);
  return it == byMac_.end() ? nullptr : it->second;
}

Finding PortBook::interpret(const Report& r, const std::map<std::string, PortBinding>& bindings,
                            const std::optional<PortInfo>& port) const {
  const std::string mac = r.source ? r.source->str() : std::string("an unknown MAC");
  const std::string peer = r.source ? r.source->str() : std::string();
  const policy::DevicePolicy* sender = r.source ? byMac(*r.source) : nullptr;
  Finding f;
  switch (r.kind) {
  case ReportKind::Learn: {
    if (sender == nullptr || !port) {
      return f; // enrolled no longer, or the port went: the next frame tells again
    }
    const std::string& id = sender->id.str();
    if (auto b = bindings.find(id); b != bindings.end() && b->second.mac == *sender->mac) {
      if (!holds(b->second, *port)) {
        f.event = event(EventType::DevicePortConflict, id, "bridge:port-binding", "drop", peer,
                        fmt::format("{}'s MAC {} came in on {} and on its own {} at once; "
                                    "only the first is accepted",
                                    id, mac, where(port), describe(b->second)));
      }
      return f; // the binding is already on its way to the kernel
    }
    PortBinding b{*sender->mac, port->group != 0 ? std::string() : port->name, port->group};
    f.event = event(EventType::DevicePortBound, id, "bridge:port-binding", "bind", peer,
                    fmt::format("{} ({}) learned on {}: its MAC is accepted on {} only", id, mac,
                                where(port), describe(b)));
    f.bind.emplace(id, std::move(b));
    return f;
  }
  case ReportKind::WrongPort: {
    if (sender == nullptr) {
      return f;
    }
    const std::string& id = sender->id.str();
    auto b = bindings.find(id);
    f.event = event(
        EventType::DevicePortConflict, id, "bridge:port-binding", "drop", peer,
        fmt::format("{}'s MAC {} came in on {}, but it is bound to {}: dropped (if the device "
                    "itself was moved there, release its binding)",
                    id, mac, where(port),
                    b == bindings.end() ? std::string("another port") : describe(b->second)));
    return f;
  }
  case ReportKind::Spoofed: {
    const Claim c = readClaim(r);
    const policy::DevicePolicy* owner = c.address ? policies_->findByAddress(*c.address) : nullptr;
    if (owner == nullptr) {
      return f;
    }
    const std::string& id = owner->id.str();
    f.event = event(EventType::DevicePortConflict, id, "firewall:address-binding", "drop", peer,
                    fmt::format("an {} from {}'s address {} came from MAC {} on {}, not from its "
                                "own MAC: dropped",
                                c.what, id, c.address->str(), mac, where(port)));
    return f;
  }
  case ReportKind::Poisoning: {
    const Claim c = readClaim(r);
    const policy::DevicePolicy* owner = c.address ? policies_->findByAddress(*c.address) : nullptr;
    if (owner == nullptr) {
      return f;
    }
    const std::string& id = owner->id.str();
    const bool arp = r.ethertype == 0x0806;
    f.event = event(
        EventType::NeighbourSpoofing, id, arp ? "bridge:arp" : "bridge:nd", "drop", peer,
        fmt::format("{} from MAC {} on {} says {} ({}) is at {}: dropped (only {} may say so)",
                    c.what, mac, where(port), c.address->str(), id, c.mac ? c.mac->str() : mac,
                    owner->mac ? owner->mac->str() : id));
    return f;
  }
  case ReportKind::OtherFrame: {
    f.event = event(EventType::NeighbourSpoofing, sender ? sender->id.str() : std::string(),
                    "bridge:ethertype", "drop", peer,
                    fmt::format("a frame of type 0x{:04x} from MAC {} on {}: dropped (device ports "
                                "carry IPv4, IPv6, ARP and EAPOL only; a VLAN tag inside a tag "
                                "would hide ARP or IP from the checks)",
                                r.ethertype, mac, where(port)));
    return f;
  }
  case ReportKind::RogueServer: {
    const Claim c = readClaim(r);
    const bool dhcp = c.what.find("DHCP") != std::string::npos;
    f.event = event(EventType::NeighbourSpoofing, sender ? sender->id.str() : std::string(),
                    dhcp ? "bridge:dhcp-server" : "bridge:router", "drop", peer,
                    fmt::format("{} from MAC {}{} on {}: dropped (devices are never routers or "
                                "DHCP servers on the segment)",
                                c.what, mac, c.address ? " (" + c.address->str() + ")" : "",
                                where(port)));
    return f;
  }
  }
  return f;
}

} // namespace iotgw::firewall
