// SPDX-License-Identifier: GPL-3.0-or-later
// Packet → bytes for every packet type, in either direction.
#include "protocols/mqtt/codec.h"

#include <type_traits>

namespace iotgw::mqtt {

void appendVarInt(std::vector<uint8_t>& out, uint32_t value) {
  do {
    auto b = static_cast<uint8_t>(value & 0x7F);
    value >>= 7;
    if (value > 0) {
      b |= 0x80;
    }
    out.push_back(b);
  } while (value > 0);
}

namespace {

class Writer {
public:
  void u8(uint8_t v) { out_.push_back(v); }
  void u16(uint16_t v) {
    out_.push_back(static_cast<uint8_t>(v >> 8));
    out_.push_back(static_cast<uint8_t>(v & 0xFF));
  }
  void u32(uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) {
      out_.push_back(static_cast<uint8_t>((v >> s) & 0xFF));
    }
  }
  void varInt(uint32_t v) { appendVarInt(out_, v); }
  void bytes(std::span<const uint8_t> b) { out_.insert(out_.end(), b.begin(), b.end()); }
  void prefixed(std::span<const uint8_t> b) {
    u16(static_cast<uint16_t>(b.size()));
    bytes(b);
  }
  void string(std::string_view s) {
    prefixed(std::span(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
  }
  void properties(const Properties& props) {
    Writer body;
    for (const auto& p : props) {
      body.property(p);
    }
    varInt(static_cast<uint32_t>(body.out_.size()));
    bytes(body.out_);
  }
  std::vector<uint8_t> take() { return std::move(out_); }

private:
  void property(const Property& p) {
    varInt(static_cast<uint32_t>(p.id));
    switch (propertyKind(static_cast<uint32_t>(p.id)).value_or(PropertyKind::Byte)) {
    case PropertyKind::Byte:
      u8(static_cast<uint8_t>(p.number));
      break;
    case PropertyKind::TwoByte:
      u16(static_cast<uint16_t>(p.number));
      break;
    case PropertyKind::FourByte:
      u32(p.number);
      break;
    case PropertyKind::VarInt:
      varInt(p.number);
      break;
    case PropertyKind::String:
      string(p.text);
      break;
    case PropertyKind::Binary:
      prefixed(p.binary);
      break;
    case PropertyKind::StringPair:
      string(p.text);
      string(p.value);
      break;
    }
  }

  std::vector<uint8_t> out_;
};

std::vector<uint8_t> withHeader(PacketType type, uint8_t flags, const std::vector<uint8_t>& body) {
  std::vector<uint8_t> out;
  out.reserve(body.size() + 5);
  out.push_back(static_cast<uint8_t>((static_cast<uint8_t>(type) << 4) | (flags & 0x0F)));
  appendVarInt(out, static_cast<uint32_t>(body.size()));
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

std::vector<uint8_t> encodeOne(const Connect& c, Version) {
  Writer w;
  w.string(c.protocolName);
  w.u8(static_cast<uint8_t>(c.version));
  uint8_t flags = c.flags;
  if (flags == 0) {
    // Derive the flags from the fields unless the caller set them explicitly (tests do, to
    // produce invalid combinations).
    flags = static_cast<uint8_t>(
        (c.cleanStart ? 0x02 : 0) | (c.will ? 0x04 : 0) | (c.will ? (c.will->qos << 3) : 0) |
        (c.will && c.will->retain ? 0x20 : 0) | (c.password ? 0x40 : 0) | (c.username ? 0x80 : 0));
  }
  w.u8(flags);
  w.u16(c.keepAlive);
  if (c.version == Version::V5) {
    w.properties(c.properties);
  }
  w.string(c.clientId);
  if (c.will) {
    if (c.version == Version::V5) {
      w.properties(c.will->properties);
    }
    w.string(c.will->topic);
    w.prefixed(c.will->payload);
  }
  if (c.username) {
    w.string(*c.username);
  }
  if (c.password) {
    w.prefixed(*c.password);
  }
  return withHeader(PacketType::Connect, 0, w.take());
}

std::vector<uint8_t> encodeOne(const Connack& c, Version v) {
  Writer w;
  w.u8(c.sessionPresent ? 1 : 0);
  w.u8(c.reasonCode);
  if (v == Version::V5) {
    w.properties(c.properties);
  }
  return withHeader(PacketType::Connack, 0, w.take());
}

std::vector<uint8_t> encodeOne(const Publish& p, Version v) {
  Writer w;
  w.string(p.topic);
  if (p.qos > 0) {
    w.u16(p.packetId);
  }
  if (v == Version::V5) {
    w.properties(p.properties);
  }
  w.bytes(p.payload);
  const auto flags =
      static_cast<uint8_t>((p.dup ? 0x08 : 0) | ((p.qos & 0x03) << 1) | (p.retain ? 0x01 : 0));
  return withHeader(PacketType::Publish, flags, w.take());
}

std::vector<uint8_t> encodeOne(const Ack& a, Version v) {
  Writer w;
  w.u16(a.packetId);
  if (v == Version::V5 && (a.reasonCode != 0 || !a.properties.empty())) {
    w.u8(a.reasonCode);
    if (!a.properties.empty()) {
      w.properties(a.properties);
    }
  }
  return withHeader(a.type, a.type == PacketType::Pubrel ? 0x2 : 0, w.take());
}

std::vector<uint8_t> encodeOne(const Subscribe& s, Version v) {
  Writer w;
  w.u16(s.packetId);
  if (v == Version::V5) {
    w.properties(s.properties);
  }
  for (const auto& sub : s.subscriptions) {
    w.string(sub.filter);
    w.u8(sub.options);
  }
  return withHeader(PacketType::Subscribe, 0x2, w.take());
}

std::vector<uint8_t> encodeOne(const SubAck& s, Version v) {
  Writer w;
  w.u16(s.packetId);
  if (v == Version::V5) {
    w.properties(s.properties);
  }
  if (v == Version::V5 || s.type == PacketType::Suback) {
    w.bytes(s.reasonCodes);
  }
  return withHeader(s.type, 0, w.take());
}

std::vector<uint8_t> encodeOne(const Unsubscribe& u, Version v) {
  Writer w;
  w.u16(u.packetId);
  if (v == Version::V5) {
    w.properties(u.properties);
  }
  for (const auto& f : u.filters) {
    w.string(f);
  }
  return withHeader(PacketType::Unsubscribe, 0x2, w.take());
}

std::vector<uint8_t> encodeOne(const Pingreq&, Version) { return {0xC0, 0x00}; }
std::vector<uint8_t> encodeOne(const Pingresp&, Version) { return {0xD0, 0x00}; }

template <typename T> std::vector<uint8_t> reasonAndProps(PacketType type, const T& t, Version v) {
  Writer w;
  if (v == Version::V5 && (t.reasonCode != 0 || !t.properties.empty())) {
    w.u8(t.reasonCode);
    if (!t.properties.empty()) {
      w.properties(t.properties);
    }
  }
  return withHeader(type, 0, w.take());
}

std::vector<uint8_t> encodeOne(const Disconnect& d, Version v) {
  return reasonAndProps(PacketType::Disconnect, d, v);
}
std::vector<uint8_t> encodeOne(const Auth& a, Version v) {
  return reasonAndProps(PacketType::Auth, a, v);
}

} // namespace

std::vector<uint8_t> encode(const Packet& packet, Version version) {
  return std::visit([version](const auto& p) { return encodeOne(p, version); }, packet);
}

} // namespace iotgw::mqtt
