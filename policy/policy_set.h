// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// All device policies in force, as one immutable snapshot. Readers hold a
// std::shared_ptr<const PolicySet>; a reload builds a new set and swaps the pointer, so a reader
// never sees half of an update.

#include <expected>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
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
  // A TLS peer: the device its certificate names, by its CN (a policy's common_name, exactly)
  // or by a DNS or URI subjectAltName (a policy's subject_alt_names of the same kind; DNS names
  // without regard to case). Null when nothing names a device, and when its names point at more
  // than one: a certificate that is two devices at once is neither.
  [[nodiscard]] const DevicePolicy* findByCertificate(std::string_view cn,
                                                      std::span<const SubjectAltName> sans) const;
  [[nodiscard]] const std::vector<DevicePolicy>& devices() const { return devices_; }
  [[nodiscard]] size_t size() const { return devices_.size(); }
  // What an unknown user name's password is checked against: a hash that matches nothing, with
  // the iteration count most enrolled devices use, so that the check takes as long as theirs.
  [[nodiscard]] const PasswordHash& unmatchableHash() const { return unmatchable_; }

private:
  PolicySet() = default;
  std::vector<DevicePolicy> devices_; // sorted by id
  PasswordHash unmatchable_ = PasswordHash::unmatchable(PasswordHash::kDefaultIterations);
  // Certificate names, as positions in devices_ (for findByCertificate). DNS names in lower case.
  std::map<std::string, size_t, std::less<>> byCommonName_;
  std::map<SubjectAltName, size_t> bySubjectAltName_;
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
