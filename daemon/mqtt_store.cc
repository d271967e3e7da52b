// SPDX-License-Identifier: GPL-3.0-or-later
// MqttService, store-and-forward: each device's outbox (protocols/mqtt/outbox.h) in the state
// directory's outbox/, what goes into it, the group commit after each turn of the loop, the store
// sessions that deliver it, and the events that say so.
#include <sys/stat.h>

#include <algorithm>
#include <system_error>

#include <fmt/format.h>

#include "daemon/mqtt_service.h"
#include "protocols/mqtt/client_id.h"

namespace iotgw::daemon {

using mqtt::Clock;
using policy::Event;
using policy::EventType;

namespace {

// A store session with nothing to deliver is closed after this.
constexpr auto kStoreIdle = std::chrono::seconds(30);
constexpr std::string_view kSuffix = ".queue";
constexpr uintmax_t kHeaderOnly = 8; // an outbox file that holds nothing

} // namespace

void MqttService::storeEvent(EventType type, const std::string& device, std::string_view rule,
                             std::string_view action, std::string message, std::string peer) {
  Event e;
  e.type = type;
  e.device = device;
  e.peer = std::move(peer);
  e.protocol = "mqtt";
  e.rule = rule;
  e.action = action;
  e.message = std::move(message);
  sink_.emit(std::move(e));
}

mqtt::StoreVerdict MqttService::store(mqtt::Proxy& p, const mqtt::upstream::Publish& m,
                                      bool upstreamDown) {
  const policy::DevicePolicy* device = p.device();
  if (device == nullptr) {
    return mqtt::StoreVerdict::Forward;
  }
  const std::string id = device->id.str();
  const auto open = outboxes_.find(id);
  const bool waiting = open != outboxes_.end() && open->second.box->pending();
  if (m.qos < 2 && !upstreamDown && !waiting) {
    return mqtt::StoreVerdict::Forward;
  }
  mqtt::Outbox* box = outboxFor(id);
  if (box == nullptr) {
    return mqtt::StoreVerdict::Forward; // reported; the acknowledgement waits for the broker
  }
  const mqtt::StoreTicket ticket{p.id(), m.token};
  const std::string client = p.session() != nullptr ? p.session()->upstreamClientId() : "";
  auto stored = box->store(m, ticket, client);
  if (stored == mqtt::Outbox::Stored::Again) {
    ++stats_.storeResends;
    return mqtt::StoreVerdict::Stored;
  }
  std::optional<mqtt::OutboxLog::Refusal> refused;
  if (!stored) {
    refused = stored.error();
  }
  const bool dropOldest =
      device->mqttRules.whenQueueFull == policy::MqttRules::WhenQueueFull::DropOldest;
  if (refused && *refused != mqtt::OutboxLog::Refusal::Failed && dropOldest) {
    // Room for the new message at the cost of the oldest (the device's policy says so); a
    // large message may take several.
    int drops = 0;
    for (; drops < 8 && refused && box->dropOldest(); ++drops) {
      ++stats_.storeDropped;
      stored = box->store(m, ticket, client);
      refused = stored ? std::nullopt : std::optional(stored.error());
    }
    if (drops > 0) {
      storeEvent(EventType::OutboxFull, id, "mqtt.when_queue_full", "drop-oldest",
                 fmt::format("the outbox is full: {} of its oldest stored messages dropped to "
                             "make room ({} dropped so far)",
                             drops, box->dropped()),
                 p.label());
    }
  }
  OutboxState& s = outboxes_.at(id);
  if (!refused && !s.reported && (m.qos < 2 || upstreamDown)) {
    // QoS 2 with the broker up always passes through: not worth an event.
    s.reported = true;
    s.deliveredAtStart = box->delivered();
    storeEvent(EventType::OutboxQueuing, id, "store", "store",
               upstreamDown ? "its upstream session is down: messages are stored and "
                              "acknowledged, and delivered once the broker is back"
                            : "messages are stored until the earlier ones are delivered");
  }
  if (!refused) {
    return mqtt::StoreVerdict::Stored;
  }
  storeEvent(
      EventType::OutboxFull, id,
      *refused == mqtt::OutboxLog::Refusal::DiskFull ? "store.max_bytes" : "store.max_per_device",
      "refuse",
      *refused == mqtt::OutboxLog::Refusal::Failed
          ? "the outbox could not be written (" + box->error() + "): the message was refused"
          : fmt::format("the outbox is full ({} messages, {} bytes): the message was refused, "
                        "the device keeps it",
                        box->messages(), box->bytes()),
      p.label());
  return mqtt::StoreVerdict::Refused;
}

bool MqttService::release(mqtt::Proxy& p, uint16_t packetId, uint64_t token) {
  const policy::DevicePolicy* device = p.device();
  if (device == nullptr || p.session() == nullptr) {
    return false;
  }
  // Every outbox that holds a flow is open: those a previous run left are opened at start
  // (openStoredOutboxes), and one with open flows never goes (Outbox::service). Not open: no
  // flow, and nothing on disk to ask.
  const auto it = outboxes_.find(device->id.str());
  return it != outboxes_.end() &&
         it->second.box->release(p.session()->upstreamClientId(), packetId, {p.id(), token});
}

std::filesystem::path MqttService::outboxPath(const std::string& device) const {
  return config_->stateDirectory / "outbox" / (device + std::string(kSuffix));
}

mqtt::Outbox* MqttService::outboxFor(const std::string& device) {
  if (auto it = outboxes_.find(device); it != outboxes_.end()) {
    return it->second.box.get();
  }
  const std::filesystem::path dir = config_->stateDirectory / "outbox";
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  ::chmod(dir.c_str(), 0700); // device payloads: owner-only
  const std::string prefix = config_->upstream.clientIdPrefix;
  const uint16_t keepAlive = config_->upstream.keepaliveSeconds;
  auto opener = [this, device, prefix, keepAlive](mqtt::UpstreamObserver& o)
      -> std::expected<std::unique_ptr<mqtt::Upstream>, std::string> {
    if (!config_->upstream.enabled) {
      return std::unexpected("no upstream broker is configured");
    }
    const auto policies = policies_();
    const auto id = policy::DeviceId::parse(device);
    const policy::DevicePolicy* d = id ? policies->find(*id) : nullptr;
    mqtt::upstream::Open open;
    open.clientId = mqtt::storeClientId(prefix, device);
    open.cleanStart = false; // its in-flight QoS 2 messages must outlive a reconnect
    open.keepAlive = keepAlive;
    return createUpstream(d, open, o, device);
  };
  mqtt::OutboxLog::Recovered recovered;
  auto opened = mqtt::Outbox::open(
      outboxPath(device),
      {config_->store.maxMessagesPerDevice, config_->store.maxBytesPerDevice, &diskBudget_},
      std::move(opener), &recovered);
  if (!opened) {
    ++stats_.storeFailed;
    storeEvent(EventType::OutboxFull, device, "store", "unavailable",
               "cannot open the device's outbox (" + opened.error() +
                   "): its messages are acknowledged only once the broker has them");
    return nullptr;
  }
  if (recovered.tornBytes > 0) {
    storeEvent(EventType::OutboxQueuing, device, "store", "recover",
               fmt::format("the outbox ended in a torn record ({} bytes, never acknowledged to "
                           "the device) that was cut off; {} messages kept",
                           recovered.tornBytes, recovered.messages));
  }
  auto& s = outboxes_[device];
  s.box = std::move(*opened);
  return s.box.get();
}

void MqttService::commitOutboxes() {
  for (auto& [device, s] : outboxes_) {
    if (!s.box->dirty()) {
      continue;
    }
    bool ok = true;
    for (const auto& t : s.box->commit(&ok)) {
      if (const auto it = byId_.find(t.connection); it != byId_.end()) {
        it->second->stored(t.token);
      }
    }
    if (!ok) {
      ++stats_.storeFailed;
      storeEvent(EventType::OutboxFull, device, "store", "refuse",
                 "the outbox could not be made durable (" + s.box->error() +
                     "): the messages were not acknowledged, the device sends them again");
    }
  }
}

void MqttService::serviceOutboxes(Clock::time_point now) {
  for (auto it = outboxes_.begin(); it != outboxes_.end();) {
    OutboxState& s = it->second;
    const bool done = s.box->service(now, kStoreIdle);
    if (s.reported && !s.box->pending()) {
      s.reported = false;
      storeEvent(EventType::OutboxDrained, it->first, "store", "delivered",
                 fmt::format("the broker has every stored message ({} delivered from the outbox)",
                             s.box->delivered() - s.deliveredAtStart));
    }
    it = done && !s.reported ? outboxes_.erase(it) : std::next(it);
  }
}

void MqttService::openStoredOutboxes() {
  const std::filesystem::path dir = config_->stateDirectory / "outbox";
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file(ec) || !name.ends_with(kSuffix)) {
      continue;
    }
    const std::string device = name.substr(0, name.size() - kSuffix.size());
    if (!policy::DeviceId::parse(device) || entry.file_size(ec) <= kHeaderOnly) {
      continue; // not one of ours, or empty
    }
    mqtt::Outbox* box = outboxFor(device); // kept open while it holds messages or flows
    if (box == nullptr || !box->pending()) {
      continue;
    }
    OutboxState& s = outboxes_.at(device);
    s.reported = true;
    s.deliveredAtStart = 0;
    storeEvent(EventType::OutboxQueuing, device, "store", "resume",
               fmt::format("{} stored messages from before the restart are being delivered",
                           box->messages()));
  }
}

size_t MqttService::eraseOutbox(const std::string& device) {
  if (auto it = outboxes_.find(device); it != outboxes_.end()) {
    const size_t n = it->second.box->erase();
    outboxes_.erase(it);
    return n;
  }
  std::error_code ec;
  if (!std::filesystem::exists(outboxPath(device), ec)) {
    return 0;
  }
  mqtt::Outbox* box = outboxFor(device); // not open: counted, then removed
  const size_t n = box != nullptr ? box->erase() : 0;
  outboxes_.erase(device);
  return n;
}

uint64_t ageSeconds(const std::optional<std::chrono::system_clock::time_point>& t) {
  if (!t) {
    return 0;
  }
  const auto age = std::chrono::system_clock::now() - *t;
  return age.count() > 0
             ? static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::seconds>(age).count())
             : 0;
}

std::vector<std::pair<std::string, uint64_t>> MqttService::outboxCounters() const {
  uint64_t messages = 0;
  uint64_t bytes = 0;
  uint64_t oldest = 0;
  uint64_t devices = 0;
  for (const auto& [device, s] : outboxes_) {
    messages += s.box->messages();
    bytes += s.box->bytes();
    oldest = std::max(oldest, ageSeconds(s.box->oldest()));
    devices += s.box->pending() ? 1 : 0;
  }
  return {{"mqtt_queued_messages", messages},
          {"mqtt_queued_bytes", bytes},
          {"mqtt_queued_oldest_age_seconds", oldest},
          {"mqtt_queued_devices", devices},
          {"mqtt_store_disk_bytes", diskBudget_.used}};
}

std::map<std::string, OutboxInfo> MqttService::outboxes() const {
  std::map<std::string, OutboxInfo> out;
  for (const auto& [device, s] : outboxes_) {
    out[device] = OutboxInfo{s.box->messages(), s.box->bytes(),     s.box->oldest(),
                             s.box->linkUp(),   s.box->delivered(), s.box->dropped()};
  }
  return out;
}

} // namespace iotgw::daemon
