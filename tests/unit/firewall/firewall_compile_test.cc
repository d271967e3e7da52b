// SPDX-License-Identifier: GPL-3.0-or-later
#include <gtest/gtest.h>

#include <net/if_arp.h>
#include <netinet/in.h>

#include <fmt/format.h>

#include "firewall/compile.h"
#include "firewall/exposure.h"
#include "policy/policy_parser.h"
#include "tests/tools/nft_text.h"

using namespace iotgw;
using firewall::Element;
using firewall::Field;
using firewall::Value;

namespace {

std::shared_ptr<const policy::PolicySet> policies(const std::vector<std::string>& docs) {
  std::vector<policy::DevicePolicy> devices;
  for (size_t i = 0; i < docs.size(); ++i) {
    auto p = policy::parseDevicePolicy(docs[i], fmt::format("doc{}", i));
    EXPECT_TRUE(p.has_value()) << (p ? "" : p.error().front().message);
    devices.push_back(std::move(*p));
  }
  auto set = policy::PolicySet::build(std::move(devices));
  EXPECT_TRUE(set.has_value());
  return *set;
}

// Many devices, built directly (parsing 10,000 documents would only slow the test down).
std::shared_ptr<const policy::PolicySet> manyDevices(size_t n) {
  std::vector<policy::DevicePolicy> devices;
  for (size_t i = 0; i < n; ++i) {
    policy::DevicePolicy d(*policy::DeviceId::parse(fmt::format("dev-{:05}", i)));
    d.addresses.push_back(
        *policy::IpAddress::parse(fmt::format("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)));
    d.mac = *policy::MacAddress::parse(
        fmt::format("02:00:00:{:02x}:{:02x}:{:02x}", i / 65536, (i / 256) % 256, i % 256));
    d.network.outbound.push_back(*policy::parseEndpoint("192.0.2.10:8883/tcp"));
    d.network.services.push_back(*policy::parseService("80/tcp"));
    devices.push_back(std::move(d));
  }
  return *policy::PolicySet::build(std::move(devices));
}

firewall::CompileOptions options() {
  firewall::CompileOptions o;
  o.interfaces = {"br-iot"};
  o.gatewayServices = {{IPPROTO_TCP, 1883}, {IPPROTO_UDP, 5683}};
  o.deviceListeners = {{*policy::IpAddress::parse("192.168.50.1"), {IPPROTO_TCP, 1883}},
                       {*policy::IpAddress::parse("192.168.50.1"), {IPPROTO_UDP, 5683}},
                       {*policy::IpAddress::parse("fd00:50::1"), {IPPROTO_UDP, 5683}}};
  o.mqttRedirectPort = 1883;
  o.coapRedirectPort = 5683;
  return o;
}

policy::MacAddress macOf(const char* text) { return *policy::MacAddress::parse(text); }

Value v(std::initializer_list<uint8_t> bytes, std::optional<uint8_t> prefix = std::nullopt) {
  return Value{bytes, prefix};
}

const std::string kThermo = R"(
[device]
id = "thermo-01"
mac = "02:00:00:00:00:10"
addresses = ["192.168.50.10", "fd00:50::10"]
[network]
outbound = ["192.168.1.20:8883/tcp", "203.0.113.0/24:123/udp", "[2001:db8::1]:443/tcp"]
services = ["80/tcp", "5683/udp"]
)";

const std::string kPlug = R"(
[device]
id = "plug-02"
mac = "02:00:00:00:00:11"
addresses = ["192.168.50.11"]
[network]
intercept = false
)";

const std::string kLamp = R"(
[device]
id = "lamp-03"
mac = "02:00:00:00:00:12"
addresses = ["192.168.50.12"]
)";

// How many rules a packet can meet at most (a bound): each base chain's rules plus, for every
// jump, the rules of the chain it jumps to, plus those of the largest chain it may go to (a goto
// ends the chain, so only one is taken).
size_t rulesMet(const firewall::Ruleset& rs, const firewall::Chain& c) {
  size_t n = c.rules.size();
  size_t gotoMax = 0;
  for (const auto& r : c.rules) {
    if (r.verdict == firewall::Verdict::Jump) {
      n += rulesMet(rs, *rs.findChain(r.target));
    } else if (r.verdict == firewall::Verdict::Goto) {
      gotoMax = std::max(gotoMax, rulesMet(rs, *rs.findChain(r.target)));
    }
  }
  return n + gotoMax;
}
// Every hook of the table (both tables: their sum), the bound above for each.
size_t longestPath(const firewall::Ruleset& rs) {
  size_t total = 0;
  for (const auto& c : rs.chains) {
    if (c.hook != firewall::Hook::None) {
      total += rulesMet(rs, c);
    }
  }
  return total;
}

} // namespace

TEST(FirewallCompile, DeviceFactsLandInTheirSets) {
  const auto rs = firewall::compile(*policies({kThermo, kPlug}), options());
  const Value thermo4 = v({192, 168, 50, 10});
  const Value plug4 = v({192, 168, 50, 11});
  const Value thermo6 = v({0xfd, 0, 0, 0x50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10});

  EXPECT_EQ(rs.findSet("bound4")->elements, (std::vector<Element>{{{thermo4}, {}}, {{plug4}, {}}}));
  EXPECT_EQ(rs.findSet("bind4")->elements,
            (std::vector<Element>{{{thermo4, v({2, 0, 0, 0, 0, 0x10})}, {}},
                                  {{plug4, v({2, 0, 0, 0, 0, 0x11})}, {}}}));
  EXPECT_EQ(rs.findSet("bind6")->elements,
            (std::vector<Element>{{{thermo6, v({2, 0, 0, 0, 0, 0x10})}, {}}}));
  // An outbound prefix is a range; a host is exact; each address family in its own set.
  EXPECT_EQ(rs.findSet("allow4")->elements,
            (std::vector<Element>{
                {{thermo4, v({192, 168, 1, 20}), v({IPPROTO_TCP}), v({0x22, 0xb3})}, {}}}));
  EXPECT_EQ(rs.findSet("allow_net4")->elements,
            (std::vector<Element>{
                {{thermo4, v({203, 0, 113, 0}, 24), v({IPPROTO_UDP}), v({0, 123})}, {}}}));
  EXPECT_FALSE(rs.findSet("allow4")->interval);
  EXPECT_TRUE(rs.findSet("allow_net4")->interval);
  ASSERT_EQ(rs.findSet("allow6")->elements.size(), 1u);
  EXPECT_EQ(rs.findSet("services4")->elements,
            (std::vector<Element>{{{thermo4, v({IPPROTO_TCP}), v({0, 80})}, {}},
                                  {{thermo4, v({IPPROTO_UDP}), v({0x16, 0x33})}, {}}}));
  // plug-02 turned interception off.
  EXPECT_EQ(rs.findSet("intercept4")->elements, (std::vector<Element>{{{thermo4}, {}}}));
  EXPECT_TRUE(rs.findSet("quarantine4")->elements.empty());
  EXPECT_EQ(rs.findSet("tx4")->elements,
            (std::vector<Element>{{{thermo4}, "tx-thermo-01"}, {{plug4}, "tx-plug-02"}}));
  EXPECT_EQ(rs.counters,
            (std::vector<std::string>{"tx-plug-02", "rx-plug-02", "tx-thermo-01", "rx-thermo-01"}));
  // DNS is always there; the listeners come from the options. DHCP is not a service on the
  // gateway's addresses (dhcp_input: its broadcast and multicast too).
  EXPECT_EQ(rs.findSet("gw_services")->elements.size(), 4u);
  // The device-side listeners, by address and port: from the segment only.
  EXPECT_EQ(
      rs.findSet("listeners4")->elements,
      (std::vector<Element>{{{v({192, 168, 50, 1}), v({IPPROTO_TCP}), v({0x07, 0x5b})}, {}},
                            {{v({192, 168, 50, 1}), v({IPPROTO_UDP}), v({0x16, 0x33})}, {}}}));
  EXPECT_EQ(rs.findSet("listeners6")->elements.size(), 1u);
}

TEST(FirewallCompile, QuarantineAddsEveryAddressOfTheDevice) {
  auto o = options();
  o.quarantined = {"thermo-01"};
  const auto rs = firewall::compile(*policies({kThermo, kPlug}), o);
  EXPECT_EQ(rs.findSet("quarantine4")->elements,
            (std::vector<Element>{{{v({192, 168, 50, 10})}, {}}}));
  EXPECT_EQ(rs.findSet("quarantine6")->elements.size(), 1u);
  // And its MAC, which every address it uses travels with (a link-local one included).
  EXPECT_EQ(rs.findSet("quarantine_mac")->elements,
            (std::vector<Element>{{{v({2, 0, 0, 0, 0, 0x10})}, {}}}));
}

// A device that logs in and has no address in its policy is quarantined by its MAC, in both
// tables.
TEST(FirewallCompile, QuarantineOfALoginOnlyDeviceIsItsMac) {
  const std::string sensor = R"(
[device]
id = "sensor-05"
mac = "02:00:00:00:00:15"
[device.mqtt]
username = "sensor"
password_hash = "pbkdf2-sha256$10000$c2FsdHNhbHRzYWx0$Ywhqa9a6UzxJLtjYRT+Z1yOp+8LEJ8K4SHhDCPyIytM"
)";
  auto p = policies({kThermo, sensor});
  auto o = options();
  o.quarantined = {"sensor-05"};
  const Element mac{{v({2, 0, 0, 0, 0, 0x15})}, {}};
  EXPECT_EQ(firewall::compile(*p, o).findSet("quarantine_mac")->elements,
            (std::vector<Element>{mac}));
  EXPECT_TRUE(firewall::compile(*p, o).findSet("quarantine4")->elements.empty());
  EXPECT_EQ(firewall::compileBridge(*p, o).findSet("quarantine_mac")->elements,
            (std::vector<Element>{mac}));
}

TEST(FirewallCompile, BridgeTableBindsMacsToTheirPorts) {
  auto o = options();
  o.bindings["thermo-01"] = {macOf("02:00:00:00:00:10"), "gw-dev", 0};
  o.bindings["plug-02"] = {macOf("02:00:00:00:00:11"), "", 7};
  o.bindings["lamp-03"] = {macOf("02:00:00:00:00:99"), "gw-old", 0}; // its MAC changed since
  o.foreignPorts = {"lan1", "lan2"};
  const auto rs = firewall::compileBridge(*policies({kThermo, kPlug, kLamp}), o);
  EXPECT_EQ(rs.family, firewall::Family::Bridge);
  const Value thermo = v({2, 0, 0, 0, 0, 0x10});
  const Value plug = v({2, 0, 0, 0, 0, 0x11});
  const Value lamp = v({2, 0, 0, 0, 0, 0x12});
  Value group7{{7, 0, 0, 0}, std::nullopt}; // host order (little-endian here)
  EXPECT_EQ(rs.findSet("macs")->elements,
            (std::vector<Element>{{{thermo}, {}}, {{plug}, {}}, {{lamp}, {}}}));
  EXPECT_EQ(rs.findSet("bound_macs")->elements,
            (std::vector<Element>{{{thermo}, {}}, {{plug}, {}}}));
  EXPECT_EQ(rs.findSet("port_bind")->elements.size(), 1u);
  EXPECT_EQ(rs.findSet("port_bind")->elements[0].key[0], thermo);
  EXPECT_EQ(rs.findSet("group_bind")->elements, (std::vector<Element>{{{plug, group7}, {}}}));
  EXPECT_EQ(rs.findSet("foreign_ports")->elements.size(), 2u);
  EXPECT_EQ(rs.findSet("bind4")->elements.size(), 3u);
  EXPECT_EQ(rs.findSet("bind6")->elements,
            (std::vector<Element>{
                {{v({0xfd, 0, 0, 0x50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10}), thermo}, {}}}));
  // Learning a port is an element delta of the bridge table.
  auto learned = o;
  learned.bindings["lamp-03"] = {macOf("02:00:00:00:00:12"), "gw-lamp", 0};
  const auto d =
      firewall::diff(rs, firewall::compileBridge(*policies({kThermo, kPlug, kLamp}), learned));
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->add.at("bound_macs").size(), 1u);
  EXPECT_EQ(d->add.at("port_bind").size(), 1u);
  EXPECT_TRUE(d->remove.empty());
}

TEST(FirewallCompile, NoNatWithoutAListenerOrAnInterceptedDevice) {
  auto o = options();
  o.mqttRedirectPort.reset();
  o.coapRedirectPort.reset();
  const auto rs = firewall::compile(*policies({kThermo}), o);
  EXPECT_EQ(rs.findChain("nat_prerouting"), nullptr); // no NAT at all
  // Nor when no device is intercepted (the plug opts out).
  EXPECT_EQ(firewall::compile(*policies({kPlug}), options()).findChain("nat_prerouting"), nullptr);
  EXPECT_EQ(
      firewall::compile(*policies({kThermo}), options()).findChain("nat_prerouting")->rules.size(),
      4u); // MQTT and CoAP, IPv4 and IPv6
}

TEST(FirewallCompile, RulesPerPacketDoNotGrowWithDevices) {
  // Every device bound to a port and every other one quarantined, so that every set has
  // elements.
  auto optionsFor = [](const policy::PolicySet& set) {
    auto o = options();
    bool quarantine = true;
    for (const auto& d : set.devices()) {
      o.bindings[d.id.str()] = {*d.mac, "gw-" + d.id.str().substr(4), 0};
      if (quarantine) {
        o.quarantined.insert(d.id.str());
      }
      quarantine = !quarantine;
    }
    return o;
  };
  const auto oneSet = manyDevices(1);
  const auto manySet = manyDevices(10'000);
  for (bool bridge : {false, true}) {
    const auto compileOne = bridge ? firewall::compileBridge : firewall::compile;
    const auto one = compileOne(*oneSet, optionsFor(*oneSet));
    const auto many = compileOne(*manySet, optionsFor(*manySet));
    ASSERT_EQ(one.chains.size(), many.chains.size());
    for (size_t i = 0; i < one.chains.size(); ++i) {
      EXPECT_EQ(one.chains[i], many.chains[i]) << one.chains[i].name;
    }
    EXPECT_EQ(longestPath(one), longestPath(many));
    // Every hook and path together, IPv4 and IPv6 (a bound on what one packet meets; the
    // bridge table's fast path adds four rules to the worst case to save most frames seven).
    EXPECT_LE(longestPath(many), bridge ? 34u : 80u) << (bridge ? "bridge" : "inet");
    if (bridge) {
      EXPECT_EQ(many.findSet("port_bind")->elements.size(), 10'000u);
      // Bound and not quarantined: in the fast path, one element per address.
      const size_t quarantined = many.findSet("quarantine_mac")->elements.size();
      EXPECT_EQ(quarantined, 5'000u);
      EXPECT_EQ(many.findSet("fast4")->elements.size(), 10'000u - quarantined);
    }
  }
  const auto many = firewall::compile(*manySet, options());
  // What grows is data: one element per device in each per-device set, two counters each.
  EXPECT_EQ(many.findSet("bind4")->elements.size(), 10'000u);
  EXPECT_EQ(many.findSet("allow4")->elements.size(), 10'000u);
  EXPECT_EQ(many.counters.size(), 20'000u);
}

TEST(FirewallCompile, OneDeviceMoreIsAnElementDelta) {
  const auto before = firewall::compile(*policies({kPlug, kLamp}), options());
  const auto after = firewall::compile(*policies({kPlug, kLamp, kThermo}), options());
  const auto d = firewall::diff(before, after);
  ASSERT_TRUE(d.has_value());
  EXPECT_TRUE(d->remove.empty());
  EXPECT_TRUE(d->deleteCounters.empty());
  EXPECT_EQ(d->addCounters, (std::vector<std::string>{"rx-thermo-01", "tx-thermo-01"}));
  EXPECT_EQ(d->add.at("allow4").size(), 1u);
  EXPECT_EQ(d->add.at("allow_net4").size(), 1u);
  EXPECT_EQ(d->add.at("tx6").size(), 1u);
  // And back again.
  const auto back = firewall::diff(after, before);
  ASSERT_TRUE(back.has_value());
  EXPECT_TRUE(back->add.empty());
  EXPECT_EQ(back->remove.at("bind4").size(), 1u);
  EXPECT_EQ(back->remove.at("bind6").size(), 1u);
  EXPECT_EQ(back->deleteCounters.size(), 2u);
  // Nothing changed: an empty delta.
  EXPECT_TRUE(firewall::diff(after, after)->empty());
  // The first intercepted device brings the nat chain: the whole table.
  EXPECT_FALSE(firewall::diff(firewall::compile(*policies({kPlug}), options()), after).has_value());
}

TEST(FirewallCompile, StructuralChangesNeedTheWholeTable) {
  auto o = options();
  o.coapRedirectPort.reset();
  const auto a = firewall::compile(*policies({kThermo}), options());
  const auto b = firewall::compile(*policies({kThermo}), o);
  EXPECT_FALSE(firewall::diff(a, b).has_value());
}

TEST(FirewallCompile, NftScriptNamesEveryPart) {
  const std::string text =
      firewall::toNftScript(firewall::compile(*policies({kThermo}), options()));
  for (const char* part : {
           "table inet iotgw {",
           "counter tx-thermo-01 { }",
           "set allow_net4 {\n\t\ttype ipv4_addr . ipv4_addr . inet_proto . "
           "inet_service\n\t\tflags interval\n",
           "192.168.50.10 . 203.0.113.0/24 . 17 . 123",
           "map tx4 {\n\t\ttype ipv4_addr : counter\n\t\telements = { 192.168.50.10 : "
           "\"tx-thermo-01\" }",
           "type filter hook forward priority 0; policy accept;",
           "iifname @dev_ifaces jump device_forward_out",
           "\t\tjump from_devices\n",
           "ct state established,related goto to_devices",
           "meta nfproto ipv4 meta iiftype ether ip saddr . ether saddr @bind4 counter name ip "
           "saddr map @tx4 return",
           "meta nfproto ipv4 ip saddr @bound4 meta iiftype ether goto spoofed",
           "log prefix \"iotgw spoof\" group 26991",
           "jump outside_input",
           "ip daddr . meta l4proto . th dport @listeners4 counter drop",
           "fib daddr . iif type local meta l4proto . th dport @gw_services accept",
           "th dport 67 fib daddr . iif type broadcast accept",
           "th dport 547 fib daddr . iif type multicast accept",
           "meta iiftype ether ether saddr @quarantine_mac goto quarantined_input",
           "fib daddr type != local meta l4proto 6 th dport 1883 redirect to :1883",
           "ct state established,related accept",
           "meta mark 0x696f7467 goto to_devices",
       }) {
    EXPECT_NE(text.find(part), std::string::npos) << part << "\n---\n" << text;
  }
}

// The gateway's own processes reach its device-side listeners over loopback (as iotgwd's own
// arrival check allows); everything else from outside the segment does not.
TEST(FirewallCompile, LoopbackComesBeforeTheListenersAreClosedToTheOutside) {
  const auto rs = firewall::compile(*policies({kThermo}), options());
  const auto* outside = rs.findChain("outside_input");
  ASSERT_NE(outside, nullptr);
  ASSERT_FALSE(outside->rules.empty());
  const auto& first = outside->rules.front();
  EXPECT_EQ(first.verdict, firewall::Verdict::Return);
  ASSERT_EQ(first.exprs.size(), 1u);
  const auto* lo = std::get_if<firewall::Compare>(&first.exprs.front());
  ASSERT_NE(lo, nullptr);
  EXPECT_EQ(lo->field, firewall::Field::Iiftype);
  EXPECT_EQ(lo->value, ARPHRD_LOOPBACK);
}

TEST(FirewallExposure, OnlyUnlistedOpenPortsAreReported) {
  const auto set = policies({kThermo}); // services 80/tcp and 5683/udp
  const auto& thermo = set->devices().front();
  using policy::Transport;
  const std::vector<firewall::OpenPort> open{
      {23, Transport::Tcp}, {80, Transport::Tcp}, {5683, Transport::Udp}, {80, Transport::Udp}};
  const auto found = firewall::unexpectedServices(thermo, open);
  ASSERT_EQ(found.size(), 2u);
  EXPECT_EQ(found[0].open, (firewall::OpenPort{23, Transport::Tcp}));
  EXPECT_EQ(found[0].service, "telnet");
  EXPECT_NE(found[0].message.find("Mirai"), std::string::npos);
  EXPECT_EQ(found[1].open,
            (firewall::OpenPort{80, Transport::Udp})); // 80/tcp is listed, not 80/udp
  EXPECT_EQ(firewall::scanPorts().size(), 13u);
}

// A device with CoAP rules is reached by the CoAP proxy on its coap.port without listing it under
// network.services: the gateway's output chain lets the proxy through, and the exposure scan does
// not report the port. A device without rules gets neither.
TEST(FirewallCompile, CoapRulesOpenTheDevicesCoapPortToTheGatewayOnly) {
  constexpr const char* kCoapDevice = R"(
[device]
id = "sensor-03"
mac = "02:00:00:00:00:13"
addresses = ["192.168.50.13"]
[coap]
port = 5690
[[coap.rule]]
methods = ["GET"]
path = "/temp"
)";
  constexpr const char* kNoRules = R"(
[device]
id = "sensor-04"
mac = "02:00:00:00:00:14"
addresses = ["192.168.50.14"]
[coap]
port = 5690
)";
  const auto set = policies({kCoapDevice, kNoRules});
  const auto rs = firewall::compile(*set, options());
  EXPECT_EQ(
      rs.findSet("services4")->elements,
      (std::vector<Element>{{{v({192, 168, 50, 13}), v({IPPROTO_UDP}), v({0x16, 0x3a})}, {}}}));
  EXPECT_TRUE(rs.findSet("allow4")->elements.empty()); // the device itself gains nothing

  using policy::Transport;
  const std::vector<firewall::OpenPort> open{{5690, Transport::Udp}, {5683, Transport::Udp}};
  const auto withRules =
      firewall::unexpectedServices(*set->find(*policy::DeviceId::parse("sensor-03")), open);
  ASSERT_EQ(withRules.size(), 1u);
  EXPECT_EQ(withRules[0].open, (firewall::OpenPort{5683, Transport::Udp}));
  EXPECT_EQ(
      firewall::unexpectedServices(*set->find(*policy::DeviceId::parse("sensor-04")), open).size(),
      2u);
}

TEST(FirewallCompile, BridgeScriptNamesEveryPart) {
  const std::string text =
      firewall::toNftScript(firewall::compileBridge(*policies({kThermo}), options()));
  for (const char* part : {
           "table bridge iotgw {",
           "type filter hook prerouting priority -200; policy accept;",
           "iifname != @foreign_ports jump from_ports",
           "iifname != @foreign_ports counter drop",
           "ether saddr @bound_macs ether saddr . iifname != @port_bind ether saddr . meta "
           "iifgroup "
           "!= @group_bind goto wrong_port",
           "log prefix \"iotgw learn\" group 26991",
           "meta protocol arp arp saddr ip @bound4 arp saddr ip . arp saddr ether != @bind4 goto "
           "poisoning",
           "meta protocol ip6 meta l4proto 58 icmpv6 type 136 @th,64,128 @bound6",
           "meta protocol ip meta l4proto 17 th sport 67 goto rogue_server",
           "ether daddr @bound_macs ether daddr . oifname != @port_bind",
           "ether saddr @quarantine_mac goto quarantined_from",
       }) {
    EXPECT_NE(text.find(part), std::string::npos) << part << "\n---\n" << text;
  }
}
