// SPDX-License-Identifier: GPL-3.0-or-later
// libFuzzer target: the CoAP proxy's validation step — parse, then validate as a request with
// strict limits. Any datagram must give a message or an error; a parsed message must encode to
// the same bytes (the codec loses nothing); a validated request must respect every limit. The
// DTLS cookie gate reads the same datagrams first, before any handshake: a ClientHello or a typed
// error, and the HelloVerifyRequest answering one is shorter than the ClientHello.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <iterator>

#include "protocols/coap/dtls_cookie.h"
#include "protocols/coap/message.h"
#include "protocols/coap/validate.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace iotgw::coap;
  const View in(data, size);
  if (auto hello = dtls::parseClientHello(in.first(std::min(size, dtls::kPeekBytes)), size)) {
    const auto hvr = dtls::helloVerifyRequest(*hello, hello->cookie);
    if (hello->cookie.size() > 255 || hvr.size != 28 + hello->cookie.size() || hvr.size >= size) {
      std::abort();
    }
  }
  auto m = parse(in);
  if (!m) {
    if (describe(m.error()).empty()) {
      std::abort();
    }
    return 0;
  }
  const Bytes again = encode(*m);
  // Re-encoding is canonical: same bytes unless the input used a longer extended form than
  // needed, which the decoder accepts; then the re-encoding must parse to the same message.
  auto back = parse(again);
  if (!back || back->options.size() != m->options.size() || back->code != m->code ||
      back->messageId != m->messageId || back->payload.size() != m->payload.size()) {
    std::abort();
  }
  Limits limits;
  limits.maxPathSegments = 4;
  limits.maxSegmentBytes = 16;
  limits.maxPayloadBytes = 64;
  limits.maxBlockSzx = 2;
  limits.maxBodyBytes = 1024;
  auto r = validateRequest(*m, limits);
  if (!r) {
    if (r.error().reason.empty() || r.error().rule.empty() || r.error().code < 0x80) {
      std::abort();
    }
    return 0;
  }
  if (r->segments.size() > limits.maxPathSegments || m->payload.size() > limits.maxPayloadBytes ||
      (r->block2 && r->block2->szx > limits.maxBlockSzx) || !m->isRequest()) {
    std::abort();
  }
  for (const auto& s : r->segments) {
    if (s.size() > limits.maxSegmentBytes) {
      std::abort();
    }
  }
  // Only options the validator knows and forwards may reach the device.
  constexpr uint16_t kForwarded[] = {options::kIfMatch,  options::kETag,    options::kIfNoneMatch,
                                     options::kObserve,  options::kUriPath, options::kContentFormat,
                                     options::kUriQuery, options::kAccept,  options::kSize2,
                                     options::kSize1};
  for (const auto& o : r->forward) {
    if (std::find(std::begin(kForwarded), std::end(kForwarded), o.number) == std::end(kForwarded)) {
      std::abort();
    }
  }
  return 0;
}
