// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// MQTT 3.1.1 and 5.0 control packets as plain values. Decoded packets own their bytes, so they
// outlive the receive buffer.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace iotgw::mqtt {

// The protocol level in CONNECT: 3 is MQTT 3.1 (protocol name "MQIsdp"), which the proxy takes
// with the 3.1.1 rules where 3.1 has none of its own (the codec is the same).
enum class Version : uint8_t { V31 = 3, V311 = 4, V5 = 5 };

enum class PacketType : uint8_t {
  Connect = 1,
  Connack = 2,
  Publish = 3,
  Puback = 4,
  Pubrec = 5,
  Pubrel = 6,
  Pubcomp = 7,
  Subscribe = 8,
  Suback = 9,
  Unsubscribe = 10,
  Unsuback = 11,
  Pingreq = 12,
  Pingresp = 13,
  Disconnect = 14,
  Auth = 15,
};

[[nodiscard]] std::string_view toString(PacketType t) noexcept;

// MQTT 5.0 property identifiers (§2.2.2.2).
enum class PropertyId : uint8_t {
  PayloadFormatIndicator = 0x01,
  MessageExpiryInterval = 0x02,
  ContentType = 0x03,
  ResponseTopic = 0x08,
  CorrelationData = 0x09,
  SubscriptionIdentifier = 0x0B,
  SessionExpiryInterval = 0x11,
  AssignedClientIdentifier = 0x12,
  ServerKeepAlive = 0x13,
  AuthenticationMethod = 0x15,
  AuthenticationData = 0x16,
  RequestProblemInformation = 0x17,
  WillDelayInterval = 0x18,
  RequestResponseInformation = 0x19,
  ResponseInformation = 0x1A,
  ServerReference = 0x1C,
  ReasonString = 0x1F,
  ReceiveMaximum = 0x21,
  TopicAliasMaximum = 0x22,
  TopicAlias = 0x23,
  MaximumQos = 0x24,
  RetainAvailable = 0x25,
  UserProperty = 0x26,
  MaximumPacketSize = 0x27,
  WildcardSubscriptionAvailable = 0x28,
  SubscriptionIdentifierAvailable = 0x29,
  SharedSubscriptionAvailable = 0x2A,
};

// How a property's value is encoded (§2.2.2.2).
enum class PropertyKind { Byte, TwoByte, FourByte, VarInt, String, Binary, StringPair };
// nullopt for identifiers MQTT 5.0 does not define.
[[nodiscard]] std::optional<PropertyKind> propertyKind(uint32_t id) noexcept;

struct Property {
  PropertyId id{};
  uint32_t number = 0;         // byte, two-byte, four-byte and variable byte integers
  std::string text;            // UTF-8 strings; the key of a user property
  std::string value;           // the value of a user property
  std::vector<uint8_t> binary; // binary data
  bool operator==(const Property&) const = default;
};

using Properties = std::vector<Property>;

[[nodiscard]] const Property* findProperty(const Properties& props, PropertyId id);

struct Will {
  std::string topic;
  std::vector<uint8_t> payload;
  uint8_t qos = 0;
  bool retain = false;
  Properties properties;
  bool operator==(const Will&) const = default;
};

struct Connect {
  Version version = Version::V311;
  std::string protocolName = "MQTT";
  uint8_t flags = 0; // the raw connect flags, for validation
  bool cleanStart = true;
  uint16_t keepAlive = 0;
  Properties properties;
  std::string clientId;
  std::optional<Will> will;
  std::optional<std::string> username;
  std::optional<std::vector<uint8_t>> password;
  bool operator==(const Connect&) const = default;
};

struct Connack {
  bool sessionPresent = false;
  uint8_t reasonCode = 0; // 3.1.1: the return code
  Properties properties;
  bool operator==(const Connack&) const = default;
};

struct Publish {
  bool dup = false;
  uint8_t qos = 0;
  bool retain = false;
  std::string topic;
  uint16_t packetId = 0; // only with QoS > 0
  Properties properties;
  std::vector<uint8_t> payload;
  bool operator==(const Publish&) const = default;
};

// PUBACK, PUBREC, PUBREL, PUBCOMP.
struct Ack {
  PacketType type = PacketType::Puback;
  uint16_t packetId = 0;
  uint8_t reasonCode = 0;
  Properties properties;
  bool operator==(const Ack&) const = default;
};

struct Subscription {
  std::string filter;
  uint8_t options =
      0; // raw byte: QoS in bits 0-1; 5.0 adds No Local, Retain As Published, Retain Handling
  [[nodiscard]] uint8_t qos() const { return options & 0x03; }
  [[nodiscard]] bool noLocal() const { return (options & 0x04) != 0; }
  [[nodiscard]] bool retainAsPublished() const { return (options & 0x08) != 0; }
  [[nodiscard]] uint8_t retainHandling() const { return (options >> 4) & 0x03; }
  bool operator==(const Subscription&) const = default;
};

struct Subscribe {
  uint16_t packetId = 0;
  Properties properties;
  std::vector<Subscription> subscriptions;
  bool operator==(const Subscribe&) const = default;
};

// SUBACK and UNSUBACK (3.1.1 UNSUBACK has no reason codes).
struct SubAck {
  PacketType type = PacketType::Suback;
  uint16_t packetId = 0;
  Properties properties;
  std::vector<uint8_t> reasonCodes;
  bool operator==(const SubAck&) const = default;
};

struct Unsubscribe {
  uint16_t packetId = 0;
  Properties properties;
  std::vector<std::string> filters;
  bool operator==(const Unsubscribe&) const = default;
};

struct Pingreq {
  bool operator==(const Pingreq&) const = default;
};
struct Pingresp {
  bool operator==(const Pingresp&) const = default;
};

struct Disconnect {
  uint8_t reasonCode = 0;
  Properties properties;
  bool operator==(const Disconnect&) const = default;
};

struct Auth {
  uint8_t reasonCode = 0;
  Properties properties;
  bool operator==(const Auth&) const = default;
};

// Anything on the wire, in either direction.
using Packet = std::variant<Connect, Connack, Publish, Ack, Subscribe, SubAck, Unsubscribe, Pingreq,
                            Pingresp, Disconnect, Auth>;

[[nodiscard]] PacketType typeOf(const Packet& p) noexcept;

// MQTT 5.0 reason codes the server sends (§2.4).
namespace reason {
inline constexpr uint8_t kSuccess = 0x00;
inline constexpr uint8_t kGrantedQos1 = 0x01;
inline constexpr uint8_t kGrantedQos2 = 0x02;
inline constexpr uint8_t kNoSubscriptionExisted = 0x11;
inline constexpr uint8_t kUnspecifiedError = 0x80;
inline constexpr uint8_t kMalformedPacket = 0x81;
inline constexpr uint8_t kProtocolError = 0x82;
inline constexpr uint8_t kImplementationSpecificError = 0x83;
inline constexpr uint8_t kUnsupportedProtocolVersion = 0x84;
inline constexpr uint8_t kClientIdentifierNotValid = 0x85;
inline constexpr uint8_t kBadUserNameOrPassword = 0x86;
inline constexpr uint8_t kNotAuthorized = 0x87;
inline constexpr uint8_t kServerUnavailable = 0x88;
inline constexpr uint8_t kServerBusy = 0x89;
inline constexpr uint8_t kBanned = 0x8A;
inline constexpr uint8_t kBadAuthenticationMethod = 0x8C;
inline constexpr uint8_t kKeepAliveTimeout = 0x8D;
inline constexpr uint8_t kTopicFilterInvalid = 0x8F;
inline constexpr uint8_t kTopicNameInvalid = 0x90;
inline constexpr uint8_t kPacketIdentifierInUse = 0x91;
inline constexpr uint8_t kPacketIdentifierNotFound = 0x92;
inline constexpr uint8_t kReceiveMaximumExceeded = 0x93;
inline constexpr uint8_t kTopicAliasInvalid = 0x94;
inline constexpr uint8_t kPacketTooLarge = 0x95;
inline constexpr uint8_t kMessageRateTooHigh = 0x96;
inline constexpr uint8_t kQuotaExceeded = 0x97;
inline constexpr uint8_t kPayloadFormatInvalid = 0x99;
inline constexpr uint8_t kRetainNotSupported = 0x9A;
inline constexpr uint8_t kQosNotSupported = 0x9B;
inline constexpr uint8_t kSharedSubscriptionsNotSupported = 0x9E;
inline constexpr uint8_t kConnectionRateExceeded = 0x9F;
inline constexpr uint8_t kSubscriptionIdentifiersNotSupported = 0xA1;
inline constexpr uint8_t kWildcardSubscriptionsNotSupported = 0xA2;
} // namespace reason

// MQTT 3.1.1 CONNACK return codes (§3.2.2.3).
namespace v311 {
inline constexpr uint8_t kAccepted = 0;
inline constexpr uint8_t kUnacceptableProtocolVersion = 1;
inline constexpr uint8_t kIdentifierRejected = 2;
inline constexpr uint8_t kServerUnavailable = 3;
inline constexpr uint8_t kBadUserNameOrPassword = 4;
inline constexpr uint8_t kNotAuthorized = 5;
inline constexpr uint8_t kSubackFailure = 0x80;
} // namespace v311

} // namespace iotgw::mqtt
