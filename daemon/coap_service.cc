// SPDX-License-Identifier: GPL-3.0-or-later
// The CoAP capability: libcoap's context and the loop around it, our own timer, the DTLS
// sessions' lifecycle and sweeps (the proxy's clients of devices: coap_links.cc).
#include "daemon/coap_service.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>

#include "daemon/coap_engine.h"
#include "daemon/mqtt_service.h"
#include "protocols/io/callback_guard.h"
#include "protocols/io/socket.h"

namespace iotgw::daemon {

using policy::EventType;

namespace coapsvc {

// Random bytes from the kernel, drawn 256 at a time: libcoap wants one byte for the jitter of
// every confirmable message it sends, and every datagram to a device needs an unpredictable token
// (RFC 9175 §4.2), which would otherwise cost a getrandom call each. Loop thread only.
int randomBytes(void* out, size_t len) noexcept {
  static uint8_t pool[256];
  static size_t left = 0;
  auto* dst = static_cast<uint8_t*>(out);
  while (len > 0) {
    if (left == 0) {
      size_t got = 0;
      while (got < sizeof pool) {
        const ssize_t n = getrandom(pool + got, sizeof pool - got, 0);
        if (n < 0 && errno != EINTR) {
          return 0;
        }
        got += n > 0 ? static_cast<size_t>(n) : 0;
      }
      left = sizeof pool;
    }
    const size_t take = std::min(len, left);
    std::memcpy(dst, pool + sizeof pool - left, take);
    std::memset(pool + sizeof pool - left, 0, take); // handed out once, never kept
    left -= take;
    dst += take;
    len -= take;
  }
  return 1;
}

void randomSpan(std::span<uint8_t> out) {
  if (randomBytes(out.data(), out.size()) == 0) {
    // getrandom does not fail once the pool is initialised; should it, no token may be guessable.
    std::abort();
  }
}

std::string codeText(uint8_t code) { return fmt::format("{}.{:02}", code >> 5, code & 0x1f); }

void emitCoap(EventSink& sink, EventType type, std::string device, std::string peer,
              std::string rule, std::string provision, std::string action, std::string message) {
  policy::Event e;
  e.type = type;
  e.device = std::move(device);
  e.peer = std::move(peer);
  e.protocol = kProtocol;
  e.rule = std::move(rule);
  e.provision = std::move(provision);
  e.action = std::move(action);
  e.message = std::move(message);
  sink.emit(std::move(e));
}

std::optional<policy::IpAddress> addressOf(const coap_address_t* a) {
  if (a == nullptr) {
    return std::nullopt;
  }
  sockaddr_storage ss{};
  std::memcpy(&ss, &a->addr, std::min<size_t>(a->size, sizeof ss));
  if (ss.ss_family != AF_INET && ss.ss_family != AF_INET6) {
    return std::nullopt;
  }
  return io::fromSockaddr(ss).first;
}

std::string labelOf(const coap_address_t* a) {
  if (a == nullptr) {
    return "?";
  }
  sockaddr_storage ss{};
  std::memcpy(&ss, &a->addr, std::min<size_t>(a->size, sizeof ss));
  const auto [ip, port] = io::fromSockaddr(ss);
  return io::endpointLabel(ip, port);
}

bool isLoopback(const policy::IpAddress& a) {
  if (a.family == AF_INET) {
    return a.bytes[0] == 127;
  }
  static constexpr std::array<uint8_t, 16> kV6{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  return a.bytes == kV6;
}

coap::dtls::PeerKey peerKey(const policy::IpAddress& address, uint16_t port) {
  if (address.family == AF_INET6) {
    return coap::dtls::PeerKey::v6(address.bytes, port);
  }
  std::array<uint8_t, 4> v4;
  std::copy_n(address.bytes.begin(), v4.size(), v4.begin());
  return coap::dtls::PeerKey::v4(v4, port);
}

bool DeviceInterfaces::allows(int fd, int ifindex, const policy::IpAddress& source,
                              Clock::time_point now) {
  if (ifindex <= 0) {
    return false;
  }
  auto it = cache_.find(ifindex);
  if (it == cache_.end() || it->second.expires <= now) {
    if (cache_.size() >= kMaxEntries) {
      cache_.clear();
    }
    Entry e;
    e.expires = now + std::chrono::seconds(5);
    ifreq ifr{};
    if (::if_indextoname(static_cast<unsigned>(ifindex), ifr.ifr_name) != nullptr) {
      e.deviceSegment =
          std::find(names_.begin(), names_.end(), std::string(ifr.ifr_name)) != names_.end();
      e.loopback = ::ioctl(fd, SIOCGIFFLAGS, &ifr) == 0 && (ifr.ifr_flags & IFF_LOOPBACK) != 0;
    }
    it = cache_.insert_or_assign(ifindex, e).first;
  }
  return it->second.deviceSegment || (it->second.loopback && isLoopback(source));
}

bool wantPacketInfo(int fd, int family) {
  const int on = 1;
  return family == AF_INET6 ? ::setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &on, sizeof on) == 0
                            : ::setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &on, sizeof on) == 0;
}

ssize_t receiveWithInterface(int fd, uint8_t* buffer, size_t size, Received& r) {
  iovec iov{buffer, size};
  alignas(cmsghdr)
      uint8_t control[CMSG_SPACE(sizeof(in6_pktinfo)) + CMSG_SPACE(sizeof(in_pktinfo))];
  msghdr m{};
  m.msg_name = &r.from;
  m.msg_namelen = sizeof r.from;
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = control;
  m.msg_controllen = sizeof control;
  const ssize_t n = ::recvmsg(fd, &m, MSG_TRUNC | MSG_DONTWAIT);
  if (n < 0) {
    return n;
  }
  r.fromLen = m.msg_namelen;
  r.ifindex = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c != nullptr; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
      in_pktinfo info{};
      std::memcpy(&info, CMSG_DATA(c), sizeof info);
      r.ifindex = info.ipi_ifindex;
    } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
      in6_pktinfo info{};
      std::memcpy(&info, CMSG_DATA(c), sizeof info);
      r.ifindex = static_cast<int>(info.ipi6_ifindex);
    }
  }
  return n;
}

} // namespace coapsvc

using namespace coapsvc;

namespace {

// Datagrams inside DTLS sessions that libcoap could not parse as CoAP: it drops them before any
// handler runs and says so only in its log, so the log handler counts them (one process, one
// loop thread: a plain counter).
uint64_t g_discardedPdus = 0;

// libcoap logs to stderr by default; only its errors are worth an operator's attention, and
// IOTGW_COAP_DEBUG=1 shows everything (for debugging the proxy, never in production).
void logHandler(coap_log_t level, const char* message) noexcept {
  if (level == LOG_WARNING && std::strstr(message, "discard malformed PDU") != nullptr) {
    ++g_discardedPdus;
  }
  if (level <= LOG_ERR || std::getenv("IOTGW_COAP_DEBUG") != nullptr) {
    std::fprintf(stderr, "libcoap: %s", message);
  }
}

void startLibcoap() {
  static const bool started = [] {
    coap_startup();
    coap_set_prng(randomBytes);
    coap_set_log_handler(logHandler);
    const bool debug = std::getenv("IOTGW_COAP_DEBUG") != nullptr;
    coap_set_log_level(debug ? LOG_DEBUG : LOG_WARNING);
    coap_dtls_set_log_level(debug ? LOG_DEBUG : LOG_ERR);
    return true;
  }();
  (void)started;
}

CoapService::Engine* engineOf(coap_session_t* s) {
  return static_cast<CoapService::Engine*>(coap_get_app_data(coap_session_get_context(s)));
}

// libcoap's callbacks: nothing unwinds into libcoap (io::guarded).
void onRequest(coap_resource_t* r, coap_session_t* s, const coap_pdu_t* req, const coap_string_t* q,
               coap_pdu_t* resp) noexcept {
  io::guarded("libcoap's request handler", [&] { engineOf(s)->handle(r, s, req, q, resp); });
}

// Our only sessions are DTLS server sessions: a client has no business sending responses.
coap_response_t onResponse(coap_session_t*, const coap_pdu_t*, const coap_pdu_t*,
                           const coap_mid_t) noexcept {
  return COAP_RESPONSE_FAIL;
}

void onNack(coap_session_t* s, const coap_pdu_t* sent, const coap_nack_reason_t reason,
            const coap_mid_t) noexcept {
  io::guarded("libcoap's nack handler", [&] { engineOf(s)->nack(s, sent, reason); });
}

int onEvent(coap_session_t* s, const coap_event_t ev) noexcept {
  io::guarded("libcoap's event handler", [&] { engineOf(s)->event(s, ev); });
  return 0;
}

// Failed: the certificate is refused.
int onCertificate(const char* cn, const uint8_t* der, size_t length, coap_session_t* s,
                  unsigned depth, int validated, void* arg) noexcept {
  return io::guarded("libcoap's certificate check", 0, [&] {
    return static_cast<CoapService::Engine*>(arg)->verify(
        cn, coap::View(der, der != nullptr ? length : 0), s, depth, validated);
  });
}

// libcoap's hook after it set up a server session's SSL (openssl variant: an SSL*). Failed: the
// session is not set up.
int onTlsSetup(void* tls, coap_dtls_pki_t* setup) noexcept {
  return io::guarded("libcoap's TLS setup", 0, [&] {
    return static_cast<CoapService::Engine*>(setup->cn_call_back_arg)
        ->setupTls(static_cast<SSL*>(tls));
  });
}

// A device's link that carries nothing is closed after this (the next request opens another).
constexpr auto kLinkIdle = std::chrono::seconds(60);
constexpr auto kSweepEvery = std::chrono::seconds(1);

} // namespace

// ------------------------------------------------------------------------------------------------

CoapService::Engine::Engine(CoapService& service)
    : svc(service), interfaces(service.config_->deviceSegment.interfaces) {}

CoapService::Engine::~Engine() {
  if (fd >= 0) {
    svc.reactor_.remove(fd);
  }
  if (timer.valid()) {
    svc.reactor_.remove(timer.get());
  }
  for (auto& [key, link] : links) {
    svc.reactor_.remove(link->fd.get());
  }
  // Our references first, so that freeing the context frees the sessions.
  for (auto& [id, rel] : relations) {
    coap_session_release(rel->down);
  }
  relations.clear();
  exchanges.clear();
  if (ctx != nullptr) {
    coap_free_context(ctx);
  }
}

Outcome CoapService::Engine::start() {
  startLibcoap();
  const Config& c = *svc.config_;
  coap::dtls::Admission::Settings admission;
  admission.maxPending = c.limits.maxHandshakes;
  admission.maxPendingPerAddress = c.limits.maxConnectionsPerSource;
  admission.pendingLifetime = c.limits.handshakeTimeout;
  gate = std::make_unique<DtlsGate>(admission);
  {
    const DtlsGate::ContextRecorder recorder;
    ctx = coap_new_context(nullptr);
    if (ctx == nullptr) {
      return failure("cannot create the CoAP context");
    }
    if (auto attached = gate->attach(ctx, recorder.created()); !attached) {
      return attached;
    }
  }
  coap_set_app_data(ctx, this);
  // libcoap does the block-wise exchanges with clients (RFC 7959) but hands over every block: in
  // single-body mode it would collect bodies of any size a client sends (and allocate what a
  // client's Size1 announces) before iotgwd sees a byte. The proxy collects them itself, bounded.
  coap_context_set_block_mode(ctx, COAP_BLOCK_USE_LIBCOAP);
  // The gate bounds half-open handshakes (limits.max_handshakes) and never lets one in that it
  // has not room for, so libcoap's own limit, which would ignore a proven client, is only a
  // backstop it never reaches.
  coap_context_set_max_handshake_sessions(ctx, 2 * c.limits.maxHandshakes + 1);
  coap_context_set_max_idle_sessions(ctx, c.limits.maxConnections);
  coap_context_set_session_timeout(ctx, static_cast<unsigned>(c.limits.idleSession.count()));
  coap_register_response_handler(ctx, onResponse);
  coap_register_nack_handler(ctx, onNack);
  coap_register_event_handler(ctx, onEvent);

  // libcoap keeps these pointers and reads the files at each handshake.
  certificateFile = c.coapDtls.certificate.string();
  keyFile = c.coapDtls.privateKey.string();
  caFile = c.coapDtls.caFile.string();
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
  pki.pki_key.key.pem.ca_file = caFile.c_str();
  pki.pki_key.key.pem.public_cert = certificateFile.c_str();
  pki.pki_key.key.pem.private_key = keyFile.c_str();
  if (auto loaded = loadCrls(c.coapDtls.crlFile.string(), crls); !loaded) {
    return loaded;
  }
  // Revocation is switched on per session by setupTls while there are CRLs (a reload may add or
  // drop crl_file); allow_no_crl and allow_expired_crl stay 0: a client whose issuer has no CRL
  // in the file, or whose CRL has expired, fails the handshake like a revoked one.
  pki.additional_tls_setup_call_back = onTlsSetup;
  if (coap_context_set_pki(ctx, &pki) == 0) {
    return failure(fmt::format("cannot load the DTLS certificate {}, key {} or CA {}",
                               certificateFile, keyFile, caFile));
  }
  for (const auto& a : c.coapDtls.addresses) {
    coap_address_t addr;
    coap_address_init(&addr);
    sockaddr_storage ss{};
    const socklen_t len = io::toSockaddr(a, c.coapDtls.port, ss);
    std::memcpy(&addr.addr, &ss, len);
    addr.size = len;
    const auto before = DtlsGate::epollMembers(coap_context_get_coap_fd(ctx));
    if (coap_new_endpoint(ctx, &addr, COAP_PROTO_DTLS) == nullptr) {
      return failure(
          fmt::format("cannot bind CoAP over DTLS to {}", io::endpointLabel(a, c.coapDtls.port)));
    }
    if (auto added = gate->addEndpoint(coap_context_get_coap_fd(ctx), before); !added) {
      return added;
    }
    ports.push_back(c.coapDtls.port);
  }
  coap_resource_t* proxy = coap_resource_unknown_init2(onRequest, 0);
  for (coap_request_t m :
       {COAP_REQUEST_GET, COAP_REQUEST_POST, COAP_REQUEST_PUT, COAP_REQUEST_DELETE,
        COAP_REQUEST_FETCH, COAP_REQUEST_PATCH, COAP_REQUEST_IPATCH}) {
    coap_register_request_handler(proxy, m, onRequest);
  }
  coap_add_resource(ctx, proxy);

  fd = coap_context_get_coap_fd(ctx);
  if (fd < 0) {
    return failure("libcoap has no epoll descriptor");
  }
  if (svc.reactor_.add(fd, EPOLLIN, [this](uint32_t) { process(); })) {
    fd = -1;
    return failure("cannot watch the CoAP descriptor");
  }
  timer = io::UniqueFd(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  if (!timer.valid() || svc.reactor_.add(timer.get(), EPOLLIN, [this](uint32_t) { onTimer(); })) {
    timer = io::UniqueFd();
    return failure("cannot create the CoAP timer");
  }
  libcoapTimers();
  return {};
}

// libcoap's descriptor is an epoll set of its own sockets and a timerfd of its own. Its events
// are read here and handed to coap_io_do_epoll, which handles them and runs the due timers (a
// coap_io_process would arm libcoap's timer twice per wake-up). The DTLS gate sees the
// endpoint's events first and leaves in only those whose next datagram libcoap may read.
void CoapService::Engine::process() {
  const uint64_t discarded = g_discardedPdus;
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
    coap_io_do_epoll(ctx, events, pass);
    --inLibcoap;
    gate->endBatch();
    runDeferred();
    if (ready < kBatch) {
      break;
    }
  }
  if (const uint64_t n = g_discardedPdus - discarded; n > 0) {
    svc.stats_.malformed += n;
    emit(
        EventType::MalformedPacket, "", "", "coap.message", "5.13-1", "drop",
        fmt::format("{} malformed CoAP datagram{} in DTLS sessions dropped", n, n == 1 ? "" : "s"));
  }
  libcoapTimers();
}

void CoapService::Engine::libcoapTimers() {
  libcoapTouched = false;
  for (int round = 0; round < 4; ++round) {
    coap_tick_t now = 0;
    coap_ticks(&now);
    ++inLibcoap;
    const unsigned ms = coap_io_prepare_epoll(ctx, now);
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

void CoapService::Engine::armTimer(Clock::time_point at) {
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

void CoapService::Engine::armNext() {
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

void CoapService::Engine::onTimer() {
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
void CoapService::Engine::sweep(Clock::time_point now) {
  const auto idle = svc.config_->limits.idleSession;
  for (auto& [s, peer] : peers) {
    if (!peer.established || peer.closing) {
      continue;
    }
    const auto heard = gate->lastHeard(s);
    if (heard && now - *heard >= idle) {
      ++svc.stats_.sessionsExpired;
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

void CoapService::Engine::runDeferred() {
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

void CoapService::Engine::closeSession(coap_session_t* s, std::string reason) {
  auto p = peers.find(s);
  if (p == peers.end() || p->second.closing) {
    return;
  }
  p->second.closing = true;
  closing.emplace_back(s, std::move(reason));
}

void CoapService::Engine::emit(EventType type, std::string device, std::string peer,
                               std::string rule, std::string provision, std::string action,
                               std::string message) {
  emitCoap(svc.sink_, type, std::move(device), std::move(peer), std::move(rule),
           std::move(provision), std::move(action), std::move(message));
}

std::string CoapService::Engine::peerLabel(coap_session_t* s) const {
  if (auto it = peers.find(s); it != peers.end()) {
    return it->second.label;
  }
  return labelOf(coap_session_get_addr_remote(s));
}

void CoapService::Engine::dropPeer(coap_session_t* s) {
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
    --svc.stats_.sessions;
  }
  --verified;
  if (auto ps = perSource.find(it->second.address); ps != perSource.end() && --ps->second == 0) {
    perSource.erase(ps);
  }
  peers.erase(it);
}

void CoapService::Engine::event(coap_session_t* s, coap_event_t ev) {
  if (coap_session_get_type(s) == COAP_SESSION_TYPE_CLIENT) {
    return; // not ours: the proxy's clients of devices are its own sockets
  }
  switch (ev) {
  case COAP_EVENT_DTLS_CONNECTED:
    gate->connected(s);
    if (auto it = peers.find(s); it != peers.end() && !it->second.established) {
      it->second.established = true;
      ++svc.stats_.sessions;
      ++svc.stats_.sessionsOpened;
    }
    break;
  case COAP_EVENT_DTLS_ERROR:
    if (auto it = peers.find(s); it == peers.end() || !it->second.established) {
      ++svc.stats_.handshakesFailed;
      if (auto r = refusals.find(s); r != refusals.end()) {
        ++svc.stats_.certificatesRefused;
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

void CoapService::Engine::nack(coap_session_t* s, const coap_pdu_t* sent, coap_nack_reason_t) {
  if (sent == nullptr || coap_session_get_type(s) == COAP_SESSION_TYPE_CLIENT) {
    return;
  }
  // A client reset or ignored a notification: it no longer observes.
  const coap_bin_const_t t = coap_pdu_get_token(sent);
  const Bytes token(t.s, t.s + t.length);
  endRelationsIf([&](const Relation& rel) { return rel.down == s && rel.downToken == token; });
}

// ------------------------------------------------------------------------------------------------

CoapService::CoapService(io::Reactor& reactor, EventSink& sink,
                         std::shared_ptr<const Config> config, PolicySource policies,
                         MqttService* mqtt, Quarantined quarantined)
    : reactor_(reactor), sink_(sink), config_(std::move(config)), policies_(std::move(policies)),
      mqtt_(mqtt), quarantined_(std::move(quarantined)) {}

CoapService::~CoapService() = default;

Outcome CoapService::start() {
  if (config_->coapDtls.enabled) {
    engine_ = std::make_unique<Engine>(*this);
    if (auto started = engine_->start(); !started) {
      engine_.reset();
      return started;
    }
  }
  if (config_->coap.enabled) {
    devices_ = std::make_unique<DeviceEndpoint>(*this);
    if (auto started = devices_->start(); !started) {
      devices_.reset();
      return started;
    }
  }
  return {};
}

void CoapService::closeDevice(const policy::DeviceId& id) {
  if (engine_) {
    engine_->closeDevice(id.str());
  }
  if (devices_) {
    devices_->forget(id.str());
  }
}

std::expected<Prepared, std::string> CoapService::prepareCrl(const Config& config) {
  if (!engine_) {
    return Prepared([] {});
  }
  Engine::Crls next;
  if (auto loaded = Engine::loadCrls(config.coapDtls.crlFile.string(), next); !loaded) {
    return std::unexpected(loaded.error());
  }
  return Prepared([this, next = std::move(next)]() mutable {
    engine_->crls = std::move(next); // the next handshake checks against these
  });
}

std::vector<std::pair<std::string, uint64_t>> CoapService::counters() const {
  const CoapStats& c = stats_;
  const DtlsGateStats g = engine_ && engine_->gate ? engine_->gate->stats() : DtlsGateStats{};
  return {{"coap_sessions", c.sessions},
          {"coap_sessions_opened", c.sessionsOpened},
          {"coap_sessions_refused", c.sessionsRefused},
          {"coap_sessions_expired", c.sessionsExpired},
          {"coap_handshakes_failed", c.handshakesFailed},
          {"coap_certificates_refused", c.certificatesRefused},
          {"coap_hello_verify_sent", g.helloVerifySent},
          {"coap_dtls_admitted", g.admitted},
          {"coap_dtls_dropped", g.dropped + g.malformedHellos},
          {"coap_handshakes_evicted", g.evicted},
          {"coap_handshakes_expired", g.expired},
          {"coap_requests", c.requests},
          {"coap_malformed", c.malformed},
          {"coap_denied", c.denied},
          {"coap_forwarded", c.forwarded},
          {"coap_answered", c.answered},
          {"coap_timeouts", c.timeouts},
          {"coap_bad_responses", c.badResponses},
          {"coap_observing", c.observing},
          {"coap_notifications", c.notifications},
          {"coap_observe_refused", c.observeRefused},
          {"coap_rate_limited", c.rateLimited},
          {"coap_sessions_closed", c.sessionsClosed},
          {"coap_bodies_held_bytes", engine_ ? engine_->bodies.used : 0},
          {"coap_device_links", engine_ ? engine_->links.size() : 0},
          {"coap_device_datagrams", c.datagrams},
          {"coap_device_malformed", c.deviceMalformed},
          {"coap_device_wrong_interface", c.wrongInterface},
          {"coap_unknown_sources", c.unknownSources},
          {"coap_pushes_denied", c.pushesDenied},
          {"coap_pushes_published", c.pushesPublished},
          {"coap_pushes_failed", c.pushesFailed},
          {"coap_pushes_bad_topic", c.pushesBadTopic},
          {"coap_pushes_rate_limited", c.pushesRateLimited},
          {"coap_unauthenticated_bytes_in", c.unauthenticatedBytesIn},
          {"coap_unauthenticated_bytes_out", c.unauthenticatedBytesOut},
          {"coap_budget_drops", c.budgetDrops}};
}

std::vector<uint16_t> CoapService::boundPorts() const {
  std::vector<uint16_t> ports;
  if (engine_) {
    ports = engine_->ports;
  }
  if (devices_) {
    for (const auto& s : devices_->sockets) {
      ports.push_back(io::boundPort(s.get()));
    }
  }
  return ports;
}

} // namespace iotgw::daemon
