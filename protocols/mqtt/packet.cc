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
