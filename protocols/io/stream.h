// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// One connection's bytes, whatever carries them: a plain non-blocking socket, or a TLS session
// over one (protocols/tls). A connection's code reads, writes and handshakes through this and
// never asks which it has.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "policy/subject_alt_name.h"

namespace iotgw::io {

enum class IoStatus : uint8_t { Ok, WantRead, WantWrite, Closed, Failed };

// What the peer proved when the stream was set up: a verified certificate's subject common name
// and its DNS names and URIs, in certificate order (other kinds never name a device).
struct PeerCertificate {
  std::string commonName;
  std::vector<policy::SubjectAltName> subjectAltNames;
};

class Stream {
public:
  Stream() = default;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  virtual ~Stream() = default;

  // Advances what the transport needs before data flows (a TLS handshake). Ok: done; WantRead
  // or WantWrite: call again when the socket is ready for that; Closed or Failed: give up.
  [[nodiscard]] virtual IoStatus handshake() { return IoStatus::Ok; }
  // Up to buf.size() bytes; `n` receives the count when Ok. Closed: the peer has gone.
  [[nodiscard]] virtual IoStatus read(std::span<uint8_t> buf, size_t& n) = 0;
  [[nodiscard]] virtual IoStatus write(std::span<const uint8_t> buf, size_t& n) = 0;
  // Whether a read may leave bytes inside the stream that the socket no longer shows as
  // readable (decrypted TLS records): the reader then reads until WantRead.
  [[nodiscard]] virtual bool holdsReadBytes() const { return false; }
  // The verified certificate, once the handshake is done; none on a plain socket.
  [[nodiscard]] virtual const PeerCertificate* peerCertificate() const { return nullptr; }
  // Why the last call failed, for events ("-188 ASN_NO_SIGNER_E").
  [[nodiscard]] virtual std::string lastError() const { return {}; }
};

// A plain socket the caller owns and keeps open while the stream lives.
class PlainStream final : public Stream {
public:
  explicit PlainStream(int fd) : fd_(fd) {}
  [[nodiscard]] IoStatus read(std::span<uint8_t> buf, size_t& n) override;
  [[nodiscard]] IoStatus write(std::span<const uint8_t> buf, size_t& n) override;
  [[nodiscard]] std::string lastError() const override;

private:
  int fd_;
  int errno_ = 0;
};

} // namespace iotgw::io
