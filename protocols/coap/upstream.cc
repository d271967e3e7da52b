// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/coap/upstream.h"

#include <algorithm>
#include <array>

#include <fmt/format.h>

#include "protocols/coap/reply.h"
#include "protocols/coap/validate.h"

namespace iotgw::coap {

namespace {

// Repeats of confirmable messages from the device that are recognised (RFC 7252 §4.5): more than
// a device sends within one exchange lifetime at the rates the proxy asks of it.
constexpr size_t kSeen = 64;
// RFC 7641 §3.4: a notification more than this much later than the last is newer whatever its
// sequence number says.
constexpr auto kObserveFreshness = std::chrono::seconds(128);

std::array<uint8_t, 8> bytesOf(uint64_t token) {
  std::array<uint8_t, 8> b{};
  for (size_t i = 0; i < b.size(); ++i) {
    b[i] = static_cast<uint8_t>(token >> (56 - 8 * i));
  }
  return b;
}

std::optional<uint64_t> tokenOf(const Message& m) {
  if (m.token.size() != 8) {
    return std::nullopt; // every token of ours has eight bytes
  }
  uint64_t t = 0;
  for (uint8_t b : m.token) {
    t = t << 8 | b;
  }
  return t;
}

const Option* find(const Message& m, uint16_t number) {
  for (const auto& o : m.options) {
    if (o.number == number) {
      return &o;
    }
  }
  return nullptr;
}

Bytes emptyAck(uint16_t mid) {
  Message ack;
  ack.type = Type::Acknowledgement;
  ack.code = codes::kEmpty;
  ack.messageId = mid;
  return encode(ack);
}

// The answer as the device gave it, less what block-wise transfer and observation take care of.
UpstreamAnswer headOf(const Message& m) {
  UpstreamAnswer a;
  a.code = m.code;
  for (const auto& o : m.options) {
    switch (o.number) {
    case options::kObserve:
    case options::kBlock1:
    case options::kBlock2:
    case options::kSize1:
    case options::kSize2:
      break;
    default:
      a.options.push_back({o.number, Bytes(o.value.begin(), o.value.end())});
      break;
    }
  }
  return a;
}

std::optional<Bytes> etagOf(const Message& m) {
  if (const Option* o = find(m, options::kETag)) {
    return Bytes(o->value.begin(), o->value.end());
  }
  return std::nullopt;
}

} // namespace

std::string_view describe(UpstreamFailure f) noexcept {
  switch (f) {
  case UpstreamFailure::Timeout:
    return "no answer in time";
  case UpstreamFailure::Unreachable:
    return "unreachable";
  case UpstreamFailure::Reset:
    return "reset by the device";
  case UpstreamFailure::TooLarge:
    return "answer too large";
  case UpstreamFailure::BadBlock:
    return "broken block-wise answer";
  case UpstreamFailure::NoRoom:
    return "no room for the answer";
  }
  return "failed";
}

Upstream::Upstream(UpstreamSettings settings, Random random)
    : settings_(settings), random_(std::move(random)) {
  std::array<uint8_t, 2> b{};
  random_(b);
  nextMid_ = static_cast<uint16_t>(b[0] << 8 | b[1]);
}

Upstream::Token Upstream::newToken() {
  for (;;) {
    std::array<uint8_t, 8> b{};
    random_(b);
    Token t = 0;
    for (uint8_t x : b) {
      t = t << 8 | x;
    }
    if (t != 0 && !byToken_.contains(t) && !relations_.contains(t)) {
      return t;
    }
  }
}

bool Upstream::send(uint64_t id, UpstreamRequest request, Clock::time_point now,
                    UpstreamOutput& out) {
  const bool startsNow = inFlight_ < settings_.nstart && queue_.empty();
  if (!startsNow && queue_.size() >= settings_.maxQueued) {
    return false;
  }
  Exchange& ex = exchanges_[id];
  ex.id = id;
  ex.request = std::move(request);
  ex.szx1 = settings_.blockSzx;
  if (startsNow) {
    start(ex, now, out);
  } else {
    queue_.push_back(id);
  }
  rewake(ex);
  return true;
}

void Upstream::start(Exchange& ex, Clock::time_point now, UpstreamOutput& out) {
  if (ex.request.body.size() > (size_t{1} << (ex.szx1 + 4))) {
    sendBlock1(ex, now, out);
    return;
  }
  Message m;
  m.code = ex.request.method;
  for (const auto& o : ex.request.options) {
    m.options.push_back({o.number, o.value});
  }
  if (ex.request.observe) {
    m.options.push_back({options::kObserve, View()}); // 0: register
  }
  m.payload = ex.request.body;
  transmit(ex, std::move(m), now, out);
}

void Upstream::sendBlock1(Exchange& ex, Clock::time_point now, UpstreamOutput& out) {
  const size_t size = size_t{1} << (ex.szx1 + 4);
  const Bytes& body = ex.request.body;
  ex.upload = true;
  const size_t take = std::min(size, body.size() - ex.sentOffset);
  const bool more = ex.sentOffset + take < body.size();
  const Bytes block =
      encodeBlock(Block{static_cast<uint32_t>(ex.sentOffset >> (ex.szx1 + 4)), more, ex.szx1});
  const Bytes size1 = encodeUint(static_cast<uint32_t>(body.size()));
  Message m;
  m.code = ex.request.method;
  for (const auto& o : ex.request.options) {
    m.options.push_back({o.number, o.value});
  }
  m.options.push_back({options::kBlock1, block});
  if (ex.sentOffset == 0) {
    m.options.push_back({options::kSize1, size1}); // RFC 7959 §4: the whole size, first block
  }
  m.payload = View(body.data() + ex.sentOffset, take);
  transmit(ex, std::move(m), now, out);
}

void Upstream::sendBlock2(Exchange& ex, uint32_t number, Clock::time_point now,
                          UpstreamOutput& out) {
  const Bytes block = encodeBlock(Block{number, false, ex.szx2});
  Message m;
  m.code = ex.request.method;
  for (const auto& o : ex.request.options) {
    m.options.push_back({o.number, o.value});
  }
  // RFC 7959 §3.4: the later blocks of a notification's body are asked for without Observe; a
  // request body, if any, went with the earlier requests.
  m.options.push_back({options::kBlock2, block});
  transmit(ex, std::move(m), now, out);
}

void Upstream::transmit(Exchange& ex, Message m, Clock::time_point now, UpstreamOutput& out) {
  // In option-number order, repeated options in the order given: an insertion sort (a handful of
  // options; std::stable_sort in libstdc++ 12 trips clang's C++23 deprecation of
  // get_temporary_buffer).
  for (size_t i = 1; i < m.options.size(); ++i) {
    for (size_t j = i; j > 0 && m.options[j].number < m.options[j - 1].number; --j) {
      std::swap(m.options[j], m.options[j - 1]);
    }
  }
  if (ex.token != 0 && ex.token != ex.registration) {
    byToken_.erase(ex.token); // an answer to the earlier datagram is no longer awaited
  }
  if (ex.phase == Phase::AwaitingAck) {
    byMid_.erase(ex.mid);
  } else {
    ++inFlight_;
  }
  ex.phase = Phase::AwaitingAck;
  ex.token = newToken();
  if (ex.registration == 0 && ex.request.observe) {
    ex.registration = ex.token;
  }
  ex.mid = nextMid_++;
  const auto token = bytesOf(ex.token);
  m.type = Type::Confirmable;
  m.messageId = ex.mid;
  m.token = View(token.data(), token.size());
  ex.datagram = encode(m);
  byToken_[ex.token] = ex.id;
  byMid_[ex.mid] = ex.id;
  std::array<uint8_t, 1> r{};
  random_(r);
  // ACK_TIMEOUT × (1 + (ACK_RANDOM_FACTOR − 1) × random), RFC 7252 §4.8 with a factor of 1.5.
  ex.timeout =
      std::chrono::duration_cast<Clock::duration>(settings_.ackTimeout) * (510 + r[0]) / 510;
  ex.retransmits = 0;
  ex.nextSend = now + ex.timeout;
  out.datagrams.push_back(ex.datagram);
  rewake(ex);
}

void Upstream::rewake(Exchange& ex) {
  wakes_.erase({ex.wake, ex.id});
  ex.wake = ex.request.deadline;
  if (ex.phase == Phase::AwaitingAck) {
    ex.wake = std::min(ex.wake, ex.nextSend);
  }
  wakes_.insert({ex.wake, ex.id});
}

void Upstream::drop(std::map<uint64_t, Exchange>::iterator it) {
  Exchange& ex = it->second;
  if (settings_.budget != nullptr) {
    settings_.budget->used -= std::min(settings_.budget->used, ex.charged);
  }
  wakes_.erase({ex.wake, ex.id});
  if (auto m = byMid_.find(ex.mid); m != byMid_.end() && m->second == ex.id) {
    byMid_.erase(m);
  }
  for (const Token t : {ex.token, ex.registration}) {
    if (auto k = byToken_.find(t); k != byToken_.end() && k->second == ex.id) {
      byToken_.erase(k);
    }
  }
  if (ex.phase == Phase::AwaitingAck) {
    --inFlight_;
  } else if (ex.phase == Phase::Queued) {
    std::erase(queue_, ex.id);
  }
  exchanges_.erase(it);
}

void Upstream::fail(uint64_t id, UpstreamFailure f, std::string reason, UpstreamOutput& out) {
  auto it = exchanges_.find(id);
  if (it == exchanges_.end()) {
    return;
  }
  UpstreamEvent e;
  e.kind = UpstreamEvent::Kind::Failed;
  e.id = id;
  e.failure = f;
  e.reason = std::move(reason);
  out.events.push_back(std::move(e));
  drop(it);
}

void Upstream::finish(uint64_t id, UpstreamOutput& out) {
  auto it = exchanges_.find(id);
  Exchange& ex = it->second;
  UpstreamEvent e;
  e.kind = UpstreamEvent::Kind::Answered;
  e.id = id;
  e.answer = std::move(ex.answer);
  const Token registration = ex.registration;
  const bool observing = e.answer.observing;
  out.events.push_back(std::move(e));
  drop(it);
  if (observing) {
    // The device's notifications come with the registration's token from now on.
    relations_[registration] = Relation{id, std::nullopt, {}};
    relationTokens_[id] = registration;
  }
}

void Upstream::pump(Clock::time_point now, UpstreamOutput& out) {
  while (inFlight_ < settings_.nstart && !queue_.empty()) {
    const uint64_t id = queue_.front();
    queue_.pop_front();
    auto it = exchanges_.find(id);
    if (it == exchanges_.end()) {
      continue;
    }
    if (it->second.request.deadline <= now) {
      fail(id, UpstreamFailure::Timeout, "its turn did not come before the deadline", out);
      continue;
    }
    start(it->second, now, out);
  }
}

void Upstream::expire(Clock::time_point now, UpstreamOutput& out) {
  while (!wakes_.empty() && wakes_.begin()->first <= now) {
    const uint64_t id = wakes_.begin()->second;
    auto it = exchanges_.find(id);
    if (it == exchanges_.end()) {
      wakes_.erase(wakes_.begin());
      continue;
    }
    Exchange& ex = it->second;
    // The deadline first: a retransmission due at the same time is never sent.
    if (ex.request.deadline <= now) {
      fail(id, UpstreamFailure::Timeout,
           ex.phase == Phase::Queued ? "its turn did not come before the deadline"
                                     : "no answer before the deadline",
           out);
      continue;
    }
    if (ex.phase == Phase::AwaitingAck && ex.nextSend <= now) {
      if (ex.retransmits >= settings_.maxRetransmit) {
        fail(id, UpstreamFailure::Timeout,
             fmt::format("no acknowledgement after {} retransmissions", ex.retransmits), out);
        continue;
      }
      ++ex.retransmits;
      ex.timeout *= 2;
      ex.nextSend = now + ex.timeout;
      out.datagrams.push_back(ex.datagram);
    }
    rewake(ex);
  }
  pump(now, out);
}

void Upstream::unreachable(Clock::time_point now, UpstreamOutput& out) {
  std::vector<uint64_t> sent;
  for (const auto& [id, ex] : exchanges_) {
    if (ex.phase != Phase::Queued) {
      sent.push_back(id);
    }
  }
  for (const uint64_t id : sent) {
    fail(id, UpstreamFailure::Unreachable, "nothing listens at the device's port", out);
  }
  for (const auto& [token, rel] : relations_) {
    UpstreamEvent e;
    e.kind = UpstreamEvent::Kind::Ended;
    e.id = rel.id;
    e.failure = UpstreamFailure::Unreachable;
    e.reason = "nothing listens at the device's port";
    out.events.push_back(std::move(e));
  }
  relations_.clear();
  relationTokens_.clear();
  pump(now, out);
}

void Upstream::cancel(uint64_t id, Clock::time_point now, UpstreamOutput& out) {
  if (auto it = exchanges_.find(id); it != exchanges_.end()) {
    drop(it);
    pump(now, out);
    return;
  }
  if (auto t = relationTokens_.find(id); t != relationTokens_.end()) {
    endRelation(t->second);
  }
}

void Upstream::endRelation(Token token) {
  if (auto it = relations_.find(token); it != relations_.end()) {
    relationTokens_.erase(it->second.id);
    relations_.erase(it);
  }
}

std::optional<Upstream::Clock::time_point> Upstream::nextWake() const {
  if (wakes_.empty()) {
    return std::nullopt;
  }
  return wakes_.begin()->first;
}

void Upstream::remember(uint16_t mid, Bytes reply) {
  if (seen_.size() >= kSeen) {
    seen_.pop_front();
  }
  seen_.push_back(Seen{mid, std::move(reply)});
}

const Upstream::Seen* Upstream::seen(uint16_t mid) const {
  for (const auto& s : seen_) {
    if (s.mid == mid) {
      return &s;
    }
  }
  return nullptr;
}

Upstream::Received Upstream::receive(View datagram, Clock::time_point now, UpstreamOutput& out) {
  auto parsed = parse(datagram);
  if (!parsed) {
    return Received::Malformed;
  }
  const Message& m = *parsed;
  if (m.type == Type::Acknowledgement || m.type == Type::Reset) {
    auto byMid = byMid_.find(m.messageId);
    if (byMid == byMid_.end()) {
      return Received::Unexpected; // late, or for a datagram that was never ours
    }
    const uint64_t id = byMid->second;
    Exchange& ex = exchanges_.at(id);
    if (m.type == Type::Reset) {
      fail(id, UpstreamFailure::Reset, "the device reset the request", out);
      pump(now, out);
      return Received::Handled;
    }
    if (!m.isEmpty() && tokenOf(m) != ex.token) {
      return Received::Unexpected; // a piggybacked answer must carry the request's token
    }
    byMid_.erase(byMid);
    --inFlight_;
    ex.phase = Phase::AwaitingResponse; // an empty ACK: the answer comes separately
    rewake(ex);
    if (!m.isEmpty()) {
      onResponse(ex, m, now, out);
    }
    pump(now, out);
    return Received::Handled;
  }
  if (!m.isResponse()) {
    // A ping, or a request: the proxy's client serves nothing.
    out.datagrams.push_back(resetFor(m));
    return Received::Unexpected;
  }
  if (m.type == Type::Confirmable) {
    if (const Seen* s = seen(m.messageId)) {
      out.datagrams.push_back(s->reply); // a repeat: the same answer, handled once
      return Received::Handled;
    }
  }
  const auto token = tokenOf(m);
  auto answer = [&](bool reset) {
    Bytes reply = reset ? resetFor(m) : emptyAck(m.messageId);
    if (m.type == Type::Confirmable) {
      remember(m.messageId, reply);
      out.datagrams.push_back(std::move(reply));
    } else if (reset) {
      out.datagrams.push_back(std::move(reply)); // RFC 7252 §4.3: a NON may be rejected too
    }
  };
  if (auto e = token ? byToken_.find(*token) : byToken_.end(); e != byToken_.end()) {
    Exchange& ex = exchanges_.at(e->second);
    answer(false);
    if (*token != ex.token) {
      return Received::Handled; // on the registration while later blocks are fetched: ignored
    }
    if (ex.phase == Phase::AwaitingAck) {
      // The separate answer came before the empty ACK (RFC 7252 §5.2.2): it acknowledges too.
      byMid_.erase(ex.mid);
      --inFlight_;
      ex.phase = Phase::AwaitingResponse;
      rewake(ex);
    }
    onResponse(ex, m, now, out);
    pump(now, out);
    return Received::Handled;
  }
  if (auto r = token ? relations_.find(*token) : relations_.end(); r != relations_.end()) {
    bool reset = false;
    onNotification(r->second, m, now, out, reset);
    answer(reset);
    return Received::Handled;
  }
  answer(true); // nobody waits for it: the device may stop (RFC 7641 §3.6)
  return Received::Unexpected;
}

void Upstream::onResponse(Exchange& ex, const Message& m, Clock::time_point now,
                          UpstreamOutput& out) {
  const uint64_t id = ex.id;
  const size_t sentSize = size_t{1} << (ex.szx1 + 4);
  const bool moreToSend = ex.upload && ex.sentOffset + sentSize < ex.request.body.size();
  if (m.code == codes::kContinue) {
    if (!moreToSend) {
      fail(id, UpstreamFailure::BadBlock, "2.31 Continue with no more blocks to send", out);
      return;
    }
    // RFC 7959 §2.3: the device may ask for smaller blocks; what it has taken stays taken.
    if (const Option* o = find(m, options::kBlock1)) {
      if (const auto b = decodeBlock(o->value); b && b->szx < ex.szx1) {
        ex.szx1 = b->szx;
      }
    }
    ex.sentOffset += sentSize;
    sendBlock1(ex, now, out);
    return;
  }
  // Any other answer is the final one, even before the last block (4.13, for one).
  std::optional<Block> block;
  if (const Option* o = find(m, options::kBlock2)) {
    block = decodeBlock(o->value);
    if (!block) {
      fail(id, UpstreamFailure::BadBlock, "a malformed Block2 option", out);
      return;
    }
  }
  if (const Option* o = find(m, options::kSize2); o != nullptr && o->value.size() <= 4) {
    if (const uint32_t size2 = decodeUint(o->value); size2 > settings_.maxBodyBytes) {
      fail(id, UpstreamFailure::TooLarge,
           fmt::format("the device announces a body of {} bytes (Size2); the limit is {}", size2,
                       settings_.maxBodyBytes),
           out);
      return;
    }
  }
  const size_t limit = settings_.maxBodyBytes;
  if (!block || (!ex.collecting && block->number == 0 && !block->more)) {
    if (ex.collecting) {
      fail(id, UpstreamFailure::BadBlock, "a block of the answer without Block2", out);
      return;
    }
    if (m.payload.size() > limit) {
      fail(id, UpstreamFailure::TooLarge,
           fmt::format("an answer of {} bytes exceeds the limit of {}", m.payload.size(), limit),
           out);
      return;
    }
    ex.answer = headOf(m);
    ex.answer.body.assign(m.payload.begin(), m.payload.end());
    ex.answer.observing =
        ex.request.observe && m.codeClass() == 2 && find(m, options::kObserve) != nullptr;
    finish(id, out);
    return;
  }
  const size_t offset = static_cast<size_t>(block->number) << (block->szx + 4);
  if (!ex.collecting) {
    if (offset != 0) {
      fail(id, UpstreamFailure::BadBlock, "the answer starts with a later block", out);
      return;
    }
    ex.collecting = true;
    ex.szx2 = block->szx;
    ex.etag = etagOf(m);
    ex.answer = headOf(m);
    ex.answer.observing =
        ex.request.observe && m.codeClass() == 2 && find(m, options::kObserve) != nullptr;
  } else if (offset != ex.answer.body.size() || block->szx != ex.szx2) {
    fail(id, UpstreamFailure::BadBlock, "a block of the answer out of order", out);
    return;
  } else if (etagOf(m) != ex.etag || m.code != ex.answer.code) {
    fail(id, UpstreamFailure::BadBlock, "the body changed while it was fetched", out);
    return;
  }
  if (m.payload.size() > limit - ex.answer.body.size() ||
      (block->more && ex.answer.body.size() + m.payload.size() >= limit)) {
    fail(id, UpstreamFailure::TooLarge,
         fmt::format("the block-wise answer goes past {} bytes", limit), out);
    return;
  }
  if (block->more && m.payload.size() != block->size()) {
    fail(id, UpstreamFailure::BadBlock, "a block before the last one is not full", out);
    return;
  }
  if (BodyBudget* b = settings_.budget; b != nullptr) {
    if (m.payload.size() > b->limit - std::min(b->limit, b->used)) {
      fail(id, UpstreamFailure::NoRoom, "the gateway holds as many bodies as it may", out);
      return;
    }
    b->used += m.payload.size();
    ex.charged += m.payload.size();
  }
  ex.answer.body.insert(ex.answer.body.end(), m.payload.begin(), m.payload.end());
  if (block->more) {
    sendBlock2(ex, block->number + 1, now, out);
    return;
  }
  finish(id, out);
}

void Upstream::onNotification(Relation& rel, const Message& m, Clock::time_point now,
                              UpstreamOutput& out, bool& reset) {
  const uint64_t id = rel.id;
  const Option* observe = find(m, options::kObserve);
  const std::optional<uint32_t> value = observe != nullptr && observe->value.size() <= 3
                                            ? std::optional(decodeUint(observe->value))
                                            : std::nullopt;
  auto event = [&](UpstreamEvent::Kind kind) {
    UpstreamEvent e;
    e.kind = kind;
    e.id = id;
    out.events.push_back(std::move(e));
    return &out.events.back();
  };
  if (value && rel.lastObserve) {
    // RFC 7641 §3.4: sequence numbers are 24 bits and wrap.
    const uint32_t v1 = *rel.lastObserve;
    const uint32_t v2 = *value;
    constexpr uint32_t kHalf = 1u << 23;
    const bool newer = (v1 < v2 && v2 - v1 < kHalf) || (v1 > v2 && v1 - v2 > kHalf) ||
                       now > rel.lastAt + kObserveFreshness;
    if (!newer) {
      event(UpstreamEvent::Kind::Dropped)->reason = "an older notification after a newer one";
      return;
    }
  }
  const Token token = *tokenOf(m);
  std::optional<Block> block;
  if (const Option* o = find(m, options::kBlock2)) {
    block = decodeBlock(o->value);
  }
  if (const Option* o = find(m, options::kSize2); o != nullptr && o->value.size() <= 4) {
    if (const uint32_t size2 = decodeUint(o->value); size2 > settings_.maxBodyBytes) {
      UpstreamEvent* e = event(UpstreamEvent::Kind::Ended);
      e->failure = UpstreamFailure::TooLarge;
      e->reason = fmt::format("a notification announces a body of {} bytes (Size2); the limit "
                              "is {}",
                              size2, settings_.maxBodyBytes);
      reset = true; // the device forgets the observer (RFC 7641 §3.6)
      endRelation(token);
      return;
    }
  }
  if (find(m, options::kBlock2) != nullptr && (!block || block->more || block->number != 0)) {
    event(UpstreamEvent::Kind::Dropped)->reason =
        "a notification larger than one block (its other blocks are not fetched)";
    rel.lastObserve = value;
    rel.lastAt = now;
    return;
  }
  UpstreamEvent* e = event(UpstreamEvent::Kind::Notified);
  e->answer = headOf(m);
  e->answer.body.assign(m.payload.begin(), m.payload.end());
  // An error, or a 2.xx without Observe, is the device's last notification (RFC 7641 §3.2).
  e->ended = m.codeClass() != 2 || observe == nullptr;
  e->answer.observing = !e->ended;
  if (e->ended) {
    endRelation(token);
    return;
  }
  rel.lastObserve = value;
  rel.lastAt = now;
}

} // namespace iotgw::coap
