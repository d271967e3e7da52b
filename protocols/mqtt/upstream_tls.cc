// SPDX-License-Identifier: GPL-3.0-or-later
// OpenSSL only: this translation unit must not include any WolfSSL header.
#include "protocols/mqtt/upstream_tls.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>

namespace iotgw::mqtt {

namespace {
std::string lastError(const std::string& what) {
  char buf[256] = {};
  ERR_error_string_n(ERR_get_error(), buf, sizeof buf);
  return what + ": " + buf;
}
} // namespace

std::expected<SslContext, std::string> makeUpstreamSslContext(const UpstreamTlsSettings& s) {
  SSL_CTX* raw = SSL_CTX_new(TLS_client_method());
  if (raw == nullptr) {
    return std::unexpected(lastError("SSL_CTX_new"));
  }
  SslContext ctx(raw, [](void* p) { SSL_CTX_free(static_cast<SSL_CTX*>(p)); });
  SSL_CTX_set_min_proto_version(raw, TLS1_2_VERSION);
  SSL_CTX_set_mode(raw, SSL_MODE_RELEASE_BUFFERS);
  if (SSL_CTX_load_verify_locations(raw, s.caFile.c_str(), nullptr) != 1) {
    return std::unexpected(lastError("broker CA " + s.caFile));
  }
  if (SSL_CTX_use_certificate_chain_file(raw, s.certificate.c_str()) != 1) {
    return std::unexpected(lastError("gateway certificate " + s.certificate));
  }
  if (SSL_CTX_use_PrivateKey_file(raw, s.privateKey.c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(raw) != 1) {
    return std::unexpected(lastError("gateway key " + s.privateKey));
  }
  SSL_CTX_set_verify(raw, SSL_VERIFY_PEER, nullptr);
  // The broker's certificate must name the configured host (libmosquitto's own context does
  // this in its verify callback; with a shared context it is ours to set).
  X509_VERIFY_PARAM* param = SSL_CTX_get0_param(raw);
  in6_addr probe{};
  const bool isAddress = inet_pton(AF_INET, s.host.c_str(), &probe) == 1 ||
                         inet_pton(AF_INET6, s.host.c_str(), &probe) == 1;
  const int ok = isAddress ? X509_VERIFY_PARAM_set1_ip_asc(param, s.host.c_str())
                           : X509_VERIFY_PARAM_set1_host(param, s.host.c_str(), 0);
  if (ok != 1) {
    return std::unexpected(lastError("broker host " + s.host));
  }
  return ctx;
}

} // namespace iotgw::mqtt
