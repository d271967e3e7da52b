// SPDX-License-Identifier: GPL-3.0-or-later
#include "firewall/exposure.h"

#include <algorithm>
#include <array>

#include <fmt/format.h>

namespace iotgw::firewall {

namespace {
using policy::Transport;
constexpr std::array<ScanPort, 13> kPorts{{
    {21, Transport::Tcp, "ftp"},
    {22, Transport::Tcp, "ssh"},
    {23, Transport::Tcp, "telnet"},
    {80, Transport::Tcp, "http"},
    {443, Transport::Tcp, "https"},
    {554, Transport::Tcp, "rtsp"},
    {1883, Transport::Tcp, "mqtt"},
    {2323, Transport::Tcp, "telnet-alt"},
    {5683, Transport::Udp, "coap"},
    {7547, Transport::Tcp, "tr-069"},
    {8080, Transport::Tcp, "http-alt"},
    {8443, Transport::Tcp, "https-alt"},
    {8883, Transport::Tcp, "mqtts"},
}};
} // namespace

std::span<const ScanPort> scanPorts() noexcept { return kPorts; }

std::vector<Exposure> unexpectedServices(const policy::DevicePolicy& device,
                                         std::span<const OpenPort> open) {
  std::vector<Exposure> out;
  const auto expected = policy::gatewayServices(device);
  for (const OpenPort& o : open) {
    const bool listed = std::ranges::any_of(expected, [&](const policy::Endpoint& e) {
      return e.port == o.port && e.transport == o.transport;
    });
    if (listed) {
      continue;
    }
    auto known = std::ranges::find_if(
        kPorts, [&](const ScanPort& p) { return p.port == o.port && p.transport == o.transport; });
    const std::string service = known != kPorts.end() ? known->service : "unknown";
    std::string why = (service == "telnet" || service == "telnet-alt")
                          ? "telnet is how Mirai and its successors take devices over"
                          : "a service the device's policy does not list";
    out.push_back(
        Exposure{o, service,
                 fmt::format("{} has {} open on {}/{} ({}); the firewall keeps it unreachable from "
                             "everything but the gateway",
                             device.id.str(), service, o.port,
                             o.transport == Transport::Tcp ? "tcp" : "udp", why)});
  }
  return out;
}

} // namespace iotgw::firewall
