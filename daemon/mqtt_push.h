// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The part of the MQTT capability that carries readings devices push over CoAP: their own
// upstream session per device (mqtt_push.cc).

#include <functional>
#include <map>
#include <memory>

#include "daemon/mqtt_service.h"

namespace iotgw::daemon {

// One upstream session per device that pushes readings over CoAP (it has no MQTT session of its
// own to ride on); closed after a minute without readings.
struct MqttService::Pusher final : mqtt::UpstreamObserver {
  std::unique_ptr<mqtt::MosquittoUpstream> upstream;
  std::map<uint64_t, std::function<void(bool)>> waiting; // token → who hears of the PUBACK
  mqtt::Clock::time_point lastUsed;

  void upstreamAcked(uint64_t token) override {
    if (auto it = waiting.find(token); it != waiting.end()) {
      auto done = std::move(it->second);
      waiting.erase(it);
      done(true);
    }
  }
  void upstreamMessage(const std::string&, std::span<const uint8_t>, uint8_t, bool) override {}
  void upstreamConnected(bool, int) override {}
};

} // namespace iotgw::daemon
