// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The CoAP reverse proxy behind a DTLS endpoint. The endpoint is libcoap's (OpenSSL variant,
// protocols/coap/libcoap.h), driven from the reactor through coap_context_get_coap_fd and
// coap_io_do_epoll, with a stateless cookie exchange in front of it (dtls_gate.h). Clients
// authenticate with a certificate from the endpoint's CA (checked against its CRLs, bounded per
// source); a request names its target by its first Uri-Path segment
// (coaps://gateway/<device-id>/<path on the device>), is validated (validate.h), checked against
// the device's [coap] policy, and forwarded as plain CoAP from the gateway to the device by the
// proxy's own client of it (upstream.h) with a guard timeout. The answer is checked before it is
// relayed. Observe and block-wise transfers work through the proxy; what one session may make the
// proxy hold is bounded (observe relationships, requests waiting for devices, block-wise bodies).
// Loop thread only.
//
//   proxy.cc                libcoap's context, the loop and timers, sessions, sweeps
//   proxy_requests.cc       a client's request: checks, forwarding, answers
//   observe.cc              observe relays: notifications, ending relationships
//   device_links.cc         the proxy's clients of devices: sockets, sending, closing a device
//   client_certificates.cc  client certificates: verification, CRLs, identity, per-source limits
//
// Whoever runs it (daemon/coap_service) gives it its settings and hooks and reads its counters;
// the proxy knows nothing of configuration files, the journal or the MQTT side.

#include <chrono>
#include <cstdint>
#include <deque>
#include <expected>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <coap3/coap.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "policy/decision.h"
#include "policy/events.h"
#include "policy/policy_set.h"
#include "protocols/coap/blockwise.h"
#include "protocols/coap/dtls_admission.h"
#include "protocols/coap/dtls_gate.h"
#include "protocols/coap/libcoap.h"
#include "protocols/coap/message.h"
#include "protocols/coap/reply.h"
#include "protocols/coap/upstream.h"
#include "protocols/coap/validate.h"
#include "protocols/io/arrival.h"
#include "protocols/io/reactor.h"
#include "protocols/tls/crl_store.h"

namespace iotgw::coap {

// What one DTLS client may make the gateway hold besides its observe relationships and pending
// requests (limits.coap_max_*): block-wise bodies being collected from it, bodies libcoap serves
// to it block by block, and libcoap's own record of each block-wise upload it starts, which
// libcoap keeps for MAX_TRANSMIT_WAIT (RFC 7252: 93 s) whether or not the upload is accepted.
inline constexpr size_t kMaxUploadsPerSession = 4;
inline constexpr size_t kMaxUploadStartsPerWindow = 64; // beyond: 4.29; beyond twice that: closed
inline constexpr auto kUploadWindow = std::chrono::seconds(93);
inline constexpr size_t kMaxHeldPerSession = 256 * 1024; // answer bodies in libcoap's hands
inline constexpr int kHeldSeconds = 8; // libcoap drops a fully sent body after this
// Every body the proxy holds at once, all sessions and devices together.
inline constexpr size_t kMaxBodyBytesTotal = 16 * 1024 * 1024;
// Notifications go as NON, and as CON when none went for this long (RFC 7641 §4.5): a client
// that has gone then costs one CON in libcoap's queue per relationship, not one per
// notification, and a client that is there acknowledges, which counts as hearing from it.
inline constexpr auto kConfirmNotificationsEvery = std::chrono::seconds(30);

struct ProxySettings {
  std::vector<policy::IpAddress> addresses; // listeners.coap_dtls
  uint16_t port = 5684;
  // libcoap reads these at each handshake.
  std::string certificateFile, keyFile, caFile;
  std::string crlFile;                       // optional
  std::vector<std::string> deviceInterfaces; // where the devices' answers may come from
  uint32_t maxConnections = 1024;            // sessions with a verified certificate
  uint32_t maxConnectionsPerSource = 16;
  uint32_t maxHandshakes = 64; // half-open handshakes (the gate's table)
  std::chrono::milliseconds handshakeTimeout{10'000};
  std::chrono::seconds idleSession{300};
  std::chrono::milliseconds requestTimeout{5'000}; // then 5.04 Gateway Timeout
  uint32_t maxPendingPerSession = 16;              // requests waiting for devices (beyond: 4.29)
  // Observe relationships per session, in all, and per device (beyond: served without Observe).
  uint32_t maxObservePerSession = 32;
  uint32_t maxObserve = 1024;
  uint32_t maxObservePerDevice = 32;
};

struct ProxyHooks {
  std::function<std::shared_ptr<const policy::PolicySet>()> policies;
  std::function<bool(const policy::DeviceId&)> quarantined; // may be empty: nobody is
  std::function<void(policy::Event)> emit;
};

struct ProxyCounters {
  uint64_t sessions = 0;        // established now
  uint64_t sessionsOpened = 0;  // handshakes completed
  uint64_t sessionsRefused = 0; // over limits.max_connections or max_connections_per_source
  uint64_t sessionsExpired = 0; // nothing heard from the client for limits.idle_session_seconds
  uint64_t handshakesFailed = 0;
  uint64_t certificatesRefused = 0; // a CA certificate, or one not for TLS clients (of the failed)
  uint64_t requests = 0;            // requests that reached the proxy
  uint64_t malformed = 0;           // refused by validation (4.00, 4.02, 4.13, 4.15, 5.05)
  uint64_t denied = 0;              // refused by policy (4.03, 4.04, 5.03)
  uint64_t forwarded = 0;           // sent on to a device
  uint64_t answered = 0;            // device responses relayed
  uint64_t timeouts = 0;            // the device was silent: 5.04
  uint64_t badResponses = 0;        // the device's response broke its policy: 5.02
  uint64_t observing = 0;           // observe relationships now
  uint64_t observeRefused = 0; // registrations served without Observe (limits.coap_max_observe*)
  uint64_t notifications = 0;
  uint64_t rateLimited = 0;    // refused with 4.29 or 5.03 and Max-Age: a bound was reached
  uint64_t sessionsClosed = 0; // closed for going on past a bound after being refused
  uint64_t wrongInterface = 0; // a datagram from a device's address, not on its interfaces
};

class Proxy {
public:
  using Clock = std::chrono::steady_clock;
  using PeerKey = dtls::PeerKey;

  Proxy(io::Reactor& reactor, ProxySettings settings, ProxyHooks hooks, ProxyCounters& counters);
  Proxy(const Proxy&) = delete;
  Proxy& operator=(const Proxy&) = delete;
  ~Proxy();

  // Binds the endpoints; the error names what failed.
  [[nodiscard]] std::expected<void, std::string> start();
  // Ends the device's observe relationships and forgets its link (quarantine, removal).
  void closeDevice(const std::string& device);
  // The next handshake is checked against these (a reload's crl_file: tls::CrlStore::load).
  void replaceCrls(tls::CrlStore::Crls next) { crls.replace(std::move(next)); }

  [[nodiscard]] const std::vector<uint16_t>& boundPorts() const { return ports; }
  [[nodiscard]] DtlsGateStats gateStats() const { return gate ? gate->stats() : DtlsGateStats{}; }
  [[nodiscard]] size_t bodiesHeld() const { return bodies.used; }
  [[nodiscard]] size_t deviceLinks() const { return links.size(); }

private:
  // A block-wise request body (Block1) being collected before it is checked and forwarded.
  struct Upload {
    BlockBody body{Limits{}.maxBodyBytes};
    Clock::time_point lastUsed;
  };

  // Who is on the other end of a DTLS session (from its certificate), and what it holds.
  struct Peer {
    std::string name;    // first SAN DNS name, or the subject CN: the coap.clients identity
    std::string address; // IP without port: per-source limits
    std::string label;   // "name@address:port" for events
    // The certificate as device identity (a device's own certificate names it) and the source:
    // a quarantined device reaches nothing through the proxy either.
    std::string commonName;
    std::vector<policy::SubjectAltName> subjectAltNames;
    std::optional<policy::IpAddress> ip;
    // Which device that is, as of the policy snapshot it was worked out for.
    std::weak_ptr<const policy::PolicySet> identitySet;
    std::optional<policy::DeviceId> identity;
    bool established = false;
    uint32_t pending = 0;                  // forwarded requests waiting for a device
    uint32_t observing = 0;                // observe relationships
    size_t held = 0;                       // bytes of answers libcoap serves to it block by block
    std::map<std::string, Upload> uploads; // by Uri-Path and Request-Tag, as libcoap keys them
    std::deque<Clock::time_point> uploadStarts; // first blocks within kUploadWindow
    bool closing = false;                       // refused beyond every bound: being closed
  };

  // The proxy's CoAP client of one device's server (protocols/coap/upstream.h) and its socket,
  // connected to the device's address and port (so that ICMP errors are reported on it).
  struct Link {
    Link(UpstreamSettings settings, Upstream::Random random)
        : client(settings, std::move(random)) {}
    io::UniqueFd fd;
    Upstream client;
    PeerKey key;
    policy::IpAddress address;
    std::string device;
    std::string label; // "ip:port"
    Clock::time_point lastUsed;
    std::optional<Clock::time_point> wake; // its entry in Proxy::wakes
  };

  // A client's request forwarded to a device, waiting for its answer.
  struct Exchange {
    explicit Exchange(Proxy& p) : owner(p) {}
    Exchange(const Exchange&) = delete;
    Exchange& operator=(const Exchange&) = delete;
    ~Exchange(); // gives back its session's pending slot and the bytes it holds
    Proxy& owner;
    uint64_t id = 0;
    PeerKey link;
    size_t charged = 0;            // bytes held for it: the request body, then the answer
    bool counted = false;          // holds one of its client session's pending slots
    coap_async_t* async = nullptr; // libcoap owns it; valid until it is freed or has fired
    Bytes downToken;
    coap_mid_t downMid = 0;
    coap_session_t* down = nullptr;
    std::string device;
    std::string path;
    std::string peer;
    bool observe = false;     // the client asked to observe
    bool confirmable = false; // the client's request was CON: the answer rides on its ACK
    bool blockwise = false;   // the client asked for a Block2 block: libcoap must cut the body
    bool done = false;
    bool orphaned = false; // its client's session is gone: freed at the loop boundary
    // The answer, once checked.
    uint8_t code = 0;
    std::vector<std::pair<uint16_t, Bytes>> options; // relayed options, in number order
    std::optional<uint16_t> contentFormat;
    std::optional<uint32_t> maxAge;
    Bytes payload;
    bool relation = false; // an observe relationship took over the exchange's id

    // A body libcoap must cut into blocks (RFC 7959): the client asked for a block, or the body
    // is larger than any one datagram to a client should be.
    [[nodiscard]] bool needsBlocks() const {
      return !payload.empty() && (blockwise || payload.size() > 1024);
    }
  };

  // An observe relationship relayed from a device to a client.
  struct Relation {
    uint64_t id = 0;
    PeerKey link;
    coap_session_t* down = nullptr; // referenced while the relation lives
    Bytes downToken;
    std::string device;
    std::string path;
    std::string peer;
    uint32_t sequence = 1;
    std::optional<Clock::time_point> lastConfirmable; // our last CON notification
  };

  // libcoap's callbacks and the loop.
  void process();
  // Runs libcoap's due timers and arms ours for its next one: libcoap 4.3.1 disarms its own
  // timer when the next event it computes is already past by the time it arms it, and then
  // sleeps until some datagram arrives.
  void libcoapTimers();
  void onTimer();
  void armTimer(Clock::time_point at);
  void armNext();
  void sweep(Clock::time_point now);
  void runDeferred();

  void handle(coap_resource_t* r, coap_session_t* s, const coap_pdu_t* req, const coap_string_t* q,
              coap_pdu_t* resp);
  void finish(coap_async_t* async, coap_resource_t* r, coap_session_t* s, const coap_pdu_t* req,
              const coap_string_t* q, coap_pdu_t* resp);
  void nack(coap_session_t* s, const coap_pdu_t* sent, coap_nack_reason_t reason);
  void event(coap_session_t* s, coap_event_t ev);

  // Client certificates (client_certificates.cc).
  int verify(const char* cn, View der, coap_session_t* s, unsigned depth, int validated);
  int setupTls(SSL* ssl);
  static int recordVerify(int ok, X509_STORE_CTX* store) noexcept;
  static int recordVerifyGuarded(int ok, X509_STORE_CTX* store);
  static SSL_verify_cb& libcoapVerify() {
    static SSL_verify_cb cb = nullptr;
    return cb;
  }
  void refuseCertificate(coap_session_t* s, std::string rule, std::string reason);
  // The enrolled device a client is, by its certificate's names or its source address, if any.
  [[nodiscard]] const policy::DevicePolicy*
  deviceOf(Peer& peer, const std::shared_ptr<const policy::PolicySet>& set) const;
  [[nodiscard]] bool quarantinedDevice(Peer& peer,
                                       const std::shared_ptr<const policy::PolicySet>& set,
                                       std::string* which) const;

  // Refusals.
  void refuse(coap_pdu_t* resp, uint8_t code, std::string_view reason);
  // A refusal that says when to try again (Max-Age, RFC 7252 §5.9.3.4 and RFC 8516), counted and
  // reported as rate-limited under `rule`.
  void refuseFor(coap_pdu_t* resp, uint8_t code, uint32_t seconds, const std::string& peer,
                 std::string rule, std::string_view reason);
  // Collects one block of a request body; the whole body once its last block is in, or nullopt
  // when the block is answered (2.31 Continue or a refusal) in `resp`.
  std::optional<Bytes> collect(Peer& peer, coap_session_t* s, const coap_pdu_t* req,
                               const Message& m, coap_pdu_t* resp);
  void released(coap_session_t* s, size_t bytes, bool answer);

  // The devices' side.
  [[nodiscard]] Link* linkFor(const policy::DevicePolicy& d);
  void onLinkReadable(const PeerKey& key);
  // Sends what the device client wants sent and carries out its events; libcoap's timers are
  // run afterwards when an answer went to libcoap.
  void apply(Link& link, UpstreamOutput& out);
  void handleEvent(Link& link, UpstreamEvent e);
  void schedule(Link& link);
  void closeLink(const PeerKey& key);
  void onAnswer(Exchange& ex, Link& link, UpstreamAnswer answer);
  void onFailure(Exchange& ex, UpstreamFailure failure, const std::string& reason);
  void onNotification(Relation& rel, const UpstreamEvent& e);

  // Checks a device's answer against its policy and keeps it in `into`; the refusal, or empty.
  [[nodiscard]] std::string checkResponse(const policy::DevicePolicy* d, UpstreamAnswer& a,
                                          Exchange& into);
  // Answers the client with `code` and `text` instead of the device's answer.
  void fail(Exchange& ex, uint8_t code, std::string_view text);
  // The answer goes to the client: at once when it is small and the request confirmable,
  // otherwise through libcoap's async trigger.
  void deliver(Exchange& ex);
  void addAnswer(coap_pdu_t* pdu, Exchange& ex, bool blocks);
  bool answerNow(Exchange& ex);
  // Ends an exchange whose client is gone or closed without answering it (at the loop boundary:
  // it frees the async, which may release the client's session).
  void abandon(uint64_t id);
  void notify(Relation& rel, const Exchange& answer);
  // Ends relationship `id`; with `code`, the client hears of it first (a notification with an
  // error code ends an observation, RFC 7641 §3.2).
  void endRelation(uint64_t id, std::optional<uint8_t> code = std::nullopt,
                   std::string_view text = {});
  void endRelationsIf(const std::function<bool(const Relation&)>& match,
                      std::optional<uint8_t> code = std::nullopt, std::string_view text = {});
  void dropPeer(coap_session_t* s);
  void closeSession(coap_session_t* s, std::string reason);

  void emit(policy::EventType type, std::string device, std::string peer, std::string rule,
            std::string provision, std::string action, std::string message);
  [[nodiscard]] std::string peerLabel(coap_session_t* s) const;

  io::Reactor& reactor;
  const ProxySettings settings;
  const ProxyHooks hooks;
  ProxyCounters& counters;
  libcoap::Context ctx; // freed first in ~Proxy: libcoap reports its sessions' end to us
  int fd = -1;
  std::unique_ptr<DtlsGate> gate; // in front of the endpoint: see dtls_gate.h
  io::DeviceInterfaces interfaces;
  std::unordered_map<coap_session_t*, Peer> peers;
  std::map<std::string, uint32_t> perSource; // sessions with a verified certificate per IP
  uint32_t verified = 0;
  // Why a handshake's client certificate was refused (the listener key at fault and the reason),
  // until its failure is reported. At most the handshakes libcoap runs at once (a backstop of
  // twice limits.max_handshakes).
  struct Refusal {
    std::string rule;
    std::string reason;
  };
  std::unordered_map<coap_session_t*, Refusal> refusals;

  uint64_t nextId = 1;
  std::map<uint64_t, std::unique_ptr<Exchange>> exchanges;
  std::map<uint64_t, std::unique_ptr<Relation>> relations;
  std::map<std::string, uint32_t> observingPerDevice;
  std::unordered_map<PeerKey, std::unique_ptr<Link>, dtls::PeerKeyHash> links;
  std::set<std::pair<Clock::time_point, Link*>> wakes;
  BodyBudget bodies{0, kMaxBodyBytesTotal}; // every body held now

  // Our own timer: the device clients' deadlines and retransmissions, libcoap's next event and
  // the sweeps (idle sessions, idle links).
  io::UniqueFd timer;
  std::optional<Clock::time_point> armed;
  std::optional<Clock::time_point> libcoapDue;
  Clock::time_point nextSweep{};

  // Done at the loop boundary, never inside libcoap's callbacks for the same session: sessions
  // to close (beyond every bound, idle, a quarantined device) and exchanges whose client left.
  std::vector<std::pair<coap_session_t*, std::string>> closing;
  std::vector<uint64_t> orphans;
  // Events of the device clients that came while libcoap's own code runs (a request handler
  // sending to a device): carried out at the loop boundary, as answers must reach libcoap from
  // outside its callbacks.
  std::vector<std::pair<PeerKey, UpstreamEvent>> pendingEvents;
  int inLibcoap = 0;           // depth of libcoap's processing on the stack
  bool libcoapTouched = false; // an answer went to libcoap outside its own processing

  std::vector<uint16_t> ports;
  // listeners.coap_dtls.crl_file, read at start and again on every reload: libcoap's
  // certificate store (made with its OpenSSL context) asks it, so a reload only swaps its list.
  tls::CrlStore crls;
  X509_STORE* storeOfProxy = nullptr; // where recordVerify finds the proxy

  // libcoap's callbacks (nothing unwinds into libcoap).
  static Proxy* of(coap_session_t* s);
  static void onRequest(coap_resource_t* r, coap_session_t* s, const coap_pdu_t* req,
                        const coap_string_t* q, coap_pdu_t* resp) noexcept;
  static coap_response_t onResponse(coap_session_t*, const coap_pdu_t*, const coap_pdu_t*,
                                    coap_mid_t) noexcept;
  static void onNack(coap_session_t* s, const coap_pdu_t* sent, coap_nack_reason_t reason,
                     coap_mid_t) noexcept;
  static int onEvent(coap_session_t* s, coap_event_t ev) noexcept;
  static int onCertificate(const char* cn, const uint8_t* der, size_t length, coap_session_t* s,
                           unsigned depth, int validated, void* arg) noexcept;
  static int onTlsSetup(void* tls, coap_dtls_pki_t* setup) noexcept;
  static void onReleased(coap_session_t* s, void* body) noexcept;
};

} // namespace iotgw::coap
