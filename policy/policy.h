// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The per-device policy: who the device is, what it may say over MQTT and CoAP, where it may go on
// the network, and what happens when it breaks a rule. Plain values, built by the parser in
// policy_parser.h and read by the evaluator; never mutated once inside a PolicySet.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "policy/credentials.h"
#include "policy/device.h"
#include "policy/json.h"
#include "policy/subject_alt_name.h"

namespace iotgw::policy {

enum class ViolationAction { Drop, Disconnect, Quarantine };

struct MqttIdentity {
  std::string clientId; // empty: any client id the device presents
  std::string username; // empty: the device authenticates by certificate only
  std::optional<PasswordHash> passwordHash;
};

// What a device's client certificate says it is. A certificate whose names point at two
// devices names neither.
struct CertificateIdentity {
  std::string commonName;                      // compared exactly
  std::vector<SubjectAltName> subjectAltNames; // each compared with names of its own kind
};

struct RateLimit {
  double messagesPerSecond = 0; // 0: unlimited
  double messageBurst = 0;
  double bytesPerSecond = 0; // 0: unlimited
  double byteBurst = 0;
};

enum class PayloadFormat { Binary, Utf8, Json };

// What a JSON value or member must be. Any: not checked.
enum class JsonKind { Any, Object, Array, String, Number, Integer, Boolean, Null };

struct JsonFieldRule {
  std::string name;
  JsonKind kind = JsonKind::Any;
  std::optional<double> min;
  std::optional<double> max;
  std::optional<size_t> maxLength;     // strings: bytes
  std::vector<std::string> enumValues; // strings: the only values accepted
};

struct PayloadRule {
  std::string id;    // "mqtt.payload[0]"
  std::string topic; // a topic pattern (may use %c/%u)
  PayloadFormat format = PayloadFormat::Binary;
  JsonKind kind = JsonKind::Any; // the top-level JSON value
  std::vector<std::string> required;
  std::vector<JsonFieldRule> fields;
  bool allowOtherKeys = true;
};

// Which client certificate the device's upstream session presents to the broker.
enum class UpstreamIdentity {
  Shared, // the gateway's own ([upstream] certificate): the broker sees the gateway
  Issued, // one the gateway CA issued for this device alone (5.1-1, 5.4-4)
};

struct MqttRules {
  UpstreamIdentity upstreamIdentity = UpstreamIdentity::Shared;
  // The user name this device's upstream sessions give the broker ("%d": the device id); empty:
  // [upstream] username.
  std::string upstreamUsername;
  // Prepended to every topic and filter on the broker side ("%d" = device id), stripped from
  // what the broker delivers; the device keeps its own topic names. Empty: no mapping.
  std::string upstreamPrefix;
  std::vector<std::string> publish;   // topic patterns the device may publish to
  std::vector<std::string> subscribe; // topic patterns it may subscribe to / receive from
  uint8_t maxQos = 1;
  uint32_t maxPayloadBytes = 16 * 1024;
  bool retainAllowed = false;
  // MQTT connections the device may have at once (each its own upstream session); one more is
  // refused, except a client taking over its own session (the same client identifier).
  uint32_t maxClients = 4;
  // When the device's outbox (store-and-forward) is full: refuse the new message (5.0: PUBACK
  // "quota exceeded"; 3.1/3.1.1: no acknowledgement, the device keeps it) or drop the oldest
  // waiting one to make room. Either is counted and reported.
  enum class WhenQueueFull : uint8_t { Refuse, DropOldest };
  WhenQueueFull whenQueueFull = WhenQueueFull::Refuse;
  RateLimit rate;
  std::vector<PayloadRule> payloadRules;
};

enum class CoapMethod : uint8_t {
  Get = 1,
  Post = 2,
  Put = 3,
  Delete = 4,
  Fetch = 5,
  Patch = 6,
  IPatch = 7
};

struct CoapRule {
  std::string id; // "coap.rules[1]"
  std::vector<CoapMethod> methods;
  std::string path; // "/sensors/*", "/config/interval", "/fw/**"
};

// A reading the device pushes (POST/PUT to the gateway's device-side CoAP endpoint) and the MQTT
// topic it is published to upstream.
struct CoapPush {
  std::string id;    // "coap.push[0]"
  std::string path;  // a path pattern, as in CoapRule
  std::string topic; // "%d" = device id, "%p" = the request path without its leading '/'
  uint8_t qos = 1;
};

struct CoapRules {
  std::vector<CoapRule> rules; // what clients may ask of the device through the DTLS endpoint
  uint32_t maxPayloadBytes = 1024;
  std::vector<uint16_t> contentFormats; // both directions; empty: any
  uint16_t port = 5683;                 // where the device's CoAP server listens
  // Client identities (certificate SAN DNS name, or CN) that may reach the device; empty: any
  // client the DTLS endpoint's CA vouches for.
  std::vector<std::string> clients;
  std::vector<CoapPush> push;
};

enum class Transport : uint8_t { Tcp = 6, Udp = 17 };

struct Endpoint {
  std::optional<IpPrefix> address; // nullopt for a service on the device itself
  uint16_t port = 0;
  Transport transport = Transport::Tcp;
  bool operator==(const Endpoint&) const = default;
};

struct NetworkRules {
  std::vector<Endpoint> outbound; // where the device may connect
  std::vector<Endpoint> services; // services on the device that the gateway may reach
  // Device MQTT (1883/tcp) and CoAP (5683/udp) aimed at any other host is redirected to iotgwd's
  // device-side listeners, so that a device hard-wired to a cloud broker still goes through it.
  bool intercept = true;
};

struct SourcePosition {
  uint32_t line = 1;
  uint32_t column = 1;
};

struct DevicePolicy {
  explicit DevicePolicy(DeviceId deviceId) : id(std::move(deviceId)) {}
  DeviceId id;
  std::string sourceName; // where it came from: a file path or "dbus:<id>"
  std::string document;   // the TOML text it was parsed from (what GetDevice shows)
  // Where identity keys were written ("device.id", "device.mac", "device.addresses[1]", ...),
  // so that conflicts between documents can be reported at the right place.
  std::map<std::string, SourcePosition, std::less<>> positions;
  std::optional<MacAddress> mac;
  std::vector<IpAddress> addresses;
  MqttIdentity mqtt;
  CertificateIdentity certificate;
  DeviceMetadata metadata;
  MqttRules mqttRules;
  CoapRules coapRules;
  NetworkRules network;
  ViolationAction onViolation = ViolationAction::Drop;
};

[[nodiscard]] std::string_view toString(ViolationAction a) noexcept;
[[nodiscard]] std::string_view toString(CoapMethod m) noexcept;
[[nodiscard]] std::optional<CoapMethod> parseCoapMethod(std::string_view s) noexcept;
[[nodiscard]] bool coapPathMatches(std::string_view pattern, std::string_view path) noexcept;
// The services on a device the gateway itself reaches: `network.services`, and the device's CoAP
// port when clients may reach it through the CoAP proxy (its `coap.rule`s), once each.
[[nodiscard]] std::vector<Endpoint> gatewayServices(const DevicePolicy& d);

} // namespace iotgw::policy
