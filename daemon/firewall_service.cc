// SPDX-License-Identifier: GPL-3.0-or-later
#include "daemon/firewall_service.h"

#include "daemon/state_files.h"

#include <netinet/in.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <charconv>
#include <ctime>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

namespace iotgw::daemon {

using firewall::PortBinding;
using policy::Event;
using policy::EventType;

namespace {

constexpr size_t kInet = 0;
constexpr size_t kBridge = 1;

std::filesystem::path quarantineDirectory(const Config& c) {
  return c.stateDirectory / "quarantine";
}
std::filesystem::path portsDirectory(const Config& c) { return c.stateDirectory / "ports"; }

// An interface name as the kernel allows it (and as nothing in the file's syntax can confuse).
bool validPortName(std::string_view n) {
  return !n.empty() && n.size() < 16 && n.find_first_of(" \t\"/\\=") == std::string_view::npos;
}

// mac = "02:00:00:00:00:10"
// port = "gw-dev"       (or: group = 7)
std::optional<PortBinding> parsePortFile(const std::string& text) {
  PortBinding b;
  bool haveMac = false;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    const auto eq = line.find('=');
    if (line.empty() || line[0] == '#' || eq == std::string::npos) {
      continue;
    }
    auto trim = [](std::string_view s) {
      const auto a = s.find_first_not_of(" \t");
      const auto z = s.find_last_not_of(" \t\r");
      return a == std::string_view::npos ? std::string_view() : s.substr(a, z - a + 1);
    };
    const std::string_view key = trim(std::string_view(line).substr(0, eq));
    std::string_view value = trim(std::string_view(line).substr(eq + 1));
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') {
      value = value.substr(1, value.size() - 2);
    }
    if (key == "mac") {
      auto m = policy::MacAddress::parse(value);
      if (!m) {
        return std::nullopt;
      }
      b.mac = *m;
      haveMac = true;
    } else if (key == "port") {
      if (!validPortName(value)) {
        return std::nullopt;
      }
      b.port = std::string(value);
    } else if (key == "group") {
      uint32_t g = 0;
      if (std::from_chars(value.data(), value.data() + value.size(), g).ec != std::errc{}) {
        return std::nullopt;
      }
      b.group = g;
    }
  }
  if (!haveMac || (b.group == 0 && b.port.empty())) {
    return std::nullopt;
  }
  if (b.group != 0) {
    b.port.clear();
  }
  return b;
}

std::string portFileText(const PortBinding& b) {
  return b.group != 0 ? fmt::format("mac = \"{}\"\ngroup = {}\ntime = {}\n", b.mac.str(), b.group,
                                    ::time(nullptr))
                      : fmt::format("mac = \"{}\"\nport = \"{}\"\ntime = {}\n", b.mac.str(), b.port,
                                    ::time(nullptr));
}

} // namespace

FirewallService::FirewallService(io::Reactor& reactor, EventSink& sink, SessionCloser closer,
                                 OpenApplier openApplier)
    : reactor_(reactor), sink_(sink), closer_(std::move(closer)),
      openApplier_(
          openApplier
              ? std::move(openApplier)
              : OpenApplier([]() -> std::expected<std::unique_ptr<firewall::Applier>, std::string> {
                  return firewall::Netlink::open();
                })) {}

FirewallService::~FirewallService() {
  for (int fd : {monitor_ ? monitor_->fd() : -1, reports_ ? reports_->fd() : -1,
                 links_ ? links_->fd() : -1}) {
    if (fd >= 0) {
      reactor_.remove(fd);
    }
  }
}

firewall::CompileOptions
FirewallService::options(const Config& c, const std::set<std::string>& quarantined,
                         const std::map<std::string, firewall::PortBinding>& bindings) const {
  firewall::CompileOptions o;
  o.interfaces = c.deviceSegment.interfaces;
  if (c.mqtt.enabled) {
    o.gatewayServices.push_back({IPPROTO_TCP, c.mqtt.port});
    o.mqttRedirectPort = c.mqtt.port;
    for (const auto& a : c.mqtt.addresses) {
      o.deviceListeners.push_back({a, {IPPROTO_TCP, c.mqtt.port}});
    }
  }
  if (c.mqttTls.enabled) {
    o.gatewayServices.push_back({IPPROTO_TCP, c.mqttTls.port});
  }
  if (c.coap.enabled) {
    o.gatewayServices.push_back({IPPROTO_UDP, c.coap.port});
    o.coapRedirectPort = c.coap.port;
    for (const auto& a : c.coap.addresses) {
      o.deviceListeners.push_back({a, {IPPROTO_UDP, c.coap.port}});
    }
  }
  if (c.coapDtls.enabled) {
    o.gatewayServices.push_back({IPPROTO_UDP, c.coapDtls.port});
  }
  o.quarantined = quarantined;
  o.bindings = bindings;
  if (links_) {
    o.foreignPorts = links_->foreignPorts(c.deviceSegment.interfaces);
  }
  return o;
}

FirewallService::Tables
FirewallService::compileAll(const Config& c, const policy::PolicySet& policies,
                            const std::set<std::string>& quarantined,
                            const std::map<std::string, firewall::PortBinding>& bindings) const {
  const auto o = options(c, quarantined, bindings);
  return {firewall::compile(policies, o), firewall::compileBridge(policies, o)};
}

FirewallService::Tables FirewallService::compileAll(const policy::PolicySet& policies) const {
  return compileAll(*config_, policies, quarantined_, bindings_);
}

std::set<std::string> FirewallService::readQuarantineList(const Config& c) const {
  std::set<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(quarantineDirectory(c), ec)) {
    const std::string name = e.path().filename().string();
    if (e.is_regular_file() && policy::DeviceId::parse(name)) {
      out.insert(name);
    }
  }
  return out;
}

std::map<std::string, PortBinding>
FirewallService::readPorts(const Config& c, const policy::PolicySet& policies,
                           std::vector<std::string>& unreadable) const {
  std::map<std::string, PortBinding> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(portsDirectory(c), ec)) {
    const std::string name = e.path().filename().string();
    const auto id = policy::DeviceId::parse(name);
    const policy::DevicePolicy* d = id ? policies.find(*id) : nullptr;
    if (!e.is_regular_file() || d == nullptr || !d->mac) {
      continue;
    }
    // Known ones are not read again: a reload with 10,000 bound devices lists the directory
    // and nothing more.
    std::optional<PortBinding> b;
    if (auto known = bindings_.find(name); known != bindings_.end()) {
      b = known->second;
    } else if (auto text = policy::readFile(e.path(), 4096)) {
      b = parsePortFile(*text);
    }
    if (!b) {
      // An administrator's pin with a typo must not turn into "learn from whoever comes first":
      // the MAC is bound to a port that does not exist until the file is fixed or removed.
      unreadable.push_back(name);
      out.emplace(name, PortBinding{*d->mac, std::string(), 0});
    } else if (b->mac == *d->mac) {
      out.emplace(name, std::move(*b));
    }
  }
  // Learned, but not on disk (the state directory was full or read-only): still bound.
  for (const auto& id : unsaved_) {
    const auto known = bindings_.find(id);
    const auto pid = policy::DeviceId::parse(id);
    const policy::DevicePolicy* d = pid ? policies.find(*pid) : nullptr;
    if (known != bindings_.end() && d != nullptr && d->mac && known->second.mac == *d->mac) {
      out.emplace(id, known->second);
    }
  }
  return out;
}

std::map<std::string, PortBinding> FirewallService::loadPorts(const Config& c,
                                                              const policy::PolicySet& policies) {
  std::vector<std::string> unreadable;
  auto ports = readPorts(c, policies, unreadable);
  for (const auto& id : unreadable) {
    emitQuarantineEvent(EventType::DevicePortConflict, id, "ports:file", "refuse",
                        fmt::format("{} cannot be read as a port binding: {}'s MAC is refused on "
                                    "every port until the file is fixed or removed (then reload)",
                                    (portsDirectory(c) / id).string(), id));
  }
  for (auto it = unsaved_.begin(); it != unsaved_.end();) {
    const auto b = ports.find(*it);
    if (b == ports.end() || writeAtomically(portsDirectory(c) / *it, portFileText(b->second))) {
      it = unsaved_.erase(it);
    } else {
      ++it;
    }
  }
  return ports;
}

void FirewallService::prunePortFiles() {
  std::error_code ec;
  std::vector<std::filesystem::path> stale;
  for (const auto& e : std::filesystem::directory_iterator(portsDirectory(*config_), ec)) {
    if (!bindings_.contains(e.path().filename().string())) {
      stale.push_back(e.path());
    }
  }
  for (const auto& p : stale) {
    (void)removeDurably(p); // one left behind is ignored at the next read (its device is gone)
  }
}

Outcome FirewallService::start(const Config& config,
                               std::shared_ptr<const policy::PolicySet> policies) {
  auto nl = openApplier_();
  if (!nl) {
    return failure("firewall: " + nl.error());
  }
  auto monitor = firewall::Monitor::open((*nl)->portId());
  if (!monitor) {
    return failure("firewall: " + monitor.error());
  }
  auto links = firewall::Links::open();
  if (!links) {
    return failure("firewall: cannot read the interfaces: " + links.error());
  }
  auto reports = firewall::ReportListener::open(firewall::kLogGroup);
  if (!reports) {
    return failure("firewall: cannot receive the tables' reports: " + reports.error() +
                   " (the kernel needs nfnetlink_log)");
  }
  nl_ = std::move(*nl);
  monitor_ = std::move(*monitor);
  links_ = std::move(*links);
  reports_ = std::move(*reports);
  config_ = std::make_shared<const Config>(config);
  policies_ = std::move(policies);
  book_ = std::make_unique<firewall::PortBook>(policies_);
  quarantined_ = readQuarantineList(*config_);
  bindings_ = loadPorts(*config_, *policies_);
  if (auto err = commit(compileAll(*policies_)); !err) {
    return failure(
        "firewall: cannot install tables inet iotgw and bridge iotgw: " + err.error() +
        (err.error().find("not permitted") != std::string::npos
             ? " (iotgwd needs CAP_NET_ADMIN; [firewall] enabled = false runs without it)"
         : err.error().find("not supported") != std::string::npos
             ? " (the kernel needs nf_tables with the inet and bridge families)"
             : ""));
  }
  prunePortFiles();
  for (auto [fd, handler] :
       {std::pair<int, std::function<void()>>{monitor_->fd(), [this] { onNotification(); }},
        {reports_->fd(), [this] { onReports(); }},
        {links_->fd(), [this] { onLinks(); }}}) {
    if (auto ec = reactor_.add(fd, EPOLLIN, [handler](uint32_t) { handler(); })) {
      return failure("firewall: cannot watch netlink: " + ec.message());
    }
  }
  return {};
}

Outcome FirewallService::commit(Tables next) {
  auto inet = firewall::diff(current_[kInet], next[kInet]);
  auto bridge = firewall::diff(current_[kBridge], next[kBridge]);
  if (inet && bridge) {
    if (inet->empty() && bridge->empty()) {
      current_ = std::move(next);
      return {};
    }
    std::vector<firewall::TableUpdate> updates;
    if (!inet->empty()) {
      updates.push_back({&*inet, &next[kInet]});
    }
    if (!bridge->empty()) {
      updates.push_back({&*bridge, &next[kBridge]});
    }
    if (nl_->update(updates)) {
      current_ = std::move(next);
      generation_ = nl_->generation().value_or(0);
      return {};
    }
    // An element was not where we left it (someone edited a set): the whole tables, then.
  }
  auto r = nl_->replace(std::span<const firewall::Ruleset>(next));
  if (!r) {
    return failure(r.error());
  }
  current_ = std::move(next);
  generation_ = nl_->generation().value_or(0);
  return {};
}

Outcome FirewallService::apply(const Config& config,
                               std::shared_ptr<const policy::PolicySet> policies) {
  // Prepared: what the tables are compiled from next. Put in force only once the kernel took them.
  auto nextConfig = std::make_shared<const Config>(config);
  auto nextQuarantine = readQuarantineList(*nextConfig);
  auto nextPorts = loadPorts(*nextConfig, *policies);
  if (auto err = commit(compileAll(*nextConfig, *policies, nextQuarantine, nextPorts)); !err) {
    return failure("firewall: " + err.error());
  }
  const auto previousQuarantine = std::exchange(quarantined_, std::move(nextQuarantine));
  config_ = std::move(nextConfig);
  bindings_ = std::move(nextPorts);
  policies_ = std::move(policies);
  book_ = std::make_unique<firewall::PortBook>(policies_);
  prunePortFiles();
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

Outcome FirewallService::quarantine(const policy::DeviceId& id, std::string_view rule,
                                    std::string_view reason) {
  if (quarantined_.contains(id.str())) {
    closer_(id);
    return {};
  }
  // Persist first: a quarantine must survive a restart.
  if (auto err = writeAtomically(quarantineDirectory(*config_) / id.str(),
                                 fmt::format("time = {}\nrule = \"{}\"\nreason = \"{}\"\n",
                                             ::time(nullptr), rule, reason));
      !err) {
    closer_(id);
    return err;
  }
  quarantined_.insert(id.str());
  auto err = commit(compileAll(*policies_));
  if (!err) {
    emitQuarantineEvent(EventType::DeviceQuarantined, id.str(), rule, "quarantine-failed",
                        fmt::format("quarantine of {} could not be applied ({}); its sessions "
                                    "were closed",
                                    id.str(), err.error()));
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
  bindings_.erase(id.str());
  unsaved_.erase(id.str());
  (void)removeDurably(portsDirectory(*config_) / id.str());
}

Outcome FirewallService::release(const policy::DeviceId& id) {
  if (!quarantined_.contains(id.str())) {
    return {};
  }
  // The mark is set aside first (what can fail), then the tables; it is gone for good only once
  // they are in force, and put back if they are refused.
  auto mark = StagedFile::removal(quarantineDirectory(*config_) / id.str());
  if (!mark) {
    return failure(mark.error());
  }
  auto next = quarantined_;
  next.erase(id.str());
  if (auto err = commit(compileAll(*config_, *policies_, next, bindings_)); !err) {
    return err;
  }
  quarantined_ = std::move(next);
  (void)mark->commit(); // a leftover hidden file is read by nobody
  emitQuarantineEvent(
      EventType::DeviceReleased, id.str(), "", "release",
      fmt::format("{} released from quarantine: its policy applies again", id.str()));
  return {};
}

void FirewallService::onReports() {
  // A report may come from a port that has only just joined a bridge: the links first.
  onLinks();
  for (const firewall::Report& r : reports_->drain()) {
    std::optional<firewall::PortInfo> port;
    if (const firewall::Link* l = links_->find(r.port)) {
      port = firewall::PortInfo{l->name, l->group};
    }
    auto found = book_->interpret(r, bindings_, port);
    if (found.bind) {
      const auto& [id, binding] = *found.bind;
      bindings_[id] = binding;
      // Applied even when it cannot be saved: it holds, and is written again on every reload
      // until it is (a restart before then learns again).
      const Outcome saved = writeAtomically(portsDirectory(*config_) / id, portFileText(binding));
      if (auto err = commit(compileAll(*policies_)); !err) {
        bindings_.erase(id);
        (void)removeDurably(portsDirectory(*config_) / id);
        if (found.event) {
          found.event->action = "bind-failed";
          found.event->message += fmt::format(" (not applied: {})", err.error());
        }
      } else if (!saved) {
        unsaved_.insert(id); // kept in memory, written again on the next reload
        if (found.event) {
          found.event->message += fmt::format(" (not saved yet: {})", saved.error());
        }
      } else {
        unsaved_.erase(id);
      }
    }
    if (found.event) {
      sink_.emit(std::move(*found.event));
    }
  }
}

void FirewallService::onLinks() {
  // A bridge or port that came or went changes which ports are foreign to the device segment.
  if (links_->drain()) {
    (void)commit(compileAll(*policies_)); // on failure the next change (or repair) tries again
  }
}

void FirewallService::onNotification() {
  switch (monitor_->drain()) {
  case firewall::Monitor::Result::Quiet:
    return;
  case firewall::Monitor::Result::Changed:
    repair(monitor_->lastChanged(), monitor_->lastChanger());
    return;
  case firewall::Monitor::Result::Overrun:
    // Notifications were lost: if the generation moved since our last transaction, someone else
    // committed something, perhaps to our tables.
    if (auto g = nl_->generation(); !g || *g != generation_) {
      repair("table inet iotgw or bridge iotgw", "another process (notifications were lost)");
    }
    return;
  }
}

void FirewallService::repair(const std::string& what, const std::string& who) {
  Event e;
  e.type = EventType::FirewallRepaired;
  e.protocol = "nftables";
  e.rule = "tables inet iotgw, bridge iotgw";
  auto r = nl_->replace(std::span<const firewall::Ruleset>(current_));
  if (r) {
    generation_ = nl_->generation().value_or(0);
    e.action = "repair";
    e.message = fmt::format("{} was changed by {}; re-applied", what, who);
  } else {
    e.action = "repair-failed";
    e.message = fmt::format("{} was changed by {}; re-applying failed: {}", what, who, r.error());
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
