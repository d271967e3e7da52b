// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The stateless cookie exchange in front of libcoap's DTLS endpoint (RFC 6347 §4.2.1).
//
// libcoap 4.3.1 answers a ClientHello with a stateless HelloVerifyRequest, but first creates a
// placeholder session for the source ("hello" session), kept for 30 s and freed one at a time,
// and stops looking at new sources once limits.max_handshakes of them exist. One burst of
// ClientHellos from forged addresses therefore locked every real client out for 30 s. The gate
// reads the endpoint's datagrams before libcoap does (MSG_PEEK on libcoap's own socket, between
// its epoll_wait and coap_io_do_epoll, so that libcoap reads exactly the datagram the gate let
// through) and:
//
// * answers a ClientHello from an unproven peer with its own HelloVerifyRequest, whose cookie is
//   a MAC of the peer's address and port under a secret replaced every minute, and drops the
//   datagram: a forged source costs one 44-byte answer and no state;
// * admits a peer whose ClientHello returns a valid cookie (it receives at its address) into a
//   bounded table of half-open handshakes (protocols/coap/dtls_admission.h), where a full table
//   makes room by ending the oldest half-open handshake instead of refusing the peer;
// * passes to libcoap only what admitted peers and peers with an established session send, and
//   drops the rest.
//
// libcoap checks the cookie of the ClientHello it is handed once more (DTLSv1_listen, then the new
// session's SSL_accept): the gate takes over the cookie callbacks of libcoap's OpenSSL DTLS
// context, which accept exactly the cookies the gate has just verified, so a client sees one
// HelloVerifyRequest, not two. libcoap's context is found by recording the SSL_CTXs OpenSSL
// creates while coap_new_context runs (an SSL_CTX ex_data index with a "new" callback), and its
// endpoint socket as the one coap_new_endpoint adds to libcoap's epoll set (its fdinfo in /proc).
// Loop thread only.

#include <sys/epoll.h>

#include <chrono>
#include <cstdint>
#include <expected>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <coap3/coap.h>
#include <openssl/ssl.h>

#include "protocols/coap/dtls_admission.h"
#include "protocols/coap/dtls_cookie.h"

namespace iotgw::coap {

struct DtlsGateStats {
  uint64_t helloVerifySent = 0; // stateless HelloVerifyRequests to unproven peers
  uint64_t admitted = 0;        // peers that returned a valid cookie
  uint64_t dropped = 0;         // datagrams from unproven peers that were no ClientHello
  uint64_t malformedHellos = 0; // ClientHellos no DTLS listener would take
  uint64_t evicted = 0;         // half-open handshakes ended to make room for a proven peer
  uint64_t expired = 0;         // half-open handshakes ended after limits.handshake_timeout_ms
};

class DtlsGate {
public:
  // While one lives, every SSL_CTX this thread creates is recorded (wrap coap_new_context).
  class ContextRecorder {
  public:
    ContextRecorder();
    ContextRecorder(const ContextRecorder&) = delete;
    ContextRecorder& operator=(const ContextRecorder&) = delete;
    ~ContextRecorder();
    [[nodiscard]] const std::vector<SSL_CTX*>& created() const { return created_; }

  private:
    static void onNew(void* parent, void* ptr, CRYPTO_EX_DATA* ad, int idx, long argl,
                      void* argp) noexcept;
    int index_ = -1;
    std::vector<SSL_CTX*> created_;
  };

  explicit DtlsGate(dtls::Admission::Settings settings);
  DtlsGate(const DtlsGate&) = delete;
  DtlsGate& operator=(const DtlsGate&) = delete;
  ~DtlsGate();

  // Takes over the cookie callbacks of libcoap's DTLS context among `created`.
  [[nodiscard]] std::expected<void, std::string> attach(coap_context_t* ctx,
                                                        const std::vector<SSL_CTX*>& created);
  // The members (fd, event data) of an epoll set.
  [[nodiscard]] static std::map<int, uint64_t> epollMembers(int epfd);
  // Adopts the socket coap_new_endpoint has just added to libcoap's epoll set.
  [[nodiscard]] std::expected<void, std::string> addEndpoint(int epfd,
                                                             const std::map<int, uint64_t>& before);

  // Before coap_io_do_epoll: for each endpoint event, answers and discards what unproven peers
  // sent until the datagram at the head of the socket is one for libcoap (the event stays) or
  // none is left (the event is removed). Returns how many events remain.
  [[nodiscard]] size_t screen(epoll_event* events, size_t count);
  // After coap_io_do_epoll: the cookies verified for this batch are accepted no more.
  void endBatch();

  // libcoap's view of a server session: its handshake completed, or it is gone.
  void connected(const coap_session_t* s);
  void closed(const coap_session_t* s);
  // When the client of an established session last sent a datagram (nullopt: not established).
  [[nodiscard]] std::optional<std::chrono::steady_clock::time_point>
  lastHeard(const coap_session_t* s) const;

  [[nodiscard]] const DtlsGateStats& stats() const { return stats_; }
  [[nodiscard]] size_t pending() const { return admission_.pending(); }

private:
  struct Endpoint {
    int fd = -1;
    uint64_t data = 0; // libcoap's epoll data for the socket
  };
  enum class Verdict { Pass, Consumed };

  // Looks at the head datagram of `ep`: nullopt when there is none.
  std::optional<Verdict> screenOne(const Endpoint& ep);
  void endHalfOpen();
  static int generateCookie(SSL* ssl, unsigned char* cookie, unsigned int* length) noexcept;
  static int verifyCookie(SSL* ssl, const unsigned char* cookie, unsigned int length) noexcept;

  coap_context_t* ctx_ = nullptr;
  dtls::Admission admission_;
  dtls::CookieJar jar_;
  std::vector<Endpoint> endpoints_;
  std::vector<dtls::Cookie> approved_;   // verified in this batch, for libcoap's own checks
  std::optional<dtls::PeerKey> current_; // the peer of the datagram libcoap reads next
  std::vector<dtls::Admission::Ended> ended_;
  DtlsGateStats stats_;
};

} // namespace iotgw::coap
