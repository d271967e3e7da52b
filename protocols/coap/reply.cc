// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/coap/reply.h"

#include <algorithm>

#include <fmt/format.h>

namespace iotgw::coap {

namespace {

Message refusalHead(const Message& request, uint8_t code, std::string_view reason,
                    size_t maxDiagnostic) {
  Message out;
  out.type = request.type == Type::Confirmable ? Type::Acknowledgement : Type::NonConfirmable;
  out.code = code;
  out.messageId = request.messageId; // a NON reply may reuse it: the peer matches by token
  out.token = request.token;
  // Cut at a character boundary so the diagnostic stays valid UTF-8.
  size_t n = std::min(reason.size(), maxDiagnostic);
  while (n > 0 && n < reason.size() && (static_cast<uint8_t>(reason[n]) & 0xc0) == 0x80) {
    --n;
  }
  out.payload = View(reinterpret_cast<const uint8_t*>(reason.data()), n);
  return out;
}

} // namespace

Bytes refusalFor(const Message& request, uint8_t code, std::string_view reason,
                 size_t maxDiagnostic) {
  return encode(refusalHead(request, code, reason, maxDiagnostic));
}

Bytes tooManyRequests(const Message& request, uint32_t maxAgeSeconds, std::string_view reason) {
  Message out = refusalHead(request, codes::kTooManyRequests, reason, kMaxDiagnosticBytes);
  const Bytes maxAge = encodeUint(maxAgeSeconds);
  out.options.push_back({options::kMaxAge, maxAge});
  return encode(out);
}

Bytes resetFor(const Message& m) {
  if (m.type == Type::Acknowledgement || m.type == Type::Reset) {
    return {};
  }
  Message rst;
  rst.type = Type::Reset;
  rst.code = codes::kEmpty;
  rst.messageId = m.messageId;
  return encode(rst);
}

std::string codeText(uint8_t code) { return fmt::format("{}.{:02}", code >> 5, code & 0x1f); }

uint8_t codeOfDenial(policy::Reason why) {
  switch (why) {
  case policy::Reason::CoapPayloadTooLarge:
    return codes::kRequestEntityTooLarge;
  case policy::Reason::CoapContentFormat:
    return codes::kUnsupportedContentFormat;
  default:
    return codes::kForbidden;
  }
}

policy::Event event(policy::EventType type, std::string device, std::string peer, std::string rule,
                    std::string provision, std::string action, std::string message) {
  policy::Event e;
  e.type = type;
  e.device = std::move(device);
  e.peer = std::move(peer);
  e.protocol = "coap";
  e.rule = std::move(rule);
  e.provision = std::move(provision);
  e.action = std::move(action);
  e.message = std::move(message);
  return e;
}

} // namespace iotgw::coap
