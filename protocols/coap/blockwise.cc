// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/coap/blockwise.h"

namespace iotgw::coap {

std::expected<BlockBody::Step, BlockBody::Error> BlockBody::add(size_t offset, View data,
                                                                bool more) {
  if (offset < body_.size()) {
    return Step::Repeat;
  }
  if (offset > body_.size()) {
    return std::unexpected(Error::Gap);
  }
  if (data.size() > maxBytes_ - body_.size()) {
    return std::unexpected(Error::TooLarge);
  }
  body_.insert(body_.end(), data.begin(), data.end());
  return more ? Step::More : Step::Complete;
}

} // namespace iotgw::coap
