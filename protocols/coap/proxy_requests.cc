// SPDX-License-Identifier: GPL-3.0-or-later
// A client's request through the CoAP proxy: validation, policy, what a session may hold,
// forwarding to the device, the device's answer checked and relayed (observe relays:
// observe.cc).
#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "policy/evaluator.h"
#include "protocols/coap/proxy.h"

namespace iotgw::coap {

using policy::EventType;
using namespace libcoap;

namespace {

// Heap copies of answer bodies handed to libcoap's large-data call, released when it is done with
// them (the release callback gives the charge back).
struct HeldBody {
  Bytes data;
};

} // namespace

void Proxy::onReleased(coap_session_t* s, void* body) noexcept {
  std::unique_ptr<HeldBody> held(static_cast<HeldBody*>(body));
  of(s)->released(s, held->data.size(), true);
}

Proxy::Exchange::~Exchange() {
  owner.bodies.used -= std::min(owner.bodies.used, charged);
  if (counted) {
    // The async holds the client's session until the exchange ends: `down` is still that session.
    if (auto p = owner.peers.find(down); p != owner.peers.end() && p->second.pending > 0) {
      --p->second.pending;
    }
  }
}

void Proxy::released(coap_session_t* s, size_t bytes, bool answer) {
  bodies.used -= std::min(bodies.used, bytes);
  if (answer) {
    if (auto p = peers.find(s); p != peers.end()) {
      p->second.held -= std::min(p->second.held, bytes);
    }
  }
}

void Proxy::refuse(coap_pdu_t* resp, uint8_t code, std::string_view reason) {
  coap_pdu_set_code(resp, static_cast<coap_pdu_code_t>(code));
  const std::string_view text = reason.substr(0, coap::kMaxDiagnosticBytes);
  // Cut at a UTF-8 boundary: a diagnostic payload is UTF-8 (RFC 7252 §5.5.2).
  size_t n = text.size();
  if (n < reason.size()) {
    while (n > 0 && (static_cast<uint8_t>(reason[n]) & 0xC0) == 0x80) {
      --n;
    }
  }
  coap_add_data(resp, n, reinterpret_cast<const uint8_t*>(text.data()));
}

void Proxy::refuseFor(coap_pdu_t* resp, uint8_t code, uint32_t seconds, const std::string& peer,
                      std::string rule, std::string_view reason) {
  ++counters.rateLimited;
  emit(EventType::RateLimited, "", peer, std::move(rule), "5.9-3", "refuse",
       fmt::format("CoAP request refused with {}: {}", codeText(code), reason));
  uint8_t buf[4];
  coap_add_option(resp, COAP_OPTION_MAXAGE, coap_encode_var_safe(buf, sizeof buf, seconds), buf);
  refuse(resp, code, reason);
}

void Proxy::handle(coap_resource_t* r, coap_session_t* s, const coap_pdu_t* req,
                   const coap_string_t* q, coap_pdu_t* resp) {
  const Bytes token = tokenOf(req);
  if (coap_async_t* async = coap_find_async(s, binOf(token))) {
    finish(async, r, s, req, q, resp);
    return;
  }
  ++counters.requests;
  const std::string peer = peerLabel(s);
  const auto peerIt = peers.find(s);
  if (peerIt == peers.end()) {
    ++counters.denied; // cannot happen on a DTLS endpoint with verify_peer_cert
    refuse(resp, coap::codes::kUnauthorized, "no client certificate");
    return;
  }
  Peer& client = peerIt->second;
  if (client.closing) {
    refuse(resp, coap::codes::kServiceUnavailable, "the session is being closed");
    return;
  }
  const auto policies = hooks.policies();
  // A quarantined device reaches nothing, through the proxy either: not as a client (its own
  // certificate, or its address), and not as a target (below).
  if (std::string self; quarantinedDevice(client, policies, &self)) {
    ++counters.denied;
    emit(EventType::AccessDenied, self, peer, "quarantine", "5.3-15", "refuse",
         "CoAP request from a quarantined device refused; its session is closed");
    refuse(resp, coap::codes::kForbidden, "the client is a quarantined device");
    closeSession(s, "quarantined client");
    return;
  }
  coap::Limits limits;
  limits.maxPayloadBytes = limits.maxBodyBytes; // the device's own limit is its policy's
  coap::Message m = toMessage(req, true);
  auto v = coap::validateRequest(m, limits);
  if (!v) {
    ++counters.malformed;
    emit(EventType::MalformedPacket, "", peer, v.error().rule, "5.13-1", "refuse",
         fmt::format("CoAP request refused with {}: {}", codeText(v.error().code),
                     v.error().reason));
    if (v.error().code == coap::codes::kRequestEntityTooLarge) {
      // RFC 7959 §4: a 4.13 says in Size1 how large a body may be.
      uint8_t buf[4];
      coap_add_option(resp, COAP_OPTION_SIZE1,
                      coap_encode_var_safe(buf, sizeof buf, limits.maxBodyBytes), buf);
    }
    refuse(resp, v.error().code, v.error().reason);
    return;
  }
  const auto id = v->segments.empty() ? std::nullopt : policy::DeviceId::parse(v->segments[0]);
  const policy::DevicePolicy* device = id ? policies->find(*id) : nullptr;
  if (device == nullptr) {
    ++counters.denied;
    emit(EventType::AccessDenied, "", peer, "coap.target", "5.13-1", "refuse",
         fmt::format("CoAP request for {} names no enrolled device", v->path));
    refuse(resp, coap::codes::kNotFound, "no such device: the path starts with a device id");
    return;
  }
  const std::string deviceName = device->id.str();
  if (hooks.quarantined && hooks.quarantined(device->id)) {
    ++counters.denied;
    emit(EventType::AccessDenied, deviceName, peer, "quarantine", "5.3-15", "refuse",
         "CoAP request for a quarantined device refused");
    refuse(resp, coap::codes::kServiceUnavailable, "device is quarantined");
    return;
  }
  std::string path;
  for (size_t i = 1; i < v->segments.size(); ++i) {
    path += '/';
    path += v->segments[i];
  }
  if (path.empty()) {
    path.push_back('/');
  }
  // Every block of a block-wise body is checked as the request it belongs to, so a refused one
  // is refused at its first block; the size that counts is what the client announced (Size1) or
  // has sent so far.
  const bool block1 = hasOption(req, COAP_OPTION_BLOCK1);
  const auto method = static_cast<policy::CoapMethod>(v->method);
  auto evaluate = [&](size_t payloadBytes) {
    auto decision = policy::evaluateCoapClient(*device, client.name);
    if (decision.allowed()) {
      policy::CoapFacts facts;
      facts.method = method;
      facts.path = path;
      facts.payloadBytes = payloadBytes;
      facts.contentFormat = v->contentFormat;
      decision = policy::evaluateCoapRequest(*device, facts);
    }
    if (!decision.allowed()) {
      // A body in a format the device does not take is bad input, like validation's refusals.
      const bool malformed = decision.why == policy::Reason::CoapContentFormat;
      ++(malformed ? counters.malformed : counters.denied);
      const uint8_t code = codeOfDenial(decision.why);
      emit(malformed ? EventType::MalformedPacket : EventType::AccessDenied, deviceName, peer,
           decision.rule, std::string(decision.provision), "refuse",
           fmt::format("CoAP {} {} refused with {}: {}", policy::toString(method), path,
                       codeText(code), decision.reason));
      refuse(resp, code, decision.reason);
    }
    return decision.allowed();
  };
  if (!evaluate(std::max<size_t>(m.payload.size(), block1 && v->size1 ? *v->size1 : 0))) {
    return;
  }
  if (device->addresses.empty()) {
    ++counters.denied;
    refuse(resp, coap::codes::kBadGateway, "the device's policy has no address");
    return;
  }
  std::optional<Bytes> body; // a block-wise request body, once whole
  if (block1) {
    body = collect(client, s, req, m, resp);
    if (!body) {
      return; // 2.31 Continue for a block before the last, or a refusal
    }
    m.payload = View(*body);
    if (!evaluate(m.payload.size())) {
      return;
    }
  }
  // What the session may hold (limits.coap_max_pending_per_session, kMaxHeldPerSession) and the
  // gateway as a whole (kMaxBodyBytesTotal): beyond, the client is told when to try again.
  const auto& lim = settings;
  const auto guardSeconds = static_cast<uint32_t>((lim.requestTimeout.count() + 999) / 1000);
  if (client.pending >= lim.maxPendingPerSession) {
    refuseFor(resp, coap::codes::kTooManyRequests, guardSeconds, peer,
              "limits.coap_max_pending_per_session", "too many requests waiting for devices");
    return;
  }
  if (client.held >= kMaxHeldPerSession) {
    refuseFor(resp, coap::codes::kTooManyRequests, kHeldSeconds, peer, "coap.block2",
              "too many block-wise answers not yet fetched");
    return;
  }
  if (bodies.used + m.payload.size() > bodies.limit) {
    refuseFor(resp, coap::codes::kServiceUnavailable, kHeldSeconds, peer, "coap.bodies",
              "the gateway holds as many bodies as it may");
    return;
  }
  // Observe=1 deregisters: the relationship ends here, and the device hears of it when its next
  // notification is refused with a reset. Observe=0 on a token that observes already registers
  // again (RFC 7641 §4.1): the old relationship makes way for the new one.
  bool observe = v->observe && *v->observe == 0 && v->method == coap::codes::kGet;
  if (v->observe) {
    endRelationsIf([&](const Relation& rel) { return rel.down == s && rel.downToken == token; });
  }
  // Beyond the observe limits the request is served as a plain GET: the answer carries no
  // Observe option, which tells the client it is not observing (RFC 7641 §4.1).
  if (observe) {
    const char* full = nullptr;
    if (client.observing >= lim.maxObservePerSession) {
      full = "limits.coap_max_observe_per_session";
    } else if (observingPerDevice[deviceName] >= lim.maxObservePerDevice) {
      full = "limits.coap_max_observe_per_device";
    } else if (relations.size() >= lim.maxObserve) {
      full = "limits.coap_max_observe";
    }
    if (full != nullptr) {
      observe = false;
      ++counters.observeRefused;
      emit(
          EventType::RateLimited, deviceName, peer, full, "5.9-3", "serve-without-observe",
          fmt::format("observe of {} not registered: at the limit; answered as a plain GET", path));
    }
  }
  Link* link = linkFor(*device);
  if (link == nullptr) {
    refuse(resp, coap::codes::kBadGateway, "cannot reach the device");
    return;
  }
  coap::UpstreamRequest up;
  up.method = v->method;
  bool deviceSegment = true;
  for (const auto& o : v->forward) {
    if (o.number == coap::options::kUriPath && deviceSegment) {
      deviceSegment = false; // the device's id is ours, not the device's
      continue;
    }
    if (o.number == coap::options::kSize1 || o.number == coap::options::kSize2 ||
        o.number == coap::options::kObserve) {
      continue; // the proxy's client states the sizes of what it sends, and asks to observe
    }
    up.options.push_back({o.number, Bytes(o.value.begin(), o.value.end())});
  }
  up.body.assign(m.payload.begin(), m.payload.end());
  up.observe = observe;
  const auto now = Clock::now();
  up.deadline = now + lim.requestTimeout;
  // The async never fires by itself (a delay of 0): the device's client ends every exchange by
  // its deadline, and the answer, or 5.04, triggers it.
  coap_async_t* async = coap_register_async(s, req, 0);
  if (async == nullptr) {
    refuse(resp, coap::codes::kInternalServerError, "cannot track the request");
    return;
  }
  const uint64_t exchangeId = nextId++;
  const size_t requestBytes = up.body.size();
  coap::UpstreamOutput out;
  if (!link->client.send(exchangeId, std::move(up), now, out)) {
    coap_free_async(s, async); // registered just now: nothing of libcoap's refers to it yet
    refuseFor(resp, coap::codes::kServiceUnavailable, guardSeconds, peer, "coap.device_queue",
              "the device has too many requests waiting");
    return;
  }
  auto ex = std::make_unique<Exchange>(*this);
  ex->id = exchangeId;
  ex->link = link->key;
  ex->async = async;
  ex->downToken = token;
  ex->downMid = coap_pdu_get_mid(req);
  ex->down = s;
  ex->device = deviceName;
  ex->path = path;
  ex->peer = peer;
  ex->observe = observe;
  ex->confirmable = coap_pdu_get_type(req) == COAP_MESSAGE_CON;
  ex->blockwise = hasOption(req, COAP_OPTION_BLOCK2);
  ex->charged = requestBytes; // the device's client holds the body until the exchange ends
  bodies.used += requestBytes;
  coap_async_set_app_data(async, ex.get());
  ex->counted = true;
  exchanges[exchangeId] = std::move(ex);
  ++client.pending; // given back when the exchange ends (~Exchange)
  ++counters.forwarded;
  link->lastUsed = now;
  apply(*link, out);
  schedule(*link);
  // Nothing is sent yet: an empty NON is dropped by libcoap, so the client's CON stays
  // unacknowledged until the device answers, and the answer is piggybacked on the ACK. A slow
  // device only costs a retransmission of the request, which finds this exchange and waits too.
  coap_pdu_set_type(resp, COAP_MESSAGE_NON);
}

std::optional<Bytes> Proxy::collect(Peer& peer, coap_session_t* s, const coap_pdu_t* req,
                                    const coap::Message& m, coap_pdu_t* resp) {
  coap_opt_iterator_t it;
  const coap_opt_t* o = coap_check_option(req, COAP_OPTION_BLOCK1, &it);
  const auto block = coap::decodeBlock(View(coap_opt_value(o), coap_opt_length(o)));
  if (!block || block->szx > coap::Limits{}.maxBlockSzx) {
    ++counters.malformed;
    refuse(resp, coap::codes::kBadRequest, "malformed Block1 option");
    return std::nullopt;
  }
  // libcoap tells uploads apart by Uri-Path and Request-Tag: so does this.
  std::string key;
  coap_option_iterator_init(req, &it, COAP_OPT_ALL);
  while (const coap_opt_t* opt = coap_option_next(&it)) {
    if (it.number == COAP_OPTION_URI_PATH || it.number == COAP_OPTION_RTAG) {
      key += it.number == COAP_OPTION_URI_PATH ? '/' : '#';
      key.append(reinterpret_cast<const char*>(coap_opt_value(opt)), coap_opt_length(opt));
    }
  }
  const auto now = Clock::now();
  auto drop = [&](std::map<std::string, Upload>::iterator u) {
    bodies.used -= std::min(bodies.used, u->second.body.size());
    return peer.uploads.erase(u);
  };
  for (auto u = peer.uploads.begin(); u != peer.uploads.end();) {
    u = now - u->second.lastUsed > kUploadWindow ? drop(u) : std::next(u);
  }
  const std::string label = peerLabel(s);
  auto u = peer.uploads.find(key);
  if (block->number == 0) {
    if (!block->more) {
      return Bytes(m.payload.begin(), m.payload.end()); // one block: nothing to collect
    }
    // libcoap keeps a record of every upload started, whatever the answer: a client that goes on
    // starting them after being told to wait is closed.
    while (!peer.uploadStarts.empty() && now - peer.uploadStarts.front() > kUploadWindow) {
      peer.uploadStarts.pop_front();
    }
    peer.uploadStarts.push_back(now);
    if (peer.uploadStarts.size() > 2 * kMaxUploadStartsPerWindow) {
      ++counters.sessionsClosed;
      emit(EventType::RateLimited, "", label, "coap.block1", "5.9-3", "close",
           "DTLS session closed: it went on starting block-wise uploads after 4.29");
      closeSession(s, "block-wise uploads");
      refuseFor(resp, coap::codes::kTooManyRequests, kUploadWindow.count(), label, "coap.block1",
                "too many block-wise uploads: the session is closed");
      return std::nullopt;
    }
    if (peer.uploadStarts.size() > kMaxUploadStartsPerWindow) {
      refuseFor(resp, coap::codes::kTooManyRequests, kUploadWindow.count(), label, "coap.block1",
                "too many block-wise uploads started");
      return std::nullopt;
    }
    coap_opt_iterator_t si;
    if (const coap_opt_t* size1 = coap_check_option(req, COAP_OPTION_SIZE1, &si)) {
      if (coap_decode_var_bytes(coap_opt_value(size1), coap_opt_length(size1)) >
          coap::Limits{}.maxBodyBytes) {
        ++counters.malformed;
        uint8_t buf[4];
        coap_add_option(resp, COAP_OPTION_SIZE1,
                        coap_encode_var_safe(buf, sizeof buf, coap::Limits{}.maxBodyBytes), buf);
        refuse(resp, coap::codes::kRequestEntityTooLarge, "the body is larger than allowed");
        return std::nullopt;
      }
    }
    if (u != peer.uploads.end()) {
      u = drop(u); // the client starts this body again
    }
    if (peer.uploads.size() >= kMaxUploadsPerSession) {
      refuseFor(resp, coap::codes::kTooManyRequests, kUploadWindow.count(), label, "coap.block1",
                "too many block-wise uploads in progress on this session");
      return std::nullopt;
    }
    u = peer.uploads.emplace(key, Upload{}).first;
  } else if (u == peer.uploads.end()) {
    ++counters.malformed;
    refuse(resp, coap::codes::kRequestEntityIncomplete, "no earlier blocks of this body");
    return std::nullopt;
  }
  if (bodies.used + m.payload.size() > bodies.limit) {
    drop(u);
    refuseFor(resp, coap::codes::kServiceUnavailable, kHeldSeconds, label, "coap.bodies",
              "the gateway holds as many bodies as it may");
    return std::nullopt;
  }
  const size_t before = u->second.body.size();
  const auto step = u->second.body.add(static_cast<size_t>(block->number) << (block->szx + 4),
                                       m.payload, block->more);
  bodies.used += u->second.body.size() - before;
  u->second.lastUsed = now;
  if (!step) {
    ++counters.malformed;
    const bool gap = step.error() == coap::BlockBody::Error::Gap;
    drop(u);
    if (!gap) {
      uint8_t buf[4];
      coap_add_option(resp, COAP_OPTION_SIZE1,
                      coap_encode_var_safe(buf, sizeof buf, coap::Limits{}.maxBodyBytes), buf);
    }
    refuse(resp, gap ? coap::codes::kRequestEntityIncomplete : coap::codes::kRequestEntityTooLarge,
           gap ? "a block is missing" : "the body is larger than allowed");
    return std::nullopt;
  }
  if (*step != coap::BlockBody::Step::Complete) {
    coap_pdu_set_code(resp, static_cast<coap_pdu_code_t>(coap::codes::kContinue));
    return std::nullopt;
  }
  Bytes whole = u->second.body.take();
  bodies.used -= std::min(bodies.used, whole.size());
  peer.uploads.erase(u);
  return whole;
}

// libcoap calls the request handler again for the client's repeat of its request (the async is
// found by token), and once more when the async is triggered: then the answer goes out.
void Proxy::finish(coap_async_t* async, coap_resource_t* r, coap_session_t* s,
                   const coap_pdu_t* req, const coap_string_t* q, coap_pdu_t* resp) {
  auto* ex = static_cast<Exchange*>(coap_async_get_app_data(async));
  if (ex == nullptr) {
    refuse(resp, coap::codes::kInternalServerError, "lost track of the request");
    return;
  }
  if (!ex->done) {
    coap_pdu_set_type(resp, COAP_MESSAGE_NON); // the client repeated its request: still waiting
    return;
  }
  const auto it = exchanges.find(ex->id);
  std::unique_ptr<Exchange> owned;
  if (it != exchanges.end()) {
    owned = std::move(it->second);
    exchanges.erase(it);
  }
  if (ex->orphaned || !peers.contains(s)) {
    coap_pdu_set_type(resp, COAP_MESSAGE_NON); // nobody to answer: an empty NON is not sent
    return;
  }
  // The answer goes in the ACK of the client's request (piggybacked), not as a separate CON:
  // libcoap 4.3.1 clients cannot follow a block-wise body that starts in a separate response.
  if (coap_pdu_get_type(req) == COAP_MESSAGE_CON) {
    coap_pdu_set_type(resp, COAP_MESSAGE_ACK);
    // The async's copy of the request has a new message id: answer the one the client sent.
    coap_pdu_set_mid(resp, ex->downMid);
  }
  coap_pdu_set_code(resp, static_cast<coap_pdu_code_t>(ex->code));
  if (!ex->needsBlocks()) {
    addAnswer(resp, *ex, false);
  } else {
    // Block-wise to the client (RFC 7959): libcoap cuts the body and serves the later blocks,
    // and states the body's Content-Format, Max-Age and ETag itself.
    addAnswer(resp, *ex, true);
    // Held by libcoap until the client has fetched it (or gives up): charged to the session
    // until onReleased gives it back.
    auto* held = new HeldBody{std::move(ex->payload)};
    bodies.used -= std::min(bodies.used, ex->charged);
    ex->charged = 0;
    bodies.used += held->data.size();
    if (auto p = peers.find(s); p != peers.end()) {
      p->second.held += held->data.size();
    }
    coap_add_data_large_response(r, s, req, resp, q, ex->contentFormat.value_or(0),
                                 ex->maxAge ? static_cast<int>(*ex->maxAge) : -1, 0,
                                 held->data.size(), held->data.data(), onReleased, held);
  }
  ++counters.answered;
}

void Proxy::addAnswer(coap_pdu_t* pdu, Exchange& ex, bool blocks) {
  if (ex.relation) {
    if (auto rel = relations.find(ex.id); rel != relations.end()) {
      uint8_t buf[4];
      coap_add_option(pdu, COAP_OPTION_OBSERVE,
                      coap_encode_var_safe(buf, sizeof buf, rel->second->sequence++), buf);
    }
  }
  for (const auto& [number, value] : ex.options) {
    if (!blocks || (number != COAP_OPTION_CONTENT_FORMAT && number != COAP_OPTION_MAXAGE &&
                    number != COAP_OPTION_ETAG)) {
      coap_add_option(pdu, number, value.size(), value.data());
    }
  }
  if (!blocks && !ex.payload.empty()) {
    coap_add_data(pdu, ex.payload.size(), ex.payload.data());
  }
}

// The common case, a small answer to a confirmable request, goes out at once: waiting for
// libcoap's async trigger would cost the loop another wake-up per request. The async (which holds
// the client's session) is freed here, never inside its own trigger, and only outside libcoap's
// processing.
bool Proxy::answerNow(Exchange& ex) {
  if (!ex.confirmable || ex.needsBlocks()) {
    return false;
  }
  coap_pdu_t* pdu = coap_pdu_init(COAP_MESSAGE_ACK, static_cast<coap_pdu_code_t>(ex.code),
                                  ex.downMid, coap_session_max_pdu_size(ex.down));
  if (pdu == nullptr) {
    return false;
  }
  coap_add_token(pdu, ex.downToken.size(), ex.downToken.data());
  addAnswer(pdu, ex, false);
  if (coap_send(ex.down, pdu) == COAP_INVALID_MID) {
    return false; // coap_send freed it; the async path answers at its trigger
  }
  ++counters.answered;
  coap_free_async(ex.down, ex.async);
  exchanges.erase(ex.id); // ex is gone
  return true;
}

void Proxy::deliver(Exchange& ex) {
  ex.done = true;
  if (ex.orphaned || !peers.contains(ex.down)) {
    abandon(ex.id);
    return;
  }
  libcoapTouched = true;
  if (!answerNow(ex)) { // on success, ex is gone
    coap_async_trigger(ex.async);
  }
}

void Proxy::abandon(uint64_t id) {
  auto it = exchanges.find(id);
  if (it == exchanges.end()) {
    return;
  }
  Exchange& ex = *it->second;
  if (!ex.done) {
    if (auto l = links.find(ex.link); l != links.end()) {
      coap::UpstreamOutput out;
      l->second->client.cancel(id, Clock::now(), out); // nothing more is sent for it
      apply(*l->second, out);
      schedule(*l->second);
    }
  }
  if (auto r = relations.find(id); r != relations.end()) {
    endRelation(id);
  }
  if (ex.async != nullptr) {
    coap_free_async(ex.down, ex.async);
  }
  exchanges.erase(id);
}

std::string Proxy::checkResponse(const policy::DevicePolicy* d, coap::UpstreamAnswer& a,
                                 Exchange& into) {
  const uint8_t code = a.code;
  const uint8_t cls = code >> 5;
  if (cls != 2 && cls != 4 && cls != 5) {
    return fmt::format("response code {} is not a response", codeText(code));
  }
  into.code = code;
  into.options.clear();
  into.contentFormat.reset();
  into.maxAge.reset();
  for (auto& [number, value] : a.options) {
    switch (number) {
    case COAP_OPTION_CONTENT_FORMAT:
      if (value.size() > 2) {
        return "malformed Content-Format";
      }
      into.contentFormat = static_cast<uint16_t>(coap::decodeUint(value));
      into.options.emplace_back(number, std::move(value));
      break;
    case COAP_OPTION_MAXAGE:
      if (value.size() > 4) {
        return "malformed Max-Age";
      }
      into.maxAge = coap::decodeUint(value);
      into.options.emplace_back(number, std::move(value));
      break;
    case COAP_OPTION_ETAG:
      if (value.empty() || value.size() > 8) {
        return "malformed ETag";
      }
      into.options.emplace_back(number, std::move(value));
      break;
    case COAP_OPTION_LOCATION_PATH:
    case COAP_OPTION_LOCATION_QUERY:
      break; // names on the device, not on the proxy
    default:
      if (coap::options::critical(number)) {
        return fmt::format("unknown critical option {} in the response", number);
      }
      break; // an unknown elective option is not relayed
    }
  }
  if (a.body.size() > coap::Limits{}.maxBodyBytes) {
    return fmt::format("a body of {} bytes exceeds the limit of {}", a.body.size(),
                       coap::Limits{}.maxBodyBytes);
  }
  into.payload = std::move(a.body);
  if (d != nullptr) {
    const auto decision =
        policy::evaluateCoapResponse(*d, {code, into.payload.size(), into.contentFormat});
    if (!decision.allowed()) {
      return decision.reason;
    }
  }
  return {};
}

void Proxy::onAnswer(Exchange& ex, Link& link, coap::UpstreamAnswer answer) {
  const auto policies = hooks.policies();
  const auto id = policy::DeviceId::parse(ex.device);
  const policy::DevicePolicy* d = id ? policies->find(*id) : nullptr;
  const bool observing = answer.observing;
  if (std::string bad = checkResponse(d, answer, ex); !bad.empty()) {
    ++counters.badResponses;
    emit(EventType::MalformedPacket, ex.device, link.label, "coap.response", "5.13-1", "refuse",
         fmt::format("response to {} refused: {}; 5.02 to the client", ex.path, bad));
    if (observing) {
      coap::UpstreamOutput none;
      link.client.cancel(ex.id, Clock::now(), none);
    }
    fail(ex, coap::codes::kBadGateway, "the device's response broke its policy");
    return;
  }
  // The answer's body is the proxy's now (the device's client gave its charge back).
  bodies.used += ex.payload.size();
  bodies.used -= std::min(bodies.used, ex.charged);
  ex.charged = ex.payload.size();
  if (observing) {
    // The limits are checked again here: registrations in flight may have filled them. Without
    // a relationship the answer carries no Observe, and the device's next notification is reset.
    const auto& lim = settings;
    auto p = peers.find(ex.down);
    if (ex.observe && (ex.code >> 5) == 2 && p != peers.end() && !ex.orphaned &&
        p->second.observing < lim.maxObservePerSession &&
        observingPerDevice[ex.device] < lim.maxObservePerDevice &&
        relations.size() < lim.maxObserve) {
      auto rel = std::make_unique<Relation>();
      rel->id = ex.id;
      rel->link = link.key;
      rel->down = coap_session_reference(ex.down);
      rel->downToken = ex.downToken;
      rel->device = ex.device;
      rel->path = ex.path;
      rel->peer = ex.peer;
      // The first answer rides on the ACK of the registration: it counts as confirmed.
      rel->lastConfirmable = Clock::now();
      relations[ex.id] = std::move(rel);
      ex.relation = true;
      ++p->second.observing;
      ++observingPerDevice[ex.device];
      ++counters.observing;
    } else {
      ++counters.observeRefused;
      coap::UpstreamOutput none;
      link.client.cancel(ex.id, Clock::now(), none);
    }
  }
  deliver(ex);
}

void Proxy::onFailure(Exchange& ex, coap::UpstreamFailure failure, const std::string& reason) {
  switch (failure) {
  case coap::UpstreamFailure::Timeout:
  case coap::UpstreamFailure::Unreachable:
    ++counters.timeouts;
    emit(EventType::UpstreamUnavailable, ex.device, ex.peer, "limits.coap_request_timeout_ms",
         "5.9-1", "refuse",
         fmt::format("device did not answer {} ({}): 5.04 to the client", ex.path, reason));
    fail(ex, coap::codes::kGatewayTimeout,
         failure == coap::UpstreamFailure::Unreachable ? "the device is unreachable"
                                                       : "the device did not answer in time");
    return;
  case coap::UpstreamFailure::NoRoom:
    ++counters.rateLimited;
    emit(EventType::RateLimited, ex.device, ex.peer, "coap.bodies", "5.9-3", "refuse",
         fmt::format("answer to {} not collected: {}; 5.03 to the client", ex.path, reason));
    fail(ex, coap::codes::kServiceUnavailable, "the gateway holds as many bodies as it may");
    return;
  case coap::UpstreamFailure::Reset:
  case coap::UpstreamFailure::TooLarge:
  case coap::UpstreamFailure::BadBlock:
    break;
  }
  ++counters.badResponses;
  emit(EventType::MalformedPacket, ex.device, ex.peer, "coap.response", "5.13-1", "refuse",
       fmt::format("answer to {} refused: {}; 5.02 to the client", ex.path, reason));
  fail(ex, coap::codes::kBadGateway,
       failure == coap::UpstreamFailure::TooLarge ? "the device's answer is too large"
                                                  : "the device's answer is broken");
}

void Proxy::fail(Exchange& ex, uint8_t code, std::string_view text) {
  ex.code = code;
  ex.options.clear();
  ex.contentFormat.reset();
  ex.maxAge.reset();
  bodies.used -= std::min(bodies.used, ex.charged);
  ex.charged = 0;
  ex.payload.assign(text.begin(), text.end());
  if (ex.relation) {
    endRelation(ex.id);
    ex.relation = false;
  }
  deliver(ex);
}

} // namespace iotgw::coap
