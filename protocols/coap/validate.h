// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// What a CoAP request must be before the proxy forwards anything: every option known (an unknown
// critical one is 4.02 Bad Option, an unknown elective one is dropped), each within its length
// and repeat rules, Uri-Path within bounds, payload and block sizes within limits (the content
// format is the device's policy: policy::evaluateCoapRequest). The result is the request rebuilt
// from what was checked: only those options are forwarded. Pure: no I/O, no clock.

#include <cstdint>
#include <expected>
#include <optional>
#include <string>
#include <vector>

#include "protocols/coap/message.h"

namespace iotgw::coap {

struct Limits {
  size_t maxPathSegments = 16;
  size_t maxSegmentBytes = 64;
  size_t maxQueryOptions = 8;
  size_t maxPayloadBytes = 1024;     // the device's policy (coap.max_payload_bytes)
  uint8_t maxBlockSzx = 6;           // 2^(6+4) = 1024-byte blocks at most
  uint32_t maxBodyBytes = 64 * 1024; // a block-wise body, all blocks together
};

struct Block {
  uint32_t number = 0;
  bool more = false;
  uint8_t szx = 0;
  [[nodiscard]] size_t size() const { return size_t{1} << (szx + 4); }
};

[[nodiscard]] std::optional<Block> decodeBlock(View v) noexcept;
[[nodiscard]] Bytes encodeBlock(const Block& b);

struct Request {
  uint8_t method = 0;
  std::vector<std::string> segments; // Uri-Path, in order
  std::string path;                  // "/" + segments joined by "/"
  std::vector<std::string> query;    // Uri-Query
  std::optional<uint16_t> contentFormat;
  std::optional<uint16_t> accept;
  std::optional<uint32_t> observe;
  std::optional<Block> block1;
  std::optional<Block> block2;
  std::optional<uint32_t> size1;
  std::vector<Option> forward; // the checked options worth forwarding, in number order
  size_t droppedElective = 0;  // unknown elective options left out
};

struct Refusal {
  uint8_t code = codes::kBadRequest; // the response code to answer with
  std::string rule;                  // "coap.option", "coap.uri_path", ...
  std::string reason;                // one line for humans (and the diagnostic payload)
};

[[nodiscard]] std::expected<Request, Refusal> validateRequest(const Message& m,
                                                              const Limits& limits);

} // namespace iotgw::coap
