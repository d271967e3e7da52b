// SPDX-License-Identifier: GPL-3.0-or-later
// Devices known by their certificates: device.certificate.subject_alt_names as typed names, their
// uniqueness across devices, and the lookup of a TLS peer by name and kind.
#include <gtest/gtest.h>

#include "tests/unit/support/bad_document.h"

#include "policy/policy_parser.h"
#include "policy/policy_set.h"
#include "tests/unit/support/test_docs.h"

using namespace iotgw::policy;
using iotgw::test::BadDocument;

namespace {

std::string certificateDevice(const std::string& id, const std::string& certificate) {
  return "[device]\nid = \"" + id + "\"\n[device.certificate]\n" + certificate;
}

std::vector<SubjectAltName> namesOf(const std::string& list) {
  auto p =
      parseDevicePolicy(certificateDevice("d1", "subject_alt_names = " + list + "\n"), "d1.toml");
  EXPECT_TRUE(p) << (p ? "" : p.error().front().str());
  return p ? p->certificate.subjectAltNames : std::vector<SubjectAltName>{};
}

SubjectAltName dns(std::string v) { return {SanType::Dns, std::move(v)}; }
SubjectAltName uri(std::string v) { return {SanType::Uri, std::move(v)}; }

std::shared_ptr<const PolicySet>
setOf(const std::vector<std::pair<std::string, std::string>>& docs) {
  std::vector<DevicePolicy> devices;
  for (const auto& [id, cert] : docs) {
    auto p = parseDevicePolicy(certificateDevice(id, cert), id + ".toml");
    EXPECT_TRUE(p) << (p ? "" : p.error().front().str());
    if (p) {
      devices.push_back(std::move(*p));
    }
  }
  auto set = PolicySet::build(std::move(devices));
  EXPECT_TRUE(set) << (set ? "" : set.error().front().str());
  return set ? *set : PolicySet::empty();
}

std::string id(const DevicePolicy* p) { return p != nullptr ? p->id.str() : "(none)"; }

} // namespace

TEST(CertificateIdentity, BareNamesAreDnsNamesOrUris) {
  // A bare name without ':' is a DNS name (kept in lower case); one with ':' can only be a URI.
  EXPECT_EQ(namesOf(R"(["Thermo-01.Hub.Local", "urn:dev:thermo-01", "thermo_01", "x"])"),
            (std::vector{dns("thermo-01.hub.local"), uri("urn:dev:thermo-01"), dns("thermo_01"),
                         dns("x")}));
}

TEST(CertificateIdentity, PrefixesSayTheKind) {
  EXPECT_EQ(namesOf(R"(["DNS:dev-s.hub.local", "dns:DEV-T.hub.local", "URI:urn:dev:x",
                        "uri:https://dev.example/a?b=C", "URI:dns:dev-s.hub.local"])"),
            (std::vector{dns("dev-s.hub.local"), dns("dev-t.hub.local"), uri("urn:dev:x"),
                         uri("https://dev.example/a?b=C"), uri("dns:dev-s.hub.local")}));
}

TEST(CertificateIdentity, ReferenceDocumentKeepsItsMeaning) {
  // Written before names had kinds: the DNS name and the URN keep meaning what they meant.
  auto p = parseDevicePolicy(
      iotgw::test::fullPolicy(PasswordHash::create("x", PasswordHash::kMinIterations)->str()),
      "thermo-01.toml");
  ASSERT_TRUE(p) << p.error().front().str();
  EXPECT_EQ(p->certificate.subjectAltNames,
            (std::vector{dns("thermo-01.hub.local"), uri("urn:dev:thermo-01")}));
}

class CertificateNameRejected : public testing::TestWithParam<BadDocument> {};

TEST_P(CertificateNameRejected, WithPosition) {
  iotgw::test::expectRejected(GetParam(), parseDevicePolicy(GetParam().text, "d1.toml"), "d1.toml");
}

// Line 4 is subject_alt_names; its list starts at column 21, and the bad entry is the second.
INSTANTIATE_TEST_SUITE_P(
    Documents, CertificateNameRejected,
    testing::Values(
        BadDocument{
            "Email",
            certificateDevice("d1", "subject_alt_names = [\"a.b\", \"email:dev-s.hub.local\"]\n"),
            4, 29, "email names never identify a device"},
        BadDocument{"EmailAnyCase",
                    certificateDevice("d1", "subject_alt_names = [\"a.b\", \"EMAIL:x@y\"]\n"), 4,
                    29, "email names never identify a device"},
        BadDocument{"Ip",
                    certificateDevice("d1", "subject_alt_names = [\"a.b\", \"IP:192.168.50.9\"]\n"),
                    4, 29, "IP names never identify a device"},
        BadDocument{"DirName",
                    certificateDevice("d1", "subject_alt_names = [\"a.b\", \"dirName:CN=x\"]\n"), 4,
                    29, "dirName names never identify a device"},
        BadDocument{"Wildcard",
                    certificateDevice("d1", "subject_alt_names = [\"a.b\", \"*.hub.local\"]\n"), 4,
                    29, "a wildcard never names a device"},
        BadDocument{"DnsWithColon",
                    certificateDevice("d1", "subject_alt_names = [\"a.b\", \"DNS:urn:dev:x\"]\n"),
                    4, 29, "not a valid DNS name"},
        BadDocument{"DnsTrailingDot",
                    certificateDevice("d1", "subject_alt_names = [\"a.b\", \"dev.hub.\"]\n"), 4, 29,
                    "1 to 63 characters"},
        BadDocument{"DnsSpace",
                    certificateDevice("d1", "subject_alt_names = [\"a.b\", \"dev hub\"]\n"), 4, 29,
                    "only letters, digits"},
        BadDocument{"DnsHyphenEdge",
                    certificateDevice("d1", "subject_alt_names = [\"a.b\", \"-dev.hub\"]\n"), 4, 29,
                    "neither starts nor ends"},
        BadDocument{"DnsLabelTooLong",
                    certificateDevice("d1", "subject_alt_names = [\"a.b\", \"" +
                                                std::string(64, 'a') + ".hub\"]\n"),
                    4, 29, "1 to 63 characters"},
        BadDocument{
            "UriWithoutScheme",
            certificateDevice("d1", "subject_alt_names = [\"a.b\", \"URI:dev-s.hub.local\"]\n"), 4,
            29, "not a valid URI"},
        BadDocument{"UriBadScheme",
                    certificateDevice("d1", "subject_alt_names = [\"a.b\", \"1urn:dev:x\"]\n"), 4,
                    29, "scheme"},
        BadDocument{"UriEmptyRest",
                    certificateDevice("d1", "subject_alt_names = [\"a.b\", \"urn:\"]\n"), 4, 29,
                    "not a valid URI"},
        BadDocument{"UriSpace",
                    certificateDevice("d1", "subject_alt_names = [\"a.b\", \"urn:dev: x\"]\n"), 4,
                    29, "no spaces"},
        BadDocument{"EmptyList", certificateDevice("d1", "subject_alt_names = []\n"), 3, 1,
                    "needs 'common_name' or 'subject_alt_names'"}),
    [](const testing::TestParamInfo<BadDocument>& doc) { return std::string(doc.param.name); });

TEST(CertificateIdentity, NamesAreUniquePerKind) {
  // The same text as a DNS name of one device and a URI of another is two different names.
  auto set = setOf({{"one", "subject_alt_names = [\"dns:x\"]\n"},
                    {"two", "subject_alt_names = [\"URI:dns:x\"]\n"}});
  EXPECT_EQ(set->size(), 2u);

  const auto conflict = [](const std::string& first, const std::string& second) {
    std::vector<DevicePolicy> devices;
    for (const auto& [name, cert] : {std::pair{"one", first}, std::pair{"two", second}}) {
      auto p = parseDevicePolicy(certificateDevice(name, cert), std::string(name) + ".toml");
      EXPECT_TRUE(p) << cert;
      devices.push_back(std::move(*p));
    }
    auto built = PolicySet::build(std::move(devices));
    return built ? std::string() : built.error().front().str();
  };
  // DNS names without regard to case, reported at the entry that repeats one.
  EXPECT_EQ(
      conflict("subject_alt_names = [\"a.b\", \"dev.hub\"]\n",
               "subject_alt_names = [\"c.d\", \"DNS:Dev.Hub\"]\n"),
      "two.toml:4:29: certificate DNS name \"dev.hub\" already belongs to device 'one' (one.toml)");
  EXPECT_EQ(
      conflict("subject_alt_names = [\"urn:dev:x\"]\n",
               "subject_alt_names = [\"URI:urn:dev:x\"]\n"),
      "two.toml:4:22: certificate URI \"urn:dev:x\" already belongs to device 'one' (one.toml)");
  // URIs exactly: case makes another URI.
  EXPECT_EQ(
      conflict("subject_alt_names = [\"urn:dev:x\"]\n", "subject_alt_names = [\"urn:dev:X\"]\n"),
      "");
  // A CN and a DNS name are one namespace: a certificate with both would name two devices.
  EXPECT_EQ(
      conflict("common_name = \"dev.hub\"\n", "subject_alt_names = [\"DEV.hub\"]\n"),
      "two.toml:4:22: certificate DNS name \"dev.hub\" already belongs to device 'one' (one.toml)");
  EXPECT_EQ(conflict("common_name = \"dev.hub\"\n", "subject_alt_names = [\"URI:urn:dev.hub\"]\n"),
            "");
  // One device may repeat its own name in its CN and its SANs.
  EXPECT_EQ(
      conflict("common_name = \"dev.hub\"\nsubject_alt_names = [\"dev.hub\", \"DNS:DEV.HUB\"]\n",
               "common_name = \"other\"\n"),
      "");
}

TEST(CertificateIdentity, LookupComparesNamesOfTheSameKind) {
  auto set = setOf({{"dev-s", "subject_alt_names = [\"dev-s.hub.local\", \"URI:urn:dev:dev-s\"]\n"},
                    {"cam", "common_name = \"cam-01\"\n"}});
  const auto find = [&](std::string_view cn, std::vector<SubjectAltName> sans) {
    return id(set->findByCertificate(cn, sans));
  };
  EXPECT_EQ(find("whoever", {dns("dev-s.hub.local")}), "dev-s");
  EXPECT_EQ(find("whoever", {dns("DEV-S.Hub.Local")}), "dev-s");
  EXPECT_EQ(find("whoever", {uri("urn:dev:dev-s")}), "dev-s");
  EXPECT_EQ(find("cam-01", {}), "cam");
  // The device's DNS name as a URI, its URI as a DNS name, a URI in another case: nobody.
  EXPECT_EQ(find("whoever", {uri("dev-s.hub.local")}), "(none)");
  EXPECT_EQ(find("whoever", {dns("urn:dev:dev-s")}), "(none)");
  EXPECT_EQ(find("whoever", {uri("URN:DEV:DEV-S")}), "(none)");
  EXPECT_EQ(find("whoever", {dns("*.hub.local")}), "(none)");
  EXPECT_EQ(find("whoever", {dns(std::string("dev-s.hub.local\0.evil", 21))}), "(none)");
  EXPECT_EQ(find("", {}), "(none)");
  // CNs compare exactly, and a CN is never looked up as a SAN nor a SAN as a CN.
  EXPECT_EQ(find("CAM-01", {}), "(none)");
  EXPECT_EQ(find("dev-s.hub.local", {}), "(none)");
  EXPECT_EQ(find("whoever", {dns("cam-01")}), "(none)");
  // Names of one device, several times over: that device.
  EXPECT_EQ(find("whoever", {dns("other.example"), dns("dev-s.hub.local"), uri("urn:dev:dev-s")}),
            "dev-s");
  // Names of two devices: neither.
  EXPECT_EQ(find("cam-01", {dns("dev-s.hub.local")}), "(none)");
  EXPECT_EQ(find("cam-01", {uri("urn:dev:dev-s")}), "(none)");
}
