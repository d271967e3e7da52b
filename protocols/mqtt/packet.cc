// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/mqtt/packet.h"

#include <algorithm>

namespace iotgw::mqtt {

std::string_view toString(PacketType t) noexcept {
  switch (t) {
  case PacketType::Connect:
    return "CONNECT";
  case PacketType::Connack:
    return "CONNACK";
  case PacketType::Publish:
    return "PUBLISH";
  case PacketType::Puback:
    return "PUBACK";
  case PacketType::Pubrec:
    return "PUBREC";
  case PacketType::Pubrel:
    return "PUBREL";
  case PacketType::Pubcomp:
    return "PUBCOMP";
  case PacketType::Subscribe:
    return "SUBSCRIBE";
  case PacketType::Suback:
    return "SUBACK";
  case PacketType::Unsubscribe:
    return "UNSUBSCRIBE";
  case PacketType::Unsuback:
    return "UNSUBACK";
  case PacketType::Pingreq:
    return "PINGREQ";
  case PacketType::Pingresp:
    return "PINGRESP";
  case PacketType::Disconnect:
    return "DISCONNECT";
  case PacketType::Auth:
    return "AUTH";
  }
  return "?";
}

const Property* findProperty(const Properties& props, PropertyId id) {
  const auto it = std::ranges::find(props, id, &Property::id);
  return it == props.end() ? nullptr : &*it;
}

std::optional<PropertyKind> propertyKind(uint32_t id) noexcept {
  switch (static_cast<PropertyId>(id)) {
  case PropertyId::PayloadFormatIndicator:
  case PropertyId::RequestProblemInformation:
  case PropertyId::RequestResponseInformation:
  case PropertyId::MaximumQos:
  case PropertyId::RetainAvailable:
  case PropertyId::WildcardSubscriptionAvailable:
  case PropertyId::SubscriptionIdentifierAvailable:
  case PropertyId::SharedSubscriptionAvailable:
    return PropertyKind::Byte;
  case PropertyId::ServerKeepAlive:
  case PropertyId::ReceiveMaximum:
  case PropertyId::TopicAliasMaximum:
  case PropertyId::TopicAlias:
    return PropertyKind::TwoByte;
  case PropertyId::MessageExpiryInterval:
  case PropertyId::SessionExpiryInterval:
  case PropertyId::WillDelayInterval:
  case PropertyId::MaximumPacketSize:
    return PropertyKind::FourByte;
  case PropertyId::SubscriptionIdentifier:
    return PropertyKind::VarInt;
  case PropertyId::ContentType:
  case PropertyId::ResponseTopic:
  case PropertyId::AssignedClientIdentifier:
  case PropertyId::AuthenticationMethod:
  case PropertyId::ResponseInformation:
  case PropertyId::ServerReference:
  case PropertyId::ReasonString:
    return PropertyKind::String;
  case PropertyId::CorrelationData:
  case PropertyId::AuthenticationData:
    return PropertyKind::Binary;
  case PropertyId::UserProperty:
    return PropertyKind::StringPair;
  }
  return std::nullopt;
}

PacketType typeOf(const Packet& p) noexcept {
  struct Visitor {
    PacketType operator()(const Connect&) const { return PacketType::Connect; }
    PacketType operator()(const Connack&) const { return PacketType::Connack; }
    PacketType operator()(const Publish&) const { return PacketType::Publish; }
    PacketType operator()(const Ack& a) const { return a.type; }
    PacketType operator()(const Subscribe&) const { return PacketType::Subscribe; }
    PacketType operator()(const SubAck& s) const { return s.type; }
    PacketType operator()(const Unsubscribe&) const { return PacketType::Unsubscribe; }
    PacketType operator()(const Pingreq&) const { return PacketType::Pingreq; }
    PacketType operator()(const Pingresp&) const { return PacketType::Pingresp; }
    PacketType operator()(const Disconnect&) const { return PacketType::Disconnect; }
    PacketType operator()(const Auth&) const { return PacketType::Auth; }
  };
  return std::visit(Visitor{}, p);
}

} // namespace iotgw::mqtt
