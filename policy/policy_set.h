// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// All device policies in force, as one immutable snapshot. Readers hold a
// std::shared_ptr<const PolicySet>; a reload builds a new set and swaps the pointer, so a reader
// never sees half of an update.

#include <expected>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "policy/diagnostic.h"
#include "policy/policy.h"
#include "policy/policy_parser.h"

namespace iotgw::policy {

class PolicySet {
public:
  // Checks the set as a whole: ids, MACs, addresses, MQTT client ids, usernames and certificate
  // names must each belong to one device.
  [[nodiscard]] static std::expected<std::shared_ptr<const PolicySet>, Diagnostics>
  build(std::vector<DevicePolicy> devices);

  [[nodiscard]] static std::shared_ptr<const PolicySet> empty();

  [[nodiscard]] const DevicePolicy* find(const DeviceId& id) const;
  [[nodiscard]] const DevicePolicy* findByUsername(std::string_view username) const;
  [[nodiscard]] const DevicePolicy* findByAddress(const IpAddress& a) const;
  // A TLS peer: its certificate's CN or any of its SANs naming a device.
  [[nodiscard]] const DevicePolicy* findByCertificate(std::string_view cn,
                                                      std::span<const std::string> sans) const;
  [[nodiscard]] const std::vector<DevicePolicy>& devices() const { return devices_; }
  [[nodiscard]] size_t size() const { return devices_.size(); }
  // What an unknown user name's password is checked against: a hash that matches nothing, with
  // the iteration count most enrolled devices use, so that the check takes as long as theirs.
  [[nodiscard]] const PasswordHash& unmatchableHash() const { return unmatchable_; }

private:
  PolicySet() = default;
  std::vector<DevicePolicy> devices_; // sorted by id
  PasswordHash unmatchable_ = PasswordHash::unmatchable(PasswordHash::kDefaultIterations);
};

// Reads every "*.toml" in each directory (in name order; a missing directory is empty) and parses
// it. The file name (less ".toml") must equal the device id. Returns every diagnostic of every
// file: one bad file rejects the whole load, so that a reload is all or nothing.
[[nodiscard]] std::expected<std::vector<DevicePolicy>, Diagnostics>
loadPolicyDirectories(const std::vector<std::filesystem::path>& dirs, size_t maxDevices,
                      const PolicyLimits& limits = {});

// Reads a whole (small) file; the error is a readable sentence.
[[nodiscard]] std::expected<std::string, std::string> readFile(const std::filesystem::path& p,
                                                               size_t maxBytes);

} // namespace iotgw::policy
