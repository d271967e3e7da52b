// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// A body that arrives block by block (RFC 7959), collected by the proxy before it is checked and
// forwarded: a client's request body (Block1) or a device's answer (Block2). Blocks must come in
// order (a block already held is a repeat, one past the end a gap) and the body stays within
// `maxBytes`, so a peer that sends without end only ever costs that much. Pure.

#include <cstddef>
#include <expected>

#include "protocols/coap/message.h"

namespace iotgw::coap {

class BlockBody {
public:
  enum class Step : uint8_t {
    More,     // held; more blocks to come
    Complete, // the last block: the body is whole
    Repeat,   // a block already held (a retransmission): nothing changed
  };
  enum class Error : uint8_t {
    Gap,      // a block beyond the end of what is held: 4.08 Request Entity Incomplete
    TooLarge, // the body would exceed maxBytes: 4.13 Request Entity Too Large
  };

  explicit BlockBody(size_t maxBytes) : maxBytes_(maxBytes) {}

  // The block at byte `offset` (NUM << (SZX + 4)) holding `data`; `more` is its M bit.
  [[nodiscard]] std::expected<Step, Error> add(size_t offset, View data, bool more);

  [[nodiscard]] const Bytes& bytes() const noexcept { return body_; }
  [[nodiscard]] size_t size() const noexcept { return body_.size(); }
  [[nodiscard]] Bytes take() noexcept { return std::move(body_); }

private:
  size_t maxBytes_;
  Bytes body_;
};

} // namespace iotgw::coap
