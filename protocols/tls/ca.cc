// SPDX-License-Identifier: GPL-3.0-or-later
#include <wolfssl/options.h>

#include "protocols/tls/ca.h"

#include <wolfssl/wolfcrypt/asn_public.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/error-crypt.h>
#include <wolfssl/wolfcrypt/hash.h>
#include <wolfssl/wolfcrypt/random.h>
#include <wolfssl/wolfcrypt/sha256.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include <fmt/format.h>

#include "protocols/tls/der.h"

namespace iotgw::tls {

namespace {

constexpr size_t kDerMax = 4096;
constexpr size_t kSerialBytes = 16;
// ecdsa-with-SHA256 (1.2.840.10045.4.3.2), cRLNumber (2.5.29.20), authorityKeyIdentifier
// (2.5.29.35)
constexpr uint8_t kOidEcdsaSha256[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02};
constexpr uint8_t kOidCrlNumber[] = {0x55, 0x1d, 0x14};
constexpr uint8_t kOidAuthorityKeyId[] = {0x55, 0x1d, 0x23};

std::string wolfError(const char* what, int code) {
  return fmt::format("{}: {} ({})", what, wc_GetErrorString(code), code);
}

class Rng {
public:
  Rng() : ok_(wc_InitRng(&rng_) == 0) {}
  ~Rng() {
    if (ok_) {
      wc_FreeRng(&rng_);
    }
  }
  Rng(const Rng&) = delete;
  Rng& operator=(const Rng&) = delete;
  [[nodiscard]] bool ok() const { return ok_; }
  WC_RNG* get() { return &rng_; }

private:
  WC_RNG rng_{};
  bool ok_;
};

class EccKey {
public:
  EccKey() : ok_(wc_ecc_init(&key_) == 0) {}
  ~EccKey() {
    if (ok_) {
      wc_ecc_free(&key_);
    }
  }
  EccKey(const EccKey&) = delete;
  EccKey& operator=(const EccKey&) = delete;
  [[nodiscard]] bool ok() const { return ok_; }
  ecc_key* get() { return &key_; }

private:
  ecc_key key_{};
  bool ok_;
};

std::expected<std::string, std::string> toPem(der::View der, int type) {
  std::string pem(der.size() * 2 + 128, '\0');
  const int n =
      wc_DerToPem(der.data(), static_cast<word32>(der.size()), reinterpret_cast<byte*>(pem.data()),
                  static_cast<word32>(pem.size()), type);
  if (n <= 0) {
    return std::unexpected(wolfError("PEM encoding", n));
  }
  pem.resize(static_cast<size_t>(n));
  return pem;
}

std::expected<der::Bytes, std::string> certificateDer(std::string_view pem) {
  der::Bytes out(kDerMax);
  const int n = wc_CertPemToDer(reinterpret_cast<const unsigned char*>(pem.data()),
                                static_cast<int>(pem.size()), out.data(),
                                static_cast<int>(out.size()), CERT_TYPE);
  if (n <= 0) {
    return std::unexpected(wolfError("certificate", n));
  }
  out.resize(static_cast<size_t>(n));
  return out;
}

std::expected<der::Bytes, std::string> newKey(Rng& rng, EccKey& key) {
  if (!rng.ok() || !key.ok()) {
    return std::unexpected("cannot initialise WolfSSL's random generator or key");
  }
  if (int rc = wc_ecc_make_key_ex(rng.get(), 32, key.get(), ECC_SECP256R1); rc != 0) {
    return std::unexpected(wolfError("key generation", rc));
  }
  der::Bytes out(kDerMax);
  const int n = wc_EccKeyToDer(key.get(), out.data(), static_cast<word32>(out.size()));
  if (n <= 0) {
    return std::unexpected(wolfError("key encoding", n));
  }
  out.resize(static_cast<size_t>(n));
  return out;
}

std::string serialHex(der::View integer) {
  while (integer.size() > 1 && integer[0] == 0) {
    integer = integer.subspan(1);
  }
  return der::hex(integer);
}

std::optional<der::Bytes> fromHex(std::string_view s) {
  if (s.empty() || s.size() % 2 != 0) {
    return std::nullopt;
  }
  der::Bytes out;
  for (size_t i = 0; i < s.size(); i += 2) {
    unsigned v = 0;
    for (char c : s.substr(i, 2)) {
      v <<= 4;
      if (c >= '0' && c <= '9') {
        v |= static_cast<unsigned>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        v |= static_cast<unsigned>(c - 'a' + 10);
      } else {
        return std::nullopt;
      }
    }
    out.push_back(static_cast<uint8_t>(v));
  }
  return out;
}

// A fresh Cert with a random positive 128-bit serial and SHA-256 with ECDSA.
std::expected<void, std::string> initCert(Cert& cert, Rng& rng, std::string_view commonName,
                                          const char* organisation, std::chrono::days validity) {
  if (wc_InitCert(&cert) != 0) {
    return std::unexpected("cannot initialise a certificate");
  }
  if (commonName.empty() || commonName.size() >= CTC_NAME_SIZE) {
    return std::unexpected(
        fmt::format("common name must be 1 to {} bytes", static_cast<int>(CTC_NAME_SIZE) - 1));
  }
  std::memcpy(cert.subject.commonName, commonName.data(), commonName.size());
  std::strncpy(cert.subject.org, organisation, CTC_NAME_SIZE - 1);
  cert.subject.commonNameEnc = CTC_UTF8;
  cert.daysValid = static_cast<int>(validity.count());
  cert.sigType = CTC_SHA256wECDSA;
  if (wc_RNG_GenerateBlock(rng.get(), cert.serial, kSerialBytes) != 0) {
    return std::unexpected("cannot draw a serial number");
  }
  cert.serial[0] = static_cast<byte>((cert.serial[0] & 0x7f) | 0x40); // positive, 16 bytes
  cert.serialSz = kSerialBytes;
  return {};
}

std::expected<der::Bytes, std::string> makeAndSign(Cert& cert, EccKey& subjectKey,
                                                   ecc_key* issuerKey, Rng& rng) {
  der::Bytes out(kDerMax);
  int rc = wc_MakeCert(&cert, out.data(), static_cast<word32>(out.size()), nullptr,
                       subjectKey.get(), rng.get());
  if (rc < 0) {
    return std::unexpected(wolfError("certificate body", rc));
  }
  rc = wc_SignCert(cert.bodySz, cert.sigType, out.data(), static_cast<word32>(out.size()), nullptr,
                   issuerKey, rng.get());
  if (rc < 0) {
    return std::unexpected(wolfError("certificate signature", rc));
  }
  out.resize(static_cast<size_t>(rc));
  return out;
}

} // namespace

struct CertificateAuthority::State {
  der::Bytes certDer;
  std::string certPem;
  std::string keyPem;
  der::Bytes subject; // the CA's Name, as the issuer of what it signs
  der::Bytes keyId;   // its subject key identifier
  std::string commonName;
  SystemTime notAfter;
  EccKey key;
};

CertificateAuthority::CertificateAuthority(std::unique_ptr<State> s) : s_(std::move(s)) {}
CertificateAuthority::CertificateAuthority(CertificateAuthority&&) noexcept = default;
CertificateAuthority& CertificateAuthority::operator=(CertificateAuthority&&) noexcept = default;
CertificateAuthority::~CertificateAuthority() = default;

const std::string& CertificateAuthority::certificatePem() const { return s_->certPem; }
const std::string& CertificateAuthority::privateKeyPem() const { return s_->keyPem; }
const std::string& CertificateAuthority::commonName() const { return s_->commonName; }
SystemTime CertificateAuthority::notAfter() const { return s_->notAfter; }

std::expected<CertificateAuthority, std::string>
CertificateAuthority::create(std::string_view commonName, std::chrono::days validity) {
  Rng rng;
  EccKey key;
  auto keyDer = newKey(rng, key);
  if (!keyDer) {
    return std::unexpected(keyDer.error());
  }
  uint8_t suffix[4];
  if (wc_RNG_GenerateBlock(rng.get(), suffix, sizeof suffix) != 0) {
    return std::unexpected("cannot draw the CA's name");
  }
  const std::string name = fmt::format("{} {}", commonName, der::hex(suffix));
  Cert cert;
  if (auto ok = initCert(cert, rng, name, "iotgw", validity); !ok) {
    return std::unexpected(ok.error());
  }
  cert.isCA = 1;
  if (int rc = wc_SetKeyUsage(&cert, "keyCertSign,cRLSign"); rc != 0) {
    return std::unexpected(wolfError("key usage", rc));
  }
  if (int rc = wc_SetSubjectKeyIdFromPublicKey_ex(&cert, ECC_TYPE, key.get()); rc != 0) {
    return std::unexpected(wolfError("subject key identifier", rc));
  }
  if (int rc = wc_SetAuthKeyIdFromPublicKey_ex(&cert, ECC_TYPE, key.get()); rc != 0) {
    return std::unexpected(wolfError("authority key identifier", rc));
  }
  auto certDer = makeAndSign(cert, key, key.get(), rng);
  if (!certDer) {
    return std::unexpected(certDer.error());
  }
  auto certPem = toPem(*certDer, CERT_TYPE);
  auto keyPem = toPem(*keyDer, ECC_PRIVATEKEY_TYPE);
  if (!certPem || !keyPem) {
    return std::unexpected(!certPem ? certPem.error() : keyPem.error());
  }
  return load(*certPem, *keyPem);
}

std::expected<CertificateAuthority, std::string>
CertificateAuthority::load(std::string_view certificatePem, std::string_view privateKeyPem) {
  auto s = std::make_unique<State>();
  auto certDer = certificateDer(certificatePem);
  if (!certDer) {
    return std::unexpected("CA " + certDer.error());
  }
  s->certDer = std::move(*certDer);
  auto fields = der::parseCertificate(s->certDer);
  if (!fields || fields->subjectKeyId.empty()) {
    return std::unexpected("CA certificate: not a certificate with a subject key identifier");
  }
  s->subject.assign(fields->subject.begin(), fields->subject.end());
  s->keyId.assign(fields->subjectKeyId.begin(), fields->subjectKeyId.end());
  s->commonName = fields->commonName;
  s->notAfter = fields->notAfter;

  der::Bytes keyDer(kDerMax);
  const int n = wc_KeyPemToDer(reinterpret_cast<const unsigned char*>(privateKeyPem.data()),
                               static_cast<int>(privateKeyPem.size()), keyDer.data(),
                               static_cast<int>(keyDer.size()), nullptr);
  if (n <= 0) {
    return std::unexpected(wolfError("CA key", n));
  }
  word32 index = 0;
  if (!s->key.ok()) {
    return std::unexpected("cannot initialise the CA key");
  }
  if (int rc = wc_EccPrivateKeyDecode(keyDer.data(), &index, s->key.get(), static_cast<word32>(n));
      rc != 0) {
    return std::unexpected(wolfError("CA key", rc));
  }
  // The key must be the one the certificate names.
  der::Bytes pub(kDerMax);
  const int pubLen =
      wc_EccPublicKeyToDer(s->key.get(), pub.data(), static_cast<word32>(pub.size()), 1);
  if (pubLen <= 0 || !std::equal(fields->publicKeyInfo.begin(), fields->publicKeyInfo.end(),
                                 pub.begin(), pub.begin() + pubLen)) {
    return std::unexpected("CA key does not belong to the CA certificate");
  }
  s->certPem.assign(certificatePem);
  s->keyPem.assign(privateKeyPem);
  return CertificateAuthority(std::move(s));
}

std::expected<IssuedCertificate, std::string>
CertificateAuthority::issue(std::string_view commonName, std::chrono::days validity) const {
  Rng rng;
  EccKey key;
  auto keyDer = newKey(rng, key);
  if (!keyDer) {
    return std::unexpected(keyDer.error());
  }
  Cert cert;
  if (auto ok = initCert(cert, rng, commonName, "iotgw device", validity); !ok) {
    return std::unexpected(ok.error());
  }
  if (int rc = wc_SetIssuerBuffer(&cert, s_->certDer.data(), static_cast<int>(s_->certDer.size()));
      rc != 0) {
    return std::unexpected(wolfError("issuer", rc));
  }
  if (int rc = wc_SetKeyUsage(&cert, "digitalSignature"); rc != 0) {
    return std::unexpected(wolfError("key usage", rc));
  }
  if (int rc = wc_SetExtKeyUsage(&cert, "clientAuth"); rc != 0) {
    return std::unexpected(wolfError("extended key usage", rc));
  }
  if (int rc = wc_SetSubjectKeyIdFromPublicKey_ex(&cert, ECC_TYPE, key.get()); rc != 0) {
    return std::unexpected(wolfError("subject key identifier", rc));
  }
  if (int rc =
          wc_SetAuthKeyIdFromCert(&cert, s_->certDer.data(), static_cast<int>(s_->certDer.size()));
      rc != 0) {
    return std::unexpected(wolfError("authority key identifier", rc));
  }
  auto certDer = makeAndSign(cert, key, s_->key.get(), rng);
  if (!certDer) {
    return std::unexpected(certDer.error());
  }
  auto fields = der::parseCertificate(*certDer);
  auto certPem = toPem(*certDer, CERT_TYPE);
  auto keyPem = toPem(*keyDer, ECC_PRIVATEKEY_TYPE);
  if (!fields || !certPem || !keyPem) {
    return std::unexpected("cannot encode the issued certificate");
  }
  return IssuedCertificate{*certPem + s_->certPem, std::move(*keyPem), serialHex(fields->serial),
                           fields->notAfter};
}

std::expected<std::string, std::string>
CertificateAuthority::revocationList(std::span<const Revoked> revoked, uint64_t number,
                                     SystemTime thisUpdate, SystemTime nextUpdate) const {
  using der::Bytes;
  const Bytes algorithm = der::sequence({der::tlv(der::kOid, kOidEcdsaSha256)});
  Bytes entries;
  for (const auto& r : revoked) {
    auto serial = fromHex(r.serial);
    if (!serial) {
      return std::unexpected(fmt::format("revoked serial '{}' is not hex", r.serial));
    }
    const Bytes entry = der::sequence({der::unsignedInteger(*serial), der::time(r.when)});
    entries.insert(entries.end(), entry.begin(), entry.end());
  }
  const Bytes crlNumber =
      der::sequence({der::tlv(der::kOid, kOidCrlNumber),
                     der::tlv(der::kOctetString, der::unsignedInteger(number))});
  const Bytes authorityKeyId =
      der::sequence({der::tlv(der::kOid, kOidAuthorityKeyId),
                     der::tlv(der::kOctetString, der::sequence({der::tlv(0x80, s_->keyId)}))});
  const Bytes extensions = der::tlv(0xa0, der::sequence({crlNumber, authorityKeyId}));
  const Bytes revokedList = revoked.empty() ? Bytes{} : der::tlv(der::kSequence, entries);
  const Bytes tbs =
      der::sequence({der::unsignedInteger(uint64_t{1}), algorithm, s_->subject,
                     der::time(thisUpdate), der::time(nextUpdate), revokedList, extensions});

  byte digest[WC_SHA256_DIGEST_SIZE];
  if (int rc = wc_Sha256Hash(tbs.data(), static_cast<word32>(tbs.size()), digest); rc != 0) {
    return std::unexpected(wolfError("CRL digest", rc));
  }
  Rng rng;
  if (!rng.ok()) {
    return std::unexpected("cannot initialise WolfSSL's random generator");
  }
  Bytes signature(1 + 160, 0); // BIT STRING: no unused bits, then the DER ECDSA signature
  word32 sigLen = static_cast<word32>(signature.size() - 1);
  if (int rc = wc_ecc_sign_hash(digest, sizeof digest, signature.data() + 1, &sigLen, rng.get(),
                                s_->key.get());
      rc != 0) {
    return std::unexpected(wolfError("CRL signature", rc));
  }
  signature.resize(1 + sigLen);
  const Bytes crl = der::sequence({tbs, algorithm, der::tlv(der::kBitString, signature)});
  return toPem(crl, CRL_TYPE);
}

std::expected<CertificateSummary, std::string> summarizeCertificate(std::string_view pem) {
  auto certDer = certificateDer(pem);
  if (!certDer) {
    return std::unexpected(certDer.error());
  }
  auto fields = der::parseCertificate(*certDer);
  if (!fields) {
    return std::unexpected("certificate: cannot read its fields");
  }
  return CertificateSummary{serialHex(fields->serial), fields->commonName, fields->notAfter};
}

} // namespace iotgw::tls
