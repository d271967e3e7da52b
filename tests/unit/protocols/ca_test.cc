// SPDX-License-Identifier: GPL-3.0-or-later
// The gateway CA: what it issues chains to it and nothing else, its CRL revokes exactly what it
// lists — checked by WolfSSL's own certificate manager, not by re-reading our bytes.
#include <wolfssl/options.h>

#include <wolfssl/error-ssl.h>
#include <wolfssl/ssl.h>

#include <gtest/gtest.h>

#include "protocols/tls/ca.h"
#include "protocols/tls/der.h"

namespace iotgw::tls {
namespace {

using namespace std::chrono_literals;

// Verifies `certificatePem` (leaf first) against `caPem` and optionally a CRL; WolfSSL's code.
int verify(const std::string& caPem, const std::string& certificatePem,
           const std::string& crlPem = {}) {
  WOLFSSL_CERT_MANAGER* cm = wolfSSL_CertManagerNew();
  EXPECT_NE(cm, nullptr);
  EXPECT_EQ(wolfSSL_CertManagerLoadCABuffer(cm,
                                            reinterpret_cast<const unsigned char*>(caPem.data()),
                                            static_cast<long>(caPem.size()), WOLFSSL_FILETYPE_PEM),
            WOLFSSL_SUCCESS);
  if (!crlPem.empty()) {
    EXPECT_EQ(wolfSSL_CertManagerEnableCRL(cm, 0), WOLFSSL_SUCCESS);
    EXPECT_EQ(
        wolfSSL_CertManagerLoadCRLBuffer(cm, reinterpret_cast<const unsigned char*>(crlPem.data()),
                                         static_cast<long>(crlPem.size()), WOLFSSL_FILETYPE_PEM),
        WOLFSSL_SUCCESS);
  }
  // Only the leaf: the PEM also carries the CA after it.
  const auto end = certificatePem.find("-----END CERTIFICATE-----");
  const std::string leaf = certificatePem.substr(0, end + 25);
  const int rc =
      wolfSSL_CertManagerVerifyBuffer(cm, reinterpret_cast<const unsigned char*>(leaf.data()),
                                      static_cast<long>(leaf.size()), WOLFSSL_FILETYPE_PEM);
  wolfSSL_CertManagerFree(cm);
  return rc;
}

CertificateAuthority makeCa() {
  auto ca = CertificateAuthority::create("iotgw gateway CA", std::chrono::days(3650));
  EXPECT_TRUE(ca.has_value()) << ca.error();
  return std::move(*ca);
}

TEST(GatewayCa, EveryCaHasItsOwnKeyAndName) {
  const auto a = makeCa();
  const auto b = makeCa();
  EXPECT_NE(a.privateKeyPem(), b.privateKeyPem());
  EXPECT_NE(a.commonName(), b.commonName());
  EXPECT_EQ(a.commonName().rfind("iotgw gateway CA ", 0), 0u) << a.commonName();
  EXPECT_NE(a.privateKeyPem().find("BEGIN EC PRIVATE KEY"), std::string::npos);
  const auto remaining = a.notAfter() - std::chrono::system_clock::now();
  EXPECT_GT(remaining, std::chrono::days(3640));
  EXPECT_LT(remaining, std::chrono::days(3652));
}

TEST(GatewayCa, ReloadsFromItsPemAndRefusesAForeignKey) {
  const auto a = makeCa();
  const auto b = makeCa();
  auto again = CertificateAuthority::load(a.certificatePem(), a.privateKeyPem());
  ASSERT_TRUE(again.has_value()) << again.error();
  EXPECT_EQ(again->commonName(), a.commonName());
  auto mixed = CertificateAuthority::load(a.certificatePem(), b.privateKeyPem());
  ASSERT_FALSE(mixed.has_value());
  EXPECT_NE(mixed.error().find("does not belong"), std::string::npos) << mixed.error();
  EXPECT_FALSE(CertificateAuthority::load("not a certificate", a.privateKeyPem()).has_value());
}

TEST(GatewayCa, IssuedCertificatesChainToTheirCaOnly) {
  const auto ca = makeCa();
  const auto other = makeCa();
  auto issued = ca.issue("thermo-01", std::chrono::days(825));
  ASSERT_TRUE(issued.has_value()) << issued.error();
  EXPECT_EQ(verify(ca.certificatePem(), issued->certificatePem), WOLFSSL_SUCCESS);
  EXPECT_NE(verify(other.certificatePem(), issued->certificatePem), WOLFSSL_SUCCESS);

  auto summary = summarizeCertificate(issued->certificatePem);
  ASSERT_TRUE(summary.has_value()) << summary.error();
  EXPECT_EQ(summary->commonName, "thermo-01");
  EXPECT_EQ(summary->serial, issued->serial);
  EXPECT_EQ(issued->serial.size(), 32u);
  EXPECT_EQ(summary->notAfter, issued->notAfter);

  auto second = ca.issue("thermo-01", std::chrono::days(825));
  ASSERT_TRUE(second.has_value());
  EXPECT_NE(second->serial, issued->serial);
  EXPECT_NE(second->privateKeyPem, issued->privateKeyPem);
}

TEST(GatewayCa, RefusesANameThatDoesNotFit) {
  const auto ca = makeCa();
  EXPECT_FALSE(ca.issue(std::string(64, 'x'), std::chrono::days(1)).has_value());
  EXPECT_FALSE(ca.issue("", std::chrono::days(1)).has_value());
  EXPECT_TRUE(ca.issue(std::string(63, 'x'), std::chrono::days(1)).has_value());
}

TEST(GatewayCa, TheCrlRevokesExactlyWhatItLists) {
  const auto ca = makeCa();
  auto removed = ca.issue("plug-07", std::chrono::days(825));
  auto kept = ca.issue("thermo-01", std::chrono::days(825));
  ASSERT_TRUE(removed && kept);
  const auto now = std::chrono::system_clock::now();
  const Revoked list[] = {{removed->serial, now - 1h}};
  auto crl = ca.revocationList(list, 2, now - 1min, now + std::chrono::days(30));
  ASSERT_TRUE(crl.has_value()) << crl.error();
  EXPECT_NE(crl->find("BEGIN X509 CRL"), std::string::npos);
  EXPECT_EQ(verify(ca.certificatePem(), removed->certificatePem, *crl), CRL_CERT_REVOKED);
  EXPECT_EQ(verify(ca.certificatePem(), kept->certificatePem, *crl), WOLFSSL_SUCCESS);

  auto empty = ca.revocationList({}, 1, now - 1min, now + std::chrono::days(30));
  ASSERT_TRUE(empty.has_value()) << empty.error();
  EXPECT_EQ(verify(ca.certificatePem(), removed->certificatePem, *empty), WOLFSSL_SUCCESS);

  const Revoked bad[] = {{"zz", now}};
  EXPECT_FALSE(ca.revocationList(bad, 3, now, now + 1h).has_value());
}

TEST(Der, ReaderRefusesWhatIsNotDer) {
  const std::vector<std::vector<uint8_t>> bad = {
      {},                                // nothing
      {0x30},                            // no length
      {0x30, 0x80, 0x00, 0x00},          // indefinite length
      {0x30, 0x05, 0x01},                // length past the end
      {0x30, 0x81, 0x05, 1, 2, 3, 4, 5}, // long form for a short length
      {0x1f, 0x01, 0x00},                // multi-byte tag
      {0x30, 0x85, 1, 0, 0, 0, 0},       // five length bytes
  };
  for (const auto& b : bad) {
    der::View in = b;
    EXPECT_FALSE(der::read(in).has_value()) << der::hex(b);
  }
  const std::vector<uint8_t> good = {0x02, 0x01, 0x05, 0x04, 0x00};
  der::View in = good;
  auto first = der::read(in);
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->tag, der::kInteger);
  EXPECT_EQ(first->value.size(), 1u);
  EXPECT_EQ(in.size(), 2u);
  EXPECT_FALSE(der::parseCertificate(good).has_value());
}

TEST(Der, IntegersAndTimesAreCanonical) {
  EXPECT_EQ(der::hex(der::unsignedInteger(uint64_t{0})), "020100");
  EXPECT_EQ(der::hex(der::unsignedInteger(uint64_t{127})), "02017f");
  EXPECT_EQ(der::hex(der::unsignedInteger(uint64_t{128})), "02020080");
  EXPECT_EQ(der::hex(der::unsignedInteger(uint64_t{0x1234})), "02021234");
  const auto t = std::chrono::sys_days(std::chrono::year(2026) / 11 / 22) + 13h + 5min + 9s;
  const auto utc = der::time(t);
  EXPECT_EQ(std::string(utc.begin() + 2, utc.end()), "261122130509Z");
  der::View in = utc;
  auto parsed = der::parseTime(*der::read(in));
  ASSERT_TRUE(parsed.has_value());
  EXPECT_EQ(*parsed, t);
  const auto late = der::time(std::chrono::sys_days(std::chrono::year(2051) / 1 / 2));
  EXPECT_EQ(late[0], der::kGeneralizedTime);
  EXPECT_EQ(std::string(late.begin() + 2, late.end()), "20510102000000Z");
}

} // namespace
} // namespace iotgw::tls
