// SPDX-License-Identifier: GPL-3.0-or-later
// Drives the firewall module for benchmarks and network tests, inside a network namespace:
//
//   nft_load script N            the ruleset for N devices in nft's language (for `nft -f`)
//   nft_load replace N [ROUNDS]  applies it through one libnftnl batch; prints timings
//   nft_load churn N ROUNDS      with N enrolled, adds and removes one device ROUNDS times
//   nft_load counters            the table's named counters
//   --no-intercept (last)        devices without interception: the table has no nat chain
//   --bridge (last)              replace applies table bridge iotgw too, every device bound to
//                                bridge port "p0" (as iotgwd applies both)
//
// Devices are dev-00000 ... at 10.0.0.1 ... with MACs 02:00:00:00:00:01 ... on interface "br-iot",
// each allowed to 192.0.2.10:8883/tcp and 192.0.2.10:9000/udp and reachable by the gateway on
// 80/tcp.
#include <netinet/in.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "firewall/compile.h"
#include "firewall/netlink.h"
#include "policy/policy_parser.h"
#include "tests/tools/nft_text.h"

using namespace iotgw;
using Clock = std::chrono::steady_clock;

namespace {

bool gIntercept = true; // --no-intercept: no device's MQTT/CoAP is intercepted (no NAT)
bool gBridge = false;   // --bridge: the bridge table too

policy::DevicePolicy device(size_t i) {
  policy::DevicePolicy d(*policy::DeviceId::parse(fmt::format("dev-{:05}", i)));
  const size_t h = i + 1; // host part: dev-00000 is 10.0.0.1
  d.addresses.push_back(
      *policy::IpAddress::parse(fmt::format("10.{}.{}.{}", h / 65536, (h / 256) % 256, h % 256)));
  d.mac = *policy::MacAddress::parse(
      fmt::format("02:00:00:{:02x}:{:02x}:{:02x}", h / 65536, (h / 256) % 256, h % 256));
  d.network.outbound.push_back(*policy::parseEndpoint("192.0.2.10:8883/tcp"));
  d.network.outbound.push_back(*policy::parseEndpoint("192.0.2.10:9000/udp"));
  d.network.services.push_back(*policy::parseService("80/tcp"));
  d.network.intercept = gIntercept;
  return d;
}

std::vector<firewall::Ruleset> tables(size_t first, size_t n, bool bridge) {
  std::vector<policy::DevicePolicy> devices;
  firewall::CompileOptions o;
  for (size_t i = first; i < first + n; ++i) {
    devices.push_back(device(i));
    if (bridge) {
      o.bindings.emplace(devices.back().id.str(), firewall::PortBinding{*devices.back().mac, "p0"});
    }
  }
  o.interfaces = {"br-iot"};
  o.gatewayServices = {{IPPROTO_TCP, 1883}, {IPPROTO_UDP, 5683}};
  o.mqttRedirectPort = 1883;
  o.coapRedirectPort = 5683;
  const auto policies = *policy::PolicySet::build(std::move(devices));
  std::vector<firewall::Ruleset> out{firewall::compile(*policies, o)};
  if (bridge) {
    out.push_back(firewall::compileBridge(*policies, o));
  }
  return out;
}

firewall::Ruleset ruleset(size_t first, size_t n) { return std::move(tables(first, n, false)[0]); }

double ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

int fail(const std::string& what) {
  std::fprintf(stderr, "nft_load: %s\n", what.c_str());
  return 1;
}

} // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fputs("usage: nft_load script|replace|churn|counters [N] [ROUNDS]\n", stderr);
    return 2;
  }
  for (; argc > 2 && std::string(argv[argc - 1]).starts_with("--"); --argc) {
    gIntercept = gIntercept && std::string(argv[argc - 1]) != "--no-intercept";
    gBridge = gBridge || std::string(argv[argc - 1]) == "--bridge";
  }
  const std::string mode = argv[1];
  const size_t n = argc > 2 ? std::strtoul(argv[2], nullptr, 10) : 0;
  const size_t rounds = argc > 3 ? std::strtoul(argv[3], nullptr, 10) : 1;
  if (mode == "script") {
    std::fputs(firewall::toNftScript(ruleset(0, n)).c_str(), stdout);
    return 0;
  }
  auto nl = firewall::Netlink::open();
  if (!nl) {
    return fail(nl.error());
  }
  if (mode == "replace") {
    std::vector<double> times;
    firewall::BatchStats stats;
    for (size_t r = 0; r < rounds; ++r) {
      const auto t0 = Clock::now();
      auto rs = tables(0, n, gBridge); // compile included: the daemon pays for it too
      auto applied = (*nl)->replace(rs);
      if (!applied) {
        return fail(applied.error());
      }
      times.push_back(ms(Clock::now() - t0));
      stats = *applied;
    }
    std::sort(times.begin(), times.end());
    std::printf("median_ms=%.3f min_ms=%.3f messages=%zu bytes=%zu\n", times[times.size() / 2],
                times.front(), stats.messages, stats.bytes);
    return 0;
  }
  if (mode == "churn") {
    const auto base = ruleset(0, n);
    const auto plus = ruleset(0, n + 1);
    if (auto r = (*nl)->replace(base); !r) {
      return fail(r.error());
    }
    const auto add = firewall::diff(base, plus);
    const auto del = firewall::diff(plus, base);
    std::vector<double> adds;
    std::vector<double> dels;
    for (size_t r = 0; r < rounds; ++r) {
      auto t0 = Clock::now();
      if (auto a = (*nl)->update(*add, plus); !a) {
        return fail(a.error());
      }
      adds.push_back(ms(Clock::now() - t0));
      t0 = Clock::now();
      if (auto d = (*nl)->update(*del, base); !d) {
        return fail(d.error());
      }
      dels.push_back(ms(Clock::now() - t0));
    }
    std::sort(adds.begin(), adds.end());
    std::sort(dels.begin(), dels.end());
    std::printf("add_median_ms=%.3f remove_median_ms=%.3f\n", adds[adds.size() / 2],
                dels[dels.size() / 2]);
    return 0;
  }
  if (mode == "counters") {
    auto c = (*nl)->counters();
    if (!c) {
      return fail(c.error());
    }
    for (const auto& [name, v] : *c) {
      std::printf("%s packets=%llu bytes=%llu\n", name.c_str(),
                  static_cast<unsigned long long>(v.packets),
                  static_cast<unsigned long long>(v.bytes));
    }
    return 0;
  }
  return fail("unknown mode " + mode);
}
