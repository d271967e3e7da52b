// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "policy/policy.h"

namespace iotgw::policy {

enum class Verdict {
  Allow,
  Deny,
};

// What the evaluator concluded and why. The caller carries it out: drop, disconnect or ask for
// quarantine as `action` says, count it, and report it (rate-limited) with the provision.
struct Decision {
  Verdict verdict = Verdict::Deny;
  std::string rule;      // which rule decided: "mqtt.publish", "mqtt.payload[0]", "default-deny"
  std::string provision; // EN 303 645 provision it enforces, e.g. "5.13-1"; empty on allow
  std::string reason;    // human-readable, never contains payloads or secrets
  ViolationAction action = ViolationAction::Drop;
  uint8_t grantedQos = 0; // SUBSCRIBE: the QoS the gateway grants

  [[nodiscard]] bool allowed() const { return verdict == Verdict::Allow; }

  static Decision allow(std::string rule) {
    return Decision{Verdict::Allow, std::move(rule), {}, {}, ViolationAction::Drop, 0};
  }
  static Decision deny(std::string rule, std::string_view provision, std::string reason,
                       ViolationAction action) {
    return Decision{Verdict::Deny,     std::move(rule), std::string(provision),
                    std::move(reason), action,          0};
  }
};

// EN 303 645 provisions the gateway cites.
namespace provision {
inline constexpr std::string_view kNoDefaultPasswords = "5.1-1";
inline constexpr std::string_view kBestPracticeAuth = "5.1-3";
inline constexpr std::string_view kBruteForce = "5.1-5";
inline constexpr std::string_view kSecureCommunication = "5.5-1";
inline constexpr std::string_view kAuthenticatedAccess = "5.5-4";
inline constexpr std::string_view kMinimiseInterfaces = "5.6-1";
inline constexpr std::string_view kIsolable = "5.3-15";
inline constexpr std::string_view kAnomaly = "5.7-2";
inline constexpr std::string_view kResilience = "5.9-1";
inline constexpr std::string_view kOrderlyConnection = "5.9-3";
inline constexpr std::string_view kTelemetryAnomaly = "5.10-1";
inline constexpr std::string_view kEraseData = "5.11-1";
inline constexpr std::string_view kValidateInput = "5.13-1";
} // namespace provision

} // namespace iotgw::policy
