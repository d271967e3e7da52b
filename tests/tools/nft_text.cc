// SPDX-License-Identifier: GPL-3.0-or-later
#include "tests/tools/nft_text.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <linux/if_ether.h>
#include <linux/netfilter.h>
#include <linux/rtnetlink.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

namespace iotgw::firewall {

namespace {

const char* fieldText(Field f) {
  switch (f) {
  case Field::Iifname:
    return "iifname";
  case Field::Oifname:
    return "oifname";
  case Field::Nfproto:
    return "meta nfproto";
  case Field::Protocol:
    return "meta protocol";
  case Field::L4proto:
    return "meta l4proto";
  case Field::Iiftype:
    return "meta iiftype";
  case Field::Iifgroup:
    return "meta iifgroup";
  case Field::Oifgroup:
    return "meta oifgroup";
  case Field::Mark:
    return "meta mark";
  case Field::Ip4Saddr:
    return "ip saddr";
  case Field::Ip4Daddr:
    return "ip daddr";
  case Field::Ip6Saddr:
    return "ip6 saddr";
  case Field::Ip6Daddr:
    return "ip6 daddr";
  case Field::EtherSaddr:
    return "ether saddr";
  case Field::EtherDaddr:
    return "ether daddr";
  case Field::ArpSha:
    return "arp saddr ether";
  case Field::ArpSpa:
    return "arp saddr ip";
  case Field::ThSport:
    return "th sport";
  case Field::ThDport:
    return "th dport";
  case Field::IcmpType:
    return "icmp type";
  case Field::Icmp6Type:
    return "icmpv6 type";
  // nft 1.0 has no names for these: raw transport-header payloads (offset, length in bits).
  case Field::NdTarget:
    return "@th,64,128";
  case Field::NdOption:
    return "@th,192,16";
  case Field::NdOptionLladdr:
    return "@th,208,48";
  }
  return "?";
}

const char* typeText(Field f) {
  switch (f) {
  case Field::Iifname:
  case Field::Oifname:
    return "ifname";
  case Field::Nfproto:
    return "nf_proto";
  case Field::Protocol:
    return "ether_type";
  case Field::L4proto:
    return "inet_proto";
  case Field::Iiftype:
    return "iface_type";
  case Field::Iifgroup:
  case Field::Oifgroup:
    return "devgroup";
  case Field::Mark:
    return "mark";
  case Field::Ip4Saddr:
  case Field::Ip4Daddr:
  case Field::ArpSpa:
    return "ipv4_addr";
  case Field::Ip6Saddr:
  case Field::Ip6Daddr:
  case Field::NdTarget:
    return "ipv6_addr";
  case Field::EtherSaddr:
  case Field::EtherDaddr:
  case Field::ArpSha:
  case Field::NdOptionLladdr:
    return "ether_addr";
  case Field::NdOption:
    return "integer";
  case Field::ThSport:
  case Field::ThDport:
    return "inet_service";
  case Field::IcmpType:
    return "icmp_type";
  case Field::Icmp6Type:
    return "icmpv6_type";
  }
  return "?";
}

std::string valueText(Field f, const Value& v) {
  std::string out;
  switch (f) {
  case Field::Iifname:
  case Field::Oifname: {
    std::string name(v.bytes.begin(), v.bytes.end());
    name.resize(name.find('\0') == std::string::npos ? name.size() : name.find('\0'));
    out = fmt::format("\"{}\"", name);
    break;
  }
  case Field::Ip4Saddr:
  case Field::Ip4Daddr:
  case Field::ArpSpa:
  case Field::Ip6Saddr:
  case Field::Ip6Daddr:
  case Field::NdTarget: {
    char buf[INET6_ADDRSTRLEN] = {};
    inet_ntop(v.bytes.size() == 4 ? AF_INET : AF_INET6, v.bytes.data(), buf, sizeof buf);
    out = buf;
    break;
  }
  case Field::Iifgroup:
  case Field::Oifgroup: {
    uint32_t x = 0;
    std::memcpy(&x, v.bytes.data(), std::min<size_t>(v.bytes.size(), 4));
    out = std::to_string(x);
    break;
  }
  case Field::EtherSaddr:
  case Field::EtherDaddr:
  case Field::ArpSha:
  case Field::NdOptionLladdr:
    out = fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", v.bytes[0], v.bytes[1],
                      v.bytes[2], v.bytes[3], v.bytes[4], v.bytes[5]);
    break;
  case Field::ThSport:
  case Field::ThDport:
    out = std::to_string((v.bytes[0] << 8) | v.bytes[1]);
    break;
  default: {
    uint64_t x = 0;
    for (uint8_t b : v.bytes) {
      x = (x << 8) | b;
    }
    out = std::to_string(x);
  }
  }
  if (v.prefix) {
    out += fmt::format("/{}", *v.prefix);
  }
  return out;
}

std::string compareText(const Compare& c) {
  std::string value;
  switch (c.field) {
  case Field::Nfproto:
    value = c.value == NFPROTO_IPV4 ? "ipv4" : "ipv6";
    break;
  case Field::Iiftype:
    value = c.value == 1 ? "ether" : c.value == 772 ? "loopback" : std::to_string(c.value);
    break;
  case Field::Protocol:
    value = c.value == ETH_P_IP     ? "ip"
            : c.value == ETH_P_IPV6 ? "ip6"
            : c.value == ETH_P_ARP  ? "arp"
                                    : fmt::format("0x{:04x}", c.value);
    break;
  case Field::Mark:
    value = fmt::format("0x{:08x}", c.value);
    break;
  case Field::NdOption:
    value = fmt::format("0x{:04x}", c.value);
    break;
  default:
    value = std::to_string(c.value);
  }
  return fmt::format("{} {}{}", fieldText(c.field), c.negate ? "!= " : "", value);
}

std::string keyText(const std::vector<Field>& key, const char* (*text)(Field)) {
  std::string out;
  for (Field f : key) {
    out += (out.empty() ? "" : " . ");
    out += text(f);
  }
  return out;
}

struct ExprText {
  std::string operator()(const Compare& c) const { return compareText(c); }
  std::string operator()(const Lookup& l) const {
    return fmt::format("{} {}@{}", keyText(l.key, fieldText), l.negate ? "!= " : "", l.set);
  }
  std::string operator()(const CtStateIn& s) const {
    std::string names;
    for (auto [bit, n] :
         {std::pair{1u, "invalid"}, {2u, "established"}, {4u, "related"}, {8u, "new"}}) {
      if ((s.mask & bit) != 0) {
        names += (names.empty() ? "" : ",");
        names += n;
      }
    }
    return "ct state " + names;
  }
  std::string operator()(const FibDaddrType& f) const {
    const char* type = f.type == RTN_LOCAL       ? "local"
                       : f.type == RTN_BROADCAST ? "broadcast"
                       : f.type == RTN_MULTICAST ? "multicast"
                                                 : "unicast";
    return fmt::format("fib daddr{} type {}{}", f.inputInterface ? " . iif" : "",
                       f.negate ? "!= " : "", type);
  }
  std::string operator()(const Limit& l) const {
    return fmt::format("limit rate {}/second burst {} packets", l.perSecond, l.burst);
  }
  std::string operator()(const Log& l) const {
    return fmt::format("log prefix \"{}\" group {}", l.prefix, l.group);
  }
  std::string operator()(const Count&) const { return "counter"; }
  std::string operator()(const CountByMap& c) const {
    return fmt::format("counter name {} map @{}", fieldText(c.key), c.map);
  }
  std::string operator()(const Redirect& r) const { return fmt::format("redirect to :{}", r.port); }
};

const char* hookText(Hook h) {
  switch (h) {
  case Hook::Prerouting:
    return "prerouting";
  case Hook::Input:
    return "input";
  case Hook::Forward:
    return "forward";
  case Hook::Output:
    return "output";
  case Hook::Postrouting:
    return "postrouting";
  case Hook::None:
    break;
  }
  return "";
}

} // namespace

std::string toNftScript(const Ruleset& rs) {
  std::string out =
      fmt::format("table {} {} {{\n", rs.family == Family::Bridge ? "bridge" : "inet", kTableName);
  for (const auto& c : rs.counters) {
    out += fmt::format("\tcounter {} {{ }}\n", c);
  }
  for (const Set& s : rs.sets) {
    out += fmt::format("\t{} {} {{\n\t\ttype {}{}\n", s.counterMap ? "map" : "set", s.name,
                       keyText(s.key, typeText), s.counterMap ? " : counter" : "");
    if (s.interval) {
      out += "\t\tflags interval\n";
    }
    if (!s.elements.empty()) {
      out += "\t\telements = {";
      bool first = true;
      for (const Element& e : s.elements) {
        out += first ? " " : ",\n\t\t\t";
        first = false;
        for (size_t i = 0; i < e.key.size(); ++i) {
          out += (i == 0 ? "" : " . ") + valueText(s.key[i], e.key[i]);
        }
        if (s.counterMap) {
          out += fmt::format(" : \"{}\"", e.counter);
        }
      }
      out += " }\n";
    }
    out += "\t}\n";
  }
  for (const Chain& c : rs.chains) {
    out += fmt::format("\tchain {} {{\n", c.name);
    if (c.hook != Hook::None) {
      out += fmt::format("\t\ttype {} hook {} priority {}; policy accept;\n",
                         c.type == ChainType::Nat ? "nat" : "filter", hookText(c.hook), c.priority);
    }
    for (const Rule& r : c.rules) {
      std::string line;
      for (const Expr& e : r.exprs) {
        line += (line.empty() ? "" : " ") + std::visit(ExprText{}, e);
      }
      std::string verdict;
      switch (r.verdict) {
      case Verdict::Accept:
        verdict = "accept";
        break;
      case Verdict::Drop:
        verdict = "drop";
        break;
      case Verdict::Return:
        verdict = "return";
        break;
      case Verdict::Jump:
        verdict = "jump " + r.target;
        break;
      case Verdict::Goto:
        verdict = "goto " + r.target;
        break;
      case Verdict::None:
        break;
      }
      if (!verdict.empty()) {
        line += (line.empty() ? "" : " ") + verdict;
      }
      if (!r.comment.empty()) {
        line += fmt::format(" comment \"{}\"", r.comment);
      }
      out += "\t\t" + line + "\n";
    }
    out += "\t}\n";
  }
  out += "}\n";
  return out;
}

} // namespace iotgw::firewall
