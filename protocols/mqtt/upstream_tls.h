// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The broker side's TLS, with OpenSSL: one client context shared by every upstream session that
// presents the same identity (one copy of the CA store and keys), with SSL_MODE_RELEASE_BUFFERS so
// that idle sessions give their record buffers back; and the stream an upstream connection reads
// and writes through.

#include <expected>
#include <memory>
#include <string>

#include "protocols/io/stream.h"

namespace iotgw::mqtt {

struct UpstreamTlsSettings {
  std::string host; // the broker's name or address, verified against its certificate
  std::string caFile;
  std::string certificate; // empty: no client certificate (the broker authenticates a password)
  std::string privateKey;
};

// An SSL_CTX*, owned (freed with SSL_CTX_free when the last holder lets go).
using SslContext = std::shared_ptr<void>;

[[nodiscard]] std::expected<SslContext, std::string>
makeUpstreamSslContext(const UpstreamTlsSettings& settings);

// A TLS client over the connected, non-blocking socket `fd` (which the caller owns and keeps
// open while the stream lives); `host` goes out as SNI unless it is an address. The context
// verifies the broker's certificate and its name.
[[nodiscard]] std::expected<std::unique_ptr<io::Stream>, std::string>
makeUpstreamTlsStream(const SslContext& context, int fd, const std::string& host);

} // namespace iotgw::mqtt
