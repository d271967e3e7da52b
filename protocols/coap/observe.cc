// SPDX-License-Identifier: GPL-3.0-or-later
// Observe relationships relayed from a device to a client: the device's notifications checked and
// passed on, and relationships ended (with a last notification that tells the client).
#include <algorithm>

#include <fmt/format.h>

#include "protocols/coap/proxy.h"

namespace iotgw::coap {

using policy::EventType;
using namespace libcoap;

void Proxy::onNotification(Relation& rel, const coap::UpstreamEvent& e) {
  using Kind = coap::UpstreamEvent::Kind;
  if (e.kind == Kind::Dropped) {
    ++counters.badResponses;
    emit(EventType::MalformedPacket, rel.device, rel.peer, "coap.response", "5.13-1", "drop",
         fmt::format("notification for {} dropped: {}", rel.path, e.reason));
    return;
  }
  if (e.kind == Kind::Ended) {
    ++counters.badResponses;
    emit(EventType::MalformedPacket, rel.device, rel.peer, "coap.response", "5.13-1", "end",
         fmt::format("observation of {} ended: {}; 5.02 to the client", rel.path, e.reason));
    endRelation(rel.id, coap::codes::kBadGateway, "the device's notification is too large");
    return;
  }
  const auto policies = hooks.policies();
  const auto id = policy::DeviceId::parse(rel.device);
  const policy::DevicePolicy* d = id ? policies->find(*id) : nullptr;
  const uint64_t relId = rel.id;
  if (d == nullptr) {
    endRelation(relId);
    return;
  }
  Exchange answer(*this);
  coap::UpstreamAnswer a = e.answer;
  if (std::string bad = checkResponse(d, a, answer); !bad.empty()) {
    ++counters.badResponses;
    emit(EventType::MalformedPacket, rel.device, rel.peer, "coap.response", "5.13-1", "drop",
         fmt::format("notification for {} dropped: {}", rel.path, bad));
    return;
  }
  notify(rel, answer);
  if (e.ended || (answer.code >> 5) != 2) {
    endRelation(relId); // the device's last notification (RFC 7641 §3.2)
  }
}

void Proxy::notify(Relation& rel, const Exchange& answer) {
  if (!peers.contains(rel.down)) {
    return;
  }
  const size_t room = coap_session_max_pdu_size(rel.down);
  if (answer.payload.size() + 64 > room) {
    ++counters.badResponses;
    emit(EventType::MalformedPacket, rel.device, rel.peer, "coap.response", "5.13-1", "drop",
         fmt::format("notification for {} of {} bytes is larger than one datagram; dropped",
                     rel.path, answer.payload.size()));
    return;
  }
  const auto now = Clock::now();
  const bool confirm =
      !rel.lastConfirmable ||
      now - *rel.lastConfirmable >=
          std::min<Clock::duration>(kConfirmNotificationsEvery, settings.idleSession / 4);
  coap_pdu_t* pdu =
      coap_pdu_init(confirm ? COAP_MESSAGE_CON : COAP_MESSAGE_NON,
                    static_cast<coap_pdu_code_t>(answer.code), coap_new_message_id(rel.down), room);
  if (pdu == nullptr) {
    return;
  }
  coap_add_token(pdu, rel.downToken.size(), rel.downToken.data());
  // An error notification carries no Observe: it ends the client's observation.
  if ((answer.code >> 5) == 2) {
    uint8_t buf[4];
    coap_add_option(pdu, COAP_OPTION_OBSERVE, coap_encode_var_safe(buf, sizeof buf, rel.sequence++),
                    buf);
  }
  for (const auto& [number, value] : answer.options) {
    coap_add_option(pdu, number, value.size(), value.data());
  }
  if (!answer.payload.empty()) {
    coap_add_data(pdu, answer.payload.size(), answer.payload.data());
  }
  if (coap_send(rel.down, pdu) != COAP_INVALID_MID) {
    ++counters.notifications;
    libcoapTouched = true;
    if (confirm) {
      rel.lastConfirmable = now;
    }
  }
}

void Proxy::endRelation(uint64_t id, std::optional<uint8_t> code, std::string_view text) {
  auto it = relations.find(id);
  if (it == relations.end()) {
    return;
  }
  Relation& rel = *it->second;
  if (code) {
    Exchange last(*this);
    last.code = *code;
    last.payload.assign(text.begin(), text.end());
    notify(rel, last);
  }
  if (auto l = links.find(rel.link); l != links.end()) {
    coap::UpstreamOutput none;
    l->second->client.cancel(id, Clock::now(), none); // the device's next notification is reset
  }
  if (auto p = peers.find(rel.down); p != peers.end() && p->second.observing > 0) {
    --p->second.observing;
  }
  if (auto d = observingPerDevice.find(rel.device); d != observingPerDevice.end()) {
    if (--d->second == 0) {
      observingPerDevice.erase(d);
    }
  }
  coap_session_release(rel.down);
  --counters.observing;
  relations.erase(it);
}

void Proxy::endRelationsIf(const std::function<bool(const Relation&)>& match,
                           std::optional<uint8_t> code, std::string_view text) {
  std::vector<uint64_t> ids;
  for (const auto& [id, rel] : relations) {
    if (match(*rel)) {
      ids.push_back(id);
    }
  }
  for (const uint64_t id : ids) {
    endRelation(id, code, text);
  }
}

} // namespace iotgw::coap
