// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// One OpenSSL client context shared by every upstream session (libmosquitto otherwise builds a
// context, with its own copy of the CA store and keys, per connection), with
// SSL_MODE_RELEASE_BUFFERS so that idle sessions give their record buffers back.

#include <expected>
#include <memory>
#include <string>

namespace iotgw::mqtt {

struct UpstreamTlsSettings {
  std::string host; // the broker's name or address, verified against its certificate
  std::string caFile;
  std::string certificate;
  std::string privateKey;
};

// An SSL_CTX*, owned (freed with SSL_CTX_free when the last holder lets go).
using SslContext = std::shared_ptr<void>;

[[nodiscard]] std::expected<SslContext, std::string>
makeUpstreamSslContext(const UpstreamTlsSettings& settings);

} // namespace iotgw::mqtt
