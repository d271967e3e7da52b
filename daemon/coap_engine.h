// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Inside the CoAP capability (daemon/coap_service.h): the DTLS proxy (CoapService::Engine:
// libcoap's endpoint, the proxy's checks, observe relays, and the proxy's own CoAP client of each
// device) and the device-side push endpoint (CoapService::DeviceEndpoint). Loop thread only.
//
//   coap_service.cc       the capability: libcoap's context, the loop and timers, sessions, sweeps
//   coap_proxy.cc         a client's request: checks, forwarding, answers
//   coap_observe.cc       observe relays: notifications, ending relationships
//   coap_links.cc         the proxy's clients of devices: sockets, sending, closing a device
//   coap_certificates.cc  client certificates: verification, CRLs, identity
//   coap_push.cc          the device-side endpoint: readings pushed by devices

#include <net/if.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <deque>
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

#include "daemon/coap_dtls_gate.h"
#include "daemon/coap_service.h"
#include "daemon/outcome.h"
#include "policy/decision.h"
#include "policy/events.h"
#include "policy/policy_set.h"
#include "policy/rate_limit.h"
#include "protocols/coap/blockwise.h"
#include "protocols/coap/dtls_admission.h"
#include "protocols/coap/message.h"
#include "protocols/coap/reply.h"
#include "protocols/coap/upstream.h"
#include "protocols/coap/validate.h"
#include "protocols/io/reactor.h"

namespace iotgw::daemon {

namespace coapsvc {

using Clock = std::chrono::steady_clock;
using coap::Bytes;
using coap::View;

inline constexpr const char* kProtocol = "coap";

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

// Random bytes for tokens, message ids and libcoap's jitter (RFC 9175 §4.2: tokens a neighbour
// cannot guess); 1 on success, as libcoap's PRNG hook wants it.
int randomBytes(void* out, size_t len) noexcept;
void randomSpan(std::span<uint8_t> out);

std::string codeText(uint8_t code);
void emitCoap(EventSink& sink, policy::EventType type, std::string device, std::string peer,
              std::string rule, std::string provision, std::string action, std::string message);
std::optional<policy::IpAddress> addressOf(const coap_address_t* a);
std::string labelOf(const coap_address_t* a);
bool isLoopback(const policy::IpAddress& a);
coap::dtls::PeerKey peerKey(const policy::IpAddress& address, uint16_t port);

// Which interfaces device traffic may arrive on: device_segment.interfaces, and loopback for
// sources that are loopback addresses themselves (a process on the gateway; no datagram from a
// network arrives on loopback, and a local process cannot make one from a device's real address
// arrive on a device-segment interface). Interface names are looked up by index and remembered
// for a few seconds, so that an interface created, renamed or removed later is seen.
class DeviceInterfaces {
public:
  explicit DeviceInterfaces(std::vector<std::string> names) : names_(std::move(names)) {}
  // `ifindex` from IP_PKTINFO / IPV6_PKTINFO (0: unknown, refused); `fd` any socket (for ioctl).
  [[nodiscard]] bool allows(int fd, int ifindex, const policy::IpAddress& source,
                            Clock::time_point now);

private:
  struct Entry {
    bool deviceSegment = false;
    bool loopback = false;
    Clock::time_point expires;
  };
  static constexpr size_t kMaxEntries = 256;
  std::vector<std::string> names_;
  std::unordered_map<int, Entry> cache_;
};

// Asks for the arrival interface of every datagram on `fd` (IP_PKTINFO or IPV6_RECVPKTINFO).
[[nodiscard]] bool wantPacketInfo(int fd, int family);
// One datagram with its source and arrival interface; -1 and errno when there is none.
struct Received {
  sockaddr_storage from{};
  socklen_t fromLen = 0;
  int ifindex = 0;
};
ssize_t receiveWithInterface(int fd, uint8_t* buffer, size_t size, Received& r);

// The response code for a request the device's policy refused, by the rule that refused it.
[[nodiscard]] uint8_t codeOfDenial(std::string_view rule);

} // namespace coapsvc

// ------------------------------------------------------------------------------------------------
// The DTLS endpoint and the reverse proxy.

struct CoapService::Engine {
  using Clock = coapsvc::Clock;
  using Bytes = coap::Bytes;
  using View = coap::View;
  using PeerKey = coap::dtls::PeerKey;

  explicit Engine(CoapService& service);
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;
  ~Engine();

  // A block-wise request body (Block1) being collected before it is checked and forwarded.
  struct Upload {
    coap::BlockBody body{coap::Limits{}.maxBodyBytes};
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
    Link(coap::UpstreamSettings settings, coap::Upstream::Random random)
        : client(settings, std::move(random)) {}
    io::UniqueFd fd;
    coap::Upstream client;
    PeerKey key;
    policy::IpAddress address;
    std::string device;
    std::string label; // "ip:port"
    Clock::time_point lastUsed;
    std::optional<Clock::time_point> wake; // its entry in Engine::wakes
  };

  // A client's request forwarded to a device, waiting for its answer.
  struct Exchange {
    explicit Exchange(Engine& e) : owner(e) {}
    Exchange(const Exchange&) = delete;
    Exchange& operator=(const Exchange&) = delete;
    ~Exchange(); // gives back its session's pending slot and the bytes it holds
    Engine& owner;
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
  Outcome start();
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

  // Client certificates (coap_certificates.cc).
  int verify(const char* cn, View der, coap_session_t* s, unsigned depth, int validated);
  static Outcome loadCrls(const std::string& file,
                          std::vector<std::unique_ptr<X509_CRL, decltype(&X509_CRL_free)>>& into);
  int setupTls(SSL* ssl);
  static int recordVerify(int ok, X509_STORE_CTX* store) noexcept;
  static int recordVerifyGuarded(int ok, X509_STORE_CTX* store);
  static SSL_verify_cb& libcoapVerify() {
    static SSL_verify_cb cb = nullptr;
    return cb;
  }
  static STACK_OF(X509_CRL) * lookupCrls(const X509_STORE_CTX* ctx, const X509_NAME* issuer);
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
                               const coap::Message& m, coap_pdu_t* resp);
  void released(coap_session_t* s, size_t bytes, bool answer);

  // The devices' side.
  [[nodiscard]] Link* linkFor(const policy::DevicePolicy& d);
  void onLinkReadable(const PeerKey& key);
  // Sends what the device client wants sent and carries out its events; libcoap's timers are
  // run afterwards when an answer went to libcoap.
  void apply(Link& link, coap::UpstreamOutput& out);
  void handleEvent(Link& link, coap::UpstreamEvent e);
  void schedule(Link& link);
  void closeLink(const PeerKey& key);
  void onAnswer(Exchange& ex, Link& link, coap::UpstreamAnswer answer);
  void onFailure(Exchange& ex, coap::UpstreamFailure failure, const std::string& reason);
  void onNotification(Relation& rel, const coap::UpstreamEvent& e);

  // Checks a device's answer against its policy and keeps it in `into`; the refusal, or empty.
  [[nodiscard]] std::string checkResponse(const policy::DevicePolicy* d, coap::UpstreamAnswer& a,
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
  void closeDevice(const std::string& device);

  void emit(policy::EventType type, std::string device, std::string peer, std::string rule,
            std::string provision, std::string action, std::string message);
  [[nodiscard]] std::string peerLabel(coap_session_t* s) const;

  CoapService& svc;
  coap_context_t* ctx = nullptr;
  int fd = -1;
  std::unique_ptr<DtlsGate> gate; // in front of the endpoint: see coap_dtls_gate.h
  coapsvc::DeviceInterfaces interfaces;
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
  std::unordered_map<PeerKey, std::unique_ptr<Link>, coap::dtls::PeerKeyHash> links;
  std::set<std::pair<Clock::time_point, Link*>> wakes;
  coap::BodyBudget bodies{0, coapsvc::kMaxBodyBytesTotal}; // every body held now

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
  std::vector<std::pair<PeerKey, coap::UpstreamEvent>> pendingEvents;
  int inLibcoap = 0;           // depth of libcoap's processing on the stack
  bool libcoapTouched = false; // an answer went to libcoap outside its own processing

  std::vector<uint16_t> ports;
  std::string certificateFile, keyFile, caFile;
  // listeners.coap_dtls.crl_file, read at start and again on every reload. libcoap's certificate
  // store (made with its OpenSSL context) asks lookupCrls for them, so a reload only swaps this.
  using Crls = std::vector<std::unique_ptr<X509_CRL, decltype(&X509_CRL_free)>>;
  Crls crls;
  X509_STORE* crlStore = nullptr; // the store lookupCrls is installed in
};

// ------------------------------------------------------------------------------------------------
// The device-side endpoint: our own sockets and codec.

struct CoapService::DeviceEndpoint {
  using Clock = coapsvc::Clock;
  using Bytes = coap::Bytes;
  using View = coap::View;

  explicit DeviceEndpoint(CoapService& service);
  DeviceEndpoint(const DeviceEndpoint&) = delete;
  DeviceEndpoint& operator=(const DeviceEndpoint&) = delete;
  ~DeviceEndpoint();

  static constexpr size_t kMaxSources = 4096;
  static constexpr size_t kMaxRecent = 4096;
  static constexpr auto kExchangeLifetime = std::chrono::seconds(60);

  struct Source {
    coap::AmplificationBudget budget;
    Clock::time_point lastSeen;
  };
  // A confirmable push seen recently: its answer, once there is one (deduplication, RFC 7252 §4.5).
  struct Recent {
    Bytes reply;
    Clock::time_point expires;
  };
  // A device's budget for pushes: its policy's [mqtt.rate] (5.10-1), as its MQTT session has.
  struct Rate {
    policy::RateLimit settings;
    policy::MessageRateLimiter limiter;
  };

  using RecentKey = std::pair<std::string, uint16_t>; // "ip:port", message id

  CoapService& svc;
  std::vector<io::UniqueFd> sockets;
  coapsvc::DeviceInterfaces interfaces;
  std::unordered_map<std::string, Source> sources; // unauthenticated sources by IP
  std::map<RecentKey, Recent> recent;
  // The same entries by expiry (one lifetime for all: insertion order), so that pruning looks at
  // the expired ones only. An entry replaced in `recent` leaves a stale one here, skipped.
  std::deque<std::pair<Clock::time_point, RecentKey>> recentOrder;
  std::unordered_map<std::string, Rate> rates;     // by device id
  std::weak_ptr<const policy::PolicySet> ratesFor; // the snapshot `rates` was pruned against
  uint8_t buffer[2048];

  Outcome start();
  void onReadable(int fd);
  // `size` is the datagram's real size; `datagram` holds at most the buffer's worth of it.
  void handle(int fd, const sockaddr_storage& from, socklen_t fromLen, View datagram, size_t size);
  // Sends to a device (no budget), or to an unknown source within its 3x budget.
  void send(int fd, const sockaddr_storage& to, socklen_t toLen, const Bytes& bytes,
            Source* budget);
  Source& sourceFor(const std::string& ip, Clock::time_point now);
  // Remembers a confirmable push's answer (empty while it waits for the broker); at most
  // kMaxRecent entries, the oldest forgotten first.
  void remember(const RecentKey& key, Bytes reply, Clock::time_point now);
  void pruneRecent(Clock::time_point now);
  // Charges a push to its device's budget: the refusal, or nullopt when it may go.
  [[nodiscard]] std::optional<policy::Decision>
  charge(const policy::DevicePolicy& d, const std::shared_ptr<const policy::PolicySet>& set,
         size_t bytes, Clock::time_point now);
  void forget(const std::string& device);
  void emit(policy::EventType type, std::string device, std::string peer, std::string rule,
            std::string provision, std::string action, std::string message);
};

} // namespace iotgw::daemon
