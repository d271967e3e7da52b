// SPDX-License-Identifier: GPL-3.0-or-later
// The control API: enrolment, policy changes, removal, quarantine, as asked over D-Bus.
#include "daemon/manager.h"

#include <set>

#include <fmt/format.h>

#include "iotgw/build_config.h"
#include "policy/policy_parser.h"

namespace iotgw::daemon {

using policy::Event;
using policy::EventType;

namespace {

ControlError err(ControlErrorCode c, std::string m) { return ControlError{c, std::move(m)}; }

void deviceChanged(EventSink& sink, const std::string& id, std::string action,
                   std::string message) {
  Event e;
  e.type = EventType::DeviceChanged;
  e.device = id;
  e.protocol = "dbus";
  e.action = std::move(action);
  e.message = std::move(message);
  sink.emit(std::move(e));
}

std::string joined(const policy::Diagnostics& diags) {
  std::string out;
  for (const auto& d : diags) {
    out += (out.empty() ? "" : "\n") + d.str();
  }
  return out;
}

} // namespace

void Manager::identityFailed(const std::string& id, const std::string& why) {
  Event e;
  e.type = EventType::UpstreamUnavailable;
  e.device = id;
  e.provision = "5.1-1";
  e.protocol = "pki";
  e.rule = "mqtt.upstream_identity";
  e.action = "identity-failed";
  e.message = why;
  w_.sink->emit(std::move(e));
}

void Manager::identityIssued(const std::string& id, const Identities::Identity& identity,
                             bool renewal) {
  const auto& s = identity.summary;
  Event e;
  e.type = EventType::DeviceChanged;
  e.device = id;
  e.provision = "5.1-1";
  e.protocol = "pki";
  e.action = renewal ? "identity-renewed" : "identity-issued";
  e.message = fmt::format("{} {} its own client certificate from {} (serial {}, valid {} days)", id,
                          renewal ? "renewed" : "issued", w_.identities->ca().commonName(),
                          s.serial, Identities::kDeviceValidity.count());
  w_.sink->emit(std::move(e));
  if (renewal && w_.mqtt) {
    w_.mqtt->closeDevice(policy::DeviceId::parse(id).value()); // reconnects with the new one
  }
}

Outcome Manager::issueIdentity(const std::string& id) {
  const bool renewal = w_.identities->find(id) != nullptr;
  auto issued = w_.identities->issue(id);
  if (!issued) {
    identityFailed(id, issued.error());
    return failure(issued.error());
  }
  identityIssued(id, **issued, renewal);
  return {};
}

void Manager::reconcileIdentities() {
  const auto now = std::chrono::system_clock::now();
  std::set<std::string, std::less<>> wanted;
  for (const auto& d : w_.current.policies->devices()) {
    if (d.mqttRules.upstreamIdentity != policy::UpstreamIdentity::Issued) {
      continue;
    }
    const std::string id = d.id.str();
    wanted.insert(id);
    const auto* have = w_.identities->find(id);
    if (have == nullptr || have->summary.notAfter - now < std::chrono::days(30)) {
      (void)issueIdentity(id); // a failure is an event; the device's upstream says why
    }
  }
  for (const auto& holder : w_.identities->holders()) {
    if (wanted.contains(holder)) {
      continue;
    }
    Event e;
    e.device = holder;
    e.protocol = "pki";
    e.provision = "5.11-1";
    if (auto err = w_.identities->revoke(holder); !err) {
      e.type = EventType::UpstreamUnavailable;
      e.action = "revoke-failed";
      e.message = err.error();
    } else {
      e.type = EventType::DeviceChanged;
      e.action = "identity-revoked";
      e.message = fmt::format("{}'s client certificate revoked (CRL {}) and its key deleted",
                              holder, w_.identities->crlPath().string());
    }
    w_.sink->emit(std::move(e));
  }
}

std::filesystem::path Manager::apiPolicyPath(const std::string& id) const {
  return w_.current.config->stateDirectory / "devices" / (id + ".toml");
}

bool Manager::fromApi(const policy::DevicePolicy& d) const {
  return std::filesystem::path(d.sourceName) == apiPolicyPath(d.id.str());
}

std::expected<const policy::DevicePolicy*, ControlError>
Manager::enrolled(std::string_view idText) const {
  const auto id = policy::DeviceId::parse(idText);
  if (!id) {
    return std::unexpected(err(ControlErrorCode::InvalidArgument, "not a device id"));
  }
  if (const auto* d = w_.current.policies->find(*id)) {
    return d;
  }
  return std::unexpected(err(ControlErrorCode::NoSuchDevice, "no device " + id->str()));
}

std::vector<DeviceSummary> Manager::listDevices() const {
  std::vector<DeviceSummary> out;
  for (const auto& d : w_.current.policies->devices()) {
    out.push_back({d.id.str(), fromApi(d), w_.firewall && w_.firewall->quarantined(d.id)});
  }
  return out;
}

std::expected<DeviceDetail, ControlError> Manager::device(std::string_view idText) const {
  const auto found = enrolled(idText);
  if (!found) {
    return std::unexpected(found.error());
  }
  const policy::DevicePolicy* d = *found;
  DeviceDetail out;
  out.summary = {d->id.str(), fromApi(*d), w_.firewall && w_.firewall->quarantined(d->id)};
  out.policy = policy::redactSecrets(d->document); // readers never see a password hash
  if (d->mqttRules.upstreamIdentity == policy::UpstreamIdentity::Issued) {
    out.identity = "issued";
    if (const auto* identity = w_.identities->find(d->id.str())) {
      out.certificateSerial = identity->summary.serial;
      out.certificateExpires = std::chrono::duration_cast<std::chrono::seconds>(
                                   identity->summary.notAfter.time_since_epoch())
                                   .count();
    }
  }
  if (w_.mqtt) {
    const auto boxes = w_.mqtt->outboxes();
    if (auto b = boxes.find(d->id.str()); b != boxes.end()) {
      out.queuedMessages = b->second.messages;
      out.queuedBytes = b->second.bytes;
      out.queuedOldestAgeSeconds = ageSeconds(b->second.oldest);
    }
  }
  if (w_.firewall) {
    const auto& counters = w_.firewall->traffic().counters();
    if (auto c = counters.find(d->id.str()); c != counters.end()) {
      out.txPackets = c->second.tx.packets;
      out.txBytes = c->second.tx.bytes;
      out.rxPackets = c->second.rx.packets;
      out.rxBytes = c->second.rx.bytes;
    }
    const auto& rates = w_.firewall->traffic().rates();
    if (auto r = rates.find(d->id.str()); r != rates.end()) {
      out.txBytesPerSecond = r->second.txBytesPerSecond;
      out.rxBytesPerSecond = r->second.rxBytesPerSecond;
    }
  }
  return out;
}

std::expected<policy::DevicePolicy, ControlError>
Manager::parseForApi(std::string_view idText, std::string_view text) const {
  const auto id = policy::DeviceId::parse(idText);
  if (!id) {
    return std::unexpected(err(ControlErrorCode::InvalidArgument,
                               fmt::format("'{}' is not a device id (letters, digits, '-', '_', "
                                           "'.'; 1 to 64 characters)",
                                           idText)));
  }
  auto parsed = policy::parseDevicePolicy(text, "policy");
  if (!parsed) {
    return std::unexpected(err(ControlErrorCode::InvalidPolicy, joined(parsed.error())));
  }
  if (parsed->id != *id) {
    return std::unexpected(err(ControlErrorCode::InvalidPolicy,
                               fmt::format("policy: the document's [device] id '{}' is not '{}'",
                                           parsed->id.str(), id->str())));
  }
  parsed->sourceName = apiPolicyPath(id->str()).string();
  return std::move(*parsed);
}

// Prepare, apply, commit: everything that can fail is done first without putting anything in
// force (the set built, new identities made and written under temporary names, the policy file
// staged); the firewall's transaction is the last step that can fail; then what was prepared is
// put in place (renames) and the snapshot swapped. A failure before the commit leaves the
// running state as it was and nothing on disk.
ControlResult Manager::commitDevices(std::vector<policy::DevicePolicy> next, const Stage& stage) {
  if (next.size() > w_.current.config->limits.maxDevices) {
    return std::unexpected(
        err(ControlErrorCode::Rejected,
            fmt::format("at most {} devices", w_.current.config->limits.maxDevices)));
  }
  auto set = policy::PolicySet::build(std::move(next));
  if (!set) {
    return std::unexpected(err(ControlErrorCode::Rejected, joined(set.error())));
  }
  // Identities the next set asks for and nobody holds yet: a device is never enrolled without
  // the identity its policy names.
  std::vector<Identities::Prepared> identities;
  for (const auto& d : (*set)->devices()) {
    if (d.mqttRules.upstreamIdentity == policy::UpstreamIdentity::Issued &&
        w_.identities->find(d.id.str()) == nullptr) {
      auto prepared = w_.identities->prepareIssue(d.id.str());
      if (!prepared) {
        identityFailed(d.id.str(), prepared.error());
        return std::unexpected(err(ControlErrorCode::Failed, prepared.error()));
      }
      identities.push_back(std::move(*prepared));
    }
  }
  auto staged = stage();
  if (!staged) {
    return std::unexpected(err(ControlErrorCode::Failed, staged.error()));
  }
  if (w_.firewall) {
    if (auto e = w_.firewall->apply(*w_.current.config, *set); !e) {
      return std::unexpected(err(ControlErrorCode::Rejected, "firewall: " + e.error()));
    }
  }
  // Commit. A rename that fails after its file was written and flushed is the disk failing: the
  // change is in force and says so in the journal (a restart would read the file as it is).
  for (auto& prepared : identities) {
    const std::string id = prepared.device;
    if (auto issued = w_.identities->commit(std::move(prepared))) {
      identityIssued(id, **issued, false);
    } else {
      identityFailed(id, issued.error()); // reconcileIdentities below tries again
    }
  }
  if (auto saved = staged->commit(); !saved) {
    Event e;
    e.type = EventType::DeviceChanged;
    e.device = staged->path().stem().string(); // <id>.toml
    e.protocol = "daemon";
    e.action = "save-failed";
    e.message =
        fmt::format("the device change is in force but could not be saved: {}", saved.error());
    w_.sink->emit(std::move(e));
  }
  w_.current.policies = std::move(*set);
  reconcileIdentities(); // revokes what the previous set had and this one does not
  return {};
}

namespace {

std::vector<policy::DevicePolicy> without(const policy::PolicySet& set,
                                          const policy::DeviceId& id) {
  std::vector<policy::DevicePolicy> out;
  for (const auto& d : set.devices()) {
    if (d.id != id) {
      out.push_back(d);
    }
  }
  return out;
}

} // namespace

ControlResult Manager::enrollDevice(std::string_view idText, std::string_view text) {
  auto parsed = parseForApi(idText, text);
  if (!parsed) {
    return std::unexpected(parsed.error());
  }
  const policy::DeviceId id = parsed->id;
  if (w_.current.policies->find(id)) {
    return std::unexpected(err(ControlErrorCode::DeviceExists, id.str() + " is already enrolled"));
  }
  auto next = w_.current.policies->devices();
  next.push_back(std::move(*parsed));
  const auto path = apiPolicyPath(id.str());
  if (auto r = commitDevices(std::move(next), [&] { return StagedFile::write(path, text); }); !r) {
    return r;
  }
  deviceChanged(*w_.sink, id.str(), "enrolled",
                fmt::format("{} enrolled over the control API", id.str()));
  return {};
}

ControlResult Manager::setDevicePolicy(std::string_view idText, std::string_view text) {
  auto parsed = parseForApi(idText, text);
  if (!parsed) {
    // A malformed id is the caller's mistake whatever the document says.
    return std::unexpected(parsed.error());
  }
  const policy::DeviceId id = parsed->id;
  const auto* running = w_.current.policies->find(id);
  if (!running) {
    return std::unexpected(err(ControlErrorCode::NoSuchDevice, "no device " + id.str()));
  }
  if (!fromApi(*running)) {
    return std::unexpected(
        err(ControlErrorCode::ReadOnly, fmt::format("{} is defined by {}; change that file instead",
                                                    id.str(), running->sourceName)));
  }
  auto next = without(*w_.current.policies, id);
  next.push_back(std::move(*parsed));
  const auto path = apiPolicyPath(id.str());
  if (auto r = commitDevices(std::move(next), [&] { return StagedFile::write(path, text); }); !r) {
    return r;
  }
  // Sessions run on the snapshot they started with: end them, so the device reconnects under
  // the new policy rather than keeping what it may no longer do.
  if (w_.mqtt) {
    w_.mqtt->closeDevice(id);
    // What the new policy no longer allows does not live on at the broker either.
    w_.mqtt->endPersistentSessions(id, false);
  }
  if (w_.coap) {
    w_.coap->closeDevice(id);
  }
  deviceChanged(*w_.sink, id.str(), "updated",
                fmt::format("{}'s policy replaced over the control API", id.str()));
  return {};
}

ControlResult Manager::removeDevice(std::string_view idText) {
  const auto found = enrolled(idText);
  if (!found) {
    return std::unexpected(found.error());
  }
  const policy::DevicePolicy* running = *found;
  const policy::DeviceId id = running->id;
  if (!fromApi(*running)) {
    return std::unexpected(
        err(ControlErrorCode::ReadOnly, fmt::format("{} is defined by {}; remove that file instead",
                                                    id.str(), running->sourceName)));
  }
  const auto path = apiPolicyPath(id.str());
  if (auto r = commitDevices(without(*w_.current.policies, id),
                             [&] { return StagedFile::removal(path); });
      !r) {
    return r;
  }
  // Erase (5.11-1): sessions and their queued messages, counters, the quarantine mark; the
  // firewall batch above already deleted its addresses and counters, and commitDevices revoked
  // its certificate and deleted its key.
  size_t dropped = 0;
  if (w_.mqtt) {
    dropped = w_.mqtt->forgetDevice(id);
  }
  if (w_.coap) {
    w_.coap->closeDevice(id);
  }
  if (w_.firewall) {
    w_.firewall->forget(id);
  }
  deviceChanged(*w_.sink, id.str(), "removed",
                fmt::format("{} removed over the control API; nothing of it is kept{}", id.str(),
                            dropped == 0 ? std::string()
                                         : fmt::format(" ({} queued message{} dropped)", dropped,
                                                       dropped == 1 ? "" : "s")));
  return {};
}

ControlResult Manager::quarantineDevice(std::string_view idText, std::string_view reason) {
  if (reason.empty() || reason.size() > 200) {
    return std::unexpected(
        err(ControlErrorCode::InvalidArgument, "a reason of 1 to 200 characters is needed"));
  }
  const auto found = enrolled(idText);
  if (!found) {
    return std::unexpected(found.error());
  }
  if (!w_.firewall) {
    return std::unexpected(
        err(ControlErrorCode::Failed, "the firewall is off ([firewall] enabled = false)"));
  }
  if (auto e = w_.firewall->quarantine((*found)->id, "dbus", reason); !e) {
    return std::unexpected(err(ControlErrorCode::Failed, e.error()));
  }
  return {};
}

ControlResult Manager::releaseDevice(std::string_view idText) {
  const auto found = enrolled(idText);
  if (!found) {
    return std::unexpected(found.error());
  }
  if (!w_.firewall) {
    return std::unexpected(
        err(ControlErrorCode::Failed, "the firewall is off ([firewall] enabled = false)"));
  }
  if (auto e = w_.firewall->release((*found)->id); !e) {
    return std::unexpected(err(ControlErrorCode::Failed, e.error()));
  }
  return {};
}

ControlResult Manager::reloadAll() {
  if (auto e = reload_(); !e) {
    return std::unexpected(err(ControlErrorCode::Rejected, e.error()));
  }
  return {};
}

GatewayStatus Manager::status() const {
  GatewayStatus s;
  s.version = IOTGW_VERSION;
  s.config =
      w_.current.config->source.empty() ? "built-in default" : w_.current.config->source.string();
  s.devices = static_cast<uint32_t>(w_.current.policies->size());
  for (const auto& d : w_.current.policies->devices()) {
    s.quarantined += w_.firewall && w_.firewall->quarantined(d.id) ? 1 : 0;
  }
  s.mqttConnections = w_.mqtt ? static_cast<uint32_t>(w_.mqtt->connections()) : 0;
  if (w_.coap) {
    s.counters = w_.coap->counters();
  }
  if (w_.mqtt) {
    auto m = w_.mqtt->counters();
    s.counters.insert(s.counters.end(), std::make_move_iterator(m.begin()),
                      std::make_move_iterator(m.end()));
  }
  s.firewall = w_.firewall != nullptr;
  s.reloads = w_.reloads;
  s.ca = w_.identities->ca().commonName();
  s.caCertificate = w_.identities->caCertificatePath().string();
  s.crl = w_.identities->crlPath().string();
  s.issuedIdentities = static_cast<uint32_t>(w_.identities->holders().size());
  s.uptimeSeconds = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::seconds>(
                                              std::chrono::steady_clock::now() - w_.started)
                                              .count());
  return s;
}

} // namespace iotgw::daemon
