// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/coap/validate.h"

#include <algorithm>

#include <fmt/format.h>

namespace iotgw::coap {

namespace {

enum class Forward : uint8_t { Yes, No };

struct OptionRule {
  uint16_t number;
  const char* name;
  bool repeatable;
  size_t minLength;
  size_t maxLength;
  bool supported; // known but refused by this proxy (4.02 when critical)
  Forward forward;
};

// RFC 7252 §5.10, RFC 7641 (Observe), RFC 7959 (Block), RFC 8613 (OSCORE), RFC 9175 (Echo,
// Request-Tag), RFC 7967 (No-Response).
constexpr OptionRule kRules[] = {
    {options::kIfMatch, "If-Match", true, 0, 8, true, Forward::Yes},
    {options::kUriHost, "Uri-Host", false, 1, 255, true, Forward::No},
    {options::kETag, "ETag", true, 1, 8, true, Forward::Yes},
    {options::kIfNoneMatch, "If-None-Match", false, 0, 0, true, Forward::Yes},
    {options::kObserve, "Observe", false, 0, 3, true, Forward::Yes},
    {options::kUriPort, "Uri-Port", false, 0, 2, true, Forward::No},
    {options::kOscore, "OSCORE", false, 0, 255, false, Forward::No},
    {options::kUriPath, "Uri-Path", true, 0, 255, true, Forward::Yes},
    {options::kContentFormat, "Content-Format", false, 0, 2, true, Forward::Yes},
    {options::kUriQuery, "Uri-Query", true, 0, 255, true, Forward::Yes},
    {options::kAccept, "Accept", false, 0, 2, true, Forward::Yes},
    {options::kBlock2, "Block2", false, 0, 3, true, Forward::Yes},
    {options::kBlock1, "Block1", false, 0, 3, true, Forward::Yes},
    {options::kSize2, "Size2", false, 0, 4, true, Forward::Yes},
    {options::kProxyUri, "Proxy-Uri", false, 1, 1034, false, Forward::No},
    {options::kProxyScheme, "Proxy-Scheme", false, 1, 255, false, Forward::No},
    {options::kSize1, "Size1", false, 0, 4, true, Forward::Yes},
    {options::kEcho, "Echo", false, 1, 40, true, Forward::No},
    {options::kNoResponse, "No-Response", false, 0, 1, true, Forward::No},
    {options::kRequestTag, "Request-Tag", true, 0, 8, true, Forward::No},
};

const OptionRule* ruleFor(uint16_t number) {
  for (const auto& r : kRules) {
    if (r.number == number) {
      return &r;
    }
  }
  return nullptr;
}

std::unexpected<Refusal> refuse(uint8_t code, std::string rule, std::string reason) {
  return std::unexpected(Refusal{code, std::move(rule), std::move(reason)});
}

bool printable(View v) {
  // Path and query are UTF-8 text (RFC 7252 §5.10.1); we accept the printable ASCII subset and
  // refuse control characters and bytes a legacy device's parser may choke on.
  return std::all_of(v.begin(), v.end(), [](uint8_t c) { return c >= 0x20 && c < 0x7f; });
}

} // namespace

std::optional<Block> decodeBlock(View v) noexcept {
  if (v.size() > 3) {
    return std::nullopt;
  }
  const uint32_t raw = decodeUint(v);
  Block b{raw >> 4, (raw & 0x08) != 0, static_cast<uint8_t>(raw & 0x07)};
  if (b.szx == 7) { // reserved (BERT only over reliable transports)
    return std::nullopt;
  }
  return b;
}

Bytes encodeBlock(const Block& b) {
  return encodeUint(b.number << 4 | (b.more ? 0x08u : 0u) | b.szx);
}

std::expected<Request, Refusal> validateRequest(const Message& m, const Limits& limits) {
  if (!m.isRequest()) {
    return refuse(codes::kBadRequest, "coap.code",
                  fmt::format("code {}.{:02} is not a request", m.code >> 5, m.code & 31));
  }
  if (m.code > codes::kIPatch) {
    return refuse(codes::kMethodNotAllowed, "coap.method",
                  fmt::format("method code 0.{:02} is not known", m.code & 31));
  }
  if (m.type != Type::Confirmable && m.type != Type::NonConfirmable) {
    return refuse(codes::kBadRequest, "coap.type", "a request must be CON or NON");
  }
  Request r;
  r.method = m.code;
  uint16_t previous = 0;
  bool first = true;
  for (const auto& o : m.options) {
    const OptionRule* rule = ruleFor(o.number);
    const bool repeated = !first && o.number == previous;
    first = false;
    previous = o.number;
    if (rule == nullptr) {
      if (options::critical(o.number)) {
        return refuse(codes::kBadOption, "coap.option",
                      fmt::format("unknown critical option {}", o.number));
      }
      ++r.droppedElective;
      continue;
    }
    if (!rule->supported) {
      if (o.number == options::kProxyUri || o.number == options::kProxyScheme) {
        return refuse(codes::kProxyingNotSupported, "coap.proxy_uri",
                      fmt::format("{} is not supported: name the device as the first Uri-Path "
                                  "segment (/<device-id>/...)",
                                  rule->name));
      }
      return refuse(codes::kBadOption, "coap.option",
                    fmt::format("option {} ({}) is not supported", o.number, rule->name));
    }
    const bool badLength = o.value.size() < rule->minLength || o.value.size() > rule->maxLength;
    if ((repeated && !rule->repeatable) || badLength) {
      if (options::critical(o.number)) {
        return refuse(codes::kBadOption, "coap.option",
                      fmt::format("option {} ({}) {}", o.number, rule->name,
                                  badLength ? fmt::format("has {} bytes", o.value.size())
                                            : std::string("is repeated")));
      }
      ++r.droppedElective; // RFC 7252 §5.4.3/§5.4.5: an elective one is ignored
      continue;
    }
    switch (o.number) {
    case options::kUriPath:
      if (r.segments.size() == limits.maxPathSegments) {
        return refuse(codes::kBadRequest, "coap.uri_path",
                      fmt::format("more than {} Uri-Path segments", limits.maxPathSegments));
      }
      if (o.value.size() > limits.maxSegmentBytes || !printable(o.value)) {
        return refuse(codes::kBadRequest, "coap.uri_path",
                      fmt::format("Uri-Path segment {} is longer than {} bytes or not printable "
                                  "text",
                                  r.segments.size() + 1, limits.maxSegmentBytes));
      }
      r.segments.emplace_back(o.value.begin(), o.value.end());
      break;
    case options::kUriQuery:
      if (r.query.size() == limits.maxQueryOptions || !printable(o.value)) {
        return refuse(codes::kBadRequest, "coap.uri_query",
                      fmt::format("more than {} Uri-Query options, or one not printable text",
                                  limits.maxQueryOptions));
      }
      r.query.emplace_back(o.value.begin(), o.value.end());
      break;
    case options::kContentFormat:
      r.contentFormat = static_cast<uint16_t>(decodeUint(o.value));
      break;
    case options::kAccept:
      r.accept = static_cast<uint16_t>(decodeUint(o.value));
      break;
    case options::kObserve:
      r.observe = decodeUint(o.value);
      break;
    case options::kSize1:
      r.size1 = decodeUint(o.value);
      break;
    case options::kBlock1:
    case options::kBlock2: {
      auto b = decodeBlock(o.value);
      if (!b) {
        return refuse(codes::kBadOption, "coap.block", "block option with the reserved size 7");
      }
      if (b->szx > limits.maxBlockSzx) {
        // A smaller block size is negotiated by answering with it: refuse only what cannot be.
        b->szx = limits.maxBlockSzx;
      }
      if ((static_cast<uint64_t>(b->number) + 1) * b->size() > limits.maxBodyBytes) {
        return refuse(codes::kRequestEntityTooLarge, "coap.block",
                      fmt::format("block {} of {} bytes is past the {}-byte body limit", b->number,
                                  b->size(), limits.maxBodyBytes));
      }
      (o.number == options::kBlock1 ? r.block1 : r.block2) = *b;
      break;
    }
    default:
      break;
    }
    if (rule->forward == Forward::Yes && o.number != options::kBlock1 &&
        o.number != options::kBlock2) {
      r.forward.push_back(o);
    }
  }
  if (m.payload.size() > limits.maxPayloadBytes) {
    return refuse(codes::kRequestEntityTooLarge, "coap.max_payload_bytes",
                  fmt::format("payload of {} bytes exceeds the limit of {}", m.payload.size(),
                              limits.maxPayloadBytes));
  }
  if (r.size1 && *r.size1 > limits.maxBodyBytes) {
    return refuse(codes::kRequestEntityTooLarge, "coap.block",
                  fmt::format("announced body of {} bytes exceeds the limit of {}", *r.size1,
                              limits.maxBodyBytes));
  }
  if (!m.payload.empty() && (m.code == codes::kGet || m.code == codes::kDelete)) {
    return refuse(codes::kBadRequest, "coap.payload", "GET and DELETE carry no payload here");
  }
  r.path.push_back('/'); // (assigning "/" trips GCC 12's -Wrestrict false positive)
  for (size_t i = 0; i < r.segments.size(); ++i) {
    if (i != 0) {
      r.path += '/';
    }
    r.path += r.segments[i];
  }
  return r;
}

} // namespace iotgw::coap
