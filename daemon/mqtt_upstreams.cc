// SPDX-License-Identifier: GPL-3.0-or-later
// MqttService, towards the broker: the TLS contexts (the upstream's, each issued device
// identity's, the mutual-TLS listener's), the upstream sessions made with them, the bound on
// upstreams still draining for closed connections, and the memory handshakes leave behind.
#include <fcntl.h>
#include <malloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <algorithm>
#include <set>
#include <utility>

#include <fmt/format.h>

#include "daemon/mqtt_service.h"
#include "policy/evaluator.h"

namespace iotgw::daemon {

using mqtt::Clock;
using policy::Event;
using policy::EventType;

namespace {

// The broker passwords: "user:password" lines, "*:password" for any other user name. The file
// must not be readable by others (the configuration is world-readable; this is not).
std::expected<std::map<std::string, std::string>, std::string>
readPasswords(const std::filesystem::path& path) {
  std::map<std::string, std::string> out;
  if (path.empty()) {
    return out;
  }
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    return std::unexpected(fmt::format("{}: {}", path.string(), std::strerror(errno)));
  }
  struct stat st{};
  std::string text;
  std::string problem;
  if (::fstat(fd, &st) != 0) {
    problem = std::strerror(errno);
  } else if (!S_ISREG(st.st_mode)) {
    problem = "not a regular file";
  } else if ((st.st_mode & S_IRWXO) != 0) {
    problem = fmt::format("readable by others (mode {:04o}): chmod 600 or 640 (group: the "
                          "service's)",
                          st.st_mode & 07777);
  } else if (st.st_size >= 64 * 1024) {
    problem = "larger than 64 KiB";
  } else {
    text.resize(static_cast<size_t>(st.st_size));
    if (::read(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
      policy::secureWipe(text.data(), text.size());
      problem = "not readable whole";
    }
  }
  ::close(fd);
  if (!problem.empty()) {
    return std::unexpected(fmt::format("{} is {}", path.string(), problem));
  }
  size_t line = 0;
  for (size_t at = 0; at < text.size();) {
    const size_t end = std::min(text.find('\n', at), text.size());
    std::string_view l(text.data() + at, end - at);
    at = end + 1;
    ++line;
    if (!l.empty() && l.back() == '\r') {
      l.remove_suffix(1);
    }
    if (l.empty() || l.front() == '#') {
      continue;
    }
    const size_t colon = l.find(':');
    if (colon == std::string_view::npos || colon == 0) {
      policy::secureWipe(text.data(), text.size());
      return std::unexpected(fmt::format("{}:{}: expected \"user:password\" (or \"*:password\")",
                                         path.string(), line));
    }
    out[std::string(l.substr(0, colon))] = std::string(l.substr(colon + 1));
  }
  policy::secureWipe(text.data(), text.size());
  return out;
}

} // namespace

std::expected<Prepared, std::string> MqttService::prepareTls(const Config& config) {
  // Both contexts are built first; only when both are good may they replace the running ones.
  mqtt::SslContext upstream;
  std::map<std::string, std::string> passwords;
  if (config.upstream.enabled) {
    const auto& u = config.upstream;
    if (u.tls) {
      auto up = mqtt::makeUpstreamSslContext(
          {u.host, u.caFile.string(), u.certificate.string(), u.privateKey.string()});
      if (!up) {
        return std::unexpected("upstream TLS: " + up.error());
      }
      upstream = std::move(*up);
    }
    auto read = readPasswords(u.passwordFile);
    if (!read) {
      return std::unexpected("upstream password file: " + read.error());
    }
    passwords = std::move(*read);
  }
  std::shared_ptr<tls::ServerContext> listener;
  if (config.mqttTls.enabled) {
    const auto& l = config.mqttTls;
    auto ctx = tls::ServerContext::create(
        {l.certificate.string(), l.privateKey.string(), l.caFile.string(), l.crlFile.string()});
    if (!ctx) {
      return std::unexpected("mutual-TLS listener: " + ctx.error());
    }
    listener = std::move(*ctx);
  }
  return Prepared([this, upstream = std::move(upstream), listener = std::move(listener),
                   broker = config.upstream, passwords = std::move(passwords)]() mutable {
    upstreamContext_ = std::move(upstream);
    upstreamPasswords_ = std::move(passwords);
    if (broker.enabled && !broker.tls) {
      Event e;
      e.type = EventType::InsecureUpstream;
      e.protocol = "mqtt";
      e.rule = "upstream.tls";
      e.action = "warn";
      e.message = fmt::format("the broker at {} port {} is reached without TLS (a loopback "
                              "broker on this host)",
                              broker.host, broker.port);
      sink_.emit(std::move(e));
    }
    tlsContext_ = std::move(listener);
    upstreamTls_ = std::move(broker);
    deviceContexts_.clear(); // built again from the new broker CA on first use
  });
}

std::expected<std::unique_ptr<mqtt::Upstream>, std::string>
MqttService::createUpstream(const policy::DevicePolicy* device, const mqtt::upstream::Open& open,
                            mqtt::UpstreamObserver& observer, std::string_view name) {
  const auto& u = config_->upstream;
  mqtt::UpstreamSettings us;
  us.host = u.host;
  us.port = u.port;
  us.maxQueued = config_->limits.maxQueuedMessages;
  us.maxQueuedBytes = config_->limits.maxQueuedBytes;
  // A message the device could be given, plus the broker side's topic prefix and header.
  us.maxPacketBytes = config_->limits.maxPacketBytes + 2 * 1024;
  us.budget = &upstreamBudget_;
  us.pacer = &reconnectPacer_;
  us.sslContext = upstreamContext_;
  // The user name: the device's own, or the gateway's; "%d" is the device id.
  std::string user = device != nullptr && !device->mqttRules.upstreamUsername.empty()
                         ? device->mqttRules.upstreamUsername
                         : u.username;
  if (const size_t at = user.find("%d"); at != std::string::npos) {
    user.replace(at, 2,
                 device != nullptr ? device->id.str()
                                   : (name.empty() ? std::string("gateway") : std::string(name)));
  }
  if (!user.empty()) {
    us.username = user;
    if (auto it = upstreamPasswords_.find(user); it != upstreamPasswords_.end()) {
      us.password = it->second;
    } else if (auto any = upstreamPasswords_.find("*"); any != upstreamPasswords_.end()) {
      us.password = any->second;
    }
  }
  us.emit = [this, device = device != nullptr ? device->id.str() : std::string(name)](Event e) {
    e.device = device;
    sink_.emit(std::move(e));
  };
  if (device != nullptr && device->mqttRules.upstreamIdentity == policy::UpstreamIdentity::Issued) {
    // The device's own certificate: the broker sees this device, not the gateway.
    auto ctx = deviceContext(device->id.str());
    if (!ctx) {
      return std::unexpected("device identity: " + ctx.error());
    }
    us.sslContext = *ctx;
  }
  auto created = mqtt::BrokerLink::create(reactor_, us, open, observer);
  if (!created) {
    return std::unexpected(created.error());
  }
  return std::unique_ptr<mqtt::Upstream>(std::move(*created));
}

void MqttService::endPersistentSessions(const policy::DeviceId& id, bool all) {
  if (config_->upstream.enabled) {
    auto& entry = endRequests_[id.str()];
    entry = entry || all;
  }
}

void MqttService::endRequestedSessions() {
  if (endRequests_.empty()) {
    return;
  }
  const auto requests = std::exchange(endRequests_, {});
  sweep(); // closed connections' upstreams must not take the sessions back while they are ended
  const auto policies = policies_();
  for (const auto& [name, all] : requests) {
    const auto id = policy::DeviceId::parse(name);
    const policy::DevicePolicy* now = id && !all ? policies->find(*id) : nullptr;
    const std::string own = config_->upstream.clientIdPrefix + name;
    std::vector<std::string> ending;
    for (const auto& [clientId, filters] : subscriptions_) {
      if (clientId != own && !clientId.starts_with(own + ":")) {
        continue;
      }
      const bool allowed = now != nullptr && std::ranges::all_of(filters, [&](const auto& f) {
                             return evaluateSubscribe(*now, {"", f, 0}).allowed();
                           });
      if (!allowed) {
        ending.push_back(clientId);
      }
    }
    for (const auto& clientId : ending) {
      subscriptions_.erase(clientId);
      std::erase_if(draining_, [&](const Draining& d) { return d.clientId == clientId; });
      mqtt::upstream::Open open;
      open.clientId = clientId;
      open.cleanStart = true; // the broker discards the session it held
      open.keepAlive = config_->upstream.keepaliveSeconds;
      auto link = createUpstream(now, open, quiet_, name);
      if (!link) {
        continue;
      }
      (*link)->close(false); // DISCONNECT once the broker has said CONNACK
      draining_.push_back(
          {std::move(*link), Clock::now() + std::chrono::seconds(10), name, clientId});
    }
    if (!ending.empty()) {
      Event e;
      e.type = EventType::DeviceChanged;
      e.device = name;
      e.protocol = "mqtt";
      e.rule = now == nullptr ? "device" : "mqtt.subscribe";
      e.action = "end-sessions";
      e.message = fmt::format("{} persistent session(s) at the broker ended: {}", ending.size(),
                              now == nullptr ? "the device may no longer connect"
                                             : "they hold subscriptions its new policy refuses");
      sink_.emit(std::move(e));
    }
  }
}

void MqttService::reconcilePersistentSessions(const policy::PolicySet& policies) {
  const std::string& prefix = config_->upstream.clientIdPrefix;
  std::set<std::string> devices;
  for (const auto& [clientId, filters] : subscriptions_) {
    if (clientId.starts_with(prefix)) {
      const std::string rest = clientId.substr(prefix.size());
      devices.insert(rest.substr(0, rest.find(':')));
    }
  }
  for (const auto& name : devices) {
    const auto id = policy::DeviceId::parse(name);
    if (!id) {
      continue;
    }
    const policy::DevicePolicy* now = policies.find(*id);
    const std::string own = prefix + name;
    const bool refused = std::ranges::any_of(subscriptions_, [&](const auto& kv) {
      return (kv.first == own || kv.first.starts_with(own + ":")) &&
             (now == nullptr || !std::ranges::all_of(kv.second, [&](const auto& f) {
                return evaluateSubscribe(*now, {"", f, 0}).allowed();
              }));
    });
    if (refused) {
      closeDevice(*id);
      endPersistentSessions(*id, now == nullptr);
    }
  }
}

std::expected<mqtt::SslContext, std::string> MqttService::deviceContext(const std::string& device) {
  const auto* identity = identities_ != nullptr ? identities_->find(device) : nullptr;
  if (identity == nullptr) {
    return std::unexpected("its policy asks for an issued identity, and none has been issued");
  }
  auto& cached = deviceContexts_[device];
  if (cached.context && cached.serial == identity->summary.serial) {
    return cached.context;
  }
  const auto& u = upstreamTls_;
  auto ctx = mqtt::makeUpstreamSslContext(
      {u.host, u.caFile.string(), identity->certificate.string(), identity->privateKey.string()});
  if (!ctx) {
    deviceContexts_.erase(device);
    return std::unexpected(ctx.error());
  }
  cached = {identity->summary.serial, *ctx};
  return cached.context;
}

size_t MqttService::maxDraining() const {
  // Each holds a descriptor and a TLS session; a quarter of the connection limit keeps them well
  // inside the unit's descriptors and memory.
  return std::max<size_t>(16, config_->limits.maxConnections / 4);
}

void MqttService::reportDrainingGivenUp(const std::string& device, std::string_view why) {
  Event e;
  e.type = EventType::UpstreamUnavailable;
  e.device = device;
  e.protocol = "mqtt";
  e.rule = "upstream.draining";
  e.action = "drop";
  e.message = fmt::format("upstream sessions of closed connections were given up before they had "
                          "delivered everything: {}",
                          why);
  sink_.emit(std::move(e));
}

void MqttService::releaseIdleMemory(Clock::time_point now) {
  // Once handshakes have been quiet for a second: WolfSSL's per-key ECC tables (~200 KiB for each
  // client certificate verified) go, and the heap gives its free pages back to the system, so an
  // idle gateway's footprint follows its connections rather than its busiest burst.
  if (!handshakeCachesHeld_ || admission_.handshakes() != 0 ||
      now - lastHandshakeEnded_ < std::chrono::seconds(1)) {
    return;
  }
  handshakeCachesHeld_ = false;
  tls::releaseHandshakeCaches();
#ifdef __GLIBC__
  ::malloc_trim(0); // musl (OpenWrt) returns memory on its own
#endif
}

} // namespace iotgw::daemon
