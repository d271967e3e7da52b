// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Publishing on behalf of a device that has no MQTT session of its own to ride on (readings it
// pushes over CoAP): one upstream session for the device, the acknowledgements waited for on it,
// and when it was last used.

#include <expected>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>

#include "protocols/mqtt/upstream.h"

namespace iotgw::mqtt {

class Publisher final : public UpstreamObserver {
public:
  // Opens the device's upstream session with `open`, reporting to the publisher.
  using Opener =
      std::function<std::expected<std::unique_ptr<Upstream>, std::string>(UpstreamObserver&)>;
  [[nodiscard]] static std::expected<std::unique_ptr<Publisher>, std::string>
  create(const Opener& open);

  // `done(true)` runs once the broker has it (its PUBACK for QoS 1; at once for QoS 0). An
  // error (nothing taken) is a sentence.
  [[nodiscard]] std::expected<void, std::string> publish(const std::string& topic,
                                                         std::span<const uint8_t> payload,
                                                         uint8_t qos,
                                                         std::function<void(bool)> done);
  // The upstream's timers; the session is closed once it has been idle for `idle` with nothing
  // waiting. True when it has finished and the publisher may go.
  [[nodiscard]] bool service(Clock::time_point now, Clock::duration idle);
  [[nodiscard]] size_t queued() const { return upstream_->queued(); }

private:
  Publisher() = default;
  void upstreamAcked(uint64_t token) override;
  void upstreamMessage(const Delivery&) override {} // it subscribes to nothing
  void upstreamConnected(const UpstreamStatus&) override {}

  std::unique_ptr<Upstream> upstream_;
  std::map<uint64_t, std::function<void(bool)>> waiting_; // token → who hears of the PUBACK
  uint64_t tokens_ = 0;
  Clock::time_point lastUsed_ = Clock::now();
};

} // namespace iotgw::mqtt
