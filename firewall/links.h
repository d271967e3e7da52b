// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The gateway's interfaces as rtnetlink reports them: names, interface groups, which are bridges
// and which bridge each port belongs to. The bridge table needs to know which bridge ports are
// not the device segment's (their frames are left alone), and a port's name and group bind a
// device's MAC to it. Kept up to date from link notifications; parseLink is pure.

#include <cstdint>
#include <expected>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

struct mnl_socket;

namespace iotgw::firewall {

struct Link {
  uint32_t index = 0;
  std::string name;
  uint32_t master = 0; // the bridge (or bond, VRF, ...) it is enslaved to; 0: none
  uint32_t group = 0;  // its interface group (0: the default group)
  bool bridge = false;
  bool operator==(const Link&) const = default;
};

struct LinkChange {
  Link link;
  bool removed = false;
};

// One RTM_NEWLINK / RTM_DELLINK message; nullopt for anything else or a truncated message.
[[nodiscard]] std::optional<LinkChange> parseLink(std::span<const uint8_t> message);

class Links {
public:
  // Subscribes to link notifications, then reads every link there is.
  [[nodiscard]] static std::expected<std::unique_ptr<Links>, std::string> open();
  Links(const Links&) = delete;
  Links& operator=(const Links&) = delete;
  ~Links();
  [[nodiscard]] int fd() const;
  // Applies the pending notifications (all links again after an overrun). True when a link
  // appeared, went, or changed its name, master, group or kind.
  [[nodiscard]] bool drain();
  [[nodiscard]] const Link* find(uint32_t index) const;
  // Ports of bridges not named in `bridges`: the bridge table's foreign ports.
  [[nodiscard]] std::vector<std::string>
  foreignPorts(const std::vector<std::string>& bridges) const;

private:
  explicit Links(mnl_socket* nl) : nl_(nl) {}
  [[nodiscard]] std::expected<void, std::string> dump();
  bool apply(std::span<const uint8_t> buffer);
  mnl_socket* nl_;
  uint32_t seq_ = 1;
  std::map<uint32_t, Link> links_;
};

} // namespace iotgw::firewall
