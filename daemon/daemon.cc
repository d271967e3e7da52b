// SPDX-License-Identifier: GPL-3.0-or-later
#include "daemon/daemon.h"

#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <fmt/format.h>

#if IOTGW_WITH_DBUS
#include "daemon/dbus_service.h"
#endif
#include "daemon/notify.h"
#include "iotgw/build_config.h"

namespace iotgw::daemon {

using policy::Event;
using policy::EventType;

std::expected<Snapshot, policy::Diagnostics> loadSnapshot(const Options& options) {
  Config config;
  if (options.configPath) {
    auto c = loadConfig(*options.configPath);
    if (!c) {
      return std::unexpected(c.error());
    }
    config = std::move(*c);
  } else if (std::error_code ec; std::filesystem::exists(kDefaultConfigPath, ec)) {
    auto c = loadConfig(kDefaultConfigPath);
    if (!c) {
      return std::unexpected(c.error());
    }
    config = std::move(*c);
  } else {
    config = builtinDefault();
  }
  auto devices =
      policy::loadPolicyDirectories(config.policyDirectories(), config.limits.maxDevices);
  if (!devices) {
    return std::unexpected(devices.error());
  }
  auto set = policy::PolicySet::build(std::move(*devices));
  if (!set) {
    return std::unexpected(set.error());
  }
  auto defaults = std::make_shared<policy::DefaultCredentials>();
  for (const auto& pair : config.extraDefaultCredentials) {
    defaults->add(pair);
  }
  return Snapshot{std::make_shared<const Config>(std::move(config)), std::move(*set),
                  std::move(defaults)};
}

std::expected<std::unique_ptr<Daemon>, std::string> Daemon::create(Options options) {
  auto snapshot = loadSnapshot(options);
  if (!snapshot) {
    std::string all;
    for (const auto& d : snapshot.error()) {
      all += d.str() + "\n";
    }
    return std::unexpected(all);
  }
  auto reactor = io::Reactor::create();
  if (!reactor) {
    return std::unexpected("cannot create the event loop: " + reactor.error().message());
  }
  std::unique_ptr<Daemon> d(
      new Daemon(std::move(options), std::move(*snapshot), std::move(*reactor)));
  if (auto err = d->setUp(); !err) {
    return std::unexpected(err.error());
  }
  return d;
}

Daemon::Daemon(Options options, Snapshot snapshot, std::unique_ptr<io::Reactor> reactor) {
  w_.options = std::move(options);
  w_.current = std::move(snapshot);
  w_.reactor = std::move(reactor);
  manager_ = std::make_unique<Manager>(w_, [this] { return reload(); });
}

Daemon::~Daemon() = default;

Outcome Daemon::setUp() {
  const Config& config = *w_.current.config;
  w_.sink = std::make_unique<EventSink>(makeBackend(config.events.target), config.events);

  // The state directory holds keys and persisted policies: owner only.
  std::error_code ec;
  std::filesystem::create_directories(config.stateDirectory, ec);
  if (ec) {
    return failure(fmt::format("cannot create state directory {}: {}",
                               config.stateDirectory.string(), ec.message()));
  }
  ::chmod(config.stateDirectory.c_str(), 0700);
  // The gateway CA: made on first start, with a key nobody else has (5.1-1).
  auto ids = Identities::open(config.stateDirectory);
  if (!ids) {
    return failure("gateway CA: " + ids.error());
  }
  w_.identities = std::move(*ids);

  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
  if (::sigprocmask(SIG_BLOCK, &mask, nullptr) != 0) {
    return failure("cannot block signals");
  }
  ::signal(SIGPIPE, SIG_IGN);
  signalFd_ = io::UniqueFd(::signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC));
  if (!signalFd_.valid()) {
    return failure("cannot create signalfd");
  }
  if (auto e = w_.reactor->add(signalFd_.get(), EPOLLIN, [this](uint32_t) { onSignal(); })) {
    return failure("cannot watch signals: " + e.message());
  }

  if (auto interval = notify::watchdogInterval()) {
    const auto half = std::chrono::duration_cast<std::chrono::milliseconds>(*interval / 2);
    const auto period = std::max(half, std::chrono::milliseconds(1));
    if (auto t = w_.reactor->addTimer(period, period, [] { notify::watchdog(); }); !t) {
      return failure("cannot arm the watchdog timer");
    }
  }
  scheduleSummaries();

  // The table goes in before any listener accepts a device (fail closed: no table, no daemon).
  if (config.firewall.enabled) {
    w_.firewall = std::make_unique<FirewallService>(*w_.reactor, *w_.sink,
                                                    [this](const policy::DeviceId& id) {
                                                      if (w_.mqtt) {
                                                        w_.mqtt->closeDevice(id);
                                                        w_.mqtt->endPersistentSessions(id, true);
                                                      }
                                                      if (w_.coap) {
                                                        w_.coap->closeDevice(id);
                                                      }
                                                    });
    if (auto err = w_.firewall->start(config, w_.current.policies); !err) {
      return err;
    }
    // The exposure scan: shortly after start, then every scan interval, with the policies in
    // force at that moment.
    if (config.firewall.scanInterval.count() > 0) {
      w_.scan = std::make_unique<ExposureScan>(*w_.reactor, *w_.sink);
      const auto every =
          std::chrono::duration_cast<std::chrono::milliseconds>(config.firewall.scanInterval);
      if (!w_.reactor->addTimer(std::chrono::seconds(2), every, [this] {
            w_.scan->start(w_.current.policies, w_.current.config->firewall.scanProbesPerSecond);
          })) {
        return failure("cannot arm the exposure scan timer");
      }
    }
    if (config.firewall.telemetryInterval.count() > 0) {
      const auto every =
          std::chrono::duration_cast<std::chrono::milliseconds>(config.firewall.telemetryInterval);
      if (!w_.reactor->addTimer(every, every, [this] { w_.firewall->sampleTraffic(); })) {
        return failure("cannot arm the telemetry timer");
      }
    }
  }
  manager_->reconcileIdentities();
  // The CRL is valid for 30 days: checked hourly, rewritten a week into its life.
  if (!w_.reactor->addTimer(std::chrono::hours(1), std::chrono::hours(1), [this] {
        if (auto e = w_.identities->refreshCrl(std::chrono::system_clock::now()); !e) {
          Event ev;
          ev.type = EventType::UpstreamUnavailable;
          ev.protocol = "pki";
          ev.rule = "crl";
          ev.message = "cannot refresh the CRL: " + e.error();
          w_.sink->emit(std::move(ev));
        }
      })) {
    return failure("cannot arm the CRL timer");
  }
  // CoAP pushes ride on the MQTT capability's upstream sessions, so it runs for them too.
  if (config.mqtt.enabled || config.mqttTls.enabled || config.coap.enabled) {
    w_.mqtt = std::make_unique<MqttService>(
        *w_.reactor, *w_.sink, w_.current.config, [this] { return w_.current.policies; },
        w_.current.defaultCredentials);
    w_.mqtt->setIdentities(w_.identities.get());
    w_.mqtt->setQuarantineCheck(
        [this](const policy::DeviceId& id) { return w_.firewall && w_.firewall->quarantined(id); });
    if (w_.firewall) {
      w_.mqtt->setQuarantineHandler([this](const policy::DeviceId& id, const std::string& rule) {
        (void)w_.firewall->quarantine(id, rule, // a failure is an event of its own
                                      "the device broke its policy, whose action is quarantine");
      });
    }
    if (auto err = w_.mqtt->start(); !err) {
      return err;
    }
  }
  if (config.coap.enabled || config.coapDtls.enabled) {
    CoapService::Publish publish; // none without the MQTT capability: pushes are answered 5.03
    if (w_.mqtt) {
      publish = [mqtt = w_.mqtt.get()](const policy::DevicePolicy& device, const std::string& topic,
                                       std::span<const uint8_t> payload, uint8_t qos,
                                       std::function<void(bool)> done) {
        return mqtt->publishFor(device, topic, payload, qos, std::move(done));
      };
    }
    w_.coap = std::make_unique<CoapService>(
        *w_.reactor, *w_.sink, w_.current.config, [this] { return w_.current.policies; },
        std::move(publish),
        [this](const policy::DeviceId& id) { return w_.firewall && w_.firewall->quarantined(id); });
    if (auto err = w_.coap->start(); !err) {
      return err;
    }
  }
  // The control API last: by the time a caller can change anything, everything it changes runs.
  // (A build without D-Bus has none; its configuration cannot ask for one.)
#if IOTGW_WITH_DBUS
  if (config.dbus.enabled) {
    auto d =
        DbusService::start(*w_.reactor, *manager_, config.dbus.adminGroup, config.dbus.readerGroup);
    if (!d) {
      if (d.error().find("FileExists") != std::string::npos) {
        return failure(
            "org.iotgw.Gateway1 is already owned on the system bus: is another iotgwd running?");
      }
      // No bus (yet) is not a reason to leave devices unprotected: run without the API.
      dbusError_ =
          d.error().find("FileNotFound") != std::string::npos ? "no system bus" : d.error();
    } else {
      dbus_ = std::move(*d);
      w_.sink->setObserver([this](const Event& e, bool journaled) {
        if (dbus_) {
          dbus_->onEvent(e, journaled);
        }
      });
    }
  }
#endif
  return {};
}

void Daemon::scheduleSummaries() {
  if (summaryTimer_) {
    w_.reactor->cancelTimer(*summaryTimer_);
  }
  const auto every = std::chrono::duration_cast<std::chrono::milliseconds>(
      w_.current.config->events.summaryInterval);
  if (auto t = w_.reactor->addTimer(every, every, [this] { w_.sink->flushSuppressed(); })) {
    summaryTimer_ = *t;
  }
}

std::string Daemon::statusLine() const {
  const auto& c = *w_.current.config;
  const size_t n = w_.current.policies->size();
  std::string mqtt;
  if (w_.mqtt) {
    mqtt = fmt::format("; MQTT on port {}, {} connection{}", c.mqtt.port, w_.mqtt->connections(),
                       w_.mqtt->connections() == 1 ? "" : "s");
  }
  std::string coap;
  if (w_.coap) {
    std::vector<std::string> parts;
    if (c.coapDtls.enabled) {
      const uint64_t sessions = w_.coap->dtlsSessions();
      parts.push_back(fmt::format("DTLS on port {}, {} session{}", c.coapDtls.port, sessions,
                                  sessions == 1 ? "" : "s"));
    }
    if (c.coap.enabled) {
      parts.push_back(fmt::format("devices on port {}", c.coap.port));
    }
    coap = fmt::format("; CoAP {}", fmt::join(parts, ", "));
  }
  std::string fw = "; firewall off";
  if (w_.firewall) {
    fw = fmt::format("; table inet iotgw on {}", fmt::join(c.deviceSegment.interfaces, ","));
  }
  std::string api = "; no control API (built without D-Bus)";
#if IOTGW_WITH_DBUS
  if (dbus_) {
    api = "; D-Bus org.iotgw.Gateway1";
  } else if (!dbusError_.empty()) {
    api = "; no D-Bus API (" + dbusError_ + ")";
  } else {
    api.clear();
  }
#endif
  return fmt::format("{} device{} enrolled, default deny; config {}{}{}{}{}", n, n == 1 ? "" : "s",
                     c.source.empty() ? "built-in default" : c.source.string(), fw, mqtt, coap,
                     api);
}

int Daemon::run() {
  Event started;
  started.type = EventType::DaemonStarted;
  started.protocol = "daemon";
  started.message = fmt::format(
      "iotgwd {} started: {}; {} default credentials refused; events to {}", IOTGW_VERSION,
      statusLine(), w_.current.defaultCredentials->size(), w_.sink->backend().name());
  w_.sink->emit(started);
  notify::ready(statusLine());

  if (auto ec = w_.reactor->run()) {
    Event failed;
    failed.type = EventType::DaemonStopping;
    failed.message = "event loop failed: " + ec.message();
    w_.sink->emit(failed);
    return 1;
  }
  if (w_.firewall) {
    w_.firewall->stop();
  }
  w_.sink->flushSuppressed();
  return exitCode_;
}

void Daemon::onSignal() {
  signalfd_siginfo si{};
  while (::read(signalFd_.get(), &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
    switch (si.ssi_signo) {
    case SIGHUP:
      (void)reload(); // an error is an event; the running state stays
      break;
    case SIGTERM:
    case SIGINT: {
      notify::stopping();
      Event e;
      e.type = EventType::DaemonStopping;
      e.protocol = "daemon";
      e.message =
          fmt::format("iotgwd stopping on {}", si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
      w_.sink->emit(e);
      w_.reactor->stop();
      return;
    }
    default:
      break;
    }
  }
}

Outcome Daemon::reload() {
  notify::reloading();
  auto next = loadSnapshot(w_.options);
  if (!next) {
    const auto& diags = next.error();
    Event e;
    e.type = EventType::ConfigRejected;
    e.protocol = "config";
    e.action = "keep-running-config";
    e.rule = diags.empty() ? "" : diags.front().str();
    e.message = fmt::format("reload rejected, {} error{}; the running configuration stays in "
                            "force: {}",
                            diags.size(), diags.size() == 1 ? "" : "s",
                            diags.empty() ? "" : diags.front().str());
    w_.sink->emit(e);
    notify::ready(statusLine());
    return failure(diags.empty() ? "rejected" : diags.front().str());
  }
  auto reject = [this](const std::string& err) {
    Event e;
    e.type = EventType::ConfigRejected;
    e.protocol = "config";
    e.action = "keep-running-config";
    e.rule = err;
    e.message = "reload rejected; the running configuration stays in force: " + err;
    w_.sink->emit(e);
    notify::ready(statusLine());
  };
  // Prepare: everything that can fail is built first (TLS contexts, CRLs) and changes nothing.
  std::vector<Prepared> prepared;
  const auto prepare = [&](std::expected<Prepared, std::string> step) {
    if (step) {
      prepared.push_back(std::move(*step));
      return Outcome();
    }
    reject(step.error());
    return Outcome(failure(step.error()));
  };
  if (w_.mqtt) {
    if (auto ok = prepare(w_.mqtt->prepareTls(*next->config)); !ok) {
      return ok;
    }
  }
  if (w_.coap) {
    if (auto ok = prepare(w_.coap->prepareCrl(*next->config)); !ok) {
      return ok;
    }
  }
  // Apply: the firewall's one transaction is the last step that can fail (the kernel refuses it
  // whole, and then nothing has changed anywhere).
  if (w_.firewall) {
    if (auto err = w_.firewall->apply(*next->config, next->policies); !err) {
      reject(err.error());
      return err;
    }
  }
  // Commit: what was prepared is put in force, which cannot fail.
  for (auto& step : prepared) {
    step();
  }
  // Everything checked: swap the snapshots in one step. Sessions already running keep the
  // snapshot they started with; listener and upstream addresses take effect at restart.
  w_.current = std::move(*next);
  if (w_.mqtt) {
    w_.mqtt->setDefaultCredentials(w_.current.defaultCredentials);
    w_.mqtt->reconcilePersistentSessions(*w_.current.policies);
  }
  ++w_.reloads;
  manager_->reconcileIdentities(); // a devices.d/ file may have come, gone, or changed its identity
  w_.sink->reconfigure(w_.current.config->events);
  scheduleSummaries();
  Event e;
  e.type = EventType::ConfigReloaded;
  e.protocol = "config";
  e.action = "apply";
  e.message = fmt::format("reload {} applied: {}", w_.reloads, statusLine());
  w_.sink->emit(e);
  notify::ready(statusLine());
  return {};
}

} // namespace iotgw::daemon
