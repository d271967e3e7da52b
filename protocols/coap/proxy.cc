// SPDX-License-Identifier: GPL-3.0-or-later
// The CoAP proxy: libcoap's context and the loop around it, our own timer, the DTLS sessions'
// lifecycle and sweeps (the proxy's clients of devices: device_links.cc).
#include "protocols/coap/proxy.h"

#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "protocols/coap/reply.h"
#include "protocols/io/callback_guard.h"
#include "protocols/io/socket.h"

namespace iotgw::coap {

using policy::EventType;
using namespace libcoap;

namespace {

// A device's link that carries nothing is closed after this (the next request opens another).
constexpr auto kLinkIdle = std::chrono::seconds(60);
constexpr auto kSweepEvery = std::chrono::seconds(1);

} // namespace

Proxy* Proxy::of(coap_session_t* s) {
  return static_cast<Proxy*>(coap_get_app_data(coap_session_get_context(s)));
}

void Proxy::onRequest(coap_resource_t* r, coap_session_t* s, const coap_pdu_t* req,
                      const coap_string_t* q, coap_pdu_t* resp) noexcept {
  io::guarded("libcoap's request handler", [&] { of(s)->handle(r, s, req, q, resp); });
}

// Our only sessions are DTLS server sessions: a client has no business sending responses.
coap_response_t Proxy::onResponse(coap_session_t*, const coap_pdu_t*, const coap_pdu_t*,
                                  const coap_mid_t) noexcept {
  return COAP_RESPONSE_FAIL;
}

void Proxy::onNack(coap_session_t* s, const coap_pdu_t* sent, const coap_nack_reason_t reason,
                   const coap_mid_t) noexcept {
  io::guarded("libcoap's nack handler", [&] { of(s)->nack(s, sent, reason); });
}

int Proxy::onEvent(coap_session_t* s, const coap_event_t ev) noexcept {
  io::guarded("libcoap's event handler", [&] { of(s)->event(s, ev); });
  return 0;
}

// Failed: the certificate is refused.
int Proxy::onCertificate(const char* cn, const uint8_t* der, size_t length, coap_session_t* s,
                         unsigned depth, int validated, void* arg) noexcept {
  return io::guarded("libcoap's certificate check", 0, [&] {
    return static_cast<Proxy*>(arg)->verify(cn, View(der, der != nullptr ? length : 0), s, depth,
                                            validated);
  });
}

// libcoap's hook after it set up a server session's SSL (openssl variant: an SSL*). Failed: the
// session is not set up.
int Proxy::onTlsSetup(void* tls, coap_dtls_pki_t* setup) noexcept {
  return io::guarded("libcoap's TLS setup", 0, [&] {
    return static_cast<Proxy*>(setup->cn_call_back_arg)->setupTls(static_cast<SSL*>(tls));
  });
}

Proxy::Proxy(io::Reactor& loop, ProxySettings s, ProxyHooks h, ProxyCounters& c)
    : reactor(loop), settings(std::move(s)), hooks(std::move(h)), counters(c),
      interfaces(settings.deviceInterfaces) {}

Proxy::~Proxy() {
  if (fd >= 0) {
    reactor.remove(fd);
  }
  if (timer.valid()) {
    reactor.remove(timer.get());
  }
  for (auto& [key, link] : links) {
    reactor.remove(link->fd.get());
  }
  // Our references first, so that freeing the context frees the sessions.
  for (auto& [id, rel] : relations) {
    coap_session_release(rel->down);
  }
  relations.clear();
  exchanges.clear();
  ctx.reset(); // while everything its last events reach is still here
}

std::expected<void, std::string> Proxy::start() {
  libcoap::startup();
  const ProxySettings& c = settings;
  dtls::Admission::Settings admission;
  admission.maxPending = c.maxHandshakes;
  admission.maxPendingPerAddress = c.maxConnectionsPerSource;
  admission.pendingLifetime = c.handshakeTimeout;
  gate = std::make_unique<DtlsGate>(admission);
  {
    const DtlsGate::ContextRecorder recorder;
    ctx.reset(coap_new_context(nullptr));
    if (!ctx) {
      return std::unexpected("cannot create the CoAP context");
    }
    if (auto attached = gate->attach(ctx.get(), recorder.created()); !attached) {
      return attached;
    }
  }
  coap_set_app_data(ctx.get(), this);
  // libcoap does the block-wise exchanges with clients (RFC 7959) but hands over every block: in
  // single-body mode it would collect bodies of any size a client sends (and allocate what a
  // client's Size1 announces) before iotgwd sees a byte. The proxy collects them itself, bounded.
  coap_context_set_block_mode(ctx.get(), COAP_BLOCK_USE_LIBCOAP);
  // The gate bounds half-open handshakes (limits.max_handshakes) and never lets one in that it
  // has not room for, so libcoap's own limit, which would ignore a proven client, is only a
  // backstop it never reaches.
  coap_context_set_max_handshake_sessions(ctx.get(), 2 * c.maxHandshakes + 1);
  coap_context_set_max_idle_sessions(ctx.get(), c.maxConnections);
  coap_context_set_session_timeout(ctx.get(), static_cast<unsigned>(c.idleSession.count()));
  coap_register_response_handler(ctx.get(), onResponse);
  coap_register_nack_handler(ctx.get(), onNack);
  coap_register_event_handler(ctx.get(), onEvent);

  // libcoap keeps these pointers (into `settings`) and reads the files at each handshake.
  coap_dtls_pki_t pki{};
  pki.version = COAP_DTLS_PKI_SETUP_VERSION;
  pki.verify_peer_cert = 1;
  pki.check_common_ca = 1;
  pki.allow_self_signed = 0;
  pki.allow_expired_certs = 0;
  pki.cert_chain_validation = 1;
  pki.cert_chain_verify_depth = 2;
  pki.validate_cn_call_back = onCertificate;
  pki.cn_call_back_arg = this;
  pki.pki_key.key_type = COAP_PKI_KEY_PEM;
  pki.pki_key.key.pem.ca_file = c.caFile.c_str();
  pki.pki_key.key.pem.public_cert = c.certificateFile.c_str();
  pki.pki_key.key.pem.private_key = c.keyFile.c_str();
  auto loaded = tls::CrlStore::load(c.crlFile, "the DTLS listener's CRL");
  if (!loaded) {
    return std::unexpected(std::move(loaded.error()));
  }
  crls.replace(std::move(*loaded));
  // Revocation is switched on per session by setupTls while there are CRLs (a reload may add or
  // drop crl_file); allow_no_crl and allow_expired_crl stay 0: a client whose issuer has no CRL
  // in the file, or whose CRL has expired, fails the handshake like a revoked one.
  pki.additional_tls_setup_call_back = onTlsSetup;
  if (coap_context_set_pki(ctx.get(), &pki) == 0) {
    return std::unexpected(fmt::format("cannot load the DTLS certificate {}, key {} or CA {}",
                                       c.certificateFile, c.keyFile, c.caFile));
  }
  for (const auto& a : c.addresses) {
    coap_address_t addr;
    coap_address_init(&addr);
    sockaddr_storage ss{};
    const socklen_t len = io::toSockaddr(a, c.port, ss);
    std::memcpy(&addr.addr, &ss, len);
    addr.size = len;
    const auto before = DtlsGate::epollMembers(coap_context_get_coap_fd(ctx.get()));
    if (coap_new_endpoint(ctx.get(), &addr, COAP_PROTO_DTLS) == nullptr) {
      return std::unexpected(
          fmt::format("cannot bind CoAP over DTLS to {}", io::endpointLabel(a, c.port)));
    }
    if (auto added = gate->addEndpoint(coap_context_get_coap_fd(ctx.get()), before); !added) {
      return added;
    }
    ports.push_back(c.port);
  }
  coap_resource_t* proxy = coap_resource_unknown_init2(onRequest, 0);
  for (coap_request_t m :
       {COAP_REQUEST_GET, COAP_REQUEST_POST, COAP_REQUEST_PUT, COAP_REQUEST_DELETE,
        COAP_REQUEST_FETCH, COAP_REQUEST_PATCH, COAP_REQUEST_IPATCH}) {
    coap_register_request_handler(proxy, m, onRequest);
  }
  coap_add_resource(ctx.get(), proxy);

  fd = coap_context_get_coap_fd(ctx.get());
  if (fd < 0) {
    return std::unexpected("libcoap has no epoll descriptor");
  }
  if (reactor.add(fd, EPOLLIN, [this](uint32_t) { process(); })) {
    fd = -1;
    return std::unexpected("cannot watch the CoAP descriptor");
  }
  timer = io::UniqueFd(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  if (!timer.valid() || reactor.add(timer.get(), EPOLLIN, [this](uint32_t) { onTimer(); })) {
    timer = io::UniqueFd();
    return std::unexpected("cannot create the CoAP timer");
  }
  libcoapTimers();
  return {};
}

// libcoap's descriptor is an epoll set of its own sockets and a timerfd of its own. Its events
// are read here and handed to coap_io_do_epoll, which handles them and runs the due timers (a
// coap_io_process would arm libcoap's timer twice per wake-up). The DTLS gate sees the
// endpoint's events first and leaves in only those whose next datagram libcoap may read.
void Proxy::process() {
  const uint64_t discarded = discardedPdus();
  constexpr int kBatch = 16;
  epoll_event events[kBatch];
  for (;;) {
    const int ready = epoll_wait(fd, events, kBatch, 0);
    if (ready < 0 && errno == EINTR) {
      continue;
    }
    if (ready < 0) {
      break; // cannot happen on a valid descriptor; the timers below run regardless
    }
    const size_t pass = gate->screen(events, static_cast<size_t>(ready));
    ++inLibcoap;
    coap_io_do_epoll(ctx.get(), events, pass);
    --inLibcoap;
    gate->endBatch();
    runDeferred();
    if (ready < kBatch) {
      break;
    }
  }
  if (const uint64_t n = discardedPdus() - discarded; n > 0) {
    counters.malformed += n;
    emit(
        EventType::MalformedPacket, "", "", "coap.message", "5.13-1", "drop",
        fmt::format("{} malformed CoAP datagram{} in DTLS sessions dropped", n, n == 1 ? "" : "s"));
  }
  libcoapTimers();
}

void Proxy::libcoapTimers() {
  libcoapTouched = false;
  for (int round = 0; round < 4; ++round) {
    coap_tick_t now = 0;
    coap_ticks(&now);
    ++inLibcoap;
    const unsigned ms = coap_io_prepare_epoll(ctx.get(), now);
    --inLibcoap;
    libcoapDue =
        ms > 0 ? std::optional(Clock::now() + std::chrono::milliseconds(ms)) : std::nullopt;
    if (closing.empty() && orphans.empty() && pendingEvents.empty()) {
      break;
    }
    runDeferred(); // what libcoap's timers started (an async's answer, a failed notification)
  }
  armNext();
}

void Proxy::armTimer(Clock::time_point at) {
  if (armed && *armed <= at) {
    return; // it fires earlier anyway, and then arms the next
  }
  itimerspec spec{};
  const auto since = at.time_since_epoch();
  const auto secs = std::chrono::duration_cast<std::chrono::seconds>(since);
  spec.it_value.tv_sec = secs.count();
  spec.it_value.tv_nsec =
      std::chrono::duration_cast<std::chrono::nanoseconds>(since - secs).count();
  if (spec.it_value.tv_sec == 0 && spec.it_value.tv_nsec == 0) {
    spec.it_value.tv_nsec = 1; // zero would disarm it
  }
  if (::timerfd_settime(timer.get(), TFD_TIMER_ABSTIME, &spec, nullptr) == 0) {
    armed = at;
  }
}

void Proxy::armNext() {
  std::optional<Clock::time_point> next = libcoapDue;
  if (!wakes.empty() && (!next || wakes.begin()->first < *next)) {
    next = wakes.begin()->first;
  }
  if ((!peers.empty() || !links.empty()) && (!next || nextSweep < *next)) {
    next = nextSweep;
  }
  if (next) {
    armTimer(*next);
  }
}

void Proxy::onTimer() {
  uint64_t expirations = 0;
  (void)::read(timer.get(), &expirations, sizeof expirations);
  armed.reset();
  const auto now = Clock::now();
  while (!wakes.empty() && wakes.begin()->first <= now) {
    Link* link = wakes.begin()->second;
    wakes.erase(wakes.begin());
    link->wake.reset();
    coap::UpstreamOutput out;
    link->client.expire(now, out);
    apply(*link, out);
    schedule(*link);
  }
  if (now >= nextSweep) {
    nextSweep = now + kSweepEvery;
    sweep(now);
  }
  runDeferred();
  libcoapTimers();
}

// Once a second while there is anything: DTLS sessions whose client has sent nothing for
// limits.idle_session_seconds are closed, whatever the proxy still sends them (notifications
// to a client that has gone keep libcoap's own idle check from ever seeing the session idle),
// and links to devices that carry nothing.
void Proxy::sweep(Clock::time_point now) {
  const auto idle = settings.idleSession;
  for (auto& [s, peer] : peers) {
    if (!peer.established || peer.closing) {
      continue;
    }
    const auto heard = gate->lastHeard(s);
    if (heard && now - *heard >= idle) {
      ++counters.sessionsExpired;
      closeSession(s, "idle");
    }
  }
  std::vector<PeerKey> quiet;
  for (const auto& [key, link] : links) {
    if (link->client.idle() && now - link->lastUsed >= kLinkIdle) {
      quiet.push_back(key);
    }
  }
  for (const auto& key : quiet) {
    closeLink(key);
  }
}

void Proxy::runDeferred() {
  if (inLibcoap > 0) {
    return;
  }
  while (!closing.empty() || !orphans.empty() || !pendingEvents.empty()) {
    for (auto& [key, e] : std::exchange(pendingEvents, {})) {
      if (auto it = links.find(key); it != links.end()) {
        handleEvent(*it->second, std::move(e));
      }
    }
    for (const uint64_t id : std::exchange(orphans, {})) {
      abandon(id);
    }
    for (auto& [s, reason] : std::exchange(closing, {})) {
      if (!peers.contains(s)) {
        continue; // gone already
      }
      endRelationsIf([s](const Relation& r) { return r.down == s; });
      // Nothing may be sent on the session once it is failed (libcoap would start a client
      // handshake on it): its requests still waiting for devices are dropped with it.
      std::vector<uint64_t> waiting;
      for (const auto& [id, ex] : exchanges) {
        if (ex->down == s) {
          waiting.push_back(id);
        }
      }
      for (const uint64_t id : waiting) {
        abandon(id);
      }
      coap_session_disconnected(s, COAP_NACK_TLS_FAILED);
    }
  }
}

void Proxy::closeSession(coap_session_t* s, std::string reason) {
  auto p = peers.find(s);
  if (p == peers.end() || p->second.closing) {
    return;
  }
  p->second.closing = true;
  closing.emplace_back(s, std::move(reason));
}

void Proxy::emit(EventType type, std::string device, std::string peer, std::string rule,
                 std::string provision, std::string action, std::string message) {
  hooks.emit(coap::event(type, std::move(device), std::move(peer), std::move(rule),
                         std::move(provision), std::move(action), std::move(message)));
}

std::string Proxy::peerLabel(coap_session_t* s) const {
  if (auto it = peers.find(s); it != peers.end()) {
    return it->second.label;
  }
  return labelOf(coap_session_get_addr_remote(s));
}

void Proxy::dropPeer(coap_session_t* s) {
  auto it = peers.find(s);
  if (it == peers.end()) {
    return;
  }
  endRelationsIf([s](const Relation& r) { return r.down == s; }); // they end with the session
  // Requests still waiting for devices: nothing more is sent to the devices for them, and their
  // asyncs (which hold the session) are freed at the loop boundary.
  for (const auto& [id, ex] : exchanges) {
    if (ex->down == s && !ex->orphaned) {
      ex->orphaned = true;
      orphans.push_back(id);
    }
  }
  if (it->second.established) {
    --counters.sessions;
  }
  --verified;
  if (auto ps = perSource.find(it->second.address); ps != perSource.end() && --ps->second == 0) {
    perSource.erase(ps);
  }
  peers.erase(it);
}

void Proxy::event(coap_session_t* s, coap_event_t ev) {
  if (coap_session_get_type(s) == COAP_SESSION_TYPE_CLIENT) {
    return; // not ours: the proxy's clients of devices are its own sockets
  }
  switch (ev) {
  case COAP_EVENT_DTLS_CONNECTED:
    gate->connected(s);
    if (auto it = peers.find(s); it != peers.end() && !it->second.established) {
      it->second.established = true;
      ++counters.sessions;
      ++counters.sessionsOpened;
    }
    break;
  case COAP_EVENT_DTLS_ERROR:
    if (auto it = peers.find(s); it == peers.end() || !it->second.established) {
      ++counters.handshakesFailed;
      if (auto r = refusals.find(s); r != refusals.end()) {
        ++counters.certificatesRefused;
        emit(EventType::AuthenticationFailed, "", labelOf(coap_session_get_addr_remote(s)),
             r->second.rule, "5.5-4", "refuse",
             fmt::format("DTLS handshake failed: {}", r->second.reason));
      } else {
        emit(EventType::AuthenticationFailed, "", labelOf(coap_session_get_addr_remote(s)),
             "listeners.coap_dtls.ca_file", "5.5-4", "refuse",
             "DTLS handshake failed: no client certificate, or not one from the configured CA");
      }
    }
    refusals.erase(s);
    gate->closed(s);
    dropPeer(s);
    break;
  case COAP_EVENT_DTLS_CLOSED:
  case COAP_EVENT_SESSION_CLOSED:
  case COAP_EVENT_SESSION_FAILED:
  case COAP_EVENT_SERVER_SESSION_DEL:
    refusals.erase(s);
    gate->closed(s);
    dropPeer(s);
    break;
  default:
    break;
  }
}

void Proxy::nack(coap_session_t* s, const coap_pdu_t* sent, coap_nack_reason_t) {
  if (sent == nullptr || coap_session_get_type(s) == COAP_SESSION_TYPE_CLIENT) {
    return;
  }
  // A client reset or ignored a notification: it no longer observes.
  const coap_bin_const_t t = coap_pdu_get_token(sent);
  const Bytes token(t.s, t.s + t.length);
  endRelationsIf([&](const Relation& rel) { return rel.down == s && rel.downToken == token; });
}

} // namespace iotgw::coap
