// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The pure policy evaluator: facts in, a Decision out. No I/O, no logging, no clock, no
// mutation; stateful limits (rate, lockout) are decided by their owners in rate_limit.h and
// passed in as facts. Checks run cheapest first.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "policy/credentials.h"
#include "policy/decision.h"
#include "policy/policy.h"
#include "policy/policy_set.h"
#include "policy/rate_limit.h"

namespace iotgw::policy {

// A verified client certificate: its subject CN and its DNS and URI subjectAltNames (the only
// kinds that can name a device), in certificate order.
struct CertificateFacts {
  std::string commonName;
  std::vector<SubjectAltName> subjectAltNames;
};

struct ConnectFacts {
  std::string_view clientId;
  std::optional<std::string_view> username;
  std::optional<std::string_view> password;
  const CertificateFacts* certificate = nullptr; // set when the peer presented a verified cert
  std::optional<IpAddress> peer;
  bool sourceLockedOut = false;   // from AuthThrottle
  bool usernameLockedOut = false; // the user name presented is locked out (AuthThrottle)
};

// How a client proved who it is.
enum class Login { None, Certificate, Password, Address };

struct ConnectDecision {
  Decision decision;
  const DevicePolicy* device = nullptr; // the device the session belongs to, when allowed
  // True when the refusal should count as a failed authentication (for AuthThrottle).
  bool authenticationFailure = false;
  // Set when the outcome hinges on a password: the caller checks `password` against this hash
  // (PBKDF2, slow by design: off the event loop) and finishes with evaluateVerifiedConnect.
  // Until then `decision` is a refusal. Points into the policy set (an unknown user name's: at
  // its hash that matches nothing).
  const PasswordHash* passwordHash = nullptr;
  Login login = Login::None; // when allowed
};

// `username` is the user name the session verified with its password (empty when it logged in
// by certificate or address): the only one a pattern's %u may stand for.
struct PublishFacts {
  std::string_view username;
  std::string_view topic;
  uint8_t qos = 0;
  bool retain = false;
  std::span<const uint8_t> payload;
};

struct SubscribeFacts {
  std::string_view username; // as in PublishFacts
  std::string_view filter;
  uint8_t requestedQos = 0;
};

struct CoapFacts {
  CoapMethod method = CoapMethod::Get;
  std::string_view path; // "/a/b", already decoded from Uri-Path options
  size_t payloadBytes = 0;
  std::optional<uint16_t> contentFormat;
};

struct CoapResponseFacts {
  uint8_t code = 0; // class 2 (success), 4 or 5
  size_t payloadBytes = 0;
  std::optional<uint16_t> contentFormat;
};

// Everything but the password: lockouts, default credentials, who the client is. When the result
// has a passwordHash, the decision waits for evaluateVerifiedConnect.
[[nodiscard]] ConnectDecision
evaluateConnect(const PolicySet& set, const DefaultCredentials& defaults, const ConnectFacts& f);
// Finishes a login that waited for its password check (`pending` from evaluateConnect, with the
// same facts). A wrong password and an unknown user name get the same refusal.
[[nodiscard]] ConnectDecision evaluateVerifiedConnect(const ConnectDecision& pending,
                                                      bool passwordMatched, const ConnectFacts& f);
// Device → broker.
[[nodiscard]] Decision evaluatePublish(const DevicePolicy& p, const PublishFacts& f);
[[nodiscard]] Decision evaluateSubscribe(const DevicePolicy& p, const SubscribeFacts& f);
// Broker → device: the device's parser is the weak one, so its inbound traffic is checked too.
[[nodiscard]] Decision evaluateDelivery(const DevicePolicy& p, const PublishFacts& f);
[[nodiscard]] Decision evaluateCoapRequest(const DevicePolicy& p, const CoapFacts& f);
// A device's answer to a request forwarded through the CoAP proxy (success responses carry what
// the policy bounds: their content format).
[[nodiscard]] Decision evaluateCoapResponse(const DevicePolicy& p, const CoapResponseFacts& f);
// Whether a DTLS client (its certificate's name) may reach the device at all (coap.clients).
[[nodiscard]] Decision evaluateCoapClient(const DevicePolicy& p, std::string_view client);
// A reading the device pushes to the gateway: POST or PUT on a [[coap.push]] path, within the
// payload and content-format limits. On success `push` names the rule that maps it to a topic.
[[nodiscard]] Decision evaluateCoapPush(const DevicePolicy& p, const CoapFacts& f,
                                        const CoapPush** push);
// The MQTT topic of a pushed reading: %d = device id, %p = path without its leading '/'.
[[nodiscard]] std::string coapPushTopic(const DevicePolicy& p, const CoapPush& push,
                                        std::string_view path);

// Turns a rate limiter's verdict into a Decision for the device (rule "mqtt.rate", 5.10-1).
[[nodiscard]] Decision rateDecision(const DevicePolicy& p, MessageRateLimiter::Result r);
// A limiter with the device's [mqtt.rate] budgets.
[[nodiscard]] MessageRateLimiter makeRateLimiter(const DevicePolicy& p, Clock::time_point now);

// Checks a payload against one rule; returns the reason it fails, or nullopt.
[[nodiscard]] std::optional<std::string> checkPayload(const PayloadRule& rule,
                                                      std::span<const uint8_t> payload);

} // namespace iotgw::policy
