// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The gateway's own certificate authority (5.1-1, 5.4-4): made on first start with a fresh ECDSA
// P-256 key by WolfSSL's certificate generation, never shipped. It issues one client certificate
// per device, so that each legacy device has its own identity at the broker, and signs the CRL
// that revokes a removed device's certificate. Values in and out (PEM text); where they are
// kept is the daemon's business.

#include <chrono>
#include <cstdint>
#include <expected>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace iotgw::tls {

using SystemTime = std::chrono::system_clock::time_point;

struct IssuedCertificate {
  std::string certificatePem; // the device's certificate, then the CA's (its chain)
  std::string privateKeyPem;  // SEC 1 "EC PRIVATE KEY"
  std::string serial;         // lower-case hex, as in the CRL
  SystemTime notAfter;
};

struct Revoked {
  std::string serial; // lower-case hex
  SystemTime when;
};

// What a certificate says about itself (for status and for revoking one found on disk).
struct CertificateSummary {
  std::string serial;
  std::string commonName;
  SystemTime notAfter;
};

[[nodiscard]] std::expected<CertificateSummary, std::string>
summarizeCertificate(std::string_view pem);

class CertificateAuthority {
public:
  // A new CA named "<commonName> <8 random hex digits>", valid for `validity`.
  [[nodiscard]] static std::expected<CertificateAuthority, std::string>
  create(std::string_view commonName, std::chrono::days validity);
  [[nodiscard]] static std::expected<CertificateAuthority, std::string>
  load(std::string_view certificatePem, std::string_view privateKeyPem);

  CertificateAuthority(CertificateAuthority&&) noexcept;
  CertificateAuthority& operator=(CertificateAuthority&&) noexcept;
  ~CertificateAuthority();

  [[nodiscard]] const std::string& certificatePem() const;
  [[nodiscard]] const std::string& privateKeyPem() const;
  [[nodiscard]] const std::string& commonName() const;
  [[nodiscard]] SystemTime notAfter() const;

  // A client certificate (extended key usage clientAuth) for `commonName` with a fresh key and
  // a random 128-bit serial.
  [[nodiscard]] std::expected<IssuedCertificate, std::string>
  issue(std::string_view commonName, std::chrono::days validity) const;

  // A v2 CRL (PEM) listing `revoked`, with CRL number `number` and the CA's key identifier.
  [[nodiscard]] std::expected<std::string, std::string>
  revocationList(std::span<const Revoked> revoked, uint64_t number, SystemTime thisUpdate,
                 SystemTime nextUpdate) const;

private:
  struct State;
  explicit CertificateAuthority(std::unique_ptr<State> s);
  std::unique_ptr<State> s_;
};

} // namespace iotgw::tls
