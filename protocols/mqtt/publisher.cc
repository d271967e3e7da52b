// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/mqtt/publisher.h"

namespace iotgw::mqtt {

std::expected<std::unique_ptr<Publisher>, std::string> Publisher::create(const Opener& open) {
  std::unique_ptr<Publisher> p(new Publisher());
  auto upstream = open(*p);
  if (!upstream) {
    return std::unexpected(upstream.error());
  }
  p->upstream_ = std::move(*upstream);
  return p;
}

std::expected<void, std::string> Publisher::publish(const std::string& topic,
                                                    std::span<const uint8_t> payload, uint8_t qos,
                                                    std::function<void(bool)> done) {
  lastUsed_ = Clock::now();
  upstream::Publish pub;
  pub.token = ++tokens_;
  pub.topic = topic;
  pub.payload.assign(payload.begin(), payload.end());
  pub.qos = qos;
  if (!upstream_->publish(pub)) {
    return std::unexpected(qos > 0 ? "the upstream queue is full"
                                   : "the upstream session is not connected");
  }
  if (qos > 0) {
    waiting_.emplace(pub.token, std::move(done));
  } else {
    done(true);
  }
  return {};
}

void Publisher::upstreamAcked(uint64_t token) {
  if (auto it = waiting_.find(token); it != waiting_.end()) {
    auto done = std::move(it->second);
    waiting_.erase(it);
    done(true);
  }
}

bool Publisher::service(Clock::time_point now, Clock::duration idle) {
  upstream_->service(now);
  if (waiting_.empty() && upstream_->queued() == 0 && now - lastUsed_ > idle) {
    upstream_->close(false);
  }
  return upstream_->finished();
}

} // namespace iotgw::mqtt
