// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The firewall capability wired into the daemon: tables `inet iotgw` and `bridge iotgw` kept
// equal to what the policy snapshot, the quarantine list and the learned ports say, repaired
// when someone else changes them, per-device counters read back, and the tables' reports (an
// enrolled MAC on another port, spoofing, ARP/ND poisoning, rogue routers and DHCP servers)
// turned into bindings and events.
//
// Quarantine is persistent: one file per quarantined device in <state>/quarantine/, written when a
// device is quarantined and read at start-up and on every reload (so an administrator releases a
// device by removing its file and sending SIGHUP; D-Bus will call the same functions).
//
// So are ports: one file per device in <state>/ports/, written when its MAC is first seen on a
// device bridge port and read at start-up. Removing it and reloading releases the binding (the
// next port the MAC is seen on binds it again); writing one before the device is first seen pins
// it to that port.

#include <array>
#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "daemon/config.h"
#include "daemon/event_sink.h"
#include "daemon/outcome.h"
#include "firewall/compile.h"
#include "firewall/links.h"
#include "firewall/netlink.h"
#include "firewall/ports.h"
#include "firewall/reports.h"
#include "firewall/telemetry.h"
#include "policy/policy_set.h"
#include "protocols/io/reactor.h"

namespace iotgw::daemon {

class FirewallService {
public:
  // Called with a device that was just quarantined: its sessions must end.
  using SessionCloser = std::function<void(const policy::DeviceId&)>;

  // What puts the tables in force: the kernel's nftables by default (tests give a stand-in).
  using OpenApplier =
      std::function<std::expected<std::unique_ptr<firewall::Applier>, std::string>()>;

  FirewallService(io::Reactor& reactor, EventSink& sink, SessionCloser closer,
                  OpenApplier openApplier = {});
  FirewallService(const FirewallService&) = delete;
  FirewallService& operator=(const FirewallService&) = delete;
  ~FirewallService();

  // Opens netlink (nftables, the log group, link notifications), reads the quarantine list and
  // the learned ports, replaces any existing tables with ours and starts watching. An error
  // means the daemon must not run (fail closed).
  [[nodiscard]] Outcome start(const Config& config,
                              std::shared_ptr<const policy::PolicySet> policies);
  // Brings the tables to a new snapshot (and the quarantine list and ports on disk): an element
  // batch when only devices changed, the whole tables otherwise. On error nothing changed.
  [[nodiscard]] Outcome apply(const Config& config,
                              std::shared_ptr<const policy::PolicySet> policies);
  // Quarantine (EN 303 645 5.3-15): the device reaches DHCP only and its sessions end.
  // An error means the mark could not be persisted or applied; the sessions are
  // closed either way.
  [[nodiscard]] Outcome quarantine(const policy::DeviceId& id, std::string_view rule,
                                   std::string_view reason);
  [[nodiscard]] Outcome release(const policy::DeviceId& id);
  // A removed device: its quarantine mark and its port go too (the next apply has already
  // dropped its elements and counters).
  void forget(const policy::DeviceId& id);
  [[nodiscard]] bool quarantined(const policy::DeviceId& id) const {
    return quarantined_.contains(id.str());
  }
  // Where each device's MAC is bound, by device id.
  [[nodiscard]] const std::map<std::string, firewall::PortBinding>& ports() const {
    return bindings_;
  }
  // At shutdown: the rules stay unless the configuration says otherwise.
  void stop();

  // Reads every device's packet and byte counters (from it: tx, to it: rx) from the kernel,
  // updates the rates, and raises a traffic-surge event (5.10-1) for a device suddenly sending
  // many times its usual rate (and quarantines it when the configuration says so).
  void sampleTraffic();
  // The last reading and rates, per device id.
  [[nodiscard]] const firewall::TrafficWatch& traffic() const { return watch_; }

private:
  // inet, bridge: applied together, always.
  using Tables = std::array<firewall::Ruleset, 2>;

  [[nodiscard]] firewall::CompileOptions
  options(const Config& c, const std::set<std::string>& quarantined,
          const std::map<std::string, firewall::PortBinding>& bindings) const;
  [[nodiscard]] Tables
  compileAll(const Config& c, const policy::PolicySet& policies,
             const std::set<std::string>& quarantined,
             const std::map<std::string, firewall::PortBinding>& bindings) const;
  // With the running configuration, quarantine list and bindings.
  [[nodiscard]] Tables compileAll(const policy::PolicySet& policies) const;
  [[nodiscard]] Outcome commit(Tables next);
  [[nodiscard]] std::set<std::string> readQuarantineList(const Config& c) const;
  // The bindings on disk for `policies`: those in memory whose file is still there (or could
  // not be written), and any file not read yet; a binding whose device is gone or has another
  // MAC now does not count. A file that cannot be read as a binding binds its device's MAC to
  // no port at all (fail closed) and is named in `unreadable`.
  [[nodiscard]] std::map<std::string, firewall::PortBinding>
  readPorts(const Config& c, const policy::PolicySet& policies,
            std::vector<std::string>& unreadable) const;
  // readPorts for the running service: the unreadable files are events, the bindings that
  // could not be saved are written again.
  [[nodiscard]] std::map<std::string, firewall::PortBinding>
  loadPorts(const Config& c, const policy::PolicySet& policies);
  void prunePortFiles();
  void emitQuarantineEvent(policy::EventType type, const std::string& id, std::string_view rule,
                           std::string_view action, std::string message);
  void onNotification();
  void onReports();
  void onLinks();
  void repair(const std::string& what, const std::string& who);

  io::Reactor& reactor_;
  EventSink& sink_;
  SessionCloser closer_;
  std::shared_ptr<const Config> config_;
  std::shared_ptr<const policy::PolicySet> policies_;
  std::set<std::string> quarantined_;
  std::map<std::string, firewall::PortBinding> bindings_;
  std::set<std::string> unsaved_; // bound, but the file could not be written (yet)
  OpenApplier openApplier_;
  std::unique_ptr<firewall::Applier> nl_;
  std::unique_ptr<firewall::Monitor> monitor_;
  std::unique_ptr<firewall::ReportListener> reports_;
  std::unique_ptr<firewall::Links> links_;
  std::unique_ptr<firewall::PortBook> book_;
  Tables current_;
  uint32_t generation_ = 0;
  firewall::TrafficWatch watch_;
};

} // namespace iotgw::daemon
