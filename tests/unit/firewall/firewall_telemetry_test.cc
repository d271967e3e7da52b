// SPDX-License-Identifier: GPL-3.0-or-later
#include "firewall/telemetry.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <linux/if_link.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_log.h>
#include <linux/rtnetlink.h>

#include <libmnl/libmnl.h>

#include <cstring>
#include <tuple>

#include <gtest/gtest.h>

#include "firewall/links.h"
#include "firewall/ports.h"
#include "firewall/reports.h"

using iotgw::firewall::DeviceCounters;
using iotgw::firewall::TrafficWatch;
using namespace std::chrono_literals;

namespace {

// A camera that sends `bytesPerSecond` for `seconds`, read every second.
struct Feed {
  TrafficWatch watch;
  TrafficWatch::Clock::time_point t{};
  std::map<std::string, DeviceCounters> totals;

  std::vector<iotgw::firewall::Surge> second(std::map<std::string, uint64_t> bytesPerSecond) {
    t += 1s;
    for (const auto& [id, b] : bytesPerSecond) {
      totals[id].tx.bytes += b;
      totals[id].tx.packets += b / 100;
      totals[id].rx.bytes += b / 10;
    }
    return watch.sample(totals, t);
  }
};

} // namespace

TEST(TrafficWatch, RatesFromSuccessiveReadings) {
  Feed f;
  EXPECT_TRUE(f.second({{"cam", 50'000}}).empty()); // first reading: no interval yet
  EXPECT_TRUE(f.second({{"cam", 50'000}}).empty());
  const auto& r = f.watch.rates().at("cam");
  EXPECT_DOUBLE_EQ(r.txBytesPerSecond, 50'000);
  EXPECT_DOUBLE_EQ(r.rxBytesPerSecond, 5'000);
  EXPECT_DOUBLE_EQ(r.txPacketsPerSecond, 500);
  EXPECT_EQ(f.watch.counters().at("cam").tx.bytes, 100'000u);
}

TEST(TrafficWatch, AFloodIsASurgeOnceUntilItSubsides) {
  Feed f;
  for (int i = 0; i < 6; ++i) {
    EXPECT_TRUE(f.second({{"cam", 50'000}, {"plug", 100}}).empty());
  }
  // The camera floods: 40 MB/s, 800 times its usual rate; the plug goes on as before.
  auto s = f.second({{"cam", 40'000'000}, {"plug", 100}});
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].device, "cam");
  EXPECT_DOUBLE_EQ(s[0].txBytesPerSecond, 40'000'000);
  EXPECT_NEAR(s[0].baselineTxBytesPerSecond, 50'000, 1);
  // Still flooding: no second event, and the flood does not become the new normal.
  EXPECT_TRUE(f.second({{"cam", 40'000'000}}).empty());
  EXPECT_TRUE(f.watch.rates().at("cam").surging);
  EXPECT_NEAR(f.watch.rates().at("cam").baselineTxBytesPerSecond, 50'000, 1);
  // Back to normal, then a second flood is a second surge.
  EXPECT_TRUE(f.second({{"cam", 50'000}}).empty());
  EXPECT_FALSE(f.watch.rates().at("cam").surging);
  EXPECT_EQ(f.second({{"cam", 40'000'000}}).size(), 1u);
}

TEST(TrafficWatch, QuietDevicesAndNewcomersDoNotAlarm) {
  Feed f;
  for (int i = 0; i < 6; ++i) {
    f.second({{"sensor", 10}});
  }
  // 100 times its rate, but 1 KB/s: under the floor.
  EXPECT_TRUE(f.second({{"sensor", 1'000}}).empty());
  // A device that just appeared is learning, whatever it sends.
  EXPECT_TRUE(f.second({{"sensor", 10}, {"new", 10'000'000}}).empty());
  EXPECT_TRUE(f.second({{"new", 50'000'000}}).empty());
}

TEST(TrafficWatch, CountersGoingBackwardsStartOver) {
  Feed f;
  for (int i = 0; i < 6; ++i) {
    f.second({{"cam", 50'000}});
  }
  // Removed and enrolled again: its counters restart from zero.
  f.totals["cam"] = {};
  EXPECT_TRUE(f.second({{"cam", 1'000}}).empty());
  EXPECT_DOUBLE_EQ(f.watch.rates().at("cam").txBytesPerSecond, 0); // no rate across the reset
  EXPECT_TRUE(f.second({{"cam", 40'000'000}}).empty()); // learning again, nothing to compare with
  EXPECT_DOUBLE_EQ(f.watch.rates().at("cam").txBytesPerSecond, 40'000'000);
}

// --- what the tables report back over nflog, and what the gateway makes of it -----------------

namespace {

using iotgw::firewall::PortBinding;
using iotgw::firewall::Report;
using iotgw::firewall::ReportKind;

// An NFULNL_MSG_PACKET message as the kernel writes it for a bridge-family log statement.
std::vector<uint8_t> nflogMessage(const char* prefix, uint16_t ethertype,
                                  const std::vector<uint8_t>& packet, uint32_t indev = 3,
                                  uint32_t physindev = 0, const char* mac = "02:00:00:00:00:66") {
  std::vector<uint8_t> buf(4096);
  nlmsghdr* h = mnl_nlmsg_put_header(buf.data());
  h->nlmsg_type = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET;
  auto* g = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(h, sizeof(nfgenmsg)));
  g->nfgen_family = NFPROTO_BRIDGE;
  nfulnl_msg_packet_hdr ph{htons(ethertype), 0, 0};
  mnl_attr_put(h, NFULA_PACKET_HDR, sizeof ph, &ph);
  mnl_attr_put_strz(h, NFULA_PREFIX, prefix);
  mnl_attr_put_u32(h, NFULA_IFINDEX_INDEV, htonl(indev));
  if (physindev != 0) {
    mnl_attr_put_u32(h, NFULA_IFINDEX_PHYSINDEV, htonl(physindev));
  }
  nfulnl_msg_packet_hw hw{};
  hw.hw_addrlen = htons(6);
  const auto m = *iotgw::policy::MacAddress::parse(mac);
  std::memcpy(hw.hw_addr, m.bytes.data(), 6);
  mnl_attr_put(h, NFULA_HWADDR, sizeof hw, &hw);
  mnl_attr_put(h, NFULA_PAYLOAD, packet.size(), packet.data());
  buf.resize(h->nlmsg_len);
  return buf;
}

std::vector<uint8_t> arpReply(std::initializer_list<uint8_t> sha,
                              std::initializer_list<uint8_t> spa) {
  std::vector<uint8_t> p{0, 1, 8, 0, 6, 4, 0, 2};
  p.insert(p.end(), sha);
  p.insert(p.end(), spa);
  p.insert(p.end(), {2, 0, 0, 0, 0, 1, 192, 168, 50, 1});
  return p;
}

// An IPv6 header (40 bytes, next header `next`) from fe80::66, then `l4`.
std::vector<uint8_t> ipv6(uint8_t next, std::vector<uint8_t> l4) {
  std::vector<uint8_t> p{0x60, 0, 0, 0, 0, static_cast<uint8_t>(l4.size()), next, 255};
  std::vector<uint8_t> src{0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x66};
  p.insert(p.end(), src.begin(), src.end());
  p.insert(p.end(), 16, 0);
  p.insert(p.end(), l4.begin(), l4.end());
  return p;
}

const std::vector<uint8_t> kPlug6{0xfd, 0, 0, 0x50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11};

std::vector<uint8_t> neighbourAdvertisement(bool withOption) {
  std::vector<uint8_t> l4{136, 0, 0, 0, 0x20, 0, 0, 0};
  l4.insert(l4.end(), kPlug6.begin(), kPlug6.end());
  if (withOption) {
    l4.insert(l4.end(), {2, 1, 2, 0, 0, 0, 0, 0x66});
  }
  return ipv6(IPPROTO_ICMPV6, l4);
}

std::shared_ptr<const iotgw::policy::PolicySet> twoDevices() {
  std::vector<iotgw::policy::DevicePolicy> devices;
  for (auto [id, mac, address] : {std::tuple{"thermo-01", "02:00:00:00:00:10", "192.168.50.10"},
                                  {"plug-02", "02:00:00:00:00:11", "fd00:50::11"}}) {
    iotgw::policy::DevicePolicy d(*iotgw::policy::DeviceId::parse(id));
    d.mac = iotgw::policy::MacAddress::parse(mac);
    d.addresses.push_back(*iotgw::policy::IpAddress::parse(address));
    devices.push_back(std::move(d));
  }
  return *iotgw::policy::PolicySet::build(std::move(devices));
}

Report report(ReportKind kind, const char* mac, uint16_t ethertype = 0x0800,
              std::vector<uint8_t> packet = {}) {
  Report r;
  r.kind = kind;
  r.source = iotgw::policy::MacAddress::parse(mac);
  r.ethertype = ethertype;
  r.packet = std::move(packet);
  return r;
}

} // namespace

TEST(FirewallReports, AnArpReplyFromABridgePort) {
  const auto msg = nflogMessage(iotgw::firewall::kReportPoison, 0x0806,
                                arpReply({2, 0, 0, 0, 0, 0x66}, {192, 168, 50, 10}), 9, 4);
  const auto r = iotgw::firewall::parseReport(msg);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->kind, ReportKind::Poisoning);
  EXPECT_EQ(r->port, 4u); // the physical input device (the port), not the bridge
  EXPECT_EQ(r->source->str(), "02:00:00:00:00:66");
  const auto c = iotgw::firewall::readClaim(*r);
  EXPECT_EQ(c.what, "ARP reply");
  EXPECT_EQ(c.address->str(), "192.168.50.10");
  EXPECT_EQ(c.mac->str(), "02:00:00:00:00:66");
  // Without br_netfilter in the kernel the port is the input device.
  EXPECT_EQ(iotgw::firewall::parseReport(nflogMessage(iotgw::firewall::kReportLearn, 0x0800, {}, 5))
                ->port,
            5u);
}

TEST(FirewallReports, WhatIsNotOursOrIsShortIsNothing) {
  EXPECT_FALSE(iotgw::firewall::parseReport(nflogMessage("someone else", 0x0800, {})));
  auto msg = nflogMessage(iotgw::firewall::kReportPort, 0x0800, {});
  EXPECT_TRUE(iotgw::firewall::parseReport(msg));
  EXPECT_FALSE(iotgw::firewall::parseReport(std::span(msg).first(msg.size() - 1))); // length lies
  EXPECT_FALSE(iotgw::firewall::parseReport(std::span(msg).first(10)));
  // Truncated packets claim nothing they do not carry.
  Report arp = report(ReportKind::Poisoning, "02:00:00:00:00:66", 0x0806, {0, 1, 8, 0, 6, 4, 0, 2});
  EXPECT_FALSE(iotgw::firewall::readClaim(arp).address);
  Report v6 = report(ReportKind::Spoofed, "02:00:00:00:00:66", 0x86dd, {0x60, 0, 0});
  EXPECT_FALSE(iotgw::firewall::readClaim(v6).address);
}

TEST(FirewallReports, NeighbourAdvertisementsRouterAdvertisementsAndDhcp) {
  auto na = iotgw::firewall::readClaim(
      report(ReportKind::Poisoning, "02:00:00:00:00:66", 0x86dd, neighbourAdvertisement(true)));
  EXPECT_EQ(na.what, "neighbour advertisement");
  EXPECT_EQ(na.address->str(), "fd00:50::11"); // the target, not the source
  EXPECT_EQ(na.mac->str(), "02:00:00:00:00:66");
  EXPECT_FALSE(iotgw::firewall::readClaim(report(ReportKind::Poisoning, "02:00:00:00:00:66", 0x86dd,
                                                 neighbourAdvertisement(false)))
                   .mac);
  EXPECT_EQ(iotgw::firewall::readClaim(report(ReportKind::RogueServer, "02:00:00:00:00:66", 0x86dd,
                                              ipv6(IPPROTO_ICMPV6, {134, 0, 0, 0})))
                .what,
            "router advertisement");
  std::vector<uint8_t> offer{0x45, 0,  0,   28,  0,   0,   0, 0,  64, IPPROTO_UDP, 0, 0, 192, 168,
                             50,   66, 255, 255, 255, 255, 0, 67, 0,  68,          0, 8, 0,   0};
  const auto dhcp = iotgw::firewall::readClaim(
      report(ReportKind::RogueServer, "02:00:00:00:00:66", 0x0800, offer));
  EXPECT_EQ(dhcp.what, "DHCP server reply");
  EXPECT_EQ(dhcp.address->str(), "192.168.50.66");
}

TEST(FirewallPorts, TheFirstPortAnEnrolledMacIsSeenOnBindsIt) {
  const iotgw::firewall::PortBook book(twoDevices());
  std::map<std::string, PortBinding> bound;
  auto learn = report(ReportKind::Learn, "02:00:00:00:00:10");
  auto f = book.interpret(learn, bound, iotgw::firewall::PortInfo{"gw-dev", 0});
  ASSERT_TRUE(f.bind.has_value());
  EXPECT_EQ(f.bind->first, "thermo-01");
  EXPECT_EQ(f.bind->second,
            (PortBinding{*iotgw::policy::MacAddress::parse("02:00:00:00:00:10"), "gw-dev", 0}));
  EXPECT_EQ(f.event->type, iotgw::policy::EventType::DevicePortBound);
  // A port in an interface group binds the group.
  f = book.interpret(learn, bound, iotgw::firewall::PortInfo{"wlan0", 7});
  EXPECT_EQ(f.bind->second.group, 7u);
  EXPECT_TRUE(f.bind->second.port.empty());
  EXPECT_NE(f.event->message.find("interface group 7"), std::string::npos);
  // Not enrolled, or the port unknown: nothing.
  EXPECT_FALSE(book.interpret(report(ReportKind::Learn, "02:00:00:00:00:99"), bound,
                              iotgw::firewall::PortInfo{"gw-dev", 0})
                   .event);
  EXPECT_FALSE(book.interpret(learn, bound, std::nullopt).bind);
  // Bound already: the same port again is nothing; another port at once is a conflict.
  bound["thermo-01"] = {*iotgw::policy::MacAddress::parse("02:00:00:00:00:10"), "gw-dev", 0};
  EXPECT_FALSE(book.interpret(learn, bound, iotgw::firewall::PortInfo{"gw-dev", 0}).event);
  f = book.interpret(learn, bound, iotgw::firewall::PortInfo{"gw-rogue", 0});
  EXPECT_FALSE(f.bind);
  EXPECT_EQ(f.event->type, iotgw::policy::EventType::DevicePortConflict);
}

TEST(FirewallPorts, ConflictsAndPoisoningNameTheDevice) {
  const iotgw::firewall::PortBook book(twoDevices());
  std::map<std::string, PortBinding> bound{
      {"thermo-01", {*iotgw::policy::MacAddress::parse("02:00:00:00:00:10"), "gw-dev", 0}}};
  const iotgw::firewall::PortInfo rogue{"gw-rogue", 0};
  auto f = book.interpret(report(ReportKind::WrongPort, "02:00:00:00:00:10"), bound, rogue);
  EXPECT_EQ(f.event->type, iotgw::policy::EventType::DevicePortConflict);
  EXPECT_EQ(f.event->device, "thermo-01");
  EXPECT_NE(f.event->message.find("came in on port gw-rogue, but it is bound to port gw-dev"),
            std::string::npos);
  std::vector<uint8_t> spoofed{0x45, 0, 0,   20,  0,  0,  0,   0,   64, 6,
                               0,    0, 192, 168, 50, 10, 192, 168, 50, 1};
  f = book.interpret(report(ReportKind::Spoofed, "02:00:00:00:00:66", 0x0800, spoofed), bound,
                     rogue);
  EXPECT_EQ(f.event->type, iotgw::policy::EventType::DevicePortConflict);
  EXPECT_EQ(f.event->device, "thermo-01");
  EXPECT_EQ(f.event->peer, "02:00:00:00:00:66");
  f = book.interpret(report(ReportKind::Poisoning, "02:00:00:00:00:66", 0x0806,
                            arpReply({2, 0, 0, 0, 0, 0x66}, {192, 168, 50, 10})),
                     bound, rogue);
  EXPECT_EQ(f.event->type, iotgw::policy::EventType::NeighbourSpoofing);
  EXPECT_EQ(f.event->rule, "bridge:arp");
  EXPECT_EQ(f.event->device, "thermo-01");
  f = book.interpret(
      report(ReportKind::Poisoning, "02:00:00:00:00:66", 0x86dd, neighbourAdvertisement(true)),
      bound, rogue);
  EXPECT_EQ(f.event->rule, "bridge:nd");
  EXPECT_EQ(f.event->device, "plug-02");
  f = book.interpret(report(ReportKind::RogueServer, "02:00:00:00:00:66", 0x86dd,
                            ipv6(IPPROTO_ICMPV6, {134, 0, 0, 0})),
                     bound, rogue);
  EXPECT_EQ(f.event->rule, "bridge:router");
  EXPECT_TRUE(f.event->device.empty()); // the rogue is nobody enrolled
}

TEST(FirewallLinks, BridgesPortsAndGroups) {
  auto message = [](uint16_t type, uint8_t family, int index, const char* name, uint32_t master,
                    uint32_t group, const char* kind) {
    std::vector<uint8_t> buf(1024);
    nlmsghdr* h = mnl_nlmsg_put_header(buf.data());
    h->nlmsg_type = type;
    auto* ifi = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(h, sizeof(ifinfomsg)));
    ifi->ifi_family = family;
    ifi->ifi_index = index;
    mnl_attr_put_strz(h, IFLA_IFNAME, name);
    if (master != 0) {
      mnl_attr_put_u32(h, IFLA_MASTER, master);
    }
    mnl_attr_put_u32(h, IFLA_GROUP, group);
    if (kind != nullptr) {
      nlattr* info = mnl_attr_nest_start(h, IFLA_LINKINFO);
      mnl_attr_put_strz(h, IFLA_INFO_KIND, kind);
      mnl_attr_nest_end(h, info);
    }
    buf.resize(h->nlmsg_len);
    return buf;
  };
  auto bridge =
      iotgw::firewall::parseLink(message(RTM_NEWLINK, AF_UNSPEC, 2, "br-iot", 0, 0, "bridge"));
  ASSERT_TRUE(bridge.has_value());
  EXPECT_EQ(bridge->link, (iotgw::firewall::Link{2, "br-iot", 0, 0, true}));
  auto port = iotgw::firewall::parseLink(message(RTM_NEWLINK, AF_UNSPEC, 5, "wlan0", 2, 7, "veth"));
  EXPECT_EQ(port->link, (iotgw::firewall::Link{5, "wlan0", 2, 7, false}));
  EXPECT_TRUE(iotgw::firewall::parseLink(message(RTM_DELLINK, AF_UNSPEC, 5, "wlan0", 0, 0, nullptr))
                  ->removed);
  // The bridge's own per-port messages carry part of the attributes: not a link's state.
  EXPECT_FALSE(
      iotgw::firewall::parseLink(message(RTM_NEWLINK, AF_BRIDGE, 5, "wlan0", 2, 0, nullptr)));
}
