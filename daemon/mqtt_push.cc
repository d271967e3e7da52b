// SPDX-License-Identifier: GPL-3.0-or-later
#include "daemon/mqtt_push.h"

namespace iotgw::daemon {

std::string MqttService::publishFor(const policy::DevicePolicy& device, const std::string& topic,
                                    std::span<const uint8_t> payload, uint8_t qos,
                                    std::function<void(bool)> done) {
  if (!config_->upstream.enabled) {
    return "no upstream broker is configured";
  }
  const std::string id = device.id.str();
  auto it = pushers_.find(id);
  if (it == pushers_.end()) {
    auto pusher = std::make_unique<Pusher>();
    mqtt::upstream::Open open;
    open.clientId = config_->upstream.clientIdPrefix + id + "-coap";
    open.keepAlive = config_->upstream.keepaliveSeconds;
    auto created = createUpstream(&device, open, *pusher);
    if (!created) {
      return "cannot open the upstream session: " + created.error();
    }
    pusher->upstream = std::move(*created);
    it = pushers_.emplace(id, std::move(pusher)).first;
  }
  Pusher& p = *it->second;
  p.lastUsed = mqtt::Clock::now();
  mqtt::upstream::Publish pub;
  pub.token = ++pushTokens_;
  pub.topic = topic;
  pub.payload.assign(payload.begin(), payload.end());
  pub.qos = qos;
  if (!p.upstream->publish(pub)) {
    return qos > 0 ? "the upstream queue is full" : "the upstream session is not connected";
  }
  ++stats_.forwarded;
  if (qos > 0) {
    p.waiting.emplace(pub.token, std::move(done));
  } else {
    done(true);
  }
  return {};
}

void MqttService::servicePushers(mqtt::Clock::time_point now) {
  for (auto& [id, p] : pushers_) {
    p->upstream->service(now);
    if (p->waiting.empty() && p->upstream->queued() == 0 &&
        now - p->lastUsed > std::chrono::seconds(60)) {
      p->upstream->close(false);
    }
  }
  std::erase_if(pushers_, [](const auto& kv) { return kv.second->upstream->finished(); });
}

} // namespace iotgw::daemon
