// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/coap/message.h"

#include <algorithm>

namespace iotgw::coap {

std::string_view describe(ParseError e) noexcept {
  switch (e) {
  case ParseError::TooShort:
    return "datagram shorter than its header and token";
  case ParseError::BadVersion:
    return "CoAP version is not 1";
  case ParseError::BadTokenLength:
    return "token length 9-15 is reserved";
  case ParseError::ReservedCode:
    return "code class 1, 6 or 7 is reserved";
  case ParseError::ReservedNibble:
    return "option delta or length 15 is reserved";
  case ParseError::TruncatedOption:
    return "option runs past the end of the datagram";
  case ParseError::OptionNumberTooLarge:
    return "option number above 65535";
  case ParseError::EmptyPayload:
    return "payload marker with no payload";
  case ParseError::EmptyWithContent:
    return "empty message (0.00) with a token, options or payload";
  case ParseError::TooManyOptions:
    return "too many options";
  }
  return "?";
}

namespace {

// The extended delta/length encoding of RFC 7252 §3.1: nibble 13 adds one byte (+13), 14 two
// bytes (+269).
bool extended(uint8_t nibble, View& in, uint32_t& out) {
  if (nibble < 13) {
    out = nibble;
    return true;
  }
  if (nibble == 13) {
    if (in.empty()) {
      return false;
    }
    out = 13u + in[0];
    in = in.subspan(1);
    return true;
  }
  if (in.size() < 2) {
    return false;
  }
  out = 269u + (static_cast<uint32_t>(in[0]) << 8 | in[1]);
  in = in.subspan(2);
  return true;
}

void putExtended(Bytes& out, uint32_t value, uint8_t& nibble) {
  if (value < 13) {
    nibble = static_cast<uint8_t>(value);
  } else if (value < 269) {
    nibble = 13;
    out.push_back(static_cast<uint8_t>(value - 13));
  } else {
    nibble = 14;
    out.push_back(static_cast<uint8_t>((value - 269) >> 8));
    out.push_back(static_cast<uint8_t>((value - 269) & 0xff));
  }
}

} // namespace

std::expected<Message, ParseError> parse(View in) {
  if (in.size() < 4) {
    return std::unexpected(ParseError::TooShort);
  }
  if ((in[0] >> 6) != 1) {
    return std::unexpected(ParseError::BadVersion);
  }
  Message m;
  m.type = static_cast<Type>((in[0] >> 4) & 3);
  const size_t tkl = in[0] & 0x0f;
  if (tkl > 8) {
    return std::unexpected(ParseError::BadTokenLength);
  }
  m.code = in[1];
  const uint8_t cls = m.code >> 5;
  if (cls == 1 || cls >= 6) {
    return std::unexpected(ParseError::ReservedCode);
  }
  m.messageId = static_cast<uint16_t>(in[2] << 8 | in[3]);
  in = in.subspan(4);
  if (in.size() < tkl) {
    return std::unexpected(ParseError::TooShort);
  }
  m.token = in.first(tkl);
  in = in.subspan(tkl);
  uint32_t number = 0;
  while (!in.empty()) {
    const uint8_t first = in[0];
    in = in.subspan(1);
    if (first == 0xff) {
      if (in.empty()) {
        return std::unexpected(ParseError::EmptyPayload);
      }
      m.payload = in;
      in = {};
      break;
    }
    const uint8_t deltaNibble = first >> 4;
    const uint8_t lengthNibble = first & 0x0f;
    if (deltaNibble == 15 || lengthNibble == 15) {
      return std::unexpected(ParseError::ReservedNibble);
    }
    uint32_t delta = 0;
    uint32_t length = 0;
    if (!extended(deltaNibble, in, delta) || !extended(lengthNibble, in, length)) {
      return std::unexpected(ParseError::TruncatedOption);
    }
    number += delta;
    if (number > 65535) {
      return std::unexpected(ParseError::OptionNumberTooLarge);
    }
    if (in.size() < length) {
      return std::unexpected(ParseError::TruncatedOption);
    }
    if (m.options.size() == kMaxOptions) {
      return std::unexpected(ParseError::TooManyOptions);
    }
    m.options.push_back({static_cast<uint16_t>(number), in.first(length)});
    in = in.subspan(length);
  }
  if (m.isEmpty() && (!m.token.empty() || !m.options.empty() || !m.payload.empty())) {
    return std::unexpected(ParseError::EmptyWithContent);
  }
  return m;
}

Bytes encode(const Message& m) {
  Bytes out;
  out.reserve(4 + m.token.size() + m.payload.size() + 8 * m.options.size() + 1);
  out.push_back(
      static_cast<uint8_t>(1 << 6 | static_cast<uint8_t>(m.type) << 4 | (m.token.size() & 0x0f)));
  out.push_back(m.code);
  out.push_back(static_cast<uint8_t>(m.messageId >> 8));
  out.push_back(static_cast<uint8_t>(m.messageId & 0xff));
  out.insert(out.end(), m.token.begin(), m.token.end());
  uint16_t previous = 0;
  for (const auto& o : m.options) {
    const size_t at = out.size();
    out.push_back(0);
    uint8_t deltaNibble = 0;
    uint8_t lengthNibble = 0;
    putExtended(out, static_cast<uint32_t>(o.number - previous), deltaNibble);
    putExtended(out, static_cast<uint32_t>(o.value.size()), lengthNibble);
    out[at] = static_cast<uint8_t>(deltaNibble << 4 | lengthNibble);
    out.insert(out.end(), o.value.begin(), o.value.end());
    previous = o.number;
  }
  if (!m.payload.empty()) {
    out.push_back(0xff);
    out.insert(out.end(), m.payload.begin(), m.payload.end());
  }
  return out;
}

uint32_t decodeUint(View v) noexcept {
  uint32_t out = 0;
  for (uint8_t b : v.first(std::min<size_t>(v.size(), 4))) {
    out = out << 8 | b;
  }
  return out;
}

Bytes encodeUint(uint32_t value) {
  Bytes out;
  for (int shift = 24; shift >= 0; shift -= 8) {
    const auto b = static_cast<uint8_t>(value >> shift);
    if (!out.empty() || b != 0) {
      out.push_back(b);
    }
  }
  return out;
}

} // namespace iotgw::coap
