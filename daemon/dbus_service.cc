// SPDX-License-Identifier: GPL-3.0-or-later
#include "daemon/dbus_service.h"

#include <grp.h>
#include <poll.h>
#include <sys/epoll.h>

#include <algorithm>
#include <optional>

#include <sdbus-c++/sdbus-c++.h>

#include "iotgw/build_config.h"
#include "org.iotgw.Gateway1_adaptor.h"

namespace iotgw::daemon {

namespace {

constexpr const char* kInterface = "org.iotgw.Gateway1.Manager";

// The one place where daemon errors become D-Bus errors.
[[noreturn]] void raise(const ControlError& e) {
  const char* name = "Failed";
  switch (e.code) {
  case ControlErrorCode::InvalidArgument:
    name = "InvalidArgument";
    break;
  case ControlErrorCode::InvalidPolicy:
    name = "InvalidPolicy";
    break;
  case ControlErrorCode::NoSuchDevice:
    name = "NoSuchDevice";
    break;
  case ControlErrorCode::DeviceExists:
    name = "DeviceExists";
    break;
  case ControlErrorCode::ReadOnly:
    name = "ReadOnly";
    break;
  case ControlErrorCode::Rejected:
    name = "Rejected";
    break;
  case ControlErrorCode::Failed:
    name = "Failed";
    break;
  }
  throw sdbus::Error(std::string("org.iotgw.Gateway1.Error.") + name, e.message);
}

void check(const ControlResult& r) {
  if (!r) {
    raise(r.error());
  }
}

} // namespace

class GatewayObject final : public sdbus::AdaptorInterfaces<org::iotgw::Gateway1::Manager_adaptor> {
public:
  GatewayObject(sdbus::IConnection& c, Control& control, std::string adminGroup,
                std::string readerGroup)
      : AdaptorInterfaces(c, DbusService::kObjectPath), control_(control),
        adminGroup_(std::move(adminGroup)), readerGroup_(std::move(readerGroup)),
        busDriver_(sdbus::createProxy(c, "org.freedesktop.DBus", "/org/freedesktop/DBus")),
        lastCount_(static_cast<uint32_t>(control_.listDevices().size())) {
    registerAdaptor();
  }
  ~GatewayObject() { unregisterAdaptor(); }

  void deviceCountChanged() {
    const uint32_t n = static_cast<uint32_t>(control_.listDevices().size());
    if (n != lastCount_) {
      lastCount_ = n;
      getObject().emitPropertiesChangedSignal(kInterface, {"DeviceCount"});
    }
  }

private:
  // Whether the caller is root or a member of one of `groups`. Its uid and groups are what the
  // bus daemon took from the socket when it connected (SO_PEERCRED, SO_PEERGROUPS), asked with
  // GetConnectionCredentials: sd-bus's own credential queries fill in from /proc/<pid>, which the
  // unit's ProtectProc=invisible hides (every caller was refused, root too) and which could name
  // a process that reused the pid. Anything unknown is a refusal.
  bool callerIsIn(std::initializer_list<const std::string*> groups) {
    const sdbus::Message* m = getObject().getCurrentlyProcessedMessage();
    if (m == nullptr) {
      return false;
    }
    try {
      const std::string sender = m->getSender();
      std::map<std::string, sdbus::Variant> creds;
      busDriver_->callMethod("GetConnectionCredentials")
          .onInterface("org.freedesktop.DBus")
          .withArguments(sender)
          .storeResultsTo(creds);
      const auto uid = creds.find("UnixUserID");
      if (uid == creds.end()) {
        return false;
      }
      if (uid->second.get<uint32_t>() == 0) {
        return true;
      }
      const auto gids = creds.find("UnixGroupIDs");
      if (gids == creds.end()) {
        return false;
      }
      const auto member = gids->second.get<std::vector<uint32_t>>();
      for (const std::string* name : groups) {
        if (const group* g = ::getgrnam(name->c_str())) {
          if (std::ranges::find(member, g->gr_gid) != member.end()) {
            return true;
          }
        }
      }
    } catch (const sdbus::Error&) {
      return false;
    }
    return false;
  }

  void requireAdmin(const char* method) {
    if (!callerIsIn({&adminGroup_})) {
      throw sdbus::Error("org.iotgw.Gateway1.Error.AccessDenied",
                         std::string(method) + " changes the gateway: only root and group " +
                             adminGroup_ + " may call it");
    }
  }

  // Reading shows the devices, their policies and counters: the bus policy limits it to the
  // reader and admin groups, and iotgwd checks again, as for changes, so that a bus configured
  // more openly does not open it to everyone.
  void requireReader(const char* method) {
    if (!callerIsIn({&readerGroup_, &adminGroup_})) {
      throw sdbus::Error("org.iotgw.Gateway1.Error.AccessDenied",
                         std::string(method) + " reads the gateway's state: only root and groups " +
                             readerGroup_ + " and " + adminGroup_ + " may call it");
    }
  }

  std::vector<sdbus::Struct<std::string, std::string, bool>> ListDevices() override {
    requireReader("ListDevices");
    std::vector<sdbus::Struct<std::string, std::string, bool>> out;
    for (const auto& d : control_.listDevices()) {
      out.emplace_back(d.id, d.fromApi ? "api" : "file", d.quarantined);
    }
    return out;
  }

  std::tuple<std::string, std::map<std::string, sdbus::Variant>>
  GetDevice(const std::string& id) override {
    requireReader("GetDevice");
    auto d = control_.device(id);
    if (!d) {
      raise(d.error());
    }
    std::map<std::string, sdbus::Variant> state{
        {"quarantined", sdbus::Variant(d->summary.quarantined)},
        {"source", sdbus::Variant(std::string(d->summary.fromApi ? "api" : "file"))},
        {"tx_packets", sdbus::Variant(d->txPackets)},
        {"tx_bytes", sdbus::Variant(d->txBytes)},
        {"rx_packets", sdbus::Variant(d->rxPackets)},
        {"rx_bytes", sdbus::Variant(d->rxBytes)},
        {"tx_bytes_per_second", sdbus::Variant(d->txBytesPerSecond)},
        {"rx_bytes_per_second", sdbus::Variant(d->rxBytesPerSecond)},
        {"identity", sdbus::Variant(d->identity)},
        {"queued_messages", sdbus::Variant(d->queuedMessages)},
        {"queued_bytes", sdbus::Variant(d->queuedBytes)},
        {"queued_oldest_age_seconds", sdbus::Variant(d->queuedOldestAgeSeconds)},
    };
    if (!d->certificateSerial.empty()) {
      state.emplace("certificate_serial", sdbus::Variant(d->certificateSerial));
      state.emplace("certificate_expires", sdbus::Variant(d->certificateExpires));
    }
    return {d->policy, state};
  }

  void EnrollDevice(const std::string& id, const std::string& policy) override {
    requireAdmin("EnrollDevice");
    check(control_.enrollDevice(id, policy));
    deviceCountChanged();
  }
  void SetDevicePolicy(const std::string& id, const std::string& policy) override {
    requireAdmin("SetDevicePolicy");
    check(control_.setDevicePolicy(id, policy));
  }
  void RemoveDevice(const std::string& id) override {
    requireAdmin("RemoveDevice");
    check(control_.removeDevice(id));
    deviceCountChanged();
  }
  void Quarantine(const std::string& id, const std::string& reason) override {
    requireAdmin("Quarantine");
    check(control_.quarantineDevice(id, reason));
  }
  void Release(const std::string& id) override {
    requireAdmin("Release");
    check(control_.releaseDevice(id));
  }
  void Reload() override {
    requireAdmin("Reload");
    check(control_.reloadAll());
    deviceCountChanged();
  }

  std::map<std::string, sdbus::Variant> GetStatus() override {
    requireReader("GetStatus");
    const GatewayStatus s = control_.status();
    std::map<std::string, sdbus::Variant> out{
        {"version", sdbus::Variant(s.version)},
        {"config", sdbus::Variant(s.config)},
        {"devices", sdbus::Variant(s.devices)},
        {"quarantined", sdbus::Variant(s.quarantined)},
        {"mqtt_connections", sdbus::Variant(s.mqttConnections)},
        {"firewall", sdbus::Variant(s.firewall)},
        {"reloads", sdbus::Variant(s.reloads)},
        {"uptime_seconds", sdbus::Variant(s.uptimeSeconds)},
        {"ca", sdbus::Variant(s.ca)},
        {"ca_certificate", sdbus::Variant(s.caCertificate)},
        {"crl", sdbus::Variant(s.crl)},
        {"issued_identities", sdbus::Variant(s.issuedIdentities)},
    };
    for (const auto& [name, value] : s.counters) {
      out.emplace(name, sdbus::Variant(value));
    }
    return out;
  }

  std::string Version() override { return IOTGW_VERSION; }
  uint32_t DeviceCount() override { return static_cast<uint32_t>(control_.listDevices().size()); }

  Control& control_;
  std::string adminGroup_;
  std::string readerGroup_;
  std::unique_ptr<sdbus::IProxy> busDriver_; // the bus daemon itself, for callers' credentials
  uint32_t lastCount_; // what DeviceCount last said: a change is signalled only when it is one
};

std::expected<std::unique_ptr<DbusService>, std::string>
DbusService::start(io::Reactor& reactor, Control& control, std::string adminGroup,
                   std::string readerGroup) {
  std::unique_ptr<DbusService> s;
  try {
    s.reset(new DbusService(reactor, sdbus::createSystemBusConnection(kBusName)));
    s->object_ = std::make_unique<GatewayObject>(*s->connection_, control, std::move(adminGroup),
                                                 std::move(readerGroup));
  } catch (const sdbus::Error& e) {
    return std::unexpected(e.getName() + ": " + e.getMessage());
  }
  s->fd_ = s->connection_->getEventLoopPollData().fd;
  if (auto ec = reactor.add(s->fd_, EPOLLIN, [p = s.get()](uint32_t) { p->process(); })) {
    return std::unexpected("cannot watch the bus connection: " + ec.message());
  }
  s->process(); // NameAcquired and anything already queued
  return s;
}

DbusService::DbusService(io::Reactor& reactor, std::unique_ptr<sdbus::IConnection> connection)
    : reactor_(reactor), connection_(std::move(connection)) {}

DbusService::~DbusService() {
  if (timer_) {
    reactor_.cancelTimer(*timer_);
  }
  if (fd_ >= 0) {
    reactor_.remove(fd_);
  }
  object_.reset();
  if (connection_) {
    try {
      connection_->releaseName(kBusName);
    } catch (const sdbus::Error&) {
      // Going away anyway; the bus drops the name with the connection.
    }
  }
}

void DbusService::process() {
  try {
    while (connection_->processPendingRequest()) {
    }
  } catch (const sdbus::Error&) {
    // A broken message or connection: nothing of the daemon depends on it; keep serving.
  }
  rearm();
}

// sd-bus tells what to wait for next: readable, writable (replies queued) and a deadline.
void DbusService::rearm() {
  const auto pd = connection_->getEventLoopPollData();
  uint32_t events = 0;
  if (pd.events & POLLIN) {
    events |= EPOLLIN;
  }
  if (pd.events & POLLOUT) {
    events |= EPOLLOUT;
  }
  (void)reactor_.modify(fd_, events != 0 ? events : EPOLLIN);
  if (timer_) {
    reactor_.cancelTimer(*timer_);
    timer_.reset();
  }
  if (auto rel = pd.getRelativeTimeout()) {
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(*rel) + std::chrono::milliseconds(1);
    if (auto t = reactor_.addTimer(ms, std::chrono::milliseconds(0), [this] {
          timer_.reset();
          process();
        })) {
      timer_ = *t;
    }
  }
}

void DbusService::onEvent(const policy::Event& e, bool journaled) {
  using policy::EventType;
  try {
    switch (e.type) {
    case EventType::DeviceQuarantined:
      // A quarantine carried out is always signalled; one a device's policy only asked for
      // (no firewall to carry it out) is what the device does, and follows the budget.
      if (e.action == "request" && !journaled) {
        return;
      }
      object_->emitDeviceQuarantined(e.device, e.message);
      break;
    case EventType::DeviceReleased:
      object_->emitDeviceChanged(e.device, "released");
      break;
    case EventType::DeviceChanged:
      object_->emitDeviceChanged(e.device, e.action);
      object_->deviceCountChanged();
      break;
    case EventType::ConfigReloaded:
      object_->deviceCountChanged();
      break;
    case EventType::AccessDenied:
    case EventType::PayloadRejected:
    case EventType::RateLimited:
    case EventType::MalformedPacket:
    case EventType::ExposedService:
    case EventType::TrafficSurge:
      // What a device does is signalled within the journal's budget (a flood of malformed
      // packets is not a flood of signals); the state changes above always are.
      if (e.device.empty() || !journaled) {
        return; // no signal: nothing for the bus to do either
      }
      object_->emitPolicyViolation(e.device, e.rule, e.provision, e.action);
      break;
    default:
      return;
    }
  } catch (const sdbus::Error&) {
    return; // a signal that cannot be sent is not worth stopping for
  }
  rearm();
}

} // namespace iotgw::daemon
