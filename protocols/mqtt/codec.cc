// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/mqtt/codec.h"

#include <string>

namespace iotgw::mqtt {

namespace {

constexpr CodecError kTruncated{"MQTT-1.5", reason::kMalformedPacket,
                                "a field runs past the end of the packet"};

// Bounds-checked reads over a packet body: every length is checked against what remains.
class Reader {
public:
  explicit Reader(std::span<const uint8_t> data) : data_(data) {}

  [[nodiscard]] size_t remaining() const { return data_.size() - pos_; }
  [[nodiscard]] bool empty() const { return remaining() == 0; }

  std::expected<uint8_t, CodecError> u8() {
    if (remaining() < 1) {
      return std::unexpected(kTruncated);
    }
    return data_[pos_++];
  }

  std::expected<uint16_t, CodecError> u16() {
    if (remaining() < 2) {
      return std::unexpected(kTruncated);
    }
    const auto v = static_cast<uint16_t>((data_[pos_] << 8) | data_[pos_ + 1]);
    pos_ += 2;
    return v;
  }

  std::expected<uint32_t, CodecError> u32() {
    if (remaining() < 4) {
      return std::unexpected(kTruncated);
    }
    const uint32_t v = (uint32_t{data_[pos_]} << 24) | (uint32_t{data_[pos_ + 1]} << 16) |
                       (uint32_t{data_[pos_ + 2]} << 8) | uint32_t{data_[pos_ + 3]};
    pos_ += 4;
    return v;
  }

  std::expected<uint32_t, CodecError> varInt() {
    uint32_t value = 0;
    for (int i = 0; i < 4; ++i) {
      auto b = u8();
      if (!b) {
        return std::unexpected(b.error());
      }
      value |= uint32_t{static_cast<uint8_t>(*b & 0x7F)} << (7 * i);
      if ((*b & 0x80) == 0) {
        return value;
      }
    }
    return std::unexpected(CodecError{"MQTT-1.5.5-1", reason::kMalformedPacket,
                                      "variable byte integer longer than 4 bytes"});
  }

  std::expected<std::span<const uint8_t>, CodecError> bytes(size_t n) {
    if (remaining() < n) {
      return std::unexpected(kTruncated);
    }
    auto s = data_.subspan(pos_, n);
    pos_ += n;
    return s;
  }

  // Two-byte length, then that many bytes (UTF-8 strings and binary data).
  std::expected<std::span<const uint8_t>, CodecError> prefixed() {
    auto n = u16();
    if (!n) {
      return std::unexpected(n.error());
    }
    return bytes(*n);
  }

  std::expected<std::string, CodecError> string() {
    auto b = prefixed();
    if (!b) {
      return std::unexpected(b.error());
    }
    return std::string(reinterpret_cast<const char*>(b->data()), b->size());
  }

  std::expected<std::vector<uint8_t>, CodecError> binary() {
    auto b = prefixed();
    if (!b) {
      return std::unexpected(b.error());
    }
    return std::vector<uint8_t>(b->begin(), b->end());
  }

  std::span<const uint8_t> rest() {
    auto s = data_.subspan(pos_);
    pos_ = data_.size();
    return s;
  }

private:
  std::span<const uint8_t> data_;
  size_t pos_ = 0;
};

std::expected<Properties, CodecError> readProperties(Reader& r) {
  auto length = r.varInt();
  if (!length) {
    return std::unexpected(length.error());
  }
  auto block = r.bytes(*length);
  if (!block) {
    return std::unexpected(CodecError{"MQTT-2.2.2.2", reason::kMalformedPacket,
                                      "property length runs past the end of the packet"});
  }
  Reader pr(*block);
  Properties props;
  while (!pr.empty()) {
    auto id = pr.varInt();
    if (!id) {
      return std::unexpected(id.error());
    }
    const auto type = propertyKind(*id);
    if (!type) {
      return std::unexpected(
          CodecError{"MQTT-2.2.2.2", reason::kMalformedPacket, "unknown property identifier"});
    }
    Property p;
    p.id = static_cast<PropertyId>(*id);
    switch (*type) {
    case PropertyKind::Byte:
      if (auto v = pr.u8()) {
        p.number = *v;
      } else {
        return std::unexpected(v.error());
      }
      break;
    case PropertyKind::TwoByte:
      if (auto v = pr.u16()) {
        p.number = *v;
      } else {
        return std::unexpected(v.error());
      }
      break;
    case PropertyKind::FourByte:
      if (auto v = pr.u32()) {
        p.number = *v;
      } else {
        return std::unexpected(v.error());
      }
      break;
    case PropertyKind::VarInt:
      if (auto v = pr.varInt()) {
        p.number = *v;
      } else {
        return std::unexpected(v.error());
      }
      break;
    case PropertyKind::String:
      if (auto v = pr.string()) {
        p.text = std::move(*v);
      } else {
        return std::unexpected(v.error());
      }
      break;
    case PropertyKind::Binary:
      if (auto v = pr.binary()) {
        p.binary = std::move(*v);
      } else {
        return std::unexpected(v.error());
      }
      break;
    case PropertyKind::StringPair: {
      auto k = pr.string();
      if (!k) {
        return std::unexpected(k.error());
      }
      auto v = pr.string();
      if (!v) {
        return std::unexpected(v.error());
      }
      p.text = std::move(*k);
      p.value = std::move(*v);
      break;
    }
    }
    props.push_back(std::move(p));
  }
  return props;
}

// Wraps "read this or return the error" so the decoders stay readable.
#define IOTGW_TRY(var, expr)                                                                       \
  auto var##_result = (expr);                                                                      \
  if (!var##_result) {                                                                             \
    return std::unexpected(var##_result.error());                                                  \
  }                                                                                                \
  auto var = std::move(*var##_result)

constexpr CodecError kTrailing{"MQTT-1.5", reason::kMalformedPacket,
                               "bytes left over after the last field"};

std::expected<Packet, CodecError> decodeConnect(Reader& r) {
  Connect c;
  IOTGW_TRY(name, r.string());
  IOTGW_TRY(level, r.u8());
  // MQTT 3.1 names itself "MQIsdp" at level 3; 3.1.1 and 5.0 are "MQTT" at 4 and 5.
  if (name != "MQTT" && name != "MQIsdp") {
    return std::unexpected(CodecError{"MQTT-3.1.2-1", reason::kUnsupportedProtocolVersion,
                                      "protocol name is not \"MQTT\" (or \"MQIsdp\", 3.1)"});
  }
  if (name == "MQTT" ? level != 4 && level != 5 : level != 3) {
    return std::unexpected(CodecError{"MQTT-3.1.2-2", reason::kUnsupportedProtocolVersion,
                                      "unsupported protocol level"});
  }
  c.protocolName = std::move(name);
  c.version = static_cast<Version>(level);
  IOTGW_TRY(flags, r.u8());
  c.flags = flags;
  c.cleanStart = (flags & 0x02) != 0;
  IOTGW_TRY(keepAlive, r.u16());
  c.keepAlive = keepAlive;
  if (c.version == Version::V5) {
    IOTGW_TRY(props, readProperties(r));
    c.properties = std::move(props);
  }
  IOTGW_TRY(clientId, r.string());
  c.clientId = std::move(clientId);
  if ((flags & 0x04) != 0) {
    Will w;
    w.qos = static_cast<uint8_t>((flags >> 3) & 0x03);
    w.retain = (flags & 0x20) != 0;
    if (c.version == Version::V5) {
      IOTGW_TRY(props, readProperties(r));
      w.properties = std::move(props);
    }
    IOTGW_TRY(topic, r.string());
    IOTGW_TRY(payload, r.binary());
    w.topic = std::move(topic);
    w.payload = std::move(payload);
    c.will = std::move(w);
  }
  if ((flags & 0x80) != 0) {
    IOTGW_TRY(user, r.string());
    c.username = std::move(user);
  }
  if ((flags & 0x40) != 0) {
    IOTGW_TRY(pass, r.binary());
    c.password = std::move(pass);
  }
  if (!r.empty()) {
    return std::unexpected(kTrailing);
  }
  return c;
}

std::expected<Packet, CodecError> decodeConnack(Reader& r, Version v) {
  Connack c;
  IOTGW_TRY(ackFlags, r.u8());
  if ((ackFlags & 0xFE) != 0) {
    return std::unexpected(
        CodecError{"MQTT-3.2.2-1", reason::kMalformedPacket, "reserved CONNACK flags are set"});
  }
  c.sessionPresent = (ackFlags & 1) != 0;
  IOTGW_TRY(code, r.u8());
  c.reasonCode = code;
  if (v == Version::V5) {
    IOTGW_TRY(props, readProperties(r));
    c.properties = std::move(props);
  }
  if (!r.empty()) {
    return std::unexpected(kTrailing);
  }
  return c;
}

std::expected<Packet, CodecError> decodePublish(Reader& r, uint8_t flags, Version v) {
  Publish p;
  p.dup = (flags & 0x08) != 0;
  p.qos = static_cast<uint8_t>((flags >> 1) & 0x03);
  p.retain = (flags & 0x01) != 0;
  if (p.qos == 3) {
    return std::unexpected(
        CodecError{"MQTT-3.3.1-4", reason::kMalformedPacket, "PUBLISH with both QoS bits set"});
  }
  IOTGW_TRY(topic, r.string());
  p.topic = std::move(topic);
  if (p.qos > 0) {
    IOTGW_TRY(id, r.u16());
    p.packetId = id;
  }
  if (v == Version::V5) {
    IOTGW_TRY(props, readProperties(r));
    p.properties = std::move(props);
  }
  const auto payload = r.rest();
  p.payload.assign(payload.begin(), payload.end());
  return p;
}

std::expected<Packet, CodecError> decodeAck(Reader& r, PacketType type, Version v) {
  Ack a;
  a.type = type;
  IOTGW_TRY(id, r.u16());
  a.packetId = id;
  if (v == Version::V5) {
    // The reason code may be left out when it is 0x00 and there are no properties (§3.4.2.1).
    if (!r.empty()) {
      IOTGW_TRY(code, r.u8());
      a.reasonCode = code;
    }
    if (!r.empty()) {
      IOTGW_TRY(props, readProperties(r));
      a.properties = std::move(props);
    }
  }
  if (!r.empty()) {
    return std::unexpected(kTrailing);
  }
  return a;
}

std::expected<Packet, CodecError> decodeSubscribe(Reader& r, Version v) {
  Subscribe s;
  IOTGW_TRY(id, r.u16());
  s.packetId = id;
  if (v == Version::V5) {
    IOTGW_TRY(props, readProperties(r));
    s.properties = std::move(props);
  }
  while (!r.empty()) {
    IOTGW_TRY(filter, r.string());
    IOTGW_TRY(options, r.u8());
    s.subscriptions.push_back(Subscription{std::move(filter), options});
  }
  return s;
}

std::expected<Packet, CodecError> decodeSubAck(Reader& r, PacketType type, Version v) {
  SubAck s;
  s.type = type;
  IOTGW_TRY(id, r.u16());
  s.packetId = id;
  if (v == Version::V5) {
    IOTGW_TRY(props, readProperties(r));
    s.properties = std::move(props);
  }
  const auto codes = r.rest();
  s.reasonCodes.assign(codes.begin(), codes.end());
  return s;
}

std::expected<Packet, CodecError> decodeUnsubscribe(Reader& r, Version v) {
  Unsubscribe u;
  IOTGW_TRY(id, r.u16());
  u.packetId = id;
  if (v == Version::V5) {
    IOTGW_TRY(props, readProperties(r));
    u.properties = std::move(props);
  }
  while (!r.empty()) {
    IOTGW_TRY(filter, r.string());
    u.filters.push_back(std::move(filter));
  }
  return u;
}

// DISCONNECT and AUTH share a shape in 5.0: optional reason code, optional properties.
template <typename T> std::expected<Packet, CodecError> decodeReasonAndProps(Reader& r, Version v) {
  T t;
  if (v == Version::V5) {
    if (!r.empty()) {
      IOTGW_TRY(code, r.u8());
      t.reasonCode = code;
    }
    if (!r.empty()) {
      IOTGW_TRY(props, readProperties(r));
      t.properties = std::move(props);
    }
  }
  if (!r.empty()) {
    return std::unexpected(kTrailing);
  }
  return t;
}

// Fixed-header flags each packet type must carry (MQTT-2.2.2-1 / 5.0 §2.1.3).
std::optional<CodecError> checkFlags(PacketType t, uint8_t flags) {
  switch (t) {
  case PacketType::Publish:
    return std::nullopt; // DUP, QoS, RETAIN: checked by the decoder and validation
  case PacketType::Pubrel:
    if (flags != 0x2) {
      return CodecError{"MQTT-3.6.1-1", reason::kMalformedPacket, "PUBREL flags must be 0010"};
    }
    return std::nullopt;
  case PacketType::Subscribe:
    if (flags != 0x2) {
      return CodecError{"MQTT-3.8.1-1", reason::kMalformedPacket, "SUBSCRIBE flags must be 0010"};
    }
    return std::nullopt;
  case PacketType::Unsubscribe:
    if (flags != 0x2) {
      return CodecError{"MQTT-3.10.1-1", reason::kMalformedPacket,
                        "UNSUBSCRIBE flags must be 0010"};
    }
    return std::nullopt;
  default:
    if (flags != 0) {
      return CodecError{"MQTT-2.2.2-1", reason::kMalformedPacket,
                        "reserved fixed-header flags are set"};
    }
    return std::nullopt;
  }
}

#undef IOTGW_TRY

} // namespace

std::expected<std::optional<Frame>, CodecError> readFrame(std::span<const uint8_t> buffer,
                                                          uint32_t maxPacketSize) {
  if (buffer.empty()) {
    return std::optional<Frame>{};
  }
  // Length bytes sit at offsets 1 to 4; a fifth would make it longer than 4 bytes.
  uint32_t remaining = 0;
  size_t pos = 1;
  int shift = 0;
  while (true) {
    if (pos > 4) {
      return std::unexpected(CodecError{"MQTT-1.5.5-1", reason::kMalformedPacket,
                                        "remaining length longer than 4 bytes"});
    }
    if (pos >= buffer.size()) {
      return std::optional<Frame>{};
    }
    const uint8_t b = buffer[pos++];
    remaining |= uint32_t{static_cast<uint8_t>(b & 0x7F)} << shift;
    shift += 7;
    if ((b & 0x80) == 0) {
      break;
    }
  }
  const size_t headerSize = pos;
  const uint64_t total = headerSize + uint64_t{remaining};
  if (total > maxPacketSize) {
    return std::unexpected(CodecError{"MQTT-3.2.2-15", reason::kPacketTooLarge,
                                      "packet larger than the maximum packet size"});
  }
  if (buffer.size() < total) {
    return std::optional<Frame>{};
  }
  return std::optional<Frame>{
      Frame{buffer[0], buffer.subspan(headerSize, remaining), static_cast<size_t>(total)}};
}

std::expected<Packet, CodecError> decodePacket(const Frame& frame, Version version) {
  const uint8_t bits = frame.typeBits();
  if (bits == 0) {
    return std::unexpected(
        CodecError{"MQTT-2.2.1", reason::kMalformedPacket, "reserved packet type 0"});
  }
  const auto type = static_cast<PacketType>(bits);
  if (type == PacketType::Auth && version != Version::V5) {
    return std::unexpected(CodecError{"MQTT-2.2.1", reason::kMalformedPacket,
                                      "packet type 15 is reserved in MQTT 3.1.1"});
  }
  if (auto e = checkFlags(type, frame.flags())) {
    return std::unexpected(*e);
  }
  Reader r(frame.body);
  switch (type) {
  case PacketType::Connect:
    return decodeConnect(r);
  case PacketType::Connack:
    return decodeConnack(r, version);
  case PacketType::Publish:
    return decodePublish(r, frame.flags(), version);
  case PacketType::Puback:
  case PacketType::Pubrec:
  case PacketType::Pubrel:
  case PacketType::Pubcomp:
    return decodeAck(r, type, version);
  case PacketType::Subscribe:
    return decodeSubscribe(r, version);
  case PacketType::Suback:
  case PacketType::Unsuback:
    return decodeSubAck(r, type, version);
  case PacketType::Unsubscribe:
    return decodeUnsubscribe(r, version);
  case PacketType::Pingreq:
  case PacketType::Pingresp:
    if (!r.empty()) {
      return std::unexpected(kTrailing);
    }
    if (type == PacketType::Pingreq) {
      return Pingreq{};
    }
    return Pingresp{};
  case PacketType::Disconnect:
    return decodeReasonAndProps<Disconnect>(r, version);
  case PacketType::Auth:
    return decodeReasonAndProps<Auth>(r, version);
  }
  return std::unexpected(CodecError{"MQTT-2.2.1", reason::kMalformedPacket, "unknown packet type"});
}

} // namespace iotgw::mqtt
