// SPDX-License-Identifier: GPL-3.0-or-later
#include "policy/policy_set.h"

#include <algorithm>
#include <fmt/format.h>
#include <fstream>
#include <map>
#include <system_error>
#include <tuple>

namespace iotgw::policy {

namespace {

Diagnostic at(const DevicePolicy& p, const std::string& key, std::string message) {
  SourcePosition pos;
  if (auto it = p.positions.find(key); it != p.positions.end()) {
    pos = it->second;
  } else if (auto dev = p.positions.find("device"); dev != p.positions.end()) {
    pos = dev->second;
  }
  return Diagnostic{p.sourceName, pos.line, pos.column, std::move(message)};
}

// Claims `value` for device `p`; reports a conflict if another device has it already, naming it
// as `shown` when that is given (the value as written, when `value` is its normalised form).
void claim(std::map<std::string, const DevicePolicy*>& owners, const std::string& value,
           const DevicePolicy& p, const std::string& key, std::string_view what, Diagnostics& diags,
           std::string_view shown = {}) {
  if (value.empty()) {
    return;
  }
  auto [it, inserted] = owners.emplace(value, &p);
  if (!inserted && it->second != &p) {
    diags.push_back(at(p, key,
                       fmt::format("{} \"{}\" already belongs to device '{}' ({})", what,
                                   shown.empty() ? std::string_view(value) : shown,
                                   it->second->id.str(), it->second->sourceName)));
  }
}

} // namespace

std::shared_ptr<const PolicySet> PolicySet::empty() {
  return std::shared_ptr<const PolicySet>(new PolicySet());
}

std::expected<std::shared_ptr<const PolicySet>, Diagnostics>
PolicySet::build(std::vector<DevicePolicy> devices) {
  std::ranges::sort(devices, [](const DevicePolicy& a, const DevicePolicy& b) {
    return std::tie(a.id, a.sourceName) < std::tie(b.id, b.sourceName);
  });
  Diagnostics diags;
  std::map<std::string, const DevicePolicy*> ids;
  std::map<std::string, const DevicePolicy*> macs;
  std::map<std::string, const DevicePolicy*> addrs;
  std::map<std::string, const DevicePolicy*> clientIds;
  std::map<std::string, const DevicePolicy*> usernames;
  std::map<std::string, const DevicePolicy*> certNames;
  std::map<std::string, const DevicePolicy*> certUris;
  for (const auto& p : devices) {
    claim(ids, p.id.str(), p, "device.id", "device id", diags);
    if (p.mac) {
      claim(macs, p.mac->str(), p, "device.mac", "MAC address", diags);
    }
    for (size_t i = 0; i < p.addresses.size(); ++i) {
      claim(addrs, p.addresses[i].str(), p, fmt::format("device.addresses[{}]", i), "address",
            diags);
    }
    claim(clientIds, p.mqtt.clientId, p, "device.mqtt.client_id", "MQTT client id", diags);
    claim(usernames, p.mqtt.username, p, "device.mqtt.username", "MQTT username", diags);
    // CNs and DNS names share one namespace, without regard to case: CAs tend to write a name
    // into both, and a certificate with one device's CN and another's DNS name names neither.
    // URIs have their own.
    claim(certNames, lowerCaseDnsName(p.certificate.commonName), p,
          "device.certificate.common_name", "certificate name", diags, p.certificate.commonName);
    for (size_t i = 0; i < p.certificate.subjectAltNames.size(); ++i) {
      const auto& san = p.certificate.subjectAltNames[i];
      const bool dns = san.type == SanType::Dns;
      claim(dns ? certNames : certUris, san.value, p,
            fmt::format("device.certificate.subject_alt_names[{}]", i),
            dns ? "certificate DNS name" : "certificate URI", diags);
    }
  }
  if (!diags.empty()) {
    return std::unexpected(std::move(diags));
  }
  auto set = std::shared_ptr<PolicySet>(new PolicySet());
  set->devices_ = std::move(devices);
  // Unknown user names are checked against a hash as costly as most enrolled ones.
  std::map<uint32_t, size_t> iterations;
  for (const auto& p : set->devices_) {
    if (p.mqtt.passwordHash) {
      ++iterations[p.mqtt.passwordHash->iterations()];
    }
  }
  const auto common = std::ranges::max_element(
      iterations, [](const auto& a, const auto& b) { return a.second < b.second; });
  set->unmatchable_ = PasswordHash::unmatchable(
      common != iterations.end() ? common->first : PasswordHash::kDefaultIterations);
  for (size_t i = 0; i < set->devices_.size(); ++i) {
    const auto& c = set->devices_[i].certificate;
    if (!c.commonName.empty()) {
      set->byCommonName_.emplace(c.commonName, i);
    }
    for (const auto& san : c.subjectAltNames) {
      set->bySubjectAltName_.emplace(san, i);
    }
  }
  return std::shared_ptr<const PolicySet>(std::move(set));
}

const DevicePolicy* PolicySet::find(const DeviceId& id) const {
  const auto it =
      std::ranges::lower_bound(devices_, id, {}, [](const DevicePolicy& p) { return p.id; });
  return it != devices_.end() && it->id == id ? &*it : nullptr;
}

const DevicePolicy* PolicySet::findByUsername(std::string_view username) const {
  if (username.empty()) {
    return nullptr;
  }
  for (const auto& p : devices_) {
    if (p.mqtt.username == username) {
      return &p;
    }
  }
  return nullptr;
}

const DevicePolicy* PolicySet::findByAddress(const IpAddress& a) const {
  for (const auto& p : devices_) {
    if (std::ranges::find(p.addresses, a) != p.addresses.end()) {
      return &p;
    }
  }
  return nullptr;
}

const DevicePolicy* PolicySet::findByCertificate(std::string_view cn,
                                                 std::span<const SubjectAltName> sans) const {
  const DevicePolicy* found = nullptr;
  bool ambiguous = false;
  const auto named = [&](size_t index) {
    const DevicePolicy* p = &devices_[index];
    ambiguous = ambiguous || (found != nullptr && found != p);
    found = p;
  };
  if (!cn.empty()) {
    if (const auto it = byCommonName_.find(cn); it != byCommonName_.end()) {
      named(it->second);
    }
  }
  for (const auto& san : sans) {
    const SubjectAltName key{san.type,
                             san.type == SanType::Dns ? lowerCaseDnsName(san.value) : san.value};
    if (const auto it = bySubjectAltName_.find(key); it != bySubjectAltName_.end()) {
      named(it->second);
    }
  }
  return ambiguous ? nullptr : found;
}

std::expected<std::string, std::string> readFile(const std::filesystem::path& p, size_t maxBytes) {
  std::ifstream in(p, std::ios::binary);
  if (!in) {
    return std::unexpected(fmt::format("cannot open {}", p.string()));
  }
  std::string data;
  char buf[8192];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    data.append(buf, static_cast<size_t>(in.gcount()));
    if (data.size() > maxBytes) {
      return std::unexpected(fmt::format("{} is larger than {} bytes", p.string(), maxBytes));
    }
  }
  if (in.bad()) {
    return std::unexpected(fmt::format("cannot read {}", p.string()));
  }
  return data;
}

std::expected<std::vector<DevicePolicy>, Diagnostics>
loadPolicyDirectories(const std::vector<std::filesystem::path>& dirs, size_t maxDevices,
                      const PolicyLimits& limits) {
  Diagnostics diags;
  std::vector<DevicePolicy> out;
  for (const auto& dir : dirs) {
    std::error_code ec;
    if (!std::filesystem::exists(dir, ec)) {
      continue;
    }
    std::vector<std::filesystem::path> files;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
      if (entry.path().extension() == ".toml" && entry.is_regular_file(ec)) {
        files.push_back(entry.path());
      }
    }
    if (ec) {
      diags.push_back(Diagnostic{dir.string(), 1, 1, "cannot list directory: " + ec.message()});
      continue;
    }
    std::ranges::sort(files);
    for (const auto& file : files) {
      if (out.size() >= maxDevices) {
        diags.push_back(
            Diagnostic{file.string(), 1, 1,
                       fmt::format("more than {} devices (limits.max_devices)", maxDevices)});
        return std::unexpected(std::move(diags));
      }
      auto text = readFile(file, limits.maxDocumentBytes);
      if (!text) {
        diags.push_back(Diagnostic{file.string(), 1, 1, text.error()});
        continue;
      }
      auto policy = parseDevicePolicy(*text, file.string(), limits);
      if (!policy) {
        diags.insert(diags.end(), policy.error().begin(), policy.error().end());
        continue;
      }
      if (policy->id.str() != file.stem().string()) {
        const auto pos = policy->positions["device.id"];
        diags.push_back(Diagnostic{file.string(), pos.line, pos.column,
                                   fmt::format("device id '{}' does not match the file name '{}'",
                                               policy->id.str(), file.filename().string())});
        continue;
      }
      out.push_back(std::move(*policy));
    }
  }
  if (!diags.empty()) {
    return std::unexpected(std::move(diags));
  }
  return out;
}

} // namespace iotgw::policy
