// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// org.iotgw.Gateway1 on the system bus: a thin adapter from the generated adaptor to Control,
// driven from the daemon's event loop (the connection's descriptor in the reactor; no second
// thread). It checks the caller of every changing method itself (root or group iotgw-admin), as
// defence in depth behind the bus policy, and turns the daemon's events into signals.

#include <expected>
#include <memory>
#include <optional>
#include <string>

#include "daemon/control.h"
#include "policy/events.h"
#include "protocols/io/reactor.h"

namespace sdbus {
class IConnection;
}

namespace iotgw::daemon {

class GatewayObject;

class DbusService {
public:
  static constexpr const char* kBusName = "org.iotgw.Gateway1";
  static constexpr const char* kObjectPath = "/org/iotgw/Gateway1";

  // Connects to the system bus (DBUS_SYSTEM_BUS_ADDRESS, else the standard socket), owns the
  // name and publishes the object. The error says why not (no bus, name taken, not allowed).
  [[nodiscard]] static std::expected<std::unique_ptr<DbusService>, std::string>
  start(io::Reactor& reactor, Control& control, std::string adminGroup, std::string readerGroup);
  DbusService(const DbusService&) = delete;
  DbusService& operator=(const DbusService&) = delete;
  ~DbusService();

  // Every event the daemon raised, whether or not the journal's budget let it through
  // (`journaled`): quarantines and device changes always become signals, violations only within
  // that budget.
  void onEvent(const policy::Event& e, bool journaled);

private:
  DbusService(io::Reactor& reactor, std::unique_ptr<sdbus::IConnection> connection);
  void process();
  void rearm();

  io::Reactor& reactor_;
  std::unique_ptr<sdbus::IConnection> connection_;
  std::unique_ptr<GatewayObject> object_;
  int fd_ = -1;
  std::optional<io::Reactor::TimerId> timer_;
};

} // namespace iotgw::daemon
