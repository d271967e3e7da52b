// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The one parser and validator for device policy documents, whether they come from a file in
// devices.d/, from the state directory, or over D-Bus. Every problem is reported, each with its
// file:line:column; a document with any problem yields no policy.

#include <expected>
#include <string>
#include <string_view>

#include "policy/diagnostic.h"
#include "policy/policy.h"

namespace iotgw::policy {

struct PolicyLimits {
  size_t maxDocumentBytes = 256 * 1024;
  size_t maxTopicPatterns = 256;
  size_t maxPayloadRules = 64;
  size_t maxCoapRules = 256;
  size_t maxEndpoints = 256;
};

[[nodiscard]] std::expected<DevicePolicy, Diagnostics>
parseDevicePolicy(std::string_view text, const std::string& sourceName,
                  const PolicyLimits& limits = {});

// "203.0.113.10:8883/tcp", "198.51.100.0/24:123/udp", "[2001:db8::1]:443/tcp"
[[nodiscard]] std::optional<Endpoint> parseEndpoint(std::string_view text);
// "80/tcp", "5683/udp"
[[nodiscard]] std::optional<Endpoint> parseService(std::string_view text);
[[nodiscard]] std::string toString(const Endpoint& e);

// The document with its secrets replaced by "(redacted)": the value of
// `device.mqtt.password_hash` (a salted hash, but one an attacker could attack offline), however
// it is written. For readers of a policy, who see everything else as it was written. A document
// that does not parse is not shown at all.
[[nodiscard]] std::string redactSecrets(std::string_view document);

} // namespace iotgw::policy
