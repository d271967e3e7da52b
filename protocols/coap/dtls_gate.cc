// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/coap/dtls_gate.h"

#include <netinet/in.h>
#include <sys/random.h>
#include <sys/socket.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include <fmt/format.h>
#include <openssl/crypto.h>

#include "protocols/io/callback_guard.h"

namespace iotgw::coap {

using coap::View;
using dtls::Admission;
using dtls::PeerKey;
using Clock = std::chrono::steady_clock;

namespace {

DtlsGate::ContextRecorder* g_recorder = nullptr; // loop thread only

// Where libcoap's DTLS context points back at the gate (its app data is libcoap's own).
int gateIndex() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

struct Datagram {
  PeerKey peer;
  sockaddr_storage from{};
  socklen_t fromLen = 0;
  int ifindex = 0;
  bool haveLocal = false;
  in_pktinfo local4{};
  in6_pktinfo local6{};
};

PeerKey keyOf(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_INET6) {
    const auto& a = reinterpret_cast<const sockaddr_in6&>(ss);
    std::array<uint8_t, 16> b;
    std::memcpy(b.data(), &a.sin6_addr, b.size());
    return PeerKey::v6(b, ntohs(a.sin6_port));
  }
  const auto& a = reinterpret_cast<const sockaddr_in&>(ss);
  std::array<uint8_t, 4> b;
  std::memcpy(b.data(), &a.sin_addr, b.size());
  return PeerKey::v4(b, ntohs(a.sin_port));
}

coap_address_t addressOf(const PeerKey& k) {
  coap_address_t a;
  coap_address_init(&a);
  const uint16_t port = static_cast<uint16_t>(k.bytes[17] << 8 | k.bytes[18]);
  if (k.bytes[0] == 6) {
    a.addr.sin6.sin6_family = AF_INET6;
    std::memcpy(&a.addr.sin6.sin6_addr, k.bytes.data() + 1, 16);
    a.addr.sin6.sin6_port = htons(port);
    a.size = sizeof(sockaddr_in6);
  } else {
    a.addr.sin.sin_family = AF_INET;
    std::memcpy(&a.addr.sin.sin_addr, k.bytes.data() + 1, 4);
    a.addr.sin.sin_port = htons(port);
    a.size = sizeof(sockaddr_in);
  }
  return a;
}

std::optional<PeerKey> keyOf(const coap_address_t* a) {
  if (a == nullptr || a->size > sizeof(sockaddr_storage)) {
    return std::nullopt;
  }
  sockaddr_storage ss{};
  std::memcpy(&ss, &a->addr, a->size);
  if (ss.ss_family != AF_INET && ss.ss_family != AF_INET6) {
    return std::nullopt;
  }
  return keyOf(ss);
}

// The interface and local address a datagram arrived on, as libcoap reads them (it asks for
// IP_PKTINFO / IPV6_RECVPKTINFO on its sockets, and uses the descriptor when there is neither).
void readPacketInfo(msghdr& m, int fd, Datagram& d) {
  d.ifindex = fd;
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c != nullptr; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
      std::memcpy(&d.local6, CMSG_DATA(c), sizeof d.local6);
      d.ifindex = static_cast<int>(d.local6.ipi6_ifindex);
      d.haveLocal = true;
      return;
    }
    if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
      std::memcpy(&d.local4, CMSG_DATA(c), sizeof d.local4);
      d.ifindex = d.local4.ipi_ifindex;
      d.haveLocal = true;
      return;
    }
  }
}

// Answers from the address the datagram was sent to (a socket bound to a wildcard address has
// several), as libcoap does.
void sendFrom(int fd, const Datagram& d, View bytes) {
  iovec iov{const_cast<uint8_t*>(bytes.data()), bytes.size()};
  alignas(cmsghdr) uint8_t control[CMSG_SPACE(sizeof(in6_pktinfo))] = {};
  msghdr m{};
  m.msg_name = const_cast<sockaddr_storage*>(&d.from);
  m.msg_namelen = d.fromLen;
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  if (d.haveLocal) {
    m.msg_control = control;
    cmsghdr* c = reinterpret_cast<cmsghdr*>(control);
    if (d.from.ss_family == AF_INET6 && d.local6.ipi6_ifindex != 0) {
      m.msg_controllen = CMSG_SPACE(sizeof(in6_pktinfo));
      c->cmsg_level = IPPROTO_IPV6;
      c->cmsg_type = IPV6_PKTINFO;
      c->cmsg_len = CMSG_LEN(sizeof(in6_pktinfo));
      std::memcpy(CMSG_DATA(c), &d.local6, sizeof d.local6);
    } else if (d.from.ss_family == AF_INET) {
      in_pktinfo out{};
      out.ipi_spec_dst = d.local4.ipi_addr;
      m.msg_controllen = CMSG_SPACE(sizeof(in_pktinfo));
      c->cmsg_level = IPPROTO_IP;
      c->cmsg_type = IP_PKTINFO;
      c->cmsg_len = CMSG_LEN(sizeof(in_pktinfo));
      std::memcpy(CMSG_DATA(c), &out, sizeof out);
    } else {
      m.msg_control = nullptr;
    }
  }
  // Stateless: an answer the socket cannot take now is not retried (the client repeats).
  (void)::sendmsg(fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
}

} // namespace

// ------------------------------------------------------------------------------------------------

DtlsGate::ContextRecorder::ContextRecorder() {
  index_ = CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_SSL_CTX, 0, nullptr, onNew, nullptr, nullptr);
  g_recorder = this;
}

DtlsGate::ContextRecorder::~ContextRecorder() {
  g_recorder = nullptr;
  if (index_ >= 0) {
    (void)CRYPTO_free_ex_index(CRYPTO_EX_INDEX_SSL_CTX, index_);
  }
}

void DtlsGate::ContextRecorder::onNew(void* parent, void*, CRYPTO_EX_DATA*, int, long,
                                      void*) noexcept {
  io::guarded("OpenSSL's new-context hook", [&] {
    if (g_recorder != nullptr) {
      g_recorder->created_.push_back(static_cast<SSL_CTX*>(parent));
    }
  });
}

DtlsGate::DtlsGate(Admission::Settings settings) : admission_(settings) {}

DtlsGate::~DtlsGate() = default;

std::expected<void, std::string> DtlsGate::attach(coap_context_t* ctx,
                                                  const std::vector<SSL_CTX*>& created) {
  ctx_ = ctx;
  SSL_CTX* dtls = nullptr;
  for (SSL_CTX* c : created) {
    if (SSL_CTX_get_ssl_method(c) == DTLS_method()) {
      if (dtls != nullptr) {
        return std::unexpected(
            "libcoap created more than one DTLS context: cannot tell which one serves");
      }
      dtls = c;
    }
  }
  if (dtls == nullptr) {
    return std::unexpected(
        "cannot find libcoap's DTLS context to put the cookie exchange in front of it");
  }
  if (gateIndex() < 0 || SSL_CTX_set_ex_data(dtls, gateIndex(), this) != 1) {
    return std::unexpected("cannot attach the DTLS cookie exchange to libcoap's context");
  }
  SSL_CTX_set_cookie_generate_cb(dtls, generateCookie);
  SSL_CTX_set_cookie_verify_cb(dtls, verifyCookie);
  return {};
}

std::map<int, uint64_t> DtlsGate::epollMembers(int epfd) {
  std::map<int, uint64_t> out;
  std::unique_ptr<FILE, decltype(&std::fclose)> f(
      std::fopen(fmt::format("/proc/self/fdinfo/{}", epfd).c_str(), "re"), std::fclose);
  if (!f) {
    return out;
  }
  char line[256];
  while (std::fgets(line, sizeof line, f.get()) != nullptr) {
    int fd = -1;
    unsigned events = 0;
    uint64_t data = 0;
    if (std::sscanf(line, "tfd: %d events: %x data: %" SCNx64, &fd, &events, &data) == 3) {
      out[fd] = data;
    }
  }
  return out;
}

std::expected<void, std::string> DtlsGate::addEndpoint(int epfd,
                                                       const std::map<int, uint64_t>& before) {
  std::vector<Endpoint> added;
  for (const auto& [fd, data] : epollMembers(epfd)) {
    if (!before.contains(fd)) {
      added.push_back(Endpoint{fd, data});
    }
  }
  int type = 0;
  socklen_t len = sizeof type;
  if (added.size() != 1 || getsockopt(added[0].fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 ||
      type != SOCK_DGRAM) {
    return std::unexpected("cannot find the socket of libcoap's DTLS endpoint");
  }
  endpoints_.push_back(added[0]);
  return {};
}

size_t DtlsGate::screen(epoll_event* events, size_t count) {
  const auto now = Clock::now();
  if (jar_.rotationDue(now)) {
    dtls::Secret secret;
    size_t got = 0;
    while (got < secret.size()) {
      const ssize_t n = getrandom(secret.data() + got, secret.size() - got, 0);
      if (n < 0 && errno != EINTR) {
        break;
      }
      got += n > 0 ? static_cast<size_t>(n) : 0;
    }
    // Without fresh randomness the current secret stays a little longer; a jar whose MAC cannot
    // be set up keeps none, and then no cookie is made or accepted: clients wait rather than get
    // in unchecked.
    if (got == secret.size()) {
      (void)jar_.rotate(secret, now);
    }
    OPENSSL_cleanse(secret.data(), secret.size());
  }
  size_t kept = 0;
  for (size_t i = 0; i < count; ++i) {
    const Endpoint* ep = nullptr;
    for (const auto& e : endpoints_) {
      if (events[i].data.u64 == e.data) {
        ep = &e;
      }
    }
    bool keep = ep == nullptr || (events[i].events & EPOLLIN) == 0;
    // Bounded work per event: what is left makes the socket readable again.
    for (int budget = 64; !keep && budget > 0; --budget) {
      const auto v = screenOne(*ep);
      if (!v) {
        break;
      }
      keep = *v == Verdict::Pass;
    }
    if (keep) {
      events[kept++] = events[i];
    }
  }
  admission_.expire(now, ended_);
  endHalfOpen();
  return kept;
}

std::optional<DtlsGate::Verdict> DtlsGate::screenOne(const Endpoint& ep) {
  uint8_t head[dtls::kPeekBytes];
  alignas(cmsghdr)
      uint8_t control[CMSG_SPACE(sizeof(in6_pktinfo)) + CMSG_SPACE(sizeof(in_pktinfo))];
  Datagram d;
  iovec iov{head, sizeof head};
  msghdr m{};
  m.msg_name = &d.from;
  m.msg_namelen = sizeof d.from;
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = control;
  m.msg_controllen = sizeof control;
  const ssize_t n = ::recvmsg(ep.fd, &m, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT);
  if (n < 0) {
    // Nothing queued; or an error libcoap reports and clears when it reads.
    return errno == EAGAIN ? std::nullopt : std::optional<Verdict>(Verdict::Pass);
  }
  d.fromLen = m.msg_namelen;
  if (d.from.ss_family != AF_INET && d.from.ss_family != AF_INET6) {
    (void)::recv(ep.fd, nullptr, 0, MSG_DONTWAIT);
    return Verdict::Consumed;
  }
  d.peer = keyOf(d.from);
  readPacketInfo(m, ep.fd, d);
  const auto size = static_cast<size_t>(n);
  const View peeked(head, std::min(size, sizeof head));
  const View peerBytes(d.peer.bytes.data(), d.peer.bytes.size());
  const auto now = Clock::now();
  const Admission::State state = admission_.touch(d.peer, now);
  const auto hello = dtls::parseClientHello(peeked, size);
  auto pass = [&] {
    current_ = d.peer;
    return Verdict::Pass;
  };
  auto consume = [&] {
    (void)::recv(ep.fd, nullptr, 0, MSG_DONTWAIT);
    return Verdict::Consumed;
  };
  // libcoap reads at most COAP_RXBUFFER_SIZE bytes of a datagram: a longer ClientHello would be
  // cut short and left half-parsed in a placeholder session.
  const bool tooLong = size > COAP_RXBUFFER_SIZE;
  if (state == Admission::State::Established) {
    // The session's own SSL handles whatever it is; a renegotiating ClientHello's cookie is
    // checked again by libcoap's callbacks.
    if (hello && !tooLong && jar_.verify(peerBytes, hello->cookie)) {
      std::array<uint8_t, dtls::kCookieBytes> c;
      std::copy(hello->cookie.begin(), hello->cookie.end(), c.begin());
      approved_.push_back(c);
    }
    return pass();
  }
  if (!hello) {
    if (state == Admission::State::Pending && hello.error() == dtls::HelloError::NotClientHello) {
      return pass(); // the rest of an admitted peer's handshake
    }
    ++(hello.error() == dtls::HelloError::Malformed ? stats_.malformedHellos : stats_.dropped);
    return consume();
  }
  if (tooLong || size == 0) {
    ++stats_.malformedHellos;
    return consume();
  }
  if (jar_.verify(peerBytes, hello->cookie)) {
    if (state == Admission::State::Unknown) {
      ++stats_.admitted;
      admission_.admit(d.peer, d.ifindex, now, ended_);
    }
    std::array<uint8_t, dtls::kCookieBytes> c;
    std::copy(hello->cookie.begin(), hello->cookie.end(), c.begin());
    approved_.push_back(c);
    return pass();
  }
  // No cookie, or one from an older secret or another address: a fresh one (RFC 6347 §4.2.1
  // treats a bad cookie like none). Nothing is kept about the peer.
  if (const auto cookie = jar_.make(peerBytes)) {
    const auto hvr = dtls::helloVerifyRequest(*hello, View(cookie->data(), cookie->size()));
    sendFrom(ep.fd, d, hvr.view());
    ++stats_.helloVerifySent;
  }
  return consume();
}

void DtlsGate::endBatch() {
  approved_.clear();
  current_.reset();
}

// Half-open handshakes that had to give way or took too long: libcoap's session for the peer is
// failed now (it frees it when it next prepares its timers), not when its own DTLS timers give
// up half a minute later.
void DtlsGate::endHalfOpen() {
  for (const auto& e : ended_) {
    const coap_address_t a = addressOf(e.peer);
    coap_session_t* s = coap_session_get_by_peer(ctx_, &a, e.tag);
    if (s != nullptr && coap_session_get_type(s) == COAP_SESSION_TYPE_SERVER &&
        coap_session_get_state(s) == COAP_SESSION_STATE_HANDSHAKE) {
      coap_session_disconnected(s, COAP_NACK_TLS_FAILED);
    }
    ++(e.expired ? stats_.expired : stats_.evicted);
  }
  ended_.clear();
}

void DtlsGate::connected(const coap_session_t* s) {
  if (const auto k = keyOf(coap_session_get_addr_remote(s))) {
    admission_.established(*k, Clock::now());
  }
}

std::optional<Clock::time_point> DtlsGate::lastHeard(const coap_session_t* s) const {
  const auto k = keyOf(coap_session_get_addr_remote(s));
  return k ? admission_.lastHeard(*k) : std::nullopt;
}

void DtlsGate::closed(const coap_session_t* s) {
  if (const auto k = keyOf(coap_session_get_addr_remote(s))) {
    admission_.closed(*k);
  }
}

int DtlsGate::generateCookie(SSL* ssl, unsigned char* cookie, unsigned int* length) noexcept {
  return io::guarded("OpenSSL's cookie generation", 0, [&] {
    const auto* gate =
        static_cast<const DtlsGate*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), gateIndex()));
    if (gate == nullptr || !gate->current_) {
      return 0;
    }
    const auto c =
        gate->jar_.make(View(gate->current_->bytes.data(), gate->current_->bytes.size()));
    if (!c) {
      return 0;
    }
    std::memcpy(cookie, c->data(), c->size());
    *length = static_cast<unsigned int>(c->size());
    return 1;
  });
}

int DtlsGate::verifyCookie(SSL* ssl, const unsigned char* cookie, unsigned int length) noexcept {
  return io::guarded("OpenSSL's cookie check", 0, [&] {
    const auto* gate =
        static_cast<const DtlsGate*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), gateIndex()));
    if (gate == nullptr || length != dtls::kCookieBytes) {
      return 0;
    }
    for (const auto& c : gate->approved_) {
      if (CRYPTO_memcmp(c.data(), cookie, c.size()) == 0) {
        return 1;
      }
    }
    return 0;
  });
}

} // namespace iotgw::coap
