// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Certificate revocation lists for an OpenSSL certificate store (the DTLS listener's: libcoap's
// OpenSSL context). The store asks lookup() for the CRLs of a certificate's issuer at each
// verification, so replacing the list (a reload) takes effect at the next handshake without
// touching the context, and an issuer with no CRL in the list fails the revocation check.
// (The WolfSSL listeners load their crl_file with the context they build, server.h.)

#include <expected>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <openssl/x509.h>

namespace iotgw::tls {

class CrlStore {
public:
  struct Free {
    void operator()(X509_CRL* crl) const noexcept { X509_CRL_free(crl); }
  };
  using Crls = std::vector<std::unique_ptr<X509_CRL, Free>>;

  // Every PEM CRL in `file` (none for an empty name). `what` names the file in the error ("the
  // DTLS listener's CRL"): unreadable, or holding no valid CRL.
  [[nodiscard]] static std::expected<Crls, std::string> load(const std::string& file,
                                                             std::string_view what);

  CrlStore() = default;
  CrlStore(const CrlStore&) = delete;
  CrlStore& operator=(const CrlStore&) = delete;

  // Makes `store` ask this for CRLs (again only when it is another store); false when it cannot,
  // and then no handshake may go on without its revocation check.
  [[nodiscard]] bool install(X509_STORE* store);
  void replace(Crls crls) { crls_ = std::move(crls); }
  [[nodiscard]] bool empty() const { return crls_.empty(); }

private:
  static STACK_OF(X509_CRL) * lookup(const X509_STORE_CTX* ctx, const X509_NAME* issuer);
  Crls crls_;
  X509_STORE* installed_ = nullptr;
};

} // namespace iotgw::tls
