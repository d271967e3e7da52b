// SPDX-License-Identifier: GPL-3.0-or-later
#include "firewall/compile.h"

#include <netinet/in.h>

#include <linux/if_arp.h>
#include <linux/netfilter.h>
#include <linux/rtnetlink.h>

#include <algorithm>

#include "firewall/values.h"

namespace iotgw::firewall {

namespace {

using policy::DevicePolicy;
using policy::IpAddress;
using namespace values;

constexpr uint32_t kCtEstablishedOrRelated = (1u << 1) | (1u << 2); // NF_CT_STATE_BIT(0 / 1)
constexpr uint16_t kDhcpServer = 67;
constexpr uint16_t kDhcp6Server = 547;
constexpr uint16_t kMqttPort = 1883;
constexpr uint16_t kCoapPort = 5683;

// What differs between IPv4 and IPv6 in the table.
struct IpFamily {
  int af;
  uint8_t nfproto;
  Field saddr;
  Field daddr;
  Field icmpType;
  uint8_t icmpProto;
  uint16_t dhcpServer;
  uint32_t dhcpGroupType; // where a client without an address asks: broadcast, or a multicast group
  const char* suffix;
  std::vector<uint8_t> icmpTypes; // essential ICMP accepted between the gateway and devices
};

const IpFamily kFamilies[] = {
    // echo-reply, dest-unreachable, echo-request, time-exceeded, parameter-problem
    {AF_INET,
     NFPROTO_IPV4,
     Field::Ip4Saddr,
     Field::Ip4Daddr,
     Field::IcmpType,
     IPPROTO_ICMP,
     kDhcpServer,
     RTN_BROADCAST,
     "4",
     {0, 3, 8, 11, 12}},
    // dest-unreachable, packet-too-big, time-exceeded, parameter-problem, echo request/reply,
    // router and neighbour solicitation/advertisement
    {AF_INET6,
     NFPROTO_IPV6,
     Field::Ip6Saddr,
     Field::Ip6Daddr,
     Field::Icmp6Type,
     IPPROTO_ICMPV6,
     kDhcp6Server,
     RTN_MULTICAST,
     "6",
     {1, 2, 3, 4, 128, 129, 133, 134, 135, 136}},
};

// Neighbour discovery: what an IPv6 host needs to be reached at all (a quarantined one included,
// so that DHCPv6 still works): router solicitation/advertisement, neighbour
// solicitation/advertisement.
const uint8_t kNeighbourDiscovery[] = {133, 134, 135, 136};

std::string name(const char* base, const IpFamily& f) { return std::string(base) + f.suffix; }

void addSets(Ruleset& rs, const policy::PolicySet& policies, const CompileOptions& o) {
  Set ifaces{"dev_ifaces", {Field::Iifname}, false, false, {}};
  for (const auto& i : o.interfaces) {
    ifaces.elements.push_back(Element{{ifname(i)}, {}});
  }
  // DHCP is not here: a client without an address asks at the broadcast address (or a multicast
  // group), which is no address of the gateway's (dhcp_input).
  Set services{"gw_services", {Field::L4proto, Field::ThDport}, false, false, {}};
  std::set<Service> gw(o.gatewayServices.begin(), o.gatewayServices.end());
  gw.insert({IPPROTO_UDP, 53});
  gw.insert({IPPROTO_TCP, 53});
  for (const auto& s : gw) {
    services.elements.push_back(Element{{u8(s.protocol), port(s.port)}, {}});
  }
  // A quarantined device by its MAC: whatever address it uses (a link-local one, one it gave
  // itself, or none in its policy at all), its frames carry the MAC.
  Set quarantineMac{"quarantine_mac", {Field::EtherSaddr}, false, false, {}};
  for (const DevicePolicy& d : policies.devices()) {
    if (d.mac && o.quarantined.contains(d.id.str())) {
      quarantineMac.elements.push_back(Element{{mac(*d.mac)}, {}});
    }
  }
  Set nd{"nd6", {Field::Icmp6Type}, false, false, {}};
  for (uint8_t t : kNeighbourDiscovery) {
    nd.elements.push_back(Element{{u8(t)}, {}});
  }
  for (Set* s : {&ifaces, &services, &quarantineMac, &nd}) {
    normalise(*s);
    rs.sets.push_back(std::move(*s));
  }

  for (const auto& f : kFamilies) {
    const Field addr = f.saddr;
    Set icmp{name("icmp_ok", f), {f.icmpType}, false, false, {}};
    for (uint8_t t : f.icmpTypes) {
      icmp.elements.push_back(Element{{u8(t)}, {}});
    }
    Set bound{name("bound", f), {addr}, false, false, {}};
    Set bind{name("bind", f), {addr, Field::EtherSaddr}, false, false, {}};
    Set quarantine{name("quarantine", f), {addr}, false, false, {}};
    Set intercept{name("intercept", f), {addr}, false, false, {}};
    // Exact destinations in a hash set; prefixes in an interval set, where the kernel's deletion
    // cost grows with the set (pipapo), so that most devices never touch it.
    Set allow{name("allow", f), {addr, f.daddr, Field::L4proto, Field::ThDport}, false, false, {}};
    Set allowNet{
        name("allow_net", f), {addr, f.daddr, Field::L4proto, Field::ThDport}, true, false, {}};
    Set svc{name("services", f), {f.daddr, Field::L4proto, Field::ThDport}, false, false, {}};
    Set listeners{
        name("listeners", f), {f.daddr, Field::L4proto, Field::ThDport}, false, false, {}};
    Set tx{name("tx", f), {addr}, false, true, {}};
    Set rx{name("rx", f), {f.daddr}, false, true, {}};
    for (const Listener& l : o.deviceListeners) {
      if (l.address.family == f.af) {
        listeners.elements.push_back(
            Element{{address(l.address), u8(l.service.protocol), port(l.service.port)}, {}});
      }
    }
    for (const DevicePolicy& d : policies.devices()) {
      const bool quarantined = o.quarantined.contains(d.id.str());
      for (const IpAddress& a : d.addresses) {
        if (a.family != f.af) {
          continue;
        }
        const Value va = address(a);
        if (d.mac) {
          bound.elements.push_back(Element{{va}, {}});
          bind.elements.push_back(Element{{va, mac(*d.mac)}, {}});
        }
        if (quarantined) {
          quarantine.elements.push_back(Element{{va}, {}});
        }
        if (d.network.intercept) {
          intercept.elements.push_back(Element{{va}, {}});
        }
        // A quarantined device's destinations are withdrawn: the forward path then needs no
        // quarantine lookup of its own (the default drop holds it).
        for (const auto& e : d.network.outbound) {
          if (!quarantined && e.address && e.address->address.family == f.af) {
            Value dst = prefix(*e.address);
            Set& into = dst.prefix ? allowNet : allow;
            into.elements.push_back(Element{
                {va, std::move(dst), u8(static_cast<uint8_t>(e.transport)), port(e.port)}, {}});
          }
        }
        for (const auto& e : policy::gatewayServices(d)) {
          svc.elements.push_back(
              Element{{va, u8(static_cast<uint8_t>(e.transport)), port(e.port)}, {}});
        }
        tx.elements.push_back(Element{{va}, txCounterName(d.id)});
        rx.elements.push_back(Element{{va}, rxCounterName(d.id)});
      }
    }
    for (Set* s : {&icmp, &bound, &bind, &quarantine, &intercept, &allow, &allowNet, &svc,
                   &listeners, &tx, &rx}) {
      normalise(*s);
      rs.sets.push_back(std::move(*s));
    }
  }
  for (const DevicePolicy& d : policies.devices()) {
    if (!d.addresses.empty()) {
      rs.counters.push_back(txCounterName(d.id));
      rs.counters.push_back(rxCounterName(d.id));
    }
  }
}

void addChains(Ruleset& rs, const CompileOptions& o) {
  const Lookup fromSegment{{Field::Iifname}, "dev_ifaces", false};
  const Lookup toSegment{{Field::Oifname}, "dev_ifaces", false};
  auto hooked = [](std::string n, Hook h, ChainType t, int32_t prio, std::vector<Rule> rules) {
    return Chain{std::move(n), h, t, prio, std::move(rules)};
  };
  auto regular = [](std::string n, std::vector<Rule> rules) {
    return Chain{std::move(n), Hook::None, ChainType::Filter, 0, std::move(rules)};
  };
  const Compare udp = is(Field::L4proto, IPPROTO_UDP);
  const Compare ether = is(Field::Iiftype, ARPHRD_ETHER);

  std::vector<Rule> pre, spoofed, natPre, in, dhcp, quarantinedIn, outside, fwdOut, fwdIn, out,
      quarantinedOut, post;
  // Everything from the segment, to the gateway or through it, first passes from_devices.
  in.push_back(rule({}, Verdict::Jump, "", "from_devices"));
  fwdOut.push_back(rule({}, Verdict::Jump, "", "from_devices"));
  // Loopback is the gateway talking to itself, from its own addresses (one of which is in the
  // device segment): its own processes may use the device-side listeners, as iotgwd allows.
  outside.push_back(rule({is(Field::Iiftype, ARPHRD_LOOPBACK)}, Verdict::Return, ""));
  for (const auto& f : kFamilies) {
    const Compare fam = is(Field::Nfproto, f.nfproto);
    // A device's own address from its own MAC, the common case: counted, and done (two lookups).
    pre.push_back(rule({fam, ether, Lookup{{f.saddr, Field::EtherSaddr}, name("bind", f), false},
                        CountByMap{f.saddr, name("tx", f)}},
                       Verdict::Return, "per-device counter, from the device"));
    // A bound address from any other MAC (on an Ethernet-like interface) is spoofed. (Policies
    // give addresses only with a MAC, so every enrolled address is bound.)
    pre.push_back(rule({fam, Lookup{{f.saddr}, name("bound", f), false}, ether}, Verdict::Goto,
                       "anti-spoofing: address not from its bound MAC", "spoofed"));
    post.push_back(rule({fam, CountByMap{f.daddr, name("rx", f)}}, Verdict::None,
                        "per-device counter, to the device"));

    for (auto [redirect, proto, dport] :
         {std::tuple{o.mqttRedirectPort, uint8_t{IPPROTO_TCP}, kMqttPort},
          std::tuple{o.coapRedirectPort, uint8_t{IPPROTO_UDP}, kCoapPort}}) {
      if (redirect) {
        natPre.push_back(rule({fromSegment, fam, Lookup{{f.saddr}, name("intercept", f), false},
                               FibDaddrType{RTN_LOCAL, false, true}, is(Field::L4proto, proto),
                               is(Field::ThDport, dport), Redirect{*redirect}},
                              Verdict::None,
                              proto == IPPROTO_TCP ? "intercept device MQTT to iotgwd"
                                                   : "intercept device CoAP to iotgwd"));
      }
    }

    in.push_back(rule({fam, Lookup{{f.saddr}, name("quarantine", f), false}}, Verdict::Goto,
                      "quarantine", "quarantined_input"));
    fwdIn.push_back(rule({fam, Lookup{{f.daddr}, name("quarantine", f), false}, Count{}},
                         Verdict::Drop, "quarantine"));
    out.push_back(rule({fam, Lookup{{f.daddr}, name("quarantine", f), false}}, Verdict::Goto,
                       "quarantine", "quarantined_output"));

    // The device-side listeners answer only what came in on the device segment: an address is
    // the gateway's on every interface (and rp_filter may be off or loose), so a LAN or WAN host
    // could otherwise reach them with a device's address as its source.
    outside.push_back(
        rule({fam, Lookup{{f.daddr, Field::L4proto, Field::ThDport}, name("listeners", f), false},
              Count{}},
             Verdict::Drop, "device-side listeners: from the device segment only"));
    // DHCP to the gateway's address on this interface, or to where a client without one asks.
    for (uint32_t type : {uint32_t{RTN_LOCAL}, f.dhcpGroupType}) {
      dhcp.push_back(rule({fam, udp, is(Field::ThDport, f.dhcpServer), FibDaddrType{type, true}},
                          Verdict::Accept, "DHCP"));
    }
  }
  in.push_back(rule({ether, Lookup{{Field::EtherSaddr}, "quarantine_mac", false}}, Verdict::Goto,
                    "quarantine", "quarantined_input"));
  spoofed.push_back(rule({Limit{10, 20}, Log{kLogGroup, kReportSpoof}}, Verdict::None,
                         "tell iotgwd (at most 10 a second)"));
  spoofed.push_back(
      rule({Count{}}, Verdict::Drop, "anti-spoofing: address not from its bound MAC"));
  for (const auto& f : kFamilies) {
    outside.push_back(
        rule({is(Field::Nfproto, f.nfproto), Lookup{{f.saddr}, name("bound", f), false}, Count{}},
             Verdict::Drop, "a device's address from outside the device segment"));
  }

  const CtStateIn replies{kCtEstablishedOrRelated};
  const Compare icmp6 = is(Field::L4proto, IPPROTO_ICMPV6);
  const Lookup nd{{Field::Icmp6Type}, "nd6", false};
  quarantinedIn.push_back(rule({}, Verdict::Jump, "quarantine: DHCP", "dhcp_input"));
  quarantinedIn.push_back(rule({is(Field::Nfproto, NFPROTO_IPV6), icmp6, nd}, Verdict::Accept,
                               "quarantine: neighbour discovery"));
  quarantinedIn.push_back(rule({Count{}}, Verdict::Drop, "quarantine: DHCP only"));
  in.push_back(rule({replies}, Verdict::Accept, "replies"));
  // Only on the addresses the gateway has on the interface the packet came in on: a resolver or
  // broker bound to the gateway's LAN or WAN address is none of the devices' business.
  in.push_back(rule({FibDaddrType{RTN_LOCAL, true},
                     Lookup{{Field::L4proto, Field::ThDport}, "gw_services", false}},
                    Verdict::Accept,
                    "the gateway's device-side services and DNS, on its device-side addresses"));
  in.push_back(rule({}, Verdict::Jump, "", "dhcp_input"));
  // What the gateway lets reach a device goes on to to_devices, which counts it and accepts.
  const auto deliver = [](std::vector<Expr> exprs, std::string comment) {
    return rule(std::move(exprs), Verdict::Goto, std::move(comment), "to_devices");
  };
  for (uint16_t server : {kDhcpServer, kDhcp6Server}) {
    quarantinedOut.push_back(
        deliver({udp, is(Field::ThSport, server)}, "quarantine: DHCP replies only"));
  }
  quarantinedOut.push_back(
      deliver({is(Field::Nfproto, NFPROTO_IPV6), icmp6, nd}, "quarantine: neighbour discovery"));
  quarantinedOut.push_back(rule({Count{}}, Verdict::Drop, "quarantine"));
  out.push_back(deliver({is(Field::Mark, kScanMark)}, "exposure scan probes"));
  out.push_back(deliver({replies}, "replies"));
  out.push_back(deliver({udp, is(Field::ThSport, kDhcpServer)}, "DHCP replies"));
  out.push_back(deliver({udp, is(Field::ThSport, kDhcp6Server)}, "DHCPv6 replies"));
  for (const auto& f : kFamilies) {
    const Compare fam = is(Field::Nfproto, f.nfproto);
    const Lookup icmpOk{{f.icmpType}, name("icmp_ok", f), false};
    in.push_back(
        rule({fam, is(Field::L4proto, f.icmpProto), icmpOk}, Verdict::Accept, "essential ICMP"));
    out.push_back(deliver({fam, is(Field::L4proto, f.icmpProto), icmpOk}, "essential ICMP"));
    out.push_back(deliver(
        {fam, Lookup{{f.daddr, Field::L4proto, Field::ThDport}, name("services", f), false}},
        "device services the gateway may reach"));
    for (const char* set : {"allow", "allow_net"}) {
      fwdOut.push_back(rule(
          {fam, Lookup{{f.saddr, f.daddr, Field::L4proto, Field::ThDport}, name(set, f), false}},
          Verdict::Accept, "device destinations its policy allows"));
    }
  }
  in.push_back(rule({Count{}}, Verdict::Drop, "device segment: default deny"));
  fwdOut.push_back(rule({Count{}}, Verdict::Drop, "device: not in its policy"));
  fwdIn.push_back(deliver({replies}, "replies to what the device may start"));
  post.push_back(rule({}, Verdict::Accept, "delivered"));
  fwdIn.push_back(rule({Count{}}, Verdict::Drop, "nothing reaches a device but the gateway"));
  out.push_back(rule({Count{}}, Verdict::Drop, "gateway to device: default deny"));

  // Base chains first (by hook), then the device chains they jump to. Traffic that only passes
  // through the gateway (device -> internet) meets one hook of ours, forward: no prerouting or
  // postrouting filter chains, and the quarantine check is in the data (withdrawn destinations).
  // A nat chain makes the kernel run NAT on every connection; only when something is intercepted.
  const bool intercepting =
      !rs.findSet("intercept4")->elements.empty() || !rs.findSet("intercept6")->elements.empty();
  if (intercepting && !natPre.empty()) {
    rs.chains.push_back(
        hooked("nat_prerouting", Hook::Prerouting, ChainType::Nat, -100, std::move(natPre)));
  }
  // From the segment, device_input decides everything (it ends in a verdict); from anywhere
  // else, outside_input only keeps the device side's addresses and listeners out.
  rs.chains.push_back(hooked("input", Hook::Input, ChainType::Filter, 0,
                             {rule({fromSegment}, Verdict::Jump, "", "device_input"),
                              rule({}, Verdict::Jump, "", "outside_input")}));
  rs.chains.push_back(hooked("forward", Hook::Forward, ChainType::Filter, 0,
                             {rule({fromSegment}, Verdict::Jump, "", "device_forward_out"),
                              rule({toSegment}, Verdict::Jump, "", "device_forward_in")}));
  rs.chains.push_back(hooked("output", Hook::Output, ChainType::Filter, 0,
                             {rule({toSegment}, Verdict::Jump, "", "device_output")}));
  rs.chains.push_back(regular("from_devices", std::move(pre)));
  rs.chains.push_back(regular("spoofed", std::move(spoofed)));
  rs.chains.push_back(regular("device_input", std::move(in)));
  rs.chains.push_back(regular("dhcp_input", std::move(dhcp)));
  rs.chains.push_back(regular("quarantined_input", std::move(quarantinedIn)));
  rs.chains.push_back(regular("outside_input", std::move(outside)));
  rs.chains.push_back(regular("device_forward_out", std::move(fwdOut)));
  rs.chains.push_back(regular("device_forward_in", std::move(fwdIn)));
  rs.chains.push_back(regular("device_output", std::move(out)));
  rs.chains.push_back(regular("quarantined_output", std::move(quarantinedOut)));
  rs.chains.push_back(regular("to_devices", std::move(post)));
}

} // namespace

std::string txCounterName(const policy::DeviceId& id) { return "tx-" + id.str(); }
std::string rxCounterName(const policy::DeviceId& id) { return "rx-" + id.str(); }

Ruleset compile(const policy::PolicySet& policies, const CompileOptions& options) {
  Ruleset rs;
  rs.family = Family::Inet;
  addSets(rs, policies, options);
  addChains(rs, options);
  return rs;
}

} // namespace iotgw::firewall
