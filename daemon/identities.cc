// SPDX-License-Identifier: GPL-3.0-or-later
#include "daemon/identities.h"

#include <sys/stat.h>
#include <unistd.h>

#include <charconv>
#include <sstream>

#include <fmt/format.h>

#include "daemon/state_files.h"
#include "policy/policy_set.h"

namespace iotgw::daemon {

namespace {

constexpr size_t kMaxPemBytes = 64 * 1024;
constexpr std::chrono::days kCrlRefreshWhenLeft{23};

using Clock = std::chrono::system_clock;

int64_t unixSeconds(tls::SystemTime t) {
  return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}

tls::SystemTime fromUnix(int64_t s) { return tls::SystemTime(std::chrono::seconds(s)); }

// The CA key must be ours and nobody else's, as ssh insists for its keys.
Outcome checkPrivate(const std::filesystem::path& p) {
  struct stat st{};
  if (::stat(p.c_str(), &st) != 0) {
    return failure(fmt::format("cannot stat {}", p.string()));
  }
  if ((st.st_mode & 077) != 0 || st.st_uid != ::geteuid()) {
    return failure(fmt::format("{} is mode {:04o} owned by uid {}: the CA key must be readable "
                               "by its owner ({}) only; refusing to use it (chmod 600, or remove "
                               "the ca/ directory to make a new CA)",
                               p.string(), st.st_mode & 07777, st.st_uid, ::geteuid()));
  }
  return {};
}

std::expected<std::string, std::string> readPem(const std::filesystem::path& p) {
  auto text = policy::readFile(p.string(), kMaxPemBytes);
  if (!text) {
    return std::unexpected(fmt::format("cannot read {}", p.string()));
  }
  return std::move(*text);
}

} // namespace

Identities::Identities(std::filesystem::path stateDirectory, tls::CertificateAuthority ca)
    : caDir_(stateDirectory / "ca"), identityDir_(stateDirectory / "identities"),
      ca_(std::move(ca)) {}

std::expected<std::unique_ptr<Identities>, std::string>
Identities::open(const std::filesystem::path& stateDirectory) {
  const auto caDir = stateDirectory / "ca";
  const auto certPath = caDir / "ca.pem";
  const auto keyPath = caDir / "ca.key";
  std::error_code ec;
  const bool haveCert = std::filesystem::exists(certPath, ec);
  const bool haveKey = std::filesystem::exists(keyPath, ec);
  std::optional<tls::CertificateAuthority> ca;
  if (haveCert && haveKey) {
    if (auto e = checkPrivate(keyPath); !e) {
      return std::unexpected(e.error());
    }
    auto cert = readPem(certPath);
    auto key = readPem(keyPath);
    if (!cert || !key) {
      return std::unexpected(!cert ? cert.error() : key.error());
    }
    auto loaded = tls::CertificateAuthority::load(*cert, *key);
    if (!loaded) {
      return std::unexpected(fmt::format("{}: {}", caDir.string(), loaded.error()));
    }
    ca = std::move(*loaded);
  } else if (haveCert) {
    return std::unexpected(fmt::format("{} exists without its key: the gateway CA cannot sign. "
                                       "Restore ca.key, or move ca.pem away to make a new CA "
                                       "(issued device identities must then be re-issued)",
                                       certPath.string()));
  } else {
    // First start (or one interrupted before the certificate was written: a key that nothing
    // was ever signed with is simply replaced).
    auto made = tls::CertificateAuthority::create("iotgw gateway CA", kCaValidity);
    if (!made) {
      return std::unexpected("cannot make the gateway CA: " + made.error());
    }
    if (auto e = writeAtomically(keyPath, made->privateKeyPem(), 0600); !e) {
      return std::unexpected(e.error());
    }
    if (auto e = writeAtomically(certPath, made->certificatePem(), 0644); !e) {
      return std::unexpected(e.error());
    }
    ca = std::move(*made);
  }

  std::unique_ptr<Identities> ids(new Identities(stateDirectory, std::move(*ca)));
  if (auto e = ids->loadRevoked(); !e) {
    return std::unexpected(e.error());
  }
  // Identities on disk: a certificate with its key is kept; a half (an interrupted issue or
  // removal) is revoked if it can be read, and deleted.
  std::vector<std::string> halves;
  for (const auto& entry : std::filesystem::directory_iterator(ids->identityDir_, ec)) {
    const auto& p = entry.path();
    if (p.extension() == ".tmp") {
      // Staged by an issue that never completed (prepareIssue): a key nobody will use.
      (void)removeDurably(p);
      continue;
    }
    if (p.extension() != ".pem" && p.extension() != ".key") {
      continue;
    }
    const std::string device = p.stem().string();
    if (ids->identities_.contains(device)) {
      continue;
    }
    const auto cert = ids->certificatePath(device);
    const auto key = ids->keyPath(device);
    auto pem = readPem(cert);
    auto summary =
        pem ? tls::summarizeCertificate(*pem)
            : std::expected<tls::CertificateSummary, std::string>(std::unexpected(pem.error()));
    Identity identity{cert, key, summary.value_or(tls::CertificateSummary{})};
    ids->identities_.emplace(device, identity);
    if (!summary || !std::filesystem::exists(key, ec)) {
      halves.push_back(device);
    }
  }
  for (const auto& device : halves) {
    if (auto e = ids->revoke(device); !e) {
      return std::unexpected(e.error());
    }
  }
  if (auto e = ids->refreshCrl(Clock::now(), true); !e) {
    return std::unexpected(e.error());
  }
  return ids;
}

std::filesystem::path Identities::certificatePath(const std::string& device) const {
  return identityDir_ / (device + ".pem");
}

std::filesystem::path Identities::keyPath(const std::string& device) const {
  return identityDir_ / (device + ".key");
}

const Identities::Identity* Identities::find(const std::string& device) const {
  const auto it = identities_.find(device);
  return it == identities_.end() ? nullptr : &it->second;
}

std::vector<std::string> Identities::holders() const {
  std::vector<std::string> out;
  for (const auto& [device, identity] : identities_) {
    out.push_back(device);
  }
  return out;
}

// ca/revoked: "number N", then one "serial revoked-at not-after" line (unix seconds) per entry.
Outcome Identities::loadRevoked() {
  const auto path = caDir_ / "revoked";
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    return {};
  }
  auto text = readPem(path);
  if (!text) {
    return failure(text.error());
  }
  std::istringstream in(*text);
  std::string line;
  unsigned lineNo = 0;
  while (std::getline(in, line)) {
    ++lineNo;
    std::istringstream fields(line);
    std::string first;
    int64_t a = 0;
    int64_t b = 0;
    if (lineNo == 1) {
      if (!(fields >> first >> a) || first != "number" || a < 0) {
        return failure(fmt::format("{}:1: expected 'number N'; refusing to start with a damaged "
                                   "revocation list",
                                   path.string()));
      }
      crlNumber_ = static_cast<uint64_t>(a);
      continue;
    }
    if (!(fields >> first >> a >> b) || first.size() > 40 ||
        first.find_first_not_of("0123456789abcdef") != std::string::npos) {
      return failure(
          fmt::format("{}:{}: expected 'serial revoked-at not-after'; refusing to start with "
                      "a damaged revocation list",
                      path.string(), lineNo));
    }
    revoked_.push_back({first, fromUnix(a), fromUnix(b)});
  }
  return {};
}

Outcome Identities::writeCrl(tls::SystemTime now) {
  // Entries may leave the list once the certificate has expired anyway (RFC 5280 3.3).
  std::erase_if(revoked_, [&](const Entry& e) { return e.notAfter < now; });
  const uint64_t number = crlNumber_ + 1;
  std::string list = fmt::format("number {}\n", number);
  std::vector<tls::Revoked> entries;
  for (const auto& e : revoked_) {
    list += fmt::format("{} {} {}\n", e.serial, unixSeconds(e.when), unixSeconds(e.notAfter));
    entries.push_back({e.serial, e.when});
  }
  auto crl = ca_.revocationList(entries, number, now, now + kCrlValidity);
  if (!crl) {
    return failure("cannot sign the CRL: " + crl.error());
  }
  // The list first: a crash between the two leaves a CRL one behind, rewritten at the next start.
  if (auto e = writeAtomically(caDir_ / "revoked", list, 0600); !e) {
    return e;
  }
  if (auto e = writeAtomically(crlPath(), *crl, 0644); !e) {
    return e;
  }
  crlNumber_ = number;
  crlNextUpdate_ = now + kCrlValidity;
  return {};
}

Outcome Identities::refreshCrl(tls::SystemTime now, bool force) {
  if (!force && crlNextUpdate_ - now > kCrlRefreshWhenLeft) {
    return {};
  }
  return writeCrl(now);
}

std::expected<const Identities::Identity*, std::string>
Identities::issue(const std::string& device) {
  auto prepared = prepareIssue(device);
  if (!prepared) {
    return std::unexpected(prepared.error());
  }
  return commit(std::move(*prepared));
}

std::expected<Identities::Prepared, std::string>
Identities::prepareIssue(const std::string& device) {
  auto issued = ca_.issue(device, kDeviceValidity);
  if (!issued) {
    return std::unexpected(
        fmt::format("cannot issue a certificate for {}: {}", device, issued.error()));
  }
  auto key = StagedFile::write(keyPath(device), issued->privateKeyPem, 0600);
  if (!key) {
    return std::unexpected(key.error());
  }
  auto cert = StagedFile::write(certificatePath(device), issued->certificatePem, 0600);
  if (!cert) {
    return std::unexpected(cert.error());
  }
  return Prepared{
      device, std::move(*key), std::move(*cert), {issued->serial, device, issued->notAfter}};
}

std::expected<const Identities::Identity*, std::string> Identities::commit(Prepared p) {
  std::optional<Entry> replaced;
  if (const auto* old = find(p.device)) {
    replaced = Entry{old->summary.serial, Clock::now(), old->summary.notAfter};
  }
  // Key first: a crash in between leaves a key without a certificate, which the next start
  // finds and deletes.
  if (auto e = p.key.commit(); !e) {
    return std::unexpected(e.error());
  }
  if (auto e = p.certificate.commit(); !e) {
    (void)removeDurably(p.key.path());
    return std::unexpected(e.error());
  }
  Identity identity{p.certificate.path(), p.key.path(), p.summary};
  identities_.insert_or_assign(p.device, identity);
  if (replaced && !replaced->serial.empty()) {
    // The old key is gone from the disk; revoking its certificate as well costs one CRL.
    revoked_.push_back(*replaced);
    if (auto e = writeCrl(Clock::now()); !e) {
      revoked_.pop_back();
    }
  }
  return &identities_.at(p.device);
}

Outcome Identities::revoke(const std::string& device) {
  const auto it = identities_.find(device);
  if (it == identities_.end()) {
    return {};
  }
  const Identity& identity = it->second;
  if (!identity.summary.serial.empty()) {
    revoked_.push_back({identity.summary.serial, Clock::now(), identity.summary.notAfter});
    if (auto e = writeCrl(Clock::now()); !e) {
      revoked_.pop_back();
      return failure(fmt::format("cannot revoke {}'s certificate: {}", device, e.error()));
    }
  }
  // Key first: a crash in between leaves a certificate without a key, which the next start
  // finds and deletes.
  if (auto e = removeDurably(identity.privateKey); !e) {
    return e;
  }
  if (auto e = removeDurably(identity.certificate); !e) {
    return e;
  }
  identities_.erase(it);
  return {};
}

} // namespace iotgw::daemon
