// SPDX-License-Identifier: GPL-3.0-or-later
#include "daemon/coap_service.h"

#include <arpa/inet.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <unordered_map>

#include <coap3/coap.h>
#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "daemon/coap_dtls_gate.h"
#include "daemon/mqtt_service.h"
#include "policy/evaluator.h"
#include "policy/topic.h"
#include "protocols/coap/blockwise.h"
#include "protocols/coap/message.h"
#include "protocols/coap/reply.h"
#include "protocols/coap/validate.h"
#include "protocols/io/socket.h"

namespace iotgw::daemon {

using policy::Event;
using policy::EventType;
using Clock = std::chrono::steady_clock;

namespace {

constexpr const char* kProtocol = "coap";

// Datagrams inside DTLS sessions that libcoap could not parse as CoAP: it drops them before any
// handler runs and says so only in its log, so the log handler counts them (one process, one
// loop thread: a plain counter).
uint64_t g_discardedPdus = 0;

// libcoap logs to stderr by default; only its errors are worth an operator's attention, and
// IOTGW_COAP_DEBUG=1 shows everything (for debugging the proxy, never in production).
void logHandler(coap_log_t level, const char* message) {
  if (level == LOG_WARNING && std::strstr(message, "discard malformed PDU") != nullptr) {
    ++g_discardedPdus;
  }
  if (level <= LOG_ERR || std::getenv("IOTGW_COAP_DEBUG") != nullptr) {
    fmt::print(stderr, "libcoap: {}", message);
  }
}

// Random bytes from the kernel, drawn 256 at a time: libcoap wants one byte for the jitter of
// every confirmable message it sends, and every forwarded request needs an unpredictable token
// (RFC 9175 §4.2), which would otherwise cost a getrandom call per request. Loop thread only.
int randomBytes(void* out, size_t len) {
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

using coap::Bytes;
using coap::View;

Bytes tokenOf(const coap_pdu_t* pdu) {
  const coap_bin_const_t t = coap_pdu_get_token(pdu);
  return Bytes(t.s, t.s + t.length);
}

coap_bin_const_t binOf(const Bytes& b) { return coap_bin_const_t{b.size(), b.data()}; }

bool hasOption(const coap_pdu_t* pdu, uint16_t number) {
  coap_opt_iterator_t it;
  return coap_check_option(pdu, number, &it) != nullptr;
}

// A libcoap PDU as our codec's message: views into the PDU, which must outlive it. The payload is
// the PDU's own (one block of a block-wise body); the Block1 option describes nothing we forward
// and is left out when `dropBlock1`.
coap::Message toMessage(const coap_pdu_t* pdu, bool dropBlock1) {
  coap::Message m;
  m.type = static_cast<coap::Type>(coap_pdu_get_type(pdu));
  m.code = static_cast<uint8_t>(coap_pdu_get_code(pdu));
  m.messageId = static_cast<uint16_t>(coap_pdu_get_mid(pdu));
  const coap_bin_const_t t = coap_pdu_get_token(pdu);
  m.token = View(t.s, t.length);
  coap_opt_iterator_t it;
  coap_option_iterator_init(pdu, &it, COAP_OPT_ALL);
  while (coap_opt_t* o = coap_option_next(&it)) {
    if (dropBlock1 && it.number == COAP_OPTION_BLOCK1) {
      continue;
    }
    m.options.push_back({static_cast<uint16_t>(it.number),
                         View(coap_opt_value(o), coap_opt_length(o))});
  }
  size_t len = 0, offset = 0, total = 0;
  const uint8_t* data = nullptr;
  if (coap_get_data_large(pdu, &len, &data, &offset, &total) && data != nullptr) {
    m.payload = View(data, len);
  }
  return m;
}

uint8_t codeOfDenial(std::string_view rule) {
  if (rule == "coap.max_payload_bytes") {
    return coap::codes::kRequestEntityTooLarge;
  }
  if (rule == "coap.content_formats") {
    return coap::codes::kUnsupportedContentFormat;
  }
  return coap::codes::kForbidden;
}

std::string codeText(uint8_t code) { return fmt::format("{}.{:02}", code >> 5, code & 0x1f); }

void emitCoap(EventSink& sink, EventType type, std::string device, std::string peer,
              std::string rule, std::string provision, std::string action, std::string message) {
  Event e;
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

// What one DTLS client may make the gateway hold besides its observe relationships and pending
// requests (limits.coap_max_*): block-wise bodies being collected from it, bodies libcoap serves
// to it block by block, and libcoap's own record of each block-wise upload it starts, which
// libcoap keeps for MAX_TRANSMIT_WAIT (RFC 7252: 93 s) whether or not the upload is accepted.
constexpr size_t kMaxUploadsPerSession = 4;
constexpr size_t kMaxUploadStartsPerWindow = 64; // beyond: 4.29; beyond twice that: closed
constexpr auto kUploadWindow = std::chrono::seconds(93);
constexpr size_t kMaxHeldPerSession = 256 * 1024; // answer bodies in libcoap's hands
constexpr int kHeldSeconds = 8;                   // libcoap drops a fully sent body after this
// Every body the proxy holds at once, all sessions and devices together.
constexpr size_t kMaxBodyBytesTotal = 16 * 1024 * 1024;

// Heap copies of bodies handed to libcoap's large-data calls, released when it is done with them
// (the release callback below gives the charge back).
struct HeldBody {
  Bytes data;
  bool answer = false; // served to the client session it was added for (counted per session)
};

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

// Why a verified client certificate (the DER at depth 0) is still no client certificate, or empty.
std::string clientCertificateProblem(View der) {
  const unsigned char* p = der.data();
  std::unique_ptr<X509, decltype(&X509_free)> x(
      d2i_X509(nullptr, &p, static_cast<long>(der.size())), X509_free);
  if (!x) {
    ERR_clear_error();
    return "the client certificate cannot be read";
  }
  if (X509_check_ca(x.get()) != 0) {
    return "the client presented a CA certificate (basicConstraints CA:TRUE), not its own";
  }
  if ((X509_get_extension_flags(x.get()) & EXFLAG_XKUSAGE) == 0 ||
      (X509_get_extended_key_usage(x.get()) & XKU_SSL_CLIENT) == 0) {
    return "the client certificate is not for TLS clients (no clientAuth extended key usage)";
  }
  return {};
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

} // namespace

// ------------------------------------------------------------------------------------------------
// The DTLS endpoint and the reverse proxy (libcoap).

struct CoapService::Engine {
  explicit Engine(CoapService& service) : svc(service) {}
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
    std::string name;    // first SAN DNS name, or the subject CN
    std::string address; // IP without port: per-source limits
    std::string label;   // "name@address:port" for events
    bool established = false;
    uint32_t pending = 0;   // forwarded requests waiting for a device
    uint32_t observing = 0; // observe relationships
    size_t held = 0;        // bytes of answers libcoap serves to it block by block
    std::map<std::string, Upload> uploads;      // by Uri-Path and Request-Tag, as libcoap keys them
    std::deque<Clock::time_point> uploadStarts; // first blocks within kUploadWindow
    bool closing = false;                       // refused beyond every bound: being closed
  };

  // A request forwarded to a device and waiting for its answer.
  struct Exchange {
    explicit Exchange(Engine& e) : owner(e) {}
    Exchange(const Exchange&) = delete;
    Exchange& operator=(const Exchange&) = delete;
    ~Exchange(); // gives back its session's pending slot and the bytes it holds
    Engine& owner;
    size_t charged = 0;   // bytes of the device's block-wise answer collected in `payload`
    bool counted = false; // holds one of its client session's pending slots
    coap_async_t* async = nullptr; // libcoap owns it; valid until the trigger has run
    Bytes upToken;
    Bytes downToken;
    coap_mid_t downMid = 0;
    coap_session_t* down = nullptr;
    coap_session_t* up = nullptr;
    std::string device;
    std::string path;
    std::string peer;
    bool observe = false; // the client asked to observe
    bool confirmable = false; // the client's request was CON: the answer rides on its ACK
    bool blockwise = false;   // the client asked for a Block2 block: libcoap must cut the body
    Clock::time_point deadline;
    bool done = false;
    // The answer, once checked.
    uint8_t code = 0;
    std::vector<std::pair<uint16_t, Bytes>> options; // relayed options, in number order
    std::optional<uint16_t> contentFormat;
    std::optional<uint32_t> maxAge;
    Bytes payload;
    bool relation = false; // an observe relationship took over the upstream token
    std::string failure;   // why the device gave no answer, when it is known before the guard

    // A body libcoap must cut into blocks (RFC 7959): the client asked for a block, or the body
    // is larger than any one datagram to a client should be.
    [[nodiscard]] bool needsBlocks() const {
      return !payload.empty() && (blockwise || payload.size() > 1024);
    }
  };

  // An observe relationship relayed from a device to a client.
  struct Relation {
    coap_session_t* down = nullptr; // referenced while the relation lives
    coap_session_t* up = nullptr;
    Bytes downToken;
    std::string device;
    std::string path;
    std::string peer;
    uint32_t sequence = 1;
  };

  CoapService& svc;
  coap_context_t* ctx = nullptr;
  int fd = -1;
  std::unique_ptr<DtlsGate> gate; // in front of the endpoint: see coap_dtls_gate.h
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
  void refuseCertificate(coap_session_t* s, std::string rule, std::string reason);
  std::map<Bytes, std::unique_ptr<Exchange>> exchanges; // by upstream token
  std::map<Bytes, std::unique_ptr<Relation>> relations; // by upstream token
  // A device's address and port → our client session to it (keyed by bytes: looked up for every
  // forwarded request).
  std::unordered_map<coap::dtls::PeerKey, coap_session_t*, coap::dtls::PeerKeyHash> upstreams;
  size_t bodyBytes = 0; // every body held now (kMaxBodyBytesTotal)
  // Done at the loop boundary, never inside libcoap's callbacks for the same session: clients
  // closed for going beyond every bound, and sessions to devices whose block-wise answer ran past
  // the body limit (libcoap would go on asking for more blocks).
  std::vector<coap_session_t*> closing;
  std::vector<coap_session_t*> dropping;
  std::vector<uint16_t> ports;
  std::string certificateFile, keyFile, caFile;
  // listeners.coap_dtls.crl_file, read at start and again on every reload. libcoap's certificate
  // store (made with its OpenSSL context) asks lookupCrls for them, so a reload only swaps this.
  using Crls = std::vector<std::unique_ptr<X509_CRL, decltype(&X509_CRL_free)>>;
  Crls crls;
  X509_STORE* crlStore = nullptr; // the store lookupCrls is installed in

  std::string start();
  void process();
  void rearm();

  // libcoap's callbacks (static trampolines below).
  void handle(coap_resource_t* r, coap_session_t* s, const coap_pdu_t* req, const coap_string_t* q,
              coap_pdu_t* resp);
  void finish(coap_async_t* async, coap_resource_t* r, coap_session_t* s, const coap_pdu_t* req,
              const coap_string_t* q, coap_pdu_t* resp);
  coap_response_t response(coap_session_t* s, const coap_pdu_t* rcv);
  void nack(coap_session_t* s, const coap_pdu_t* sent, coap_nack_reason_t reason);
  void event(coap_session_t* s, coap_event_t ev);
  int verify(const char* cn, View der, coap_session_t* s, unsigned depth, int validated);
  // Reads every CRL in `file` (none: crl_file not set); the error names what failed.
  static std::string loadCrls(const std::string& file, Crls& into);
  int setupTls(SSL* ssl);
  // libcoap's certificate verify callback, with what OpenSSL refused recorded for the event.
  static int recordVerify(int ok, X509_STORE_CTX* store);
  static SSL_verify_cb& libcoapVerify() {
    static SSL_verify_cb cb = nullptr;
    return cb;
  }
  static STACK_OF(X509_CRL) * lookupCrls(const X509_STORE_CTX* ctx, const X509_NAME* issuer);

  void refuse(coap_pdu_t* resp, uint8_t code, std::string_view reason);
  // A refusal that says when to try again (Max-Age, RFC 7252 §5.9.3.4 and RFC 8516), counted and
  // reported as rate-limited under `rule`.
  void refuseFor(coap_pdu_t* resp, uint8_t code, uint32_t seconds, const std::string& peer,
                 std::string rule, std::string_view reason);
  // Collects one block of a request body; the whole body once its last block is in, or nullopt
  // when the block is answered (2.31 Continue or a refusal) in `resp`.
  std::optional<Bytes> collect(Peer& peer, coap_session_t* s, const coap_pdu_t* req,
                               const coap::Message& m, coap_pdu_t* resp);
  void released(coap_session_t* s, const HeldBody& body);
  void runDeferred();
  void emit(EventType type, std::string device, std::string peer, std::string rule,
            std::string provision, std::string action, std::string message);
  [[nodiscard]] std::string peerLabel(coap_session_t* s) const;
  [[nodiscard]] coap_session_t* upstreamFor(const policy::DevicePolicy& d);
  // Checks a device's response against its policy; the refusal reason, or empty. `collected`:
  // the body is in `into` already (a block-wise answer), not in `rcv`.
  [[nodiscard]] std::string checkResponse(const policy::DevicePolicy* d, const coap_pdu_t* rcv,
                                          Exchange& into, bool collected);
  // Answers the client with `code` and `text` instead of the device's answer.
  void fail(Exchange& ex, uint8_t code, std::string_view text);
  void notify(Relation& rel, const Exchange& answer);
  // Adds a checked answer's Observe (when it opened a relationship), options and, unless
  // libcoap is to cut the body into blocks, the body to `pdu`.
  void addAnswer(coap_pdu_t* pdu, Exchange& ex, bool blocks);
  // Sends a small answer to the client at once, without waiting for libcoap's async trigger.
  bool answerNow(Exchange& ex);
  void endRelation(const Bytes& upToken);
  // Ends every relationship `match` picks (a session's, a device's, one client token's).
  void endRelationsIf(const std::function<bool(const Relation&)>& match);
  std::map<Bytes, std::unique_ptr<Relation>>::iterator
  eraseRelation(std::map<Bytes, std::unique_ptr<Relation>>::iterator it);
  void dropPeer(coap_session_t* s);
  void closeDevice(const std::string& device);
};

namespace {

CoapService::Engine* engineOf(coap_session_t* s) {
  return static_cast<CoapService::Engine*>(coap_get_app_data(coap_session_get_context(s)));
}

void onRequest(coap_resource_t* r, coap_session_t* s, const coap_pdu_t* req,
               const coap_string_t* q, coap_pdu_t* resp) {
  engineOf(s)->handle(r, s, req, q, resp);
}

coap_response_t onResponse(coap_session_t* s, const coap_pdu_t*, const coap_pdu_t* rcv,
                           const coap_mid_t) {
  return engineOf(s)->response(s, rcv);
}

void onNack(coap_session_t* s, const coap_pdu_t* sent, const coap_nack_reason_t reason,
            const coap_mid_t) {
  engineOf(s)->nack(s, sent, reason);
}

int onEvent(coap_session_t* s, const coap_event_t ev) {
  engineOf(s)->event(s, ev);
  return 0;
}

// libcoap is done with a body handed to one of its large-data calls.
void releaseHeld(coap_session_t* s, void* body) {
  std::unique_ptr<HeldBody> held(static_cast<HeldBody*>(body));
  engineOf(s)->released(s, *held);
}

int onCertificate(const char* cn, const uint8_t* der, size_t length, coap_session_t* s,
                  unsigned depth, int validated, void* arg) {
  return static_cast<CoapService::Engine*>(arg)->verify(cn, View(der, der != nullptr ? length : 0),
                                                         s, depth, validated);
}

// libcoap's hook after it set up a server session's SSL (openssl variant: an SSL*).
int onTlsSetup(void* tls, coap_dtls_pki_t* setup) {
  return static_cast<CoapService::Engine*>(setup->cn_call_back_arg)->setupTls(static_cast<SSL*>(tls));
}

} // namespace

CoapService::Engine::Exchange::~Exchange() {
  owner.bodyBytes -= charged;
  if (counted) {
    // The async holds the client's session until the exchange ends: `down` is still that session.
    if (auto p = owner.peers.find(down); p != owner.peers.end() && p->second.pending > 0) {
      --p->second.pending;
    }
  }
}

void CoapService::Engine::released(coap_session_t* s, const HeldBody& body) {
  bodyBytes -= std::min(bodyBytes, body.data.size());
  if (body.answer) {
    if (auto p = peers.find(s); p != peers.end()) {
      p->second.held -= std::min(p->second.held, body.data.size());
    }
  }
}

void CoapService::Engine::refuseFor(coap_pdu_t* resp, uint8_t code, uint32_t seconds,
                                    const std::string& peer, std::string rule,
                                    std::string_view reason) {
  ++svc.stats_.rateLimited;
  emit(EventType::RateLimited, "", peer, std::move(rule), "5.9-3", "refuse",
       fmt::format("CoAP request refused with {}: {}", codeText(code), reason));
  uint8_t buf[4];
  coap_add_option(resp, COAP_OPTION_MAXAGE, coap_encode_var_safe(buf, sizeof buf, seconds), buf);
  refuse(resp, code, reason);
}

void CoapService::Engine::runDeferred() {
  for (coap_session_t* up : std::exchange(dropping, {})) {
    const auto it = std::find_if(upstreams.begin(), upstreams.end(),
                                 [up](const auto& kv) { return kv.second == up; });
    if (it == upstreams.end()) {
      continue;
    }
    // Failing the session cancels what was sent on it (each waiting request is answered at once
    // through the nack handler), and releasing it frees libcoap's state for it, the block-wise
    // answer in progress with it. The next request to the device opens a new session.
    upstreams.erase(it);
    endRelationsIf([up](const Relation& r) { return r.up == up; });
    coap_session_disconnected(up, COAP_NACK_NOT_DELIVERABLE);
    for (auto& [token, ex] : exchanges) {
      if (ex->up == up) {
        ex->up = nullptr;
      }
    }
    coap_session_release(up);
  }
  for (coap_session_t* s : std::exchange(closing, {})) {
    auto p = peers.find(s);
    if (p == peers.end()) {
      continue; // gone already
    }
    ++svc.stats_.sessionsClosed;
    emit(EventType::RateLimited, "", p->second.label, "coap.block1", "5.9-3", "close",
         "DTLS session closed: it went on starting block-wise uploads after 4.29");
    endRelationsIf([s](const Relation& r) { return r.down == s; });
    // Nothing may be sent on the session once it is failed (libcoap would start a client
    // handshake on it): its requests still waiting for devices are dropped with it, and the
    // devices' answers to them are reset.
    for (auto it = exchanges.begin(); it != exchanges.end();) {
      if (it->second->down == s && it->second->async != nullptr) {
        coap_free_async(s, it->second->async);
        it = exchanges.erase(it);
      } else {
        ++it;
      }
    }
    coap_session_disconnected(s, COAP_NACK_TLS_FAILED);
  }
}

CoapService::Engine::~Engine() {
  if (fd >= 0) {
    svc.reactor_.remove(fd);
  }
  // Our references first, so that freeing the context frees the sessions.
  for (auto& [token, rel] : relations) {
    coap_session_release(rel->down);
  }
  relations.clear();
  exchanges.clear();
  if (ctx != nullptr) {
    coap_free_context(ctx);
  }
}

std::string CoapService::Engine::start() {
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
      return "cannot create the CoAP context";
    }
    if (std::string err = gate->attach(ctx, recorder.created()); !err.empty()) {
      return err;
    }
  }
  coap_set_app_data(ctx, this);
  // libcoap does the block-wise exchanges (RFC 7959) but hands over every block: in single-body
  // mode it would collect bodies of any size a client or device sends (and allocate what a
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
  if (std::string err = loadCrls(c.coapDtls.crlFile.string(), crls); !err.empty()) {
    return err;
  }
  // Revocation is switched on per session by setupTls while there are CRLs (a reload may add or
  // drop crl_file); allow_no_crl and allow_expired_crl stay 0: a client whose issuer has no CRL
  // in the file, or whose CRL has expired, fails the handshake like a revoked one.
  pki.additional_tls_setup_call_back = onTlsSetup;
  if (coap_context_set_pki(ctx, &pki) == 0) {
    return fmt::format("cannot load the DTLS certificate {}, key {} or CA {}", certificateFile, keyFile,
                       caFile);
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
      return fmt::format("cannot bind CoAP over DTLS to {}", io::endpointLabel(a, c.coapDtls.port));
    }
    if (std::string err = gate->addEndpoint(coap_context_get_coap_fd(ctx), before); !err.empty()) {
      return err;
    }
    ports.push_back(c.coapDtls.port);
  }
  coap_resource_t* proxy = coap_resource_unknown_init2(onRequest, 0);
  for (coap_request_t m : {COAP_REQUEST_GET, COAP_REQUEST_POST, COAP_REQUEST_PUT, COAP_REQUEST_DELETE,
                           COAP_REQUEST_FETCH, COAP_REQUEST_PATCH, COAP_REQUEST_IPATCH}) {
    coap_register_request_handler(proxy, m, onRequest);
  }
  coap_add_resource(ctx, proxy);

  fd = coap_context_get_coap_fd(ctx);
  if (fd < 0) {
    return "libcoap has no epoll descriptor";
  }
  if (svc.reactor_.add(fd, EPOLLIN, [this](uint32_t) { process(); })) {
    fd = -1;
    return "cannot watch the CoAP descriptor";
  }
  rearm();
  return {};
}

// libcoap's descriptor is an epoll set of its own sockets and a timerfd that
// coap_io_prepare_epoll arms for its next retransmission, async guard or session expiry.
//
// coap_io_process would arm that timer before it looks for events as well as after handling
// them; the events are read here and handed to coap_io_do_epoll, which handles them, runs the
// due timers (async guards, retransmissions) and arms the timer once. The DTLS gate sees the
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
      rearm(); // cannot happen on a valid descriptor; keep the timers running regardless
      break;
    }
    const size_t pass = gate->screen(events, static_cast<size_t>(ready));
    coap_io_do_epoll(ctx, events, pass);
    gate->endBatch();
    if (!closing.empty() || !dropping.empty()) {
      runDeferred();
      rearm();
    }
    if (ready < kBatch) {
      break;
    }
  }
  if (const uint64_t n = g_discardedPdus - discarded; n > 0) {
    svc.stats_.malformed += n;
    emit(EventType::MalformedPacket, "", "", "coap.message", "5.13-1", "drop",
         fmt::format("{} malformed CoAP datagram{} in DTLS sessions dropped", n, n == 1 ? "" : "s"));
  }
}

void CoapService::Engine::rearm() {
  coap_tick_t now = 0;
  coap_ticks(&now);
  (void)coap_io_prepare_epoll(ctx, now);
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

int CoapService::Engine::verify(const char* cn, View der, coap_session_t* s, unsigned depth,
                                int validated) {
  if (validated == 0) {
    return 0;
  }
  if (depth != 0) {
    return 1; // the CA: OpenSSL has checked the chain
  }
  // OpenSSL takes the CA's own certificate, presented by whoever holds its key, as a valid chain
  // of one, and leaves the extended key usage to the purpose check, which lets a certificate
  // without one through: a client must show an end-entity certificate issued for TLS clients.
  if (std::string problem = clientCertificateProblem(der); !problem.empty()) {
    refuseCertificate(s, "listeners.coap_dtls.client_certificate", std::move(problem));
    return 0;
  }
  if (peers.contains(s)) {
    return 1; // renegotiation: counted already
  }
  const auto& limits = svc.config_->limits;
  const auto* remote = coap_session_get_addr_remote(s);
  const auto ip = addressOf(remote);
  const std::string source = ip ? ip->str() : "?";
  const std::string label = fmt::format("{}@{}", cn != nullptr ? cn : "?", labelOf(remote));
  const char* limit = nullptr;
  if (verified >= limits.maxConnections) {
    limit = "limits.max_connections";
  } else if (perSource[source] >= limits.maxConnectionsPerSource) {
    limit = "limits.max_connections_per_source";
  }
  if (limit != nullptr) {
    ++svc.stats_.sessionsRefused;
    emit(EventType::RateLimited, "", label, limit, "5.9-3", "refuse",
         "DTLS session refused: limit reached");
    return 0;
  }
  ++verified;
  ++perSource[source];
  Peer peer;
  peer.name = cn != nullptr ? cn : "";
  peer.address = source;
  peer.label = label;
  peers.emplace(s, std::move(peer));
  return 1;
}

std::string CoapService::Engine::loadCrls(const std::string& file, Crls& into) {
  into.clear();
  if (file.empty()) {
    return {};
  }
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_file(file.c_str(), "r"), BIO_free);
  if (!bio) {
    ERR_clear_error();
    return fmt::format("cannot read the DTLS listener's CRL {}", file);
  }
  while (X509_CRL* crl = PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr)) {
    into.emplace_back(crl, X509_CRL_free);
  }
  const unsigned long last = ERR_peek_last_error();
  ERR_clear_error();
  if (into.empty() || (last != 0 && ERR_GET_REASON(last) != PEM_R_NO_START_LINE)) {
    into.clear();
    return fmt::format("the DTLS listener's CRL {} holds no valid PEM CRL", file);
  }
  return {};
}

namespace {
int crlIndex() {
  static const int index = X509_STORE_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}
} // namespace

// OpenSSL's verifier asks for the CRLs of a certificate's issuer; the caller frees the stack and
// drops one reference of each CRL in it.
STACK_OF(X509_CRL) * CoapService::Engine::lookupCrls(const X509_STORE_CTX* ctx,
                                                      const X509_NAME* issuer) {
  STACK_OF(X509_CRL)* out = sk_X509_CRL_new_null();
  const auto* e = static_cast<const Engine*>(
      X509_STORE_get_ex_data(X509_STORE_CTX_get0_store(ctx), crlIndex()));
  if (out == nullptr || e == nullptr) {
    return out;
  }
  for (const auto& crl : e->crls) {
    if (X509_NAME_cmp(X509_CRL_get_issuer(crl.get()), issuer) == 0 &&
        X509_CRL_up_ref(crl.get()) == 1 && sk_X509_CRL_push(out, crl.get()) == 0) {
      X509_CRL_free(crl.get());
    }
  }
  return out;
}

int CoapService::Engine::setupTls(SSL* ssl) {
  X509_STORE* store = SSL_CTX_get_cert_store(SSL_get_SSL_CTX(ssl));
  if (store == nullptr) {
    return 0;
  }
  if (store != crlStore) {
    if (crlIndex() < 0 || X509_STORE_set_ex_data(store, crlIndex(), this) != 1) {
      ERR_clear_error();
      return 0; // no session without the revocation check
    }
    X509_STORE_set_lookup_crls(store, lookupCrls);
    crlStore = store;
  }
  if (!crls.empty() && X509_VERIFY_PARAM_set_flags(SSL_get0_param(ssl), X509_V_FLAG_CRL_CHECK) != 1) {
    ERR_clear_error();
    return 0;
  }
  // libcoap has just installed its verify callback (which calls ours only for chains OpenSSL
  // accepted); ours goes around it to learn why OpenSSL refused the others.
  if (SSL_verify_cb cb = SSL_get_verify_callback(ssl); cb != nullptr && cb != recordVerify) {
    libcoapVerify() = cb;
    SSL_set_verify(ssl, SSL_get_verify_mode(ssl), recordVerify);
  }
  return 1;
}

int CoapService::Engine::recordVerify(int ok, X509_STORE_CTX* store) {
  const SSL_verify_cb inner = libcoapVerify();
  ok = inner != nullptr ? inner(ok, store) : ok;
  if (ok != 0) {
    return ok;
  }
  auto* ssl = static_cast<SSL*>(
      X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  auto* e = static_cast<Engine*>(
      X509_STORE_get_ex_data(X509_STORE_CTX_get0_store(store), crlIndex()));
  auto* s = ssl != nullptr ? static_cast<coap_session_t*>(SSL_get_app_data(ssl)) : nullptr;
  if (e == nullptr || s == nullptr || e->refusals.contains(s)) {
    return ok; // ours gave the reason already (CERT_REJECTED)
  }
  const int err = X509_STORE_CTX_get_error(store);
  const bool crl = err == X509_V_ERR_CERT_REVOKED || err == X509_V_ERR_UNABLE_TO_GET_CRL ||
                   err == X509_V_ERR_CRL_HAS_EXPIRED || err == X509_V_ERR_CRL_NOT_YET_VALID;
  e->refuseCertificate(s, crl ? "listeners.coap_dtls.crl_file" : "listeners.coap_dtls.ca_file",
                       fmt::format("the client certificate does not verify: {} (depth {})",
                                   X509_verify_cert_error_string(err),
                                   X509_STORE_CTX_get_error_depth(store)));
  return ok;
}

void CoapService::Engine::refuseCertificate(coap_session_t* s, std::string rule,
                                            std::string reason) {
  if (refusals.size() < 2 * static_cast<size_t>(svc.config_->limits.maxHandshakes) + 1) {
    refusals[s] = Refusal{std::move(rule), std::move(reason)}; // reported at DTLS_ERROR
  }
}

void CoapService::Engine::dropPeer(coap_session_t* s) {
  auto it = peers.find(s);
  if (it == peers.end()) {
    return;
  }
  endRelationsIf([s](const Relation& r) { return r.down == s; }); // they end with the session
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
    return; // our own sessions to devices
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

void CoapService::Engine::refuse(coap_pdu_t* resp, uint8_t code, std::string_view reason) {
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

coap_session_t* CoapService::Engine::upstreamFor(const policy::DevicePolicy& d) {
  const auto& address = d.addresses.front();
  const uint16_t port = d.coapRules.port;
  coap::dtls::PeerKey key;
  if (address.family == AF_INET6) {
    key = coap::dtls::PeerKey::v6(address.bytes, port);
  } else {
    std::array<uint8_t, 4> v4;
    std::copy_n(address.bytes.begin(), v4.size(), v4.begin());
    key = coap::dtls::PeerKey::v4(v4, port);
  }
  if (auto it = upstreams.find(key); it != upstreams.end()) {
    return it->second;
  }
  coap_address_t dst;
  coap_address_init(&dst);
  sockaddr_storage ss{};
  const socklen_t len = io::toSockaddr(address, port, ss);
  std::memcpy(&dst.addr, &ss, len);
  dst.size = len;
  coap_session_t* s = coap_new_client_session(ctx, nullptr, &dst, COAP_PROTO_UDP);
  if (s == nullptr) {
    return nullptr;
  }
  // Retransmit within the guard time: 1 s, then 2 s (RFC 7252's defaults would go on for 45 s).
  coap_session_set_ack_timeout(s, coap_fixed_point_t{1, 0});
  coap_session_set_max_retransmit(s, 2);
  upstreams.emplace(key, s);
  return s;
}

void CoapService::Engine::handle(coap_resource_t* r, coap_session_t* s, const coap_pdu_t* req,
                                 const coap_string_t* q, coap_pdu_t* resp) {
  const Bytes token = tokenOf(req);
  if (coap_async_t* async = coap_find_async(s, binOf(token))) {
    finish(async, r, s, req, q, resp);
    return;
  }
  ++svc.stats_.requests;
  const std::string peer = peerLabel(s);
  const auto peerIt = peers.find(s);
  if (peerIt == peers.end()) {
    ++svc.stats_.denied; // cannot happen on a DTLS endpoint with verify_peer_cert
    refuse(resp, coap::codes::kUnauthorized, "no client certificate");
    return;
  }
  Peer& client = peerIt->second;
  if (client.closing) {
    refuse(resp, coap::codes::kServiceUnavailable, "the session is being closed");
    return;
  }
  coap::Limits limits;
  limits.maxPayloadBytes = limits.maxBodyBytes; // the device's own limit is its policy's
  coap::Message m = toMessage(req, true);
  auto v = coap::validateRequest(m, limits);
  if (!v) {
    ++svc.stats_.malformed;
    emit(EventType::MalformedPacket, "", peer, v.error().rule, "5.13-1", "refuse",
         fmt::format("CoAP request refused with {}: {}", codeText(v.error().code), v.error().reason));
    refuse(resp, v.error().code, v.error().reason);
    return;
  }
  const auto policies = svc.policies_();
  const auto id = v->segments.empty() ? std::nullopt : policy::DeviceId::parse(v->segments[0]);
  const policy::DevicePolicy* device = id ? policies->find(*id) : nullptr;
  if (device == nullptr) {
    ++svc.stats_.denied;
    emit(EventType::AccessDenied, "", peer, "coap.target", "5.13-1", "refuse",
         fmt::format("CoAP request for {} names no enrolled device", v->path));
    refuse(resp, coap::codes::kNotFound, "no such device: the path starts with a device id");
    return;
  }
  const std::string deviceName = device->id.str();
  if (svc.quarantined_ && svc.quarantined_(device->id)) {
    ++svc.stats_.denied;
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
      ++svc.stats_.denied;
      const uint8_t code = codeOfDenial(decision.rule);
      emit(EventType::AccessDenied, deviceName, peer, decision.rule,
           std::string(decision.provision), "refuse",
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
    ++svc.stats_.denied;
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
  const auto& lim = svc.config_->limits;
  const auto guardSeconds = static_cast<uint32_t>((lim.coapRequestTimeout.count() + 999) / 1000);
  if (client.pending >= lim.coapMaxPendingPerSession) {
    refuseFor(resp, coap::codes::kTooManyRequests, guardSeconds, peer,
              "limits.coap_max_pending_per_session", "too many requests waiting for devices");
    return;
  }
  if (client.held >= kMaxHeldPerSession) {
    refuseFor(resp, coap::codes::kTooManyRequests, kHeldSeconds, peer, "coap.block2",
              "too many block-wise answers not yet fetched");
    return;
  }
  if (bodyBytes + m.payload.size() > kMaxBodyBytesTotal) {
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
  if (observe && (client.observing >= lim.coapMaxObservePerSession ||
                  relations.size() >= lim.coapMaxObserve)) {
    observe = false;
    ++svc.stats_.observeRefused;
    emit(EventType::RateLimited, deviceName, peer,
         client.observing >= lim.coapMaxObservePerSession ? "limits.coap_max_observe_per_session"
                                                          : "limits.coap_max_observe",
         "5.9-3", "serve-without-observe",
         fmt::format("observe of {} not registered: at the limit; answered as a plain GET", path));
  }
  coap_session_t* up = upstreamFor(*device);
  if (up == nullptr) {
    refuse(resp, coap::codes::kBadGateway, "cannot reach the device");
    return;
  }
  coap_pdu_t* pdu = coap_new_pdu(COAP_MESSAGE_CON, static_cast<coap_pdu_code_t>(v->method), up);
  if (pdu == nullptr) {
    refuse(resp, coap::codes::kInternalServerError, "out of memory");
    return;
  }
  // Random, not libcoap's per-session counter: a neighbour on the device segment that spoofs the
  // device's address must not be able to guess which answer iotgwd is waiting for.
  Bytes upToken(8);
  if (randomBytes(upToken.data(), upToken.size()) == 0 || exchanges.contains(upToken) ||
      relations.contains(upToken)) {
    coap_delete_pdu(pdu);
    refuse(resp, coap::codes::kInternalServerError, "no token for the device");
    return;
  }
  coap_add_token(pdu, upToken.size(), upToken.data());
  bool deviceSegment = true;
  for (const auto& o : v->forward) {
    if (o.number == coap::options::kUriPath && deviceSegment) {
      deviceSegment = false; // the device's id is ours, not the device's
      continue;
    }
    if (o.number == coap::options::kSize1 || o.number == coap::options::kSize2) {
      continue; // libcoap states the sizes of what it sends
    }
    if (o.number == coap::options::kObserve && !observe && *v->observe == 0) {
      continue;
    }
    coap_add_option(pdu, o.number, o.value.size(), o.value.data());
  }
  if (!m.payload.empty()) {
    auto* held = new HeldBody{Bytes(m.payload.begin(), m.payload.end()), false};
    bodyBytes += held->data.size(); // given back by releaseHeld
    if (coap_add_data_large_request(up, pdu, held->data.size(), held->data.data(), releaseHeld,
                                    held) == 0) {
      coap_delete_pdu(pdu);
      refuse(resp, coap::codes::kInternalServerError, "cannot attach the payload");
      return;
    }
  }
  if (coap_send(up, pdu) == COAP_INVALID_MID) {
    refuse(resp, coap::codes::kBadGateway, "cannot send to the device");
    return;
  }
  coap_async_t* async = coap_register_async(
      s, req, static_cast<coap_tick_t>(lim.coapRequestTimeout.count()) * COAP_TICKS_PER_SECOND / 1000);
  if (async == nullptr) {
    refuse(resp, coap::codes::kInternalServerError, "cannot track the request");
    return;
  }
  auto ex = std::make_unique<Exchange>(*this);
  ex->async = async;
  ex->upToken = std::move(upToken);
  ex->downToken = token;
  ex->downMid = coap_pdu_get_mid(req);
  ex->down = s;
  ex->up = up;
  ex->device = deviceName;
  ex->path = path;
  ex->peer = peer;
  ex->observe = observe;
  ex->confirmable = coap_pdu_get_type(req) == COAP_MESSAGE_CON;
  ex->blockwise = hasOption(req, COAP_OPTION_BLOCK2);
  // A little before libcoap's own timer, so that its trigger always finds the guard expired.
  ex->deadline = Clock::now() + lim.coapRequestTimeout - std::chrono::milliseconds(20);
  coap_async_set_app_data(async, ex.get());
  ex->counted = true;
  exchanges[ex->upToken] = std::move(ex);
  ++client.pending; // given back when the exchange ends (~Exchange)
  ++svc.stats_.forwarded;
  // Nothing is sent yet: an empty NON is dropped by libcoap, so the client's CON stays
  // unacknowledged until the device answers, and the answer is piggybacked on the ACK. A slow
  // device only costs a retransmission of the request, which finds this exchange and waits too.
  coap_pdu_set_type(resp, COAP_MESSAGE_NON);
}

std::optional<Bytes> CoapService::Engine::collect(Peer& peer, coap_session_t* s,
                                                  const coap_pdu_t* req, const coap::Message& m,
                                                  coap_pdu_t* resp) {
  coap_opt_iterator_t it;
  const coap_opt_t* o = coap_check_option(req, COAP_OPTION_BLOCK1, &it);
  const auto block = coap::decodeBlock(View(coap_opt_value(o), coap_opt_length(o)));
  if (!block || block->szx > coap::Limits{}.maxBlockSzx) {
    ++svc.stats_.malformed;
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
    bodyBytes -= u->second.body.size();
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
      peer.closing = true;
      closing.push_back(s);
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
        ++svc.stats_.malformed;
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
    ++svc.stats_.malformed;
    refuse(resp, coap::codes::kRequestEntityIncomplete, "no earlier blocks of this body");
    return std::nullopt;
  }
  if (bodyBytes + m.payload.size() > kMaxBodyBytesTotal) {
    drop(u);
    refuseFor(resp, coap::codes::kServiceUnavailable, kHeldSeconds, label, "coap.bodies",
              "the gateway holds as many bodies as it may");
    return std::nullopt;
  }
  const size_t before = u->second.body.size();
  const auto step = u->second.body.add(static_cast<size_t>(block->number) << (block->szx + 4),
                                       m.payload, block->more);
  bodyBytes += u->second.body.size() - before;
  u->second.lastUsed = now;
  if (!step) {
    ++svc.stats_.malformed;
    const bool gap = step.error() == coap::BlockBody::Error::Gap;
    drop(u);
    refuse(resp, gap ? coap::codes::kRequestEntityIncomplete : coap::codes::kRequestEntityTooLarge,
           gap ? "a block is missing" : "the body is larger than allowed");
    return std::nullopt;
  }
  if (*step != coap::BlockBody::Step::Complete) {
    coap_pdu_set_code(resp, static_cast<coap_pdu_code_t>(coap::codes::kContinue));
    return std::nullopt;
  }
  Bytes whole = u->second.body.take();
  bodyBytes -= whole.size();
  peer.uploads.erase(u);
  return whole;
}

void CoapService::Engine::finish(coap_async_t* async, coap_resource_t* r, coap_session_t* s,
                                 const coap_pdu_t* req, const coap_string_t* q, coap_pdu_t* resp) {
  auto* ex = static_cast<Exchange*>(coap_async_get_app_data(async));
  if (ex == nullptr) {
    refuse(resp, coap::codes::kInternalServerError, "lost track of the request");
    return;
  }
  if (!ex->done && Clock::now() < ex->deadline) {
    coap_pdu_set_type(resp, COAP_MESSAGE_NON); // the client repeated its request: still waiting
    return;
  }
  // The answer goes in the ACK of the client's request (piggybacked), not as a separate CON:
  // libcoap 4.3.1 clients cannot follow a block-wise body that starts in a separate response.
  if (coap_pdu_get_type(req) == COAP_MESSAGE_CON) {
    coap_pdu_set_type(resp, COAP_MESSAGE_ACK);
    // The async's copy of the request has a new message id: answer the one the client sent.
    coap_pdu_set_mid(resp, ex->downMid);
  }
  const auto it = exchanges.find(ex->upToken);
  std::unique_ptr<Exchange> owned;
  if (it != exchanges.end()) {
    owned = std::move(it->second);
    exchanges.erase(it);
  }
  if (!ex->done) {
    ++svc.stats_.timeouts;
    emit(EventType::UpstreamUnavailable, ex->device, ex->peer, "limits.coap_request_timeout_ms",
         "5.9-1", "refuse",
         ex->failure.empty()
             ? fmt::format("device did not answer {} within {} ms: 5.04 to the client", ex->path,
                           svc.config_->limits.coapRequestTimeout.count())
             : fmt::format("device did not answer {} ({}): 5.04 to the client", ex->path,
                           ex->failure));
    refuse(resp, coap::codes::kGatewayTimeout, "the device did not answer in time");
    return;
  }
  coap_pdu_set_code(resp, static_cast<coap_pdu_code_t>(ex->code));
  if (!ex->needsBlocks()) {
    addAnswer(resp, *ex, false);
  } else {
    // Block-wise to the client (RFC 7959): libcoap cuts the body and serves the later blocks,
    // and states the body's Content-Format, Max-Age and ETag itself.
    addAnswer(resp, *ex, true);
    // Held by libcoap until the client has fetched it (or gives up): charged to the session
    // until releaseHeld gives it back.
    auto* held = new HeldBody{std::move(ex->payload), true};
    bodyBytes -= ex->charged;
    ex->charged = 0;
    bodyBytes += held->data.size();
    if (auto p = peers.find(s); p != peers.end()) {
      p->second.held += held->data.size();
    }
    coap_add_data_large_response(r, s, req, resp, q, ex->contentFormat.value_or(0),
                                 ex->maxAge ? static_cast<int>(*ex->maxAge) : -1, 0,
                                 held->data.size(), held->data.data(), releaseHeld, held);
  }
  ++svc.stats_.answered;
}

void CoapService::Engine::addAnswer(coap_pdu_t* pdu, Exchange& ex, bool blocks) {
  if (ex.relation) {
    if (auto rel = relations.find(ex.upToken); rel != relations.end()) {
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

// The common case, a small answer to a confirmable request, goes out from the response handler:
// waiting for libcoap's async trigger would cost the loop another wake-up per request. The
// async (which holds the client's session) is freed here, never inside its own trigger.
bool CoapService::Engine::answerNow(Exchange& ex) {
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
  ++svc.stats_.answered;
  coap_free_async(ex.down, ex.async);
  exchanges.erase(ex.upToken); // ex is gone
  return true;
}

std::string CoapService::Engine::checkResponse(const policy::DevicePolicy* d, const coap_pdu_t* rcv,
                                               Exchange& into, bool collected) {
  const uint8_t code = static_cast<uint8_t>(coap_pdu_get_code(rcv));
  const uint8_t cls = code >> 5;
  if (cls != 2 && cls != 4 && cls != 5) {
    return fmt::format("response code {} is not a response", codeText(code));
  }
  into.code = code;
  into.options.clear();
  into.contentFormat.reset();
  into.maxAge.reset();
  coap_opt_iterator_t it;
  coap_option_iterator_init(rcv, &it, COAP_OPT_ALL);
  while (coap_opt_t* o = coap_option_next(&it)) {
    const auto number = static_cast<uint16_t>(it.number);
    const View value(coap_opt_value(o), coap_opt_length(o));
    switch (number) {
    case COAP_OPTION_CONTENT_FORMAT:
      if (value.size() > 2) {
        return "malformed Content-Format";
      }
      into.contentFormat = static_cast<uint16_t>(coap::decodeUint(value));
      into.options.emplace_back(number, Bytes(value.begin(), value.end()));
      break;
    case COAP_OPTION_MAXAGE:
      if (value.size() > 4) {
        return "malformed Max-Age";
      }
      into.maxAge = coap::decodeUint(value);
      into.options.emplace_back(number, Bytes(value.begin(), value.end()));
      break;
    case COAP_OPTION_ETAG:
      if (value.empty() || value.size() > 8) {
        return "malformed ETag";
      }
      into.options.emplace_back(number, Bytes(value.begin(), value.end()));
      break;
    case COAP_OPTION_LOCATION_PATH:
    case COAP_OPTION_LOCATION_QUERY:
    case COAP_OPTION_OBSERVE:
    case COAP_OPTION_BLOCK1:
    case COAP_OPTION_BLOCK2:
    case COAP_OPTION_SIZE1:
    case COAP_OPTION_SIZE2:
      break; // handled by libcoap, or replaced by our own (Observe)
    default:
      if (coap::options::critical(number)) {
        return fmt::format("unknown critical option {} in the response", number);
      }
      break; // an unknown elective option is not relayed
    }
  }
  if (!collected) {
    size_t len = 0;
    const uint8_t* data = nullptr;
    into.payload.clear();
    if (coap_get_data(rcv, &len, &data) && data != nullptr) {
      into.payload.assign(data, data + len);
    }
  }
  if (into.payload.size() > coap::Limits{}.maxBodyBytes) {
    return fmt::format("a body of {} bytes exceeds the limit of {}", into.payload.size(),
                       coap::Limits{}.maxBodyBytes);
  }
  if (d != nullptr && !into.payload.empty() && !d->coapRules.contentFormats.empty() && cls == 2) {
    const auto& allowed = d->coapRules.contentFormats;
    if (!into.contentFormat ||
        std::find(allowed.begin(), allowed.end(), *into.contentFormat) == allowed.end()) {
      return into.contentFormat
                 ? fmt::format("content format {} is not allowed", *into.contentFormat)
                 : std::string("a payload without Content-Format");
    }
  }
  return {};
}

coap_response_t CoapService::Engine::response(coap_session_t* s, const coap_pdu_t* rcv) {
  const Bytes token = tokenOf(rcv);
  const auto policies = svc.policies_();
  // libcoap asks a device for each next block of a block-wise answer itself and hands every block
  // here (in single-body mode it would collect a body of whatever size the device sends). One
  // that runs past the body limit ends the session to the device at the loop boundary, or
  // libcoap would go on asking for blocks as long as the device has them.
  size_t len = 0, offset = 0, total = 0;
  const uint8_t* data = nullptr;
  (void)coap_get_data_large(rcv, &len, &data, &offset, &total);
  const View chunk(data, data != nullptr ? len : 0);
  coap_opt_iterator_t oi;
  const coap_opt_t* b2 = coap_check_option(rcv, COAP_OPTION_BLOCK2, &oi);
  const auto block =
      b2 != nullptr ? coap::decodeBlock(View(coap_opt_value(b2), coap_opt_length(b2))) : std::nullopt;
  const bool blockwise = block && (block->more || block->number > 0);
  const bool more = blockwise && block->more;
  const bool firstBlock = blockwise && block->number == 0;
  const auto ex = exchanges.find(token);
  const bool waiting = ex != exchanges.end() && !ex->second->done;
  const std::string from = labelOf(coap_session_get_addr_remote(s));
  if (blockwise && offset + chunk.size() > coap::Limits{}.maxBodyBytes) {
    ++svc.stats_.badResponses;
    emit(EventType::MalformedPacket, waiting ? ex->second->device : "", from, "coap.response",
         "5.13-1", "drop",
         fmt::format("a block-wise answer goes past {} bytes: the session to the device is ended",
                     coap::Limits{}.maxBodyBytes));
    if (waiting) {
      fail(*ex->second, coap::codes::kBadGateway, "the device's answer is too large");
    }
    if (std::find(dropping.begin(), dropping.end(), s) == dropping.end()) {
      dropping.push_back(s);
    }
    return COAP_RESPONSE_OK;
  }
  if (waiting) {
    Exchange& e = *ex->second;
    if (blockwise) {
      if (offset < e.payload.size()) {
        return COAP_RESPONSE_OK; // a block already held
      }
      if (offset > e.payload.size() || bodyBytes + chunk.size() > kMaxBodyBytesTotal) {
        ++svc.stats_.badResponses;
        fail(e, coap::codes::kBadGateway,
             offset > e.payload.size() ? "a block of the device's answer is missing"
                                       : "the gateway holds as many bodies as it may");
        return COAP_RESPONSE_OK;
      }
      e.payload.insert(e.payload.end(), chunk.begin(), chunk.end());
      e.charged += chunk.size();
      bodyBytes += chunk.size();
      if (more) {
        return COAP_RESPONSE_OK; // libcoap has asked for the next one
      }
    }
    const auto id = policy::DeviceId::parse(e.device);
    const policy::DevicePolicy* d = id ? policies->find(*id) : nullptr;
    if (std::string bad = checkResponse(d, rcv, e, blockwise); !bad.empty()) {
      ++svc.stats_.badResponses;
      emit(EventType::MalformedPacket, e.device, from, "coap.response", "5.13-1", "refuse",
           fmt::format("response to {} refused: {}; 5.02 to the client", e.path, bad));
      fail(e, coap::codes::kBadGateway, "the device's response broke its policy");
      return COAP_RESPONSE_OK;
    }
    if (e.observe && (e.code >> 5) == 2 && hasOption(rcv, COAP_OPTION_OBSERVE)) {
      // The limits are checked again here: registrations in flight may have filled them. Without
      // a relationship the answer carries no Observe, and the device's next notification is
      // reset.
      const auto& lim = svc.config_->limits;
      auto p = peers.find(e.down);
      if (p != peers.end() && p->second.observing < lim.coapMaxObservePerSession &&
          relations.size() < lim.coapMaxObserve) {
        auto rel = std::make_unique<Relation>();
        rel->down = coap_session_reference(e.down);
        rel->up = s;
        rel->downToken = e.downToken;
        rel->device = e.device;
        rel->path = e.path;
        rel->peer = e.peer;
        relations[token] = std::move(rel);
        e.relation = true;
        ++p->second.observing;
        ++svc.stats_.observing;
      } else {
        ++svc.stats_.observeRefused;
      }
    }
    e.done = true;
    if (!answerNow(e)) { // on success, e is gone
      coap_async_trigger(e.async);
    }
    return COAP_RESPONSE_OK;
  }
  if (auto it = relations.find(token); it != relations.end()) {
    Relation& rel = *it->second;
    if (blockwise) {
      if (firstBlock) {
        ++svc.stats_.badResponses;
        emit(EventType::MalformedPacket, rel.device, from, "coap.response", "5.13-1", "drop",
             fmt::format("notification for {} larger than one block; dropped", rel.path));
      }
      return COAP_RESPONSE_OK;
    }
    const auto id = policy::DeviceId::parse(rel.device);
    const policy::DevicePolicy* d = id ? policies->find(*id) : nullptr;
    Exchange answer(*this);
    if (d == nullptr) {
      endRelation(token);
      return COAP_RESPONSE_FAIL;
    }
    if (std::string bad = checkResponse(d, rcv, answer, false); !bad.empty()) {
      ++svc.stats_.badResponses;
      emit(EventType::MalformedPacket, rel.device, from, "coap.response", "5.13-1", "drop",
           fmt::format("notification for {} dropped: {}", rel.path, bad));
      return COAP_RESPONSE_OK;
    }
    notify(rel, answer);
    if ((answer.code >> 5) != 2) {
      endRelation(token); // an error ends the relationship (RFC 7641 §3.2)
    }
    return COAP_RESPONSE_OK;
  }
  // Nobody waits for it (a cancelled observation, an answer after the guard time): a reset
  // tells the device to stop.
  return COAP_RESPONSE_FAIL;
}

void CoapService::Engine::fail(Exchange& ex, uint8_t code, std::string_view text) {
  ex.code = code;
  ex.options.clear();
  ex.contentFormat.reset();
  ex.maxAge.reset();
  bodyBytes -= ex.charged;
  ex.charged = 0;
  ex.payload.assign(text.begin(), text.end());
  ex.done = true;
  if (!answerNow(ex)) { // on success, ex is gone
    coap_async_trigger(ex.async);
  }
}

void CoapService::Engine::notify(Relation& rel, const Exchange& answer) {
  const size_t room = coap_session_max_pdu_size(rel.down);
  if (answer.payload.size() + 64 > room) {
    ++svc.stats_.badResponses;
    emit(EventType::MalformedPacket, rel.device, rel.peer, "coap.response", "5.13-1", "drop",
         fmt::format("notification for {} of {} bytes is larger than one datagram; dropped",
                     rel.path, answer.payload.size()));
    return;
  }
  coap_pdu_t* pdu = coap_pdu_init(COAP_MESSAGE_CON, static_cast<coap_pdu_code_t>(answer.code),
                                  coap_new_message_id(rel.down), room);
  if (pdu == nullptr) {
    return;
  }
  coap_add_token(pdu, rel.downToken.size(), rel.downToken.data());
  uint8_t buf[4];
  coap_add_option(pdu, COAP_OPTION_OBSERVE, coap_encode_var_safe(buf, sizeof buf, rel.sequence++), buf);
  for (const auto& [number, value] : answer.options) {
    coap_add_option(pdu, number, value.size(), value.data());
  }
  if (!answer.payload.empty()) {
    coap_add_data(pdu, answer.payload.size(), answer.payload.data());
  }
  if (coap_send(rel.down, pdu) != COAP_INVALID_MID) {
    ++svc.stats_.notifications;
  }
}

std::map<Bytes, std::unique_ptr<CoapService::Engine::Relation>>::iterator
CoapService::Engine::eraseRelation(std::map<Bytes, std::unique_ptr<Relation>>::iterator it) {
  if (auto p = peers.find(it->second->down); p != peers.end() && p->second.observing > 0) {
    --p->second.observing;
  }
  coap_session_release(it->second->down);
  --svc.stats_.observing;
  return relations.erase(it);
}

void CoapService::Engine::endRelation(const Bytes& upToken) {
  if (auto it = relations.find(upToken); it != relations.end()) {
    eraseRelation(it);
  }
}

void CoapService::Engine::endRelationsIf(const std::function<bool(const Relation&)>& match) {
  for (auto it = relations.begin(); it != relations.end();) {
    it = match(*it->second) ? eraseRelation(it) : std::next(it);
  }
}

void CoapService::Engine::nack(coap_session_t* s, const coap_pdu_t* sent,
                               coap_nack_reason_t reason) {
  if (sent == nullptr) {
    return;
  }
  const Bytes token = tokenOf(sent);
  if (coap_session_get_type(s) == COAP_SESSION_TYPE_CLIENT) {
    // A device did not acknowledge (or is unreachable): answer now rather than at the guard.
    if (auto it = exchanges.find(token); it != exchanges.end() && !it->second->done) {
      Exchange& ex = *it->second;
      ex.deadline = Clock::now();
      ex.failure = reason == COAP_NACK_ICMP_ISSUE ? "unreachable" : "no acknowledgement";
      coap_async_trigger(ex.async);
    }
    return;
  }
  // A client reset or ignored a notification: it no longer observes.
  endRelationsIf([&](const Relation& rel) { return rel.down == s && rel.downToken == token; });
}

void CoapService::Engine::closeDevice(const std::string& device) {
  endRelationsIf([&](const Relation& r) { return r.device == device; });
}

// ------------------------------------------------------------------------------------------------
// The device-side endpoint: our own sockets and codec.

struct CoapService::DeviceEndpoint {
  explicit DeviceEndpoint(CoapService& service) : svc(service) {}
  DeviceEndpoint(const DeviceEndpoint&) = delete;
  DeviceEndpoint& operator=(const DeviceEndpoint&) = delete;
  ~DeviceEndpoint() {
    for (const auto& s : sockets) {
      svc.reactor_.remove(s.get());
    }
  }

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

  using RecentKey = std::pair<std::string, uint16_t>; // "ip:port", message id

  CoapService& svc;
  std::vector<io::UniqueFd> sockets;
  std::unordered_map<std::string, Source> sources; // unauthenticated sources by IP
  std::map<RecentKey, Recent> recent;
  // The same entries by expiry (one lifetime for all: insertion order), so that pruning looks at
  // the expired ones only. An entry replaced in `recent` leaves a stale one here, skipped.
  std::deque<std::pair<Clock::time_point, RecentKey>> recentOrder;
  uint8_t buffer[2048];

  std::string start();
  void onReadable(int fd);
  // `size` is the datagram's real size; `datagram` holds at most the buffer's worth of it.
  void handle(int fd, const sockaddr_storage& from, socklen_t fromLen, View datagram, size_t size);
  // Sends to a device (no budget), or to an unknown source within its 3x budget.
  void send(int fd, const sockaddr_storage& to, socklen_t toLen, const Bytes& bytes, Source* budget);
  Source& sourceFor(const std::string& ip, Clock::time_point now);
  // Remembers a confirmable push's answer (empty while it waits for the broker); at most
  // kMaxRecent entries, the oldest forgotten first.
  void remember(const RecentKey& key, Bytes reply, Clock::time_point now);
  void pruneRecent(Clock::time_point now);
  void emit(EventType type, std::string device, std::string peer, std::string rule,
            std::string provision, std::string action, std::string message);
};

std::string CoapService::DeviceEndpoint::start() {
  const auto& c = svc.config_->coap;
  for (const auto& a : c.addresses) {
    auto fd = io::bindUdp(a, c.port);
    if (!fd) {
      return fmt::format("cannot bind device-side CoAP to {}: {}", io::endpointLabel(a, c.port),
                         fd.error().message());
    }
    const int raw = fd->get();
    if (svc.reactor_.add(raw, EPOLLIN, [this, raw](uint32_t) { onReadable(raw); })) {
      return "cannot watch the device-side CoAP socket";
    }
    sockets.push_back(std::move(*fd));
  }
  return {};
}

void CoapService::DeviceEndpoint::emit(EventType type, std::string device, std::string peer,
                                       std::string rule, std::string provision,
                                       std::string action, std::string message) {
  emitCoap(svc.sink_, type, std::move(device), std::move(peer), std::move(rule),
           std::move(provision), std::move(action), std::move(message));
}

CoapService::DeviceEndpoint::Source& CoapService::DeviceEndpoint::sourceFor(const std::string& ip,
                                                                           Clock::time_point now) {
  if (sources.size() >= kMaxSources && !sources.contains(ip)) {
    // Forget sources quiet for a minute; if that frees nothing, start over (a forgotten source
    // starts with an empty budget, so forgetting never allows more than 3x).
    std::erase_if(sources, [now](const auto& kv) { return now - kv.second.lastSeen > std::chrono::minutes(1); });
    if (sources.size() >= kMaxSources) {
      sources.clear();
    }
  }
  Source& s = sources[ip];
  s.lastSeen = now;
  return s;
}

void CoapService::DeviceEndpoint::pruneRecent(Clock::time_point now) {
  while (!recentOrder.empty() &&
         (recentOrder.front().first <= now || recent.size() >= kMaxRecent)) {
    const auto& [expires, key] = recentOrder.front();
    if (auto it = recent.find(key); it != recent.end() && it->second.expires == expires) {
      recent.erase(it);
    }
    recentOrder.pop_front();
  }
}

void CoapService::DeviceEndpoint::remember(const RecentKey& key, Bytes reply,
                                           Clock::time_point now) {
  pruneRecent(now);
  const auto expires = now + kExchangeLifetime;
  recent.insert_or_assign(key, Recent{std::move(reply), expires});
  recentOrder.emplace_back(expires, key);
}

void CoapService::DeviceEndpoint::send(int fd, const sockaddr_storage& to, socklen_t toLen,
                                       const Bytes& bytes, Source* budget) {
  if (bytes.empty()) {
    return;
  }
  if (budget != nullptr) {
    if (!budget->budget.allows(bytes.size())) {
      ++svc.stats_.budgetDrops;
      return;
    }
    budget->budget.sent(bytes.size());
    svc.stats_.unauthenticatedBytesOut += bytes.size();
  }
  (void)::sendto(fd, bytes.data(), bytes.size(), MSG_DONTWAIT,
                 reinterpret_cast<const sockaddr*>(&to), toLen);
}

void CoapService::DeviceEndpoint::onReadable(int fd) {
  for (int i = 0; i < 64; ++i) { // bounded work per wake-up
    sockaddr_storage from{};
    socklen_t fromLen = sizeof from;
    const ssize_t n = ::recvfrom(fd, buffer, sizeof buffer, MSG_TRUNC | MSG_DONTWAIT,
                                 reinterpret_cast<sockaddr*>(&from), &fromLen);
    if (n < 0) {
      return;
    }
    ++svc.stats_.datagrams;
    // MSG_TRUNC reports the real size: a datagram larger than the buffer is refused whole.
    const size_t size = static_cast<size_t>(n);
    handle(fd, from, fromLen, View(buffer, std::min(size, sizeof buffer)), size);
  }
}

void CoapService::DeviceEndpoint::handle(int fd, const sockaddr_storage& from, socklen_t fromLen,
                                         View datagram, size_t size) {
  const auto now = Clock::now();
  const auto [ip, port] = io::fromSockaddr(from);
  const std::string peer = io::endpointLabel(ip, port);
  const auto policies = svc.policies_();
  const policy::DevicePolicy* device = policies->findByAddress(ip);
  Source* budget = nullptr;
  if (device == nullptr) {
    budget = &sourceFor(ip.str(), now);
    budget->budget.received(size);
    svc.stats_.unauthenticatedBytesIn += size;
    ++svc.stats_.unknownSources;
  }
  const std::string deviceName = device != nullptr ? device->id.str() : std::string();
  if (size > datagram.size()) {
    ++svc.stats_.deviceMalformed;
    emit(EventType::MalformedPacket, deviceName, peer, "coap.datagram", "5.13-1", "drop",
         fmt::format("CoAP datagram of more than {} bytes dropped", sizeof buffer));
    return;
  }
  auto parsed = coap::parse(datagram);
  if (!parsed) {
    ++svc.stats_.deviceMalformed;
    emit(EventType::MalformedPacket, deviceName, peer, "coap.message", "5.13-1", "drop",
         fmt::format("malformed CoAP datagram dropped: {}", coap::describe(parsed.error())));
    return;
  }
  const coap::Message& m = *parsed;
  if (m.type == coap::Type::Acknowledgement || m.type == coap::Type::Reset) {
    return; // we send no confirmable messages from here: nothing to match
  }
  if (!m.isRequest()) {
    // A CoAP ping (empty CON) or a stray response: a reset says we do not process it.
    send(fd, from, fromLen, coap::resetFor(m), budget);
    return;
  }
  if (device == nullptr) {
    emit(EventType::AccessDenied, "", peer, "coap.source", "5.5-4", "refuse",
         "CoAP request from an address that is no enrolled device refused");
    send(fd, from, fromLen, coap::refusalFor(m, coap::codes::kForbidden, "not an enrolled device"),
         budget);
    return;
  }
  // A repeated confirmable request gets the answer the first one got (or nothing while it waits).
  const auto key = std::make_pair(peer, m.messageId);
  if (m.type == coap::Type::Confirmable) {
    pruneRecent(now);
    if (auto it = recent.find(key); it != recent.end()) {
      send(fd, from, fromLen, it->second.reply, nullptr);
      return;
    }
  }
  auto answer = [&](uint8_t code, std::string_view reason) {
    Bytes reply = coap::refusalFor(m, code, reason);
    if (m.type == coap::Type::Confirmable) {
      remember(key, reply, now);
    }
    send(fd, from, fromLen, reply, nullptr);
  };
  if (svc.quarantined_ && svc.quarantined_(device->id)) {
    ++svc.stats_.pushesDenied;
    answer(coap::codes::kServiceUnavailable, "device is quarantined");
    return;
  }
  coap::Limits limits;
  limits.maxPayloadBytes = device->coapRules.maxPayloadBytes;
  limits.contentFormats = device->coapRules.contentFormats;
  auto v = coap::validateRequest(m, limits);
  if (!v) {
    ++svc.stats_.deviceMalformed;
    emit(EventType::MalformedPacket, deviceName, peer, v.error().rule, "5.13-1", "refuse",
         fmt::format("CoAP push refused with {}: {}", codeText(v.error().code), v.error().reason));
    answer(v.error().code, v.error().reason);
    return;
  }
  if (v->block1 || v->block2) {
    ++svc.stats_.pushesDenied;
    answer(coap::codes::kRequestEntityTooLarge, "a reading fits in one datagram");
    return;
  }
  policy::CoapFacts facts;
  facts.method = static_cast<policy::CoapMethod>(v->method);
  facts.path = v->path;
  facts.payloadBytes = m.payload.size();
  facts.contentFormat = v->contentFormat;
  const policy::CoapPush* push = nullptr;
  const auto decision = policy::evaluateCoapPush(*device, facts, &push);
  if (!decision.allowed()) {
    ++svc.stats_.pushesDenied;
    const bool method = v->method != coap::codes::kPost && v->method != coap::codes::kPut;
    const uint8_t code = method ? coap::codes::kMethodNotAllowed : codeOfDenial(decision.rule);
    emit(EventType::AccessDenied, deviceName, peer, decision.rule, std::string(decision.provision),
         "refuse",
         fmt::format("CoAP push to {} refused with {}: {}", v->path, codeText(code), decision.reason));
    answer(code, decision.reason);
    return;
  }
  const std::string topic = policy::coapPushTopic(*device, *push, v->path);
  // A path segment of '+' or '#' (or one holding them) would put a wildcard into the topic name:
  // no broker takes that as a PUBLISH, and it is the request's fault, not the upstream's.
  if (const auto bad = policy::validateTopicName(topic)) {
    ++svc.stats_.pushesBadTopic;
    emit(EventType::MalformedPacket, deviceName, peer, "coap.push.topic", "5.13-1", "refuse",
         fmt::format("CoAP push to {} refused with 4.00: the topic it maps to is not a valid MQTT "
                     "topic name ({}, {})",
                     v->path, policy::describe(*bad), policy::clause(*bad)));
    answer(coap::codes::kBadRequest,
           fmt::format("not a valid MQTT topic name: {}", policy::describe(*bad)));
    return;
  }
  if (svc.mqtt_ == nullptr) {
    ++svc.stats_.pushesFailed;
    answer(coap::codes::kServiceUnavailable, "no upstream broker");
    return;
  }
  const bool confirmable = m.type == coap::Type::Confirmable;
  if (confirmable) {
    remember(key, {}, now); // in flight: repeats get nothing yet
  }
  // The 2.04 goes out when the broker has the reading (PUBACK): an acknowledged reading is
  // never lost. A device that gives up before then retransmits or sends the next reading.
  Bytes changed = coap::refusalFor(m, coap::code(2, 4), "");
  const sockaddr_storage to = from;
  auto done = [this, fd, to, fromLen, key, changed, confirmable](bool ok) {
    if (!ok || !confirmable) {
      return;
    }
    if (auto it = recent.find(key); it != recent.end()) {
      it->second.reply = changed;
    }
    send(fd, to, fromLen, changed, nullptr);
  };
  const std::string error = svc.mqtt_->publishFor(*device, topic, m.payload, push->qos, done);
  if (!error.empty()) {
    ++svc.stats_.pushesFailed;
    recent.erase(key);
    emit(EventType::UpstreamUnavailable, deviceName, peer, "upstream", "5.9-1", "refuse",
         fmt::format("CoAP push to {} not published: {}", v->path, error));
    answer(coap::codes::kServiceUnavailable, error);
    return;
  }
  ++svc.stats_.pushesPublished;
}

// ------------------------------------------------------------------------------------------------

CoapService::CoapService(io::Reactor& reactor, EventSink& sink, std::shared_ptr<const Config> config,
                         PolicySource policies, MqttService* mqtt, Quarantined quarantined)
    : reactor_(reactor), sink_(sink), config_(std::move(config)), policies_(std::move(policies)),
      mqtt_(mqtt), quarantined_(std::move(quarantined)) {}

CoapService::~CoapService() = default;

std::string CoapService::start() {
  if (config_->coapDtls.enabled) {
    engine_ = std::make_unique<Engine>(*this);
    if (std::string error = engine_->start(); !error.empty()) {
      engine_.reset();
      return error;
    }
  }
  if (config_->coap.enabled) {
    devices_ = std::make_unique<DeviceEndpoint>(*this);
    if (std::string error = devices_->start(); !error.empty()) {
      devices_.reset();
      return error;
    }
  }
  return {};
}

void CoapService::closeDevice(const policy::DeviceId& id) {
  if (engine_) {
    engine_->closeDevice(id.str());
    engine_->rearm();
  }
}

std::string CoapService::reloadCrl(const Config& config) {
  if (!engine_) {
    return {};
  }
  Engine::Crls next;
  if (std::string err = Engine::loadCrls(config.coapDtls.crlFile.string(), next); !err.empty()) {
    return err;
  }
  engine_->crls = std::move(next); // the next handshake checks against these
  return {};
}

std::vector<std::pair<std::string, uint64_t>> CoapService::counters() const {
  const CoapStats& c = stats_;
  const DtlsGateStats g = engine_ && engine_->gate ? engine_->gate->stats() : DtlsGateStats{};
  return {{"coap_sessions", c.sessions},
          {"coap_sessions_opened", c.sessionsOpened},
          {"coap_sessions_refused", c.sessionsRefused},
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
          {"coap_bodies_held_bytes", engine_ ? engine_->bodyBytes : 0},
          {"coap_device_datagrams", c.datagrams},
          {"coap_device_malformed", c.deviceMalformed},
          {"coap_unknown_sources", c.unknownSources},
          {"coap_pushes_denied", c.pushesDenied},
          {"coap_pushes_published", c.pushesPublished},
          {"coap_pushes_failed", c.pushesFailed},
          {"coap_pushes_bad_topic", c.pushesBadTopic},
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
