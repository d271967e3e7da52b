// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The MQTT capability wired into the daemon: the device-side listeners and what holds across
// their connections (admission limits, the password-check worker, the TLS contexts, upstreams
// still draining for closed connections), each connection being an mqtt::Proxy; and the
// publishers that carry readings devices push over CoAP.

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "daemon/config.h"
#include "daemon/event_sink.h"
#include "daemon/identities.h"
#include "daemon/outcome.h"
#include "policy/credentials.h"
#include "policy/policy_set.h"
#include "policy/rate_limit.h"
#include "protocols/io/admission.h"
#include "protocols/io/reactor.h"
#include "protocols/io/socket.h"
#include "protocols/io/worker.h"
#include "protocols/mqtt/outbox.h"
#include "protocols/mqtt/proxy.h"
#include "protocols/mqtt/publisher.h"
#include "protocols/mqtt/session.h"
#include "protocols/mqtt/upstream.h"
#include "protocols/tls/server.h"

namespace iotgw::daemon {

struct MqttStats {
  uint64_t accepted = 0;
  uint64_t refusedByLimits = 0;
  uint64_t denied = 0;
  uint64_t malformed = 0;
  uint64_t delivered = 0;
  // Unauthenticated connections closed to make room: the connection table or the handshake
  // table was full, or their partial packets took more than limits.max_unauthenticated_bytes.
  uint64_t evictedUnauthenticated = 0;
  uint64_t passwordChecks = 0;     // run off the event loop
  uint64_t passwordChecksBusy = 0; // CONNECTs refused because too many checks were in progress
  uint64_t refusedOffSegment = 0;  // device-side connections that arrived on another interface
  uint64_t drainingGivenUp = 0;    // closed connections' upstreams dropped before they finished
  mqtt::ProxyCounters proxied;     // forwarded, QoS 0 dropped, stalls, failed TLS handshakes
  uint64_t pushesForwarded = 0;    // CoAP readings handed to a device's publisher
  uint64_t storeDropped = 0;       // stored messages dropped to make room (when_queue_full)
  uint64_t storeFailed = 0;        // outboxes that could not be opened, or a failed fdatasync
  uint64_t storeResends = 0;       // QoS 2 resends (DUP) of a stored message: answered, not stored
};

// A device's outbox as GetStatus and GetDevice show it.
// Whole seconds since `t` (0 for none).
[[nodiscard]] uint64_t ageSeconds(const std::optional<std::chrono::system_clock::time_point>& t);

struct OutboxInfo {
  size_t messages = 0;
  size_t bytes = 0;
  std::optional<std::chrono::system_clock::time_point> oldest;
  bool linkUp = false;    // its store session is connected
  uint64_t delivered = 0; // since iotgwd started
  uint64_t dropped = 0;
};

class MqttService {
public:
  using PolicySource = std::function<std::shared_ptr<const policy::PolicySet>()>;

  MqttService(io::Reactor& reactor, EventSink& sink, std::shared_ptr<const Config> config,
              PolicySource policies, std::shared_ptr<const policy::DefaultCredentials> defaults);
  MqttService(const MqttService&) = delete;
  MqttService& operator=(const MqttService&) = delete;
  ~MqttService();

  // Binds the device-side and mutual-TLS listeners; the error names what failed.
  [[nodiscard]] Outcome start();
  // Builds the TLS contexts of `config` (the listener's certificate, key, CA and CRL; the
  // broker's CA) and reads the broker passwords, for new connections; connections already up keep
  // theirs. Nothing changes until the result runs.
  [[nodiscard]] std::expected<Prepared, std::string> prepareTls(const Config& config);
  // New sessions use the new credentials list; running ones keep the snapshot they started with.
  void setDefaultCredentials(std::shared_ptr<const policy::DefaultCredentials> d) {
    defaults_ = std::move(d);
  }
  // Who carries out a quarantine the device's policy asks for (the firewall); without one the
  // request is only reported and the session closed.
  using QuarantineHandler = std::function<void(const policy::DeviceId&, const std::string& rule)>;
  void setQuarantineHandler(QuarantineHandler h) { quarantine_ = std::move(h); }
  // Who is quarantined now: their logins are refused (new sessions ask it).
  using QuarantineCheck = std::function<bool(const policy::DeviceId&)>;
  void setQuarantineCheck(QuarantineCheck q) { quarantined_ = std::move(q); }
  // Ends every session of the device (quarantine).
  void closeDevice(const policy::DeviceId& id);
  // Ends the persistent sessions the device's clients hold at the broker (as far as iotgwd has
  // seen them since it started) that its policy no longer allows: all of them with `all` (removed,
  // quarantined), otherwise those with a subscription outside its current subscribe list. Each is
  // ended by a clean-session login under its client id (the broker drops what it held), then
  // DISCONNECT. Carried out on the next timer turn, never inside the callback that asks for it
  // (a quarantine may come from inside a connection's own callbacks).
  void endPersistentSessions(const policy::DeviceId& id, bool all);
  // After a reload: the persistent sessions of devices that are gone, or whose new policy refuses
  // what they subscribed, are ended (their connections first).
  void reconcilePersistentSessions(const policy::PolicySet& policies);
  // Erase (5.11-1): ends the device's sessions without delivering what they still queue, and
  // drops its counters and TLS context. Returns how many queued messages were dropped.
  size_t forgetDevice(const policy::DeviceId& id);
  // Where the certificates of devices whose upstream presents their own identity come from.
  void setIdentities(const Identities* identities) { identities_ = identities; }
  // Publishes a reading a device pushed over CoAP on the device's own upstream session (opened on
  // demand, with its issued identity if it has one). `done(true)` runs once the broker has it
  // (PUBACK for QoS 1; at once for QoS 0). An error (nothing taken) is a sentence.
  [[nodiscard]] Outcome publishFor(const policy::DevicePolicy& device, const std::string& topic,
                                   std::span<const uint8_t> payload, uint8_t qos,
                                   std::function<void(bool)> done);
  [[nodiscard]] size_t connections() const { return connections_.size(); }
  // The outboxes open now (store-and-forward), by device.
  [[nodiscard]] std::map<std::string, OutboxInfo> outboxes() const;
  // What the outboxes hold together, as GetStatus counters (mqtt_queued_messages, ...).
  [[nodiscard]] std::vector<std::pair<std::string, uint64_t>> outboxCounters() const;
  // Every counter, as GetStatus names them ("mqtt_accepted", ...); the session counters include
  // the sessions still up.
  [[nodiscard]] std::vector<std::pair<std::string, uint64_t>> counters() const;
  [[nodiscard]] std::vector<uint16_t> boundPorts() const;
  // Per device: what its sessions forwarded, refused and received (closed sessions and live ones).
  [[nodiscard]] std::map<std::string, mqtt::SessionCounters> deviceCounters() const;

private:
  void onAccept(int listenFd, bool tls);
  // Whether a connection to the device-side listener arrived on a device-segment interface.
  [[nodiscard]] bool fromDeviceSegment(const io::Accepted& a) const;
  // Closes connections the admission bookkeeping gave up to make room.
  void evict(const std::vector<io::Admission::Id>& ids);
  void handshakeEnded(mqtt::Proxy& p);
  void checkPassword(mqtt::Proxy& p, mqtt::PasswordCheck check);
  // Tells the admission bookkeeping what the connection holds before its login (or that it has
  // logged in), and closes what it gives up to keep within the budget.
  void accountHeldBytes(mqtt::Proxy& p);
  void connectionClosed(mqtt::Proxy& p);
  [[nodiscard]] std::unique_ptr<mqtt::Session> newSession(mqtt::PeerInfo peer);
  // The device's mqtt.max_clients: whether one more of its clients may log in under `upstreamId`
  // (always, when that client id is already connected: it takes its session over).
  [[nodiscard]] bool admitClient(const policy::DevicePolicy& d,
                                 const std::string& upstreamId) const;
  // Ends whatever else uses the upstream client id `upstreamId` before `by` opens it.
  void takeOver(const mqtt::Proxy& by, const std::string& upstreamId);
  // Closes every connection still logging in (a device's policy changed or it went away: a login
  // in progress must not finish under the old one).
  void closeLoginsInProgress();
  void releaseIdleMemory(mqtt::Clock::time_point now);
  // The ends endPersistentSessions asked for; from tick() only.
  void endRequestedSessions();
  void tick();
  void sweep();
  // Store-and-forward (mqtt_store.cc). Whether the message goes to the device's outbox: QoS 2
  // always (exactly once across a crash), QoS 1 while the upstream is down or the outbox still
  // holds earlier messages.
  [[nodiscard]] mqtt::StoreVerdict store(mqtt::Proxy& p, const mqtt::upstream::Publish& m,
                                         bool upstreamDown);
  // A device's PUBREL: whether its outbox holds the flow (outbox.h), which it then closes.
  [[nodiscard]] bool release(mqtt::Proxy& p, uint16_t packetId, uint64_t token);
  [[nodiscard]] std::filesystem::path outboxPath(const std::string& device) const;
  // The device's outbox, opened (and recovered) on first use; null when it cannot be.
  [[nodiscard]] mqtt::Outbox* outboxFor(const std::string& device);
  // After each wake-up of the loop: one fdatasync per outbox written to, then the devices are
  // told (PUBACK, PUBREC).
  void commitOutboxes();
  void serviceOutboxes(mqtt::Clock::time_point now);
  // At start: the outboxes a previous run left with messages or open QoS 2 flows in them.
  void openStoredOutboxes();
  size_t eraseOutbox(const std::string& device); // how many stored messages went with it
  void storeEvent(policy::EventType type, const std::string& device, std::string_view rule,
                  std::string_view action, std::string message, std::string peer = {});
  [[nodiscard]] size_t maxDraining() const;
  void reportDrainingGivenUp(const std::string& device, std::string_view why);
  // `name` stands for the device in the user name's "%d" when there is no policy (any more).
  [[nodiscard]] std::expected<std::unique_ptr<mqtt::Upstream>, std::string>
  createUpstream(const policy::DevicePolicy* device, const mqtt::upstream::Open& open,
                 mqtt::UpstreamObserver& observer, std::string_view name = {});
  // The client context for a device's own identity (built once per certificate).
  [[nodiscard]] std::expected<mqtt::SslContext, std::string>
  deviceContext(const std::string& device);

  io::Reactor& reactor_;
  EventSink& sink_;
  std::shared_ptr<const Config> config_;
  PolicySource policies_;
  QuarantineHandler quarantine_;
  QuarantineCheck quarantined_;
  std::shared_ptr<const policy::DefaultCredentials> defaults_;
  policy::AuthThrottle throttle_;
  std::vector<io::UniqueFd> listeners_;
  std::shared_ptr<tls::ServerContext> tlsContext_;
  mqtt::SslContext upstreamContext_;
  UpstreamConfig upstreamTls_; // the broker CA and host the contexts were built for
  std::map<std::string, std::string> upstreamPasswords_; // user name ("*": any other) → password
  io::Admission admission_;
  mqtt::ByteBudget upstreamBudget_;        // what all upstreams together hold for the broker
  mqtt::ReconnectPacer reconnectPacer_;    // their reconnects together (5.9-3)
  std::unique_ptr<io::Worker> worker_;     // password checks
  mqtt::SubscriptionMemory subscriptions_; // what devices' persistent upstream sessions hold
  // Hears nothing: for the upstreams that end persistent sessions.
  struct Quiet final : mqtt::UpstreamObserver {
    void upstreamAcked(uint64_t) override {}
    void upstreamMessage(const mqtt::Delivery&) override {}
    void upstreamConnected(const mqtt::UpstreamStatus&) override {}
  } quiet_;
  mqtt::ProxySettings plainSettings_; // the device-side listener's connections
  mqtt::ProxySettings tlsSettings_;   // the mutual-TLS listener's
  mqtt::ProxyHooks hooks_;
  uint64_t nextConnectionId_ = 1;
  std::map<uint64_t, mqtt::Proxy*> byId_; // for completions that arrive after a connection closed
  mqtt::Clock::time_point lastHandshakeEnded_{};
  bool handshakeCachesHeld_ = false;
  std::map<mqtt::Proxy*, std::unique_ptr<mqtt::Proxy>> connections_;
  std::vector<mqtt::Proxy*> closed_; // closed since the last sweep, to be destroyed there
  // Upstreams whose client has gone but which still deliver what it sent (bounded in time).
  struct Draining {
    std::unique_ptr<mqtt::Upstream> upstream;
    mqtt::Clock::time_point deadline;
    std::string device;
    std::string clientId; // at the broker
  };
  std::vector<Draining> draining_;
  std::map<std::string, bool> endRequests_; // device id → all of its persistent sessions
  const Identities* identities_ = nullptr;
  struct DeviceContext {
    std::string serial;
    mqtt::SslContext context;
  };
  std::map<std::string, DeviceContext> deviceContexts_;
  std::map<std::string, std::unique_ptr<mqtt::Publisher>> publishers_; // device id → its pushes
  struct OutboxState {
    std::unique_ptr<mqtt::Outbox> box;
    bool reported = false; // the outbox-queuing event went out; outbox-drained ends it
    uint64_t deliveredAtStart = 0;
  };
  std::map<std::string, OutboxState> outboxes_; // device id → its outbox, while it has one open
  mqtt::DiskBudget diskBudget_;
  std::optional<io::Reactor::TimerId> timer_;
  MqttStats stats_;
  std::map<std::string, mqtt::SessionCounters> closedCounters_;
};

} // namespace iotgw::daemon
