// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The gateway CA and the per-device identities it issued, kept in the state directory:
//
//   ca/ca.pem            the CA certificate (give it to the broker as a client CA)
//   ca/ca.key            its key, owner-only; a key readable by anyone else stops the daemon
//   ca/crl.pem           the revocation list (the broker's crlfile), rewritten on every
//                        revocation and whenever less than 23 of its 30 days remain
//   ca/revoked           what the CRL lists, and its number
//   identities/<id>.pem  a device's certificate and the CA's; identities/<id>.key its key
//
// On first start the CA is made with a fresh key (never shipped). A device gets an identity when
// its policy asks for one (mqtt.upstream_identity = "issued"); when it leaves, or stops asking,
// its certificate is revoked and its files deleted (5.11-1).

#include <chrono>
#include <expected>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "daemon/outcome.h"
#include "daemon/state_files.h"
#include "protocols/tls/ca.h"

namespace iotgw::daemon {

class Identities {
public:
  struct Identity {
    std::filesystem::path certificate;
    std::filesystem::path privateKey;
    tls::CertificateSummary summary;
  };

  // Loads the CA (making it on first start) and the identities on disk; writes a fresh CRL.
  [[nodiscard]] static std::expected<std::unique_ptr<Identities>, std::string>
  open(const std::filesystem::path& stateDirectory);

  [[nodiscard]] const tls::CertificateAuthority& ca() const { return ca_; }
  [[nodiscard]] std::filesystem::path caCertificatePath() const { return caDir_ / "ca.pem"; }
  [[nodiscard]] std::filesystem::path crlPath() const { return caDir_ / "crl.pem"; }

  [[nodiscard]] const Identity* find(const std::string& device) const;
  [[nodiscard]] std::vector<std::string> holders() const;
  [[nodiscard]] size_t revokedCount() const { return revoked_.size(); }

  // A new certificate and key for the device; one it had before is revoked.
  [[nodiscard]] std::expected<const Identity*, std::string> issue(const std::string& device);
  // The same in two steps: the certificate made and its files written under temporary names
  // (what can fail), then put in place and in use (a rename each). Dropped if never committed.
  struct Prepared {
    std::string device;
    StagedFile key;
    StagedFile certificate;
    tls::CertificateSummary summary;
  };
  [[nodiscard]] std::expected<Prepared, std::string> prepareIssue(const std::string& device);
  [[nodiscard]] std::expected<const Identity*, std::string> commit(Prepared prepared);
  // Revokes the device's certificate (the CRL is written first), then deletes its files.
  // Nothing to do when it has none. An error leaves the identity in place.
  [[nodiscard]] Outcome revoke(const std::string& device);
  // Rewrites the CRL when fewer than 23 of its 30 days remain (or always, with force).
  [[nodiscard]] Outcome refreshCrl(tls::SystemTime now, bool force = false);

  // How long what we issue is valid.
  static constexpr std::chrono::days kCaValidity{20 * 365};
  static constexpr std::chrono::days kDeviceValidity{2 * 365};
  static constexpr std::chrono::days kCrlValidity{30};

private:
  Identities(std::filesystem::path stateDirectory, tls::CertificateAuthority ca);
  [[nodiscard]] Outcome loadRevoked();
  [[nodiscard]] Outcome writeCrl(tls::SystemTime now);
  [[nodiscard]] std::filesystem::path certificatePath(const std::string& device) const;
  [[nodiscard]] std::filesystem::path keyPath(const std::string& device) const;

  std::filesystem::path caDir_;
  std::filesystem::path identityDir_;
  tls::CertificateAuthority ca_;
  std::map<std::string, Identity, std::less<>> identities_;
  struct Entry {
    std::string serial;
    tls::SystemTime when;
    tls::SystemTime notAfter; // the entry can leave the CRL after this
  };
  std::vector<Entry> revoked_;
  uint64_t crlNumber_ = 0;
  tls::SystemTime crlNextUpdate_{};
};

} // namespace iotgw::daemon
