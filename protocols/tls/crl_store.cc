// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/tls/crl_store.h"

#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/pem.h>

namespace iotgw::tls {

namespace {

int storeIndex() {
  static const int index = X509_STORE_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

} // namespace

std::expected<CrlStore::Crls, std::string> CrlStore::load(const std::string& file,
                                                          std::string_view what) {
  Crls crls;
  if (file.empty()) {
    return crls;
  }
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_file(file.c_str(), "r"), BIO_free);
  if (!bio) {
    ERR_clear_error();
    return std::unexpected(fmt::format("cannot read {} {}", what, file));
  }
  while (X509_CRL* crl = PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr)) {
    crls.emplace_back(crl);
  }
  const unsigned long last = ERR_peek_last_error();
  ERR_clear_error();
  if (crls.empty() || (last != 0 && ERR_GET_REASON(last) != PEM_R_NO_START_LINE)) {
    return std::unexpected(fmt::format("{} {} holds no valid PEM CRL", what, file));
  }
  return crls;
}

bool CrlStore::install(X509_STORE* store) {
  if (store == installed_) {
    return true;
  }
  if (store == nullptr || storeIndex() < 0 ||
      X509_STORE_set_ex_data(store, storeIndex(), this) != 1) {
    ERR_clear_error();
    return false;
  }
  X509_STORE_set_lookup_crls(store, lookup);
  installed_ = store;
  return true;
}

// OpenSSL's verifier asks for the CRLs of a certificate's issuer; the caller frees the stack and
// drops one reference of each CRL in it.
STACK_OF(X509_CRL) * CrlStore::lookup(const X509_STORE_CTX* ctx, const X509_NAME* issuer) {
  STACK_OF(X509_CRL)* out = sk_X509_CRL_new_null();
  const auto* self = static_cast<const CrlStore*>(
      X509_STORE_get_ex_data(X509_STORE_CTX_get0_store(ctx), storeIndex()));
  if (out == nullptr || self == nullptr) {
    return out;
  }
  for (const auto& crl : self->crls_) {
    if (X509_NAME_cmp(X509_CRL_get_issuer(crl.get()), issuer) == 0 &&
        X509_CRL_up_ref(crl.get()) == 1 && sk_X509_CRL_push(out, crl.get()) == 0) {
      X509_CRL_free(crl.get());
    }
  }
  return out;
}

} // namespace iotgw::tls
