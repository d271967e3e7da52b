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

// Why a request was refused, as a type: callers act on it (which MQTT reason code, which CoAP
// response code, which event), never on the text of the rule. Each has the rule id that events
// and counters report and the EN 303 645 provision it enforces (describe()).
enum class Reason : uint8_t {
  Allowed,
  // Logins.
  DefaultDeny,             // no enrolled device matches
  Lockout,                 // the source or user name is locked out
  DefaultCredentials,      // a universal default credential
  PasswordWithoutUsername, // MQTT-3.1.2-22
  PasswordPending,         // the password has not been checked yet
  MissingCredentials,      // the device must log in with the credentials it has
  WrongPassword,           // wrong user name or password
  WrongAddress,            // connected from an address not in its policy
  WrongClientId,           // not the device's client id
  // MQTT messages.
  PayloadTooLarge,     // mqtt.max_payload_bytes
  InvalidTopic,        // not a valid topic name or filter
  TopicTooLong,        // limits.max_topic_bytes
  PacketTooLarge,      // larger than the packet size the device accepts
  QosTooHigh,          // mqtt.max_qos
  RetainNotAllowed,    // mqtt.retain
  PublishNotAllowed,   // outside the publish list
  SubscribeNotAllowed, // outside the subscribe list
  PayloadRule,         // a [[mqtt.payload]] rule (the decision's rule is the rule's own id)
  MessageRate,         // mqtt.rate.messages_per_second
  ByteRate,            // mqtt.rate.bytes_per_second
  // CoAP.
  CoapPayloadTooLarge,  // coap.max_payload_bytes
  CoapContentFormat,    // coap.content_formats
  CoapNotAllowed,       // no [[coap.rule]] allows the method on the path
  CoapClientNotAllowed, // coap.clients
  CoapNoPush,           // no [[coap.push]] for the path, or not a POST/PUT
};

struct ReasonInfo {
  std::string_view rule;      // "mqtt.publish"
  std::string_view provision; // "5.13-1"
};
[[nodiscard]] ReasonInfo describe(Reason r) noexcept;

[[nodiscard]] constexpr bool isRate(Reason r) noexcept {
  return r == Reason::MessageRate || r == Reason::ByteRate;
}

// What the evaluator concluded and why. The caller carries it out: drop, disconnect or ask for
// quarantine as `action` says, count it, and report it (rate-limited) with the provision.
struct Decision {
  Verdict verdict = Verdict::Deny;
  Reason why = Reason::DefaultDeny;
  std::string rule;      // which rule decided: "mqtt.publish", "mqtt.payload[0]", "default-deny"
  std::string provision; // EN 303 645 provision it enforces, e.g. "5.13-1"; empty on allow
  std::string reason;    // human-readable, never contains payloads or secrets
  ViolationAction action = ViolationAction::Drop;
  uint8_t grantedQos = 0; // SUBSCRIBE: the QoS the gateway grants

  [[nodiscard]] bool allowed() const { return verdict == Verdict::Allow; }

  static Decision allow(std::string rule) {
    return Decision{
        Verdict::Allow, Reason::Allowed, std::move(rule), {}, {}, ViolationAction::Drop, 0};
  }
  // Refused for `why`, reported under its rule id (or `rule`, a rule's own id).
  static Decision deny(Reason why, std::string reason, ViolationAction action) {
    return deny(why, std::string(describe(why).rule), std::move(reason), action);
  }
  static Decision deny(Reason why, std::string rule, std::string reason, ViolationAction action) {
    return Decision{Verdict::Deny,
                    why,
                    std::move(rule),
                    std::string(describe(why).provision),
                    std::move(reason),
                    action,
                    0};
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
