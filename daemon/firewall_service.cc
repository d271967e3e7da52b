// SPDX-License-Identifier: GPL-3.0-or-later
#include "daemon/firewall_service.h"

#include "daemon/state_files.h"

#include <netinet/in.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <ctime>
#include <fstream>

#include <fmt/format.h>

namespace iotgw::daemon {

using policy::Event;
using policy::EventType;

namespace {
std::filesystem::path quarantineDirectory(const Config& c) { return c.stateDirectory / "quarantine"; }
} // namespace

FirewallService::FirewallService(io::Reactor& reactor, EventSink& sink, SessionCloser closer)
    : reactor_(reactor), sink_(sink), closer_(std::move(closer)) {}

FirewallService::~FirewallService() {
  if (monitor_) {
    reactor_.remove(monitor_->fd());
  }
}

firewall::CompileOptions FirewallService::options() const {
  const Config& c = *config_;
  firewall::CompileOptions o;
  o.interfaces = c.deviceSegment.interfaces;
  if (c.mqtt.enabled) {
    o.gatewayServices.push_back({IPPROTO_TCP, c.mqtt.port});
    o.mqttRedirectPort = c.mqtt.port;
  }
  if (c.mqttTls.enabled) {
    o.gatewayServices.push_back({IPPROTO_TCP, c.mqttTls.port});
  }
  if (c.coap.enabled) {
    o.gatewayServices.push_back({IPPROTO_UDP, c.coap.port});
    o.coapRedirectPort = c.coap.port;
  }
  if (c.coapDtls.enabled) {
    o.gatewayServices.push_back({IPPROTO_UDP, c.coapDtls.port});
  }
  o.quarantined = quarantined_;
  return o;
}

std::set<std::string> FirewallService::readQuarantineList() const {
  std::set<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(quarantineDirectory(*config_), ec)) {
    const std::string name = e.path().filename().string();
    if (e.is_regular_file() && policy::DeviceId::parse(name)) {
      out.insert(name);
    }
  }
  return out;
}

std::string FirewallService::start(const Config& config,
                                   std::shared_ptr<const policy::PolicySet> policies) {
  auto nl = firewall::Netlink::open();
  if (!nl) {
    return "firewall: " + nl.error();
  }
  auto monitor = firewall::Monitor::open();
  if (!monitor) {
    return "firewall: " + monitor.error();
  }
  nl_ = std::move(*nl);
  monitor_ = std::move(*monitor);
  config_ = std::make_shared<const Config>(config);
  policies_ = std::move(policies);
  quarantined_ = readQuarantineList();
  if (auto err = commit(firewall::compile(*policies_, options())); !err.empty()) {
    return "firewall: cannot install table inet iotgw: " + err +
           (err.find("not permitted") != std::string::npos
                ? " (iotgwd needs CAP_NET_ADMIN; [firewall] enabled = false runs without it)"
                : "");
  }
  if (auto ec = reactor_.add(monitor_->fd(), EPOLLIN, [this](uint32_t) { onNotification(); })) {
    return "firewall: cannot watch nftables notifications: " + ec.message();
  }
  return {};
}

std::string FirewallService::commit(firewall::Ruleset next) {
  if (auto delta = firewall::diff(current_, next)) {
    if (delta->empty()) {
      current_ = std::move(next);
      return {};
    }
    if (nl_->update(*delta, next)) {
      current_ = std::move(next);
      generation_ = nl_->generation().value_or(0);
      return {};
    }
    // An element was not where we left it (someone edited the set): the whole table, then.
  }
  auto r = nl_->replace(next);
  if (!r) {
    return r.error();
  }
  current_ = std::move(next);
  generation_ = nl_->generation().value_or(0);
  return {};
}

std::string FirewallService::apply(const Config& config,
                                   std::shared_ptr<const policy::PolicySet> policies) {
  auto previousConfig = config_;
  auto previousQuarantine = quarantined_;
  config_ = std::make_shared<const Config>(config);
  quarantined_ = readQuarantineList();
  if (auto err = commit(firewall::compile(*policies, options())); !err.empty()) {
    config_ = std::move(previousConfig);
    quarantined_ = std::move(previousQuarantine);
    return "firewall: " + err;
  }
  policies_ = std::move(policies);
  // Quarantines added or lifted by hand (a file in the quarantine directory).
  for (const auto& id : quarantined_) {
    if (!previousQuarantine.contains(id)) {
      emitQuarantineEvent(EventType::DeviceQuarantined, id, "administrator", "quarantine",
                          fmt::format("{} quarantined by the administrator: it reaches DHCP only "
                                      "and its sessions were closed",
                                      id));
      if (auto d = policy::DeviceId::parse(id)) {
        closer_(*d);
      }
    }
  }
  for (const auto& id : previousQuarantine) {
    if (!quarantined_.contains(id)) {
      emitQuarantineEvent(EventType::DeviceReleased, id, "administrator", "release",
                          fmt::format("{} released from quarantine: its policy applies again", id));
    }
  }
  return {};
}

void FirewallService::emitQuarantineEvent(EventType type, const std::string& id,
                                          std::string_view rule, std::string_view action,
                                          std::string message) {
  Event e;
  e.type = type;
  e.device = id;
  e.protocol = "nftables";
  e.rule = std::string(rule);
  e.action = std::string(action);
  e.message = std::move(message);
  sink_.emit(std::move(e));
}

std::string FirewallService::quarantine(const policy::DeviceId& id, std::string_view rule,
                                        std::string_view reason) {
  if (quarantined_.contains(id.str())) {
    closer_(id);
    return {};
  }
  // Persist first: a quarantine must survive a restart.
  if (auto err = writeAtomically(quarantineDirectory(*config_) / id.str(),
                                 fmt::format("time = {}\nrule = \"{}\"\nreason = \"{}\"\n",
                                             ::time(nullptr), rule, reason));
      !err.empty()) {
    closer_(id);
    return err;
  }
  quarantined_.insert(id.str());
  auto err = commit(firewall::compile(*policies_, options()));
  if (!err.empty()) {
    emitQuarantineEvent(EventType::DeviceQuarantined, id.str(), rule, "quarantine-failed",
                        fmt::format("quarantine of {} could not be applied ({}); its sessions "
                                    "were closed",
                                    id.str(), err));
  } else {
    emitQuarantineEvent(EventType::DeviceQuarantined, id.str(), rule, "quarantine",
                        fmt::format("{} quarantined ({}): it reaches DHCP only and its sessions "
                                    "were closed",
                                    id.str(), reason));
  }
  closer_(id);
  return err;
}

void FirewallService::forget(const policy::DeviceId& id) {
  if (quarantined_.erase(id.str()) > 0) {
    (void)removeDurably(quarantineDirectory(*config_) / id.str());
  }
}

std::string FirewallService::release(const policy::DeviceId& id) {
  if (!quarantined_.contains(id.str())) {
    return {};
  }
  if (auto err = removeDurably(quarantineDirectory(*config_) / id.str()); !err.empty()) {
    return err;
  }
  quarantined_.erase(id.str());
  if (auto err = commit(firewall::compile(*policies_, options())); !err.empty()) {
    quarantined_.insert(id.str());
    return err;
  }
  emitQuarantineEvent(EventType::DeviceReleased, id.str(), "", "release",
                      fmt::format("{} released from quarantine: its policy applies again", id.str()));
  return {};
}

void FirewallService::onNotification() {
  switch (monitor_->drain()) {
  case firewall::Monitor::Result::Quiet:
    return;
  case firewall::Monitor::Result::Changed:
    repair(monitor_->lastChanger());
    return;
  case firewall::Monitor::Result::Overrun:
    // Notifications were lost: if the generation moved since our last transaction, someone else
    // committed something, perhaps to our table.
    if (auto g = nl_->generation(); !g || *g != generation_) {
      repair("another process (notifications were lost)");
    }
    return;
  }
}

void FirewallService::repair(const std::string& who) {
  Event e;
  e.type = EventType::FirewallRepaired;
  e.protocol = "nftables";
  e.rule = "table inet iotgw";
  auto r = nl_->replace(current_);
  if (r) {
    generation_ = nl_->generation().value_or(0);
    e.action = "repair";
    e.message = fmt::format("table inet iotgw was changed by {}; re-applied", who);
  } else {
    e.action = "repair-failed";
    e.message = fmt::format("table inet iotgw was changed by {}; re-applying failed: {}", who,
                            r.error());
  }
  sink_.emit(std::move(e));
}

void FirewallService::stop() {
  if (nl_ && config_ && !config_->firewall.keepRulesOnExit) {
    (void)nl_->remove();
  }
}

void FirewallService::sampleTraffic() {
  auto counters = nl_->counters();
  if (!counters) {
    return; // the next interval tries again; a lost table is the monitor's business
  }
  std::map<std::string, firewall::DeviceCounters> readings;
  for (const auto& [name, value] : *counters) {
    if (name.starts_with("tx-")) {
      readings[name.substr(3)].tx = value;
    } else if (name.starts_with("rx-")) {
      readings[name.substr(3)].rx = value;
    }
  }
  for (const auto& s : watch_.sample(readings, firewall::TrafficWatch::Clock::now())) {
    policy::Event e;
    e.type = policy::EventType::TrafficSurge;
    e.device = s.device;
    e.rule = "telemetry:tx-rate";
    e.protocol = "nftables";
    e.action = config_->firewall.quarantineOnSurge ? "quarantine" : "log";
    e.message = fmt::format("device {} suddenly sends {:.0f} KiB/s; its usual rate is {:.1f} KiB/s",
                            s.device, s.txBytesPerSecond / 1024, s.baselineTxBytesPerSecond / 1024);
    sink_.emit(std::move(e));
    if (config_->firewall.quarantineOnSurge) {
      if (auto id = policy::DeviceId::parse(s.device); id && !quarantined(*id)) {
        (void)quarantine(*id, "telemetry:tx-rate", "its outbound traffic surged"); // events tell
      }
    }
  }
}

} // namespace iotgw::daemon
