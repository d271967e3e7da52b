// SPDX-License-Identifier: GPL-3.0-or-later
// Table bridge iotgw: what holds on the device bridges at layer 2 (see compile.h).
//
// The bridge family sees every frame on a bridge port, before the bridge learns its source MAC
// and whatever br_netfilter is set to, which is why port binding, ARP/ND and device-to-device
// isolation live here and not in the inet table. Its chains run at priority -200, before
// br_netfilter's own hooks.
#include <netinet/in.h>

#include <linux/if_ether.h>

#include <optional>

#include "firewall/compile.h"
#include "firewall/values.h"

namespace iotgw::firewall {

namespace {

using policy::DevicePolicy;
using policy::IpAddress;
using namespace values;

constexpr int32_t kPriority = -200; // NF_BR_PRI_FILTER_BRIDGED
constexpr uint16_t kDhcpServer = 67;
constexpr uint16_t kDhcp6Server = 547;
constexpr uint8_t kRouterAdvertisement = 134;
constexpr uint8_t kNeighbourAdvertisement = 136;
constexpr uint8_t kRedirect = 137;
constexpr uint32_t kTargetLinkLayerOption = 0x0201; // type 2 (target link-layer address), length 1

void addSets(Ruleset& rs, const policy::PolicySet& policies, const CompileOptions& o) {
  Set foreign{"foreign_ports", {Field::Iifname}, false, false, {}};
  for (const auto& p : o.foreignPorts) {
    foreign.elements.push_back(Element{{ifname(p)}, {}});
  }
  Set macs{"macs", {Field::EtherSaddr}, false, false, {}};
  Set boundMacs{"bound_macs", {Field::EtherSaddr}, false, false, {}};
  Set portBind{"port_bind", {Field::EtherSaddr, Field::Iifname}, false, false, {}};
  Set groupBind{"group_bind", {Field::EtherSaddr, Field::Iifgroup}, false, false, {}};
  Set quarantine{"quarantine_mac", {Field::EtherSaddr}, false, false, {}};
  Set bound4{"bound4", {Field::Ip4Saddr}, false, false, {}};
  Set bind4{"bind4", {Field::Ip4Saddr, Field::EtherSaddr}, false, false, {}};
  Set bound6{"bound6", {Field::Ip6Saddr}, false, false, {}};
  Set bind6{"bind6", {Field::Ip6Saddr, Field::EtherSaddr}, false, false, {}};
  // The common case in one lookup: a bound device on its port (or group) with its own address.
  Set fast4{"fast4", {Field::EtherSaddr, Field::Iifname, Field::Ip4Saddr}, false, false, {}};
  Set fastGroup4{
      "fast_group4", {Field::EtherSaddr, Field::Iifgroup, Field::Ip4Saddr}, false, false, {}};
  Set fast6{"fast6", {Field::EtherSaddr, Field::Iifname, Field::Ip6Saddr}, false, false, {}};
  Set fastGroup6{
      "fast_group6", {Field::EtherSaddr, Field::Iifgroup, Field::Ip6Saddr}, false, false, {}};
  Set nd{"nd6", {Field::Icmp6Type}, false, false, {}};
  for (uint8_t t : {133, 134, 135, 136}) {
    nd.elements.push_back(Element{{u8(t)}, {}});
  }
  Set routerOnly{"router_only6", {Field::Icmp6Type}, false, false, {}};
  for (uint8_t t : {kRouterAdvertisement, kRedirect}) {
    routerOnly.elements.push_back(Element{{u8(t)}, {}});
  }
  for (const DevicePolicy& d : policies.devices()) {
    if (!d.mac) {
      continue;
    }
    const Value m = mac(*d.mac);
    const bool quarantined = o.quarantined.contains(d.id.str());
    macs.elements.push_back(Element{{m}, {}});
    std::optional<Value> where; // its port's name, or its group
    const auto b = o.bindings.find(d.id.str());
    const bool bound = b != o.bindings.end() && b->second.mac == *d.mac;
    if (bound) {
      boundMacs.elements.push_back(Element{{m}, {}});
      where = b->second.group != 0 ? hostU32(b->second.group) : ifname(b->second.port);
      (b->second.group != 0 ? groupBind : portBind).elements.push_back(Element{{m, *where}, {}});
    }
    if (quarantined) {
      quarantine.elements.push_back(Element{{m}, {}});
    }
    for (const IpAddress& a : d.addresses) {
      const bool v4 = a.family == AF_INET;
      (v4 ? bound4 : bound6).elements.push_back(Element{{address(a)}, {}});
      (v4 ? bind4 : bind6).elements.push_back(Element{{address(a), m}, {}});
      if (bound && !quarantined) {
        Set& fast = b->second.group != 0 ? (v4 ? fastGroup4 : fastGroup6) : (v4 ? fast4 : fast6);
        fast.elements.push_back(Element{{m, *where, address(a)}, {}});
      }
    }
  }
  for (Set* s : {&foreign, &macs, &boundMacs, &portBind, &groupBind, &quarantine, &bound4, &bind4,
                 &bound6, &bind6, &fast4, &fastGroup4, &fast6, &fastGroup6, &nd, &routerOnly}) {
    normalise(*s);
    rs.sets.push_back(std::move(*s));
  }
}

// A chain that tells iotgwd (at most ten reports a second, whatever floods it) and drops.
Chain reportAndDrop(std::string chain, const char* report, std::string why) {
  return Chain{std::move(chain),
               Hook::None,
               ChainType::Filter,
               0,
               {rule({Limit{10, 20}, Log{kLogGroup, report}}, Verdict::None,
                     "tell iotgwd (at most 10 a second)"),
                rule({Count{}}, Verdict::Drop, std::move(why))}};
}

void addChains(Ruleset& rs) {
  const Compare ip = is(Field::Protocol, ETH_P_IP);
  const Compare ip6 = is(Field::Protocol, ETH_P_IPV6);
  const Compare arp = is(Field::Protocol, ETH_P_ARP);
  const Compare udp = is(Field::L4proto, IPPROTO_UDP);
  const Compare icmp6 = is(Field::L4proto, IPPROTO_ICMPV6);
  const Lookup devicePort{{Field::Iifname}, "foreign_ports", true};
  const Lookup toDevicePort{{Field::Oifname}, "foreign_ports", true};
  const Lookup nd{{Field::Icmp6Type}, "nd6", false};
  auto hooked = [](std::string n, Hook h, std::vector<Rule> rules) {
    return Chain{std::move(n), h, ChainType::Filter, kPriority, std::move(rules)};
  };
  auto regular = [](std::string n, std::vector<Rule> rules) {
    return Chain{std::move(n), Hook::None, ChainType::Filter, 0, std::move(rules)};
  };

  const Compare notIcmp6{Field::L4proto, IPPROTO_ICMPV6, true};
  auto isNot = [](Field f, uint32_t v) { return Compare{f, v, true}; };
  std::vector<Rule> from{
      // Only what devices speak. The kernel takes an outer VLAN tag off before this hook; a
      // second one (or any other ethertype) would leave `meta protocol` at 0x8100 and every rule
      // below blind, while the stack strips priority tags on the way up and learns from the ARP
      // inside. EAPOL stays: an access point's authenticator may read it from the bridge.
      rule({isNot(Field::Protocol, ETH_P_IP), isNot(Field::Protocol, ETH_P_IPV6),
            isNot(Field::Protocol, ETH_P_ARP), isNot(Field::Protocol, ETH_P_PAE)},
           Verdict::Goto, "not IPv4, IPv6, ARP or EAPOL", "other_frame"),
      // Devices are never routers or DHCP servers for one another (or for the gateway), whatever
      // MAC and address they use.
      rule({ip6, icmp6, Lookup{{Field::Icmp6Type}, "router_only6", false}}, Verdict::Goto,
           "router advertisement or redirect from a device port", "rogue_server"),
      rule({ip, udp, is(Field::ThSport, kDhcpServer)}, Verdict::Goto,
           "DHCP server reply from a device port", "rogue_server"),
      rule({ip6, udp, is(Field::ThSport, kDhcp6Server)}, Verdict::Goto,
           "DHCPv6 server reply from a device port", "rogue_server"),
      // A bound, unquarantined device on its port with one of its own addresses: everything
      // below would let it through (neighbour advertisements excepted, which the IPv6 case
      // leaves to the rules below). One lookup instead of eight for nearly every frame.
      rule({ip, Lookup{{Field::EtherSaddr, Field::Iifname, Field::Ip4Saddr}, "fast4", false}},
           Verdict::Return, "a bound device on its port, its own address"),
      rule(
          {ip, Lookup{{Field::EtherSaddr, Field::Iifgroup, Field::Ip4Saddr}, "fast_group4", false}},
          Verdict::Return, "a bound device in its port group, its own address"),
      rule({ip6, notIcmp6,
            Lookup{{Field::EtherSaddr, Field::Iifname, Field::Ip6Saddr}, "fast6", false}},
           Verdict::Return, "a bound device on its port, its own address"),
      rule({ip6, notIcmp6,
            Lookup{{Field::EtherSaddr, Field::Iifgroup, Field::Ip6Saddr}, "fast_group6", false}},
           Verdict::Return, "a bound device in its port group, its own address"),
      // Where a MAC may come from. Bound: only its port (or its port's group); a frame from
      // anywhere else is dropped here, before the bridge learns its source (so the bridge keeps
      // sending the device's frames to the device) and before any IP hook.
      rule({Lookup{{Field::EtherSaddr}, "bound_macs", false},
            Lookup{{Field::EtherSaddr, Field::Iifname}, "port_bind", true},
            Lookup{{Field::EtherSaddr, Field::Iifgroup}, "group_bind", true}},
           Verdict::Goto, "an enrolled MAC on a port it is not bound to", "wrong_port"),
      // Enrolled, not bound yet: passes, and iotgwd binds it to this port.
      rule({Lookup{{Field::EtherSaddr}, "macs", false},
            Lookup{{Field::EtherSaddr}, "bound_macs", true}, Limit{10, 20},
            Log{kLogGroup, kReportLearn}},
           Verdict::None, "an enrolled MAC not bound yet: iotgwd learns its port"),
      // An enrolled address only from its MAC.
      rule({ip, Lookup{{Field::Ip4Saddr}, "bound4", false},
            Lookup{{Field::Ip4Saddr, Field::EtherSaddr}, "bind4", true}},
           Verdict::Goto, "anti-spoofing: address not from its bound MAC", "spoofed"),
      rule({ip6, Lookup{{Field::Ip6Saddr}, "bound6", false},
            Lookup{{Field::Ip6Saddr, Field::EtherSaddr}, "bind6", true}},
           Verdict::Goto, "anti-spoofing: address not from its bound MAC", "spoofed"),
      // ARP (replies, requests and announcements alike: each updates the neighbour caches that
      // already know the sender) may claim an enrolled address only from its MAC and for it.
      // Hardware and protocol lengths are not checked: a packet whose lengths are not Ethernet
      // and IPv4 is one the kernel does not learn from.
      rule({arp, Lookup{{Field::ArpSpa}, "bound4", false},
            Lookup{{Field::ArpSpa, Field::EtherSaddr}, "bind4", true}},
           Verdict::Goto, "ARP for an enrolled address from another MAC", "poisoning"),
      rule({arp, Lookup{{Field::ArpSpa}, "bound4", false},
            Lookup{{Field::ArpSpa, Field::ArpSha}, "bind4", true}},
           Verdict::Goto, "ARP claiming another MAC for an enrolled address", "poisoning"),
      // Neighbour advertisements likewise, by the frame's source and by the target link-layer
      // address option (the one a neighbour cache takes; without it the entry keeps its MAC).
      rule({ip6, icmp6, is(Field::Icmp6Type, kNeighbourAdvertisement),
            Lookup{{Field::NdTarget}, "bound6", false},
            Lookup{{Field::NdTarget, Field::EtherSaddr}, "bind6", true}},
           Verdict::Goto, "neighbour advertisement for an enrolled address from another MAC",
           "poisoning"),
      rule({ip6, icmp6, is(Field::Icmp6Type, kNeighbourAdvertisement),
            is(Field::NdOption, kTargetLinkLayerOption), Lookup{{Field::NdTarget}, "bound6", false},
            Lookup{{Field::NdTarget, Field::NdOptionLladdr}, "bind6", true}},
           Verdict::Goto, "neighbour advertisement naming another MAC for an enrolled address",
           "poisoning"),
      rule({Lookup{{Field::EtherSaddr}, "quarantine_mac", false}}, Verdict::Goto, "quarantine",
           "quarantined_from"),
  };
  std::vector<Rule> quarantinedFrom{
      rule({arp}, Verdict::Return, "quarantine: ARP"),
      rule({ip, udp, is(Field::ThDport, kDhcpServer)}, Verdict::Return, "quarantine: DHCP"),
      rule({ip6, udp, is(Field::ThDport, kDhcp6Server)}, Verdict::Return, "quarantine: DHCPv6"),
      rule({ip6, icmp6, nd}, Verdict::Return, "quarantine: neighbour discovery"),
      rule({Count{}}, Verdict::Drop, "quarantine"),
  };
  std::vector<Rule> to{
      // A bound device's frames go to its port only, never flooded to the others (where a rogue
      // would read them while the bridge has forgotten where the device is).
      rule({Lookup{{Field::EtherDaddr}, "bound_macs", false},
            Lookup{{Field::EtherDaddr, Field::Oifname}, "port_bind", true},
            Lookup{{Field::EtherDaddr, Field::Oifgroup}, "group_bind", true}, Count{}},
           Verdict::Drop, "an enrolled device's frames go to its own port only"),
      rule({Lookup{{Field::EtherDaddr}, "quarantine_mac", false}}, Verdict::Goto, "quarantine",
           "quarantined_to"),
  };
  std::vector<Rule> quarantinedTo{
      rule({arp}, Verdict::Return, "quarantine: ARP"),
      rule({ip, udp, is(Field::ThSport, kDhcpServer)}, Verdict::Return, "quarantine: DHCP replies"),
      rule({ip6, udp, is(Field::ThSport, kDhcp6Server)}, Verdict::Return,
           "quarantine: DHCPv6 replies"),
      rule({ip6, icmp6, nd}, Verdict::Return, "quarantine: neighbour discovery"),
      rule({Count{}}, Verdict::Drop, "quarantine"),
  };

  rs.chains.push_back(hooked("prerouting", Hook::Prerouting,
                             {rule({devicePort}, Verdict::Jump, "", "from_ports")}));
  // A device talks to the gateway, never to another host on the segment: nothing is bridged
  // from one device port to another, whether br_netfilter would have shown it to the inet
  // table or not (net.bridge.bridge-nf-call-iptables / -ip6tables).
  rs.chains.push_back(
      hooked("forward", Hook::Forward,
             {rule({devicePort, Count{}}, Verdict::Drop, "device segment: no port to port")}));
  rs.chains.push_back(
      hooked("output", Hook::Output, {rule({toDevicePort}, Verdict::Jump, "", "to_ports")}));
  rs.chains.push_back(regular("from_ports", std::move(from)));
  rs.chains.push_back(regular("quarantined_from", std::move(quarantinedFrom)));
  rs.chains.push_back(regular("to_ports", std::move(to)));
  rs.chains.push_back(regular("quarantined_to", std::move(quarantinedTo)));
  rs.chains.push_back(
      reportAndDrop("wrong_port", kReportPort, "an enrolled MAC on a port it is not bound to"));
  rs.chains.push_back(
      reportAndDrop("spoofed", kReportSpoof, "anti-spoofing: address not from its bound MAC"));
  rs.chains.push_back(reportAndDrop("poisoning", kReportPoison,
                                    "ARP or ND claiming an enrolled address for another MAC"));
  rs.chains.push_back(
      reportAndDrop("other_frame", kReportFrame, "a frame that is not IPv4, IPv6, ARP or EAPOL"));
  rs.chains.push_back(reportAndDrop("rogue_server", kReportServer,
                                    "router advertisement, redirect or DHCP reply from a device"));
}

} // namespace

Ruleset compileBridge(const policy::PolicySet& policies, const CompileOptions& options) {
  Ruleset rs;
  rs.family = Family::Bridge;
  addSets(rs, policies, options);
  addChains(rs);
  return rs;
}

} // namespace iotgw::firewall
