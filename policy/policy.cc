// SPDX-License-Identifier: GPL-3.0-or-later
#include "policy/policy.h"

#include <algorithm>

namespace iotgw::policy {

std::string_view toString(ViolationAction a) noexcept {
  switch (a) {
  case ViolationAction::Drop:
    return "drop";
  case ViolationAction::Disconnect:
    return "disconnect";
  case ViolationAction::Quarantine:
    return "quarantine";
  }
  return "drop";
}

namespace {
constexpr std::pair<std::string_view, CoapMethod> kMethods[] = {
    {"GET", CoapMethod::Get},       {"POST", CoapMethod::Post},   {"PUT", CoapMethod::Put},
    {"DELETE", CoapMethod::Delete}, {"FETCH", CoapMethod::Fetch}, {"PATCH", CoapMethod::Patch},
    {"iPATCH", CoapMethod::IPatch}};
} // namespace

std::string_view toString(CoapMethod m) noexcept {
  for (const auto& [name, method] : kMethods) {
    if (method == m) {
      return name;
    }
  }
  return "?";
}

std::optional<CoapMethod> parseCoapMethod(std::string_view s) noexcept {
  for (const auto& [name, method] : kMethods) {
    if (name == s) {
      return method;
    }
  }
  return std::nullopt;
}

bool coapPathMatches(std::string_view pattern, std::string_view path) noexcept {
  // Segment by segment: "*" matches exactly one segment, a final "**" matches zero or more.
  // Both start with '/'.
  if (pattern.empty() || path.empty() || pattern.front() != '/' || path.front() != '/') {
    return false;
  }
  pattern.remove_prefix(1);
  path.remove_prefix(1);
  while (true) {
    const size_t ps = pattern.find('/');
    const std::string_view pseg = pattern.substr(0, ps);
    if (pseg == "**" && ps == std::string_view::npos) {
      return true;
    }
    const size_t ts = path.find('/');
    const std::string_view tseg = path.substr(0, ts);
    if (pseg != "*" && pseg != tseg) {
      return false;
    }
    if (ts == std::string_view::npos) {
      // The path is used up: the pattern must end here too, or end in a final "**".
      return ps == std::string_view::npos || pattern.substr(ps + 1) == "**";
    }
    if (ps == std::string_view::npos) {
      return false;
    }
    pattern.remove_prefix(ps + 1);
    path.remove_prefix(ts + 1);
  }
}

std::vector<Endpoint> gatewayServices(const DevicePolicy& d) {
  std::vector<Endpoint> out = d.network.services;
  if (!d.coapRules.rules.empty()) {
    const Endpoint coap{std::nullopt, d.coapRules.port, Transport::Udp};
    if (std::ranges::find(out, coap) == out.end()) {
      out.push_back(coap);
    }
  }
  return out;
}

} // namespace iotgw::policy
