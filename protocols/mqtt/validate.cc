// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/mqtt/validate.h"

#include <algorithm>
#include <array>

#include "policy/topic.h"
#include "policy/utf8.h"

namespace iotgw::mqtt {

namespace {

using policy::TopicError;

// Where a property may appear (MQTT 5.0 §2.2.2.2, table 2-4).
enum Context : uint16_t {
  kConnect = 1 << 0,
  kConnack = 1 << 1,
  kPublish = 1 << 2,
  kWill = 1 << 3,
  kPubAck = 1 << 4, // PUBACK, PUBREC, PUBREL, PUBCOMP
  kSubscribe = 1 << 5,
  kSuback = 1 << 6,
  kUnsubscribe = 1 << 7,
  kUnsuback = 1 << 8,
  kDisconnect = 1 << 9,
  kAuth = 1 << 10,
};

uint16_t allowedContexts(PropertyId id) {
  switch (id) {
  case PropertyId::PayloadFormatIndicator:
  case PropertyId::MessageExpiryInterval:
  case PropertyId::ContentType:
  case PropertyId::ResponseTopic:
  case PropertyId::CorrelationData:
    return kPublish | kWill;
  case PropertyId::SubscriptionIdentifier:
    return kSubscribe; // a client never sends it in PUBLISH (MQTT-3.3.4-6)
  case PropertyId::SessionExpiryInterval:
    return kConnect | kConnack | kDisconnect;
  case PropertyId::AssignedClientIdentifier:
  case PropertyId::ServerKeepAlive:
  case PropertyId::ResponseInformation:
  case PropertyId::MaximumQos:
  case PropertyId::RetainAvailable:
  case PropertyId::WildcardSubscriptionAvailable:
  case PropertyId::SubscriptionIdentifierAvailable:
  case PropertyId::SharedSubscriptionAvailable:
    return kConnack;
  case PropertyId::AuthenticationMethod:
  case PropertyId::AuthenticationData:
    return kConnect | kConnack | kAuth;
  case PropertyId::RequestProblemInformation:
  case PropertyId::RequestResponseInformation:
    return kConnect;
  case PropertyId::WillDelayInterval:
    return kWill;
  case PropertyId::ServerReference:
    return kConnack | kDisconnect;
  case PropertyId::ReasonString:
    return kConnack | kPubAck | kSuback | kUnsuback | kDisconnect | kAuth;
  case PropertyId::ReceiveMaximum:
  case PropertyId::TopicAliasMaximum:
  case PropertyId::MaximumPacketSize:
    return kConnect | kConnack;
  case PropertyId::TopicAlias:
    return kPublish;
  case PropertyId::UserProperty:
    return 0xFFFF;
  }
  return 0;
}

CodecError protocolError(std::string_view clause, std::string_view what) {
  return CodecError{clause, reason::kProtocolError, what};
}

bool goodString(std::string_view s) { return policy::isValidUtf8(s, /*allowNul=*/false); }

std::optional<CodecError> checkString(std::string_view s, std::string_view clause) {
  if (!goodString(s)) {
    return CodecError{clause, reason::kMalformedPacket,
                      "string is not well-formed UTF-8 or contains U+0000"};
  }
  // §1.5.4 lets a receiver treat these as malformed; the devices behind us are the parsers
  // least likely to survive them, and libmosquitto refuses some of them upstream.
  if (policy::firstDiscouragedCodePoint(s)) {
    return CodecError{"MQTT-1.5.4", reason::kMalformedPacket,
                      "string contains a control character or a Unicode non-character"};
  }
  return std::nullopt;
}

std::optional<CodecError> checkProperties(const Properties& props, Context ctx) {
  std::array<bool, 256> seen{};
  for (const auto& p : props) {
    const auto id = static_cast<uint8_t>(p.id);
    if ((allowedContexts(p.id) & ctx) == 0) {
      return protocolError("MQTT-2.2.2.2", "property not allowed in this packet");
    }
    if (seen[id] && p.id != PropertyId::UserProperty) {
      return protocolError("MQTT-2.2.2.2", "property included more than once");
    }
    seen[id] = true;
    switch (p.id) {
    case PropertyId::PayloadFormatIndicator:
    case PropertyId::RequestProblemInformation:
    case PropertyId::RequestResponseInformation:
      if (p.number > 1) {
        return protocolError("MQTT-3.1.2.11", "property value must be 0 or 1");
      }
      break;
    case PropertyId::ReceiveMaximum:
      if (p.number == 0) {
        return protocolError("MQTT-3.1.2.11.3", "Receive Maximum of 0");
      }
      break;
    case PropertyId::MaximumPacketSize:
      if (p.number == 0) {
        return protocolError("MQTT-3.1.2.11.4", "Maximum Packet Size of 0");
      }
      break;
    case PropertyId::SubscriptionIdentifier:
      if (p.number == 0 || p.number > 268'435'455) {
        return protocolError("MQTT-3.8.2.1.2", "Subscription Identifier out of range");
      }
      break;
    case PropertyId::TopicAlias:
      if (p.number == 0) {
        return CodecError{"MQTT-3.3.2-8", reason::kTopicAliasInvalid, "Topic Alias of 0"};
      }
      break;
    case PropertyId::ContentType:
    case PropertyId::ResponseTopic:
    case PropertyId::AuthenticationMethod:
    case PropertyId::ReasonString:
      if (auto e = checkString(p.text, "MQTT-1.5.4-1")) {
        return e;
      }
      if (p.id == PropertyId::ResponseTopic && policy::validateTopicName(p.text)) {
        return protocolError("MQTT-3.3.2-13", "Response Topic is not a valid topic name");
      }
      break;
    case PropertyId::UserProperty:
      if (auto e = checkString(p.text, "MQTT-1.5.4-1")) {
        return e;
      }
      if (auto e = checkString(p.value, "MQTT-1.5.4-1")) {
        return e;
      }
      break;
    default:
      break;
    }
  }
  return std::nullopt;
}

CodecError topicError(TopicError e, bool filter) {
  const uint8_t code = filter ? reason::kTopicFilterInvalid : reason::kTopicNameInvalid;
  switch (e) {
  case TopicError::BadUtf8:
  case TopicError::NulCharacter:
  case TopicError::ControlCharacter:
    return CodecError{policy::clause(e), reason::kMalformedPacket, policy::describe(e)};
  default:
    return CodecError{policy::clause(e), code, policy::describe(e)};
  }
}

std::optional<CodecError> checkPacketId(uint16_t id) {
  if (id == 0) {
    return protocolError("MQTT-2.3.1-1", "packet identifier 0");
  }
  return std::nullopt;
}

std::optional<CodecError> validate(const Connect& c, Version, const ServerLimits&) {
  const bool v5 = c.version == Version::V5;
  if ((c.flags & 0x01) != 0) {
    return CodecError{"MQTT-3.1.2-3", reason::kMalformedPacket, "reserved CONNECT flag is set"};
  }
  const bool willFlag = (c.flags & 0x04) != 0;
  const uint8_t willQos = (c.flags >> 3) & 0x03;
  const bool willRetain = (c.flags & 0x20) != 0;
  if (!willFlag && willQos != 0) {
    return CodecError{"MQTT-3.1.2-13", reason::kMalformedPacket, "Will QoS without a Will"};
  }
  if (!willFlag && willRetain) {
    return CodecError{"MQTT-3.1.2-15", reason::kMalformedPacket, "Will Retain without a Will"};
  }
  if (willQos == 3) {
    return CodecError{"MQTT-3.1.2-14", reason::kMalformedPacket, "Will QoS 3"};
  }
  // 3.1.1 forbids a password without a user name; 5.0 allows it (§3.1.2.9).
  if (!v5 && c.password && !c.username) {
    return CodecError{"MQTT-3.1.2-22", reason::kMalformedPacket, "password without a user name"};
  }
  if (auto e = checkString(c.clientId, "MQTT-3.1.3-4")) {
    return e;
  }
  if (c.clientId.empty() && !c.cleanStart && !v5) {
    return CodecError{"MQTT-3.1.3-8", reason::kClientIdentifierNotValid,
                      "empty client identifier with CleanSession 0"};
  }
  // MQTT 3.1 §3.1: a client identifier of 1 to 23 characters; anything else is "identifier
  // rejected" (return code 2), which 3.1 clients know how to read.
  if (c.version == Version::V31 && (c.clientId.empty() || c.clientId.size() > 23)) {
    return CodecError{"MQTT-3.1.3-5", reason::kClientIdentifierNotValid,
                      "an MQTT 3.1 client identifier has 1 to 23 bytes"};
  }
  if (c.clientId.size() > 256) {
    // Servers may restrict client identifiers (§3.1.3.1); a device id that long is abuse.
    return CodecError{"MQTT-3.1.3-5", reason::kClientIdentifierNotValid,
                      "client identifier longer than 256 bytes"};
  }
  if (c.username) {
    if (auto e = checkString(*c.username, "MQTT-3.1.3-11")) {
      return e;
    }
  }
  if (v5) {
    if (auto e = checkProperties(c.properties, kConnect)) {
      return e;
    }
    if (findProperty(c.properties, PropertyId::AuthenticationData) != nullptr &&
        findProperty(c.properties, PropertyId::AuthenticationMethod) == nullptr) {
      return protocolError("MQTT-3.1.2.11.10", "Authentication Data without a Method");
    }
  }
  if (c.will) {
    if (auto e = policy::validateTopicName(c.will->topic)) {
      return topicError(*e, false);
    }
    if (v5) {
      if (auto e = checkProperties(c.will->properties, kWill)) {
        return e;
      }
      const Property* pfi = findProperty(c.will->properties, PropertyId::PayloadFormatIndicator);
      if (pfi != nullptr && pfi->number == 1 &&
          !policy::isValidUtf8(
              {reinterpret_cast<const char*>(c.will->payload.data()), c.will->payload.size()},
              true)) {
        return CodecError{"MQTT-3.1.3-7", reason::kPayloadFormatInvalid,
                          "Will payload is not UTF-8 as its format indicator says"};
      }
    }
  }
  return std::nullopt;
}

std::optional<CodecError> validate(const Publish& p, Version v, const ServerLimits& limits) {
  if (p.dup && p.qos == 0) {
    return CodecError{"MQTT-3.3.1-2", reason::kMalformedPacket, "DUP set on a QoS 0 PUBLISH"};
  }
  if (p.qos > 0) {
    if (auto e = checkPacketId(p.packetId)) {
      return e;
    }
  }
  const Property* alias = nullptr;
  if (v == Version::V5) {
    if (auto e = checkProperties(p.properties, kPublish)) {
      return e;
    }
    alias = findProperty(p.properties, PropertyId::TopicAlias);
    if (alias != nullptr && alias->number > limits.topicAliasMaximum) {
      return CodecError{"MQTT-3.3.2-9", reason::kTopicAliasInvalid,
                        "Topic Alias above the announced maximum"};
    }
    const Property* pfi = findProperty(p.properties, PropertyId::PayloadFormatIndicator);
    if (pfi != nullptr && pfi->number == 1 &&
        !policy::isValidUtf8({reinterpret_cast<const char*>(p.payload.data()), p.payload.size()},
                             true)) {
      return CodecError{"MQTT-3.3.2-4", reason::kPayloadFormatInvalid,
                        "payload is not UTF-8 as its format indicator says"};
    }
  }
  // 5.0 allows an empty topic name when a topic alias stands for it (§3.3.2.3.4).
  if (p.topic.empty() && alias != nullptr) {
    return std::nullopt;
  }
  if (auto e = policy::validateTopicName(p.topic)) {
    return topicError(*e, false);
  }
  return std::nullopt;
}

std::optional<CodecError> validate(const Ack& a, Version v, const ServerLimits&) {
  if (auto e = checkPacketId(a.packetId)) {
    return e;
  }
  if (v == Version::V5) {
    static constexpr std::array<uint8_t, 9> kPubAckCodes = {0x00, 0x10, 0x80, 0x83, 0x87,
                                                            0x90, 0x91, 0x97, 0x99};
    const bool rel = a.type == PacketType::Pubrel || a.type == PacketType::Pubcomp;
    const bool ok = rel ? (a.reasonCode == 0x00 || a.reasonCode == 0x92)
                        : std::ranges::find(kPubAckCodes, a.reasonCode) != kPubAckCodes.end();
    if (!ok) {
      return protocolError("MQTT-3.4.2.1", "reason code not allowed in this acknowledgement");
    }
    if (auto e = checkProperties(a.properties, kPubAck)) {
      return e;
    }
  }
  return std::nullopt;
}

std::optional<CodecError> validate(const Subscribe& s, Version v, const ServerLimits&) {
  if (auto e = checkPacketId(s.packetId)) {
    return e;
  }
  if (s.subscriptions.empty()) {
    return protocolError("MQTT-3.8.3-3", "SUBSCRIBE without a topic filter");
  }
  if (v == Version::V5) {
    if (auto e = checkProperties(s.properties, kSubscribe)) {
      return e;
    }
  }
  for (const auto& sub : s.subscriptions) {
    if (v == Version::V311 && (sub.options & 0xFC) != 0) {
      return CodecError{"MQTT-3.8.3-4", reason::kMalformedPacket,
                        "reserved bits of the requested QoS byte are set"};
    }
    if (v == Version::V5 && (sub.options & 0xC0) != 0) {
      return CodecError{"MQTT-3.8.3-5", reason::kMalformedPacket,
                        "reserved subscription option bits are set"};
    }
    if (sub.qos() == 3) {
      return CodecError{"MQTT-3.8.3-4", reason::kMalformedPacket, "requested QoS 3"};
    }
    if (v == Version::V5 && sub.retainHandling() == 3) {
      return protocolError("MQTT-3.8.3.1", "Retain Handling 3");
    }
    if (sub.filter.starts_with("$share/")) {
      // $share/{ShareName}/{filter}: a non-empty name without wildcards, then a filter.
      const std::string_view rest = std::string_view(sub.filter).substr(7);
      const size_t slash = rest.find('/');
      if (slash == 0 || slash == std::string_view::npos || slash + 1 >= rest.size() ||
          rest.substr(0, slash).find_first_of("+#") != std::string_view::npos) {
        return CodecError{"MQTT-4.8.2-2", reason::kTopicFilterInvalid,
                          "malformed shared subscription filter"};
      }
      if (v == Version::V5 && sub.noLocal()) {
        return protocolError("MQTT-3.8.3-4", "No Local on a shared subscription");
      }
    }
    if (auto e = policy::validateTopicFilter(sub.filter)) {
      return topicError(*e, true);
    }
  }
  return std::nullopt;
}

std::optional<CodecError> validate(const Unsubscribe& u, Version v, const ServerLimits&) {
  if (auto e = checkPacketId(u.packetId)) {
    return e;
  }
  if (u.filters.empty()) {
    return protocolError("MQTT-3.10.3-2", "UNSUBSCRIBE without a topic filter");
  }
  if (v == Version::V5) {
    if (auto e = checkProperties(u.properties, kUnsubscribe)) {
      return e;
    }
  }
  for (const auto& f : u.filters) {
    if (auto e = policy::validateTopicFilter(f)) {
      return topicError(*e, true);
    }
  }
  return std::nullopt;
}

std::optional<CodecError> validate(const Disconnect& d, Version v, const ServerLimits&) {
  if (v == Version::V5) {
    static constexpr std::array<uint8_t, 18> kClientCodes = {0x00, 0x04, 0x80, 0x81, 0x82, 0x83,
                                                             0x87, 0x90, 0x93, 0x94, 0x95, 0x96,
                                                             0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9F};
    if (std::ranges::find(kClientCodes, d.reasonCode) == kClientCodes.end()) {
      return protocolError("MQTT-3.14.2.1", "reason code not allowed in a client's DISCONNECT");
    }
    return checkProperties(d.properties, kDisconnect);
  }
  return std::nullopt;
}

std::optional<CodecError> validate(const Auth& a, Version, const ServerLimits&) {
  if (a.reasonCode != 0x00 && a.reasonCode != 0x18 && a.reasonCode != 0x19) {
    return protocolError("MQTT-3.15.2.1", "reason code not allowed in AUTH");
  }
  return checkProperties(a.properties, kAuth);
}

std::optional<CodecError> validate(const Pingreq&, Version, const ServerLimits&) {
  return std::nullopt;
}

template <typename T> std::optional<CodecError> validate(const T&, Version, const ServerLimits&) {
  return protocolError("MQTT-4.8.0-1", "a client sent a packet only a server may send");
}

} // namespace

std::optional<CodecError> validateFromClient(const Packet& packet, Version version,
                                             const ServerLimits& limits) {
  return std::visit([&](const auto& p) { return validate(p, version, limits); }, packet);
}

} // namespace iotgw::mqtt
