// SPDX-License-Identifier: GPL-3.0-or-later
#include <gtest/gtest.h>

#include "tests/unit/support/bad_document.h"

#include <filesystem>
#include <fstream>

#include "daemon/config.h"

using namespace iotgw::daemon;
using iotgw::policy::Diagnostic;

namespace {

// Certificate paths must be readable; any readable file will do for the parser.
std::string readableFile() {
  static const std::string path = [] {
    auto p = std::filesystem::temp_directory_path() / "iotgw-config-test.pem";
    std::ofstream(p) << "not really a certificate\n";
    return p.string();
  }();
  return path;
}

} // namespace

TEST(Config, BuiltinDefaultIsSafe) {
  const Config c = builtinDefault();
  EXPECT_TRUE(c.source.empty());
  EXPECT_FALSE(c.mqtt.enabled);
  EXPECT_FALSE(c.mqttTls.enabled);
  EXPECT_FALSE(c.coap.enabled);
  EXPECT_FALSE(c.coapDtls.enabled);
  EXPECT_FALSE(c.upstream.enabled);
  EXPECT_TRUE(c.firewall.enabled);
  EXPECT_TRUE(c.firewall.keepRulesOnExit);
  EXPECT_EQ(c.mqtt.port, 1883);
  EXPECT_EQ(c.mqttTls.port, 8883);
  EXPECT_EQ(c.coap.port, 5683);
  EXPECT_EQ(c.coapDtls.port, 5684);
  EXPECT_EQ(c.stateDirectory, "/var/lib/iotgw");
  EXPECT_EQ(c.devicesDirectory, "/etc/iotgw/devices.d");
}

TEST(Config, EmptyDocumentEqualsDefaults) {
  auto c = parseConfig("", "empty.toml");
  ASSERT_TRUE(c);
  EXPECT_FALSE(c->mqtt.enabled);
  EXPECT_EQ(c->mqtt.port, 1883);
  EXPECT_EQ(c->limits.maxConnections, 1024u);
}

// The control API is there exactly when the build has D-Bus; asking a build without it for one is
// an error at its line, not an API that silently never appears.
TEST(Config, DbusFollowsTheBuild) {
  EXPECT_EQ(builtinDefault().dbus.enabled, IOTGW_WITH_DBUS != 0);
  auto c = parseConfig("[dbus]\nenabled = true\n", "dbus.toml");
  if (IOTGW_WITH_DBUS) {
    ASSERT_TRUE(c) << c.error().front().str();
    EXPECT_TRUE(c->dbus.enabled);
  } else {
    ASSERT_FALSE(c);
    EXPECT_EQ(c.error().front().str(),
              "dbus.toml:2:11: 'dbus.enabled' = true needs a build with D-Bus support");
  }
  auto off = parseConfig("[dbus]\nenabled = false\n", "dbus.toml");
  ASSERT_TRUE(off);
  EXPECT_FALSE(off->dbus.enabled);
}

TEST(Config, ParsesEverySection) {
  const std::string f = readableFile();
  const std::string doc = R"(
[daemon]
state_directory = "/var/lib/iotgw-test"
devices_directory = "/etc/iotgw-test/devices.d"

[device_segment]
interfaces = ["br-iot", "wlan1"]
subnets = ["192.168.50.0/24", "fd00:50::/64"]

[listeners.mqtt]
addresses = ["192.168.50.1", "fd00:50::1"]
port = 1884

[listeners.mqtt_tls]
addresses = ["0.0.0.0"]
certificate = ")" + f + R"("
private_key = ")" + f + R"("
ca_file = ")" + f + R"("
crl_file = ")" + f + R"("

[listeners.coap]
enabled = false

[listeners.coap_dtls]
enabled = false
port = 15684

[upstream]
host = "broker.local"
port = 8884
ca_file = ")" + f + R"("
certificate = ")" + f + R"("
private_key = ")" + f + R"("
keepalive_seconds = 30
client_id_prefix = "gw1-"

[firewall]
enabled = false
keep_rules_on_exit = false
telemetry_interval_seconds = 30
surge_action = "quarantine"

[dbus]
enabled = false
admin_group = "netadmin"

[limits]
max_connections = 100
max_connections_per_source = 4
max_handshakes = 8
handshake_timeout_ms = 2000
connect_timeout_ms = 3000
max_packet_bytes = 65536
max_devices = 50
max_queued_messages = 10
coap_max_pending_per_session = 4
coap_max_observe_per_session = 2
coap_max_observe = 64
auth_failures_before_lockout = 3
auth_failure_window_seconds = 30
auth_lockout_seconds = 120

[events]
target = "stderr"
burst = 5
interval_seconds = 10
summary_interval_seconds = 30

[[credentials.refuse]]
username = "hub"
password = "hub1234"
)";
  auto c = parseConfig(doc, "/etc/iotgw/iotgw.toml");
  ASSERT_TRUE(c) << c.error().front().str();
  EXPECT_EQ(c->stateDirectory, "/var/lib/iotgw-test");
  EXPECT_EQ(c->deviceSegment.interfaces.size(), 2u);
  EXPECT_EQ(c->deviceSegment.subnets.size(), 2u);
  EXPECT_TRUE(c->mqtt.enabled);
  EXPECT_EQ(c->mqtt.port, 1884);
  EXPECT_EQ(c->mqtt.addresses.size(), 2u);
  EXPECT_TRUE(c->mqttTls.enabled);
  EXPECT_EQ(c->mqttTls.crlFile, f);
  EXPECT_FALSE(c->coap.enabled);
  EXPECT_EQ(c->coap.port, 5683);
  EXPECT_EQ(c->coapDtls.port, 15684);
  EXPECT_TRUE(c->upstream.enabled);
  EXPECT_EQ(c->upstream.host, "broker.local");
  EXPECT_EQ(c->upstream.port, 8884);
  EXPECT_EQ(c->upstream.keepaliveSeconds, 30);
  EXPECT_EQ(c->upstream.clientIdPrefix, "gw1-");
  EXPECT_FALSE(c->firewall.enabled);
  EXPECT_FALSE(c->firewall.keepRulesOnExit);
  EXPECT_EQ(c->firewall.telemetryInterval, std::chrono::seconds(30));
  EXPECT_TRUE(c->firewall.quarantineOnSurge);
  EXPECT_FALSE(c->dbus.enabled);
  EXPECT_EQ(c->dbus.adminGroup, "netadmin");
  EXPECT_EQ(c->limits.maxConnections, 100u);
  EXPECT_EQ(c->limits.maxConnectionsPerSource, 4u);
  EXPECT_EQ(c->limits.handshakeTimeout, std::chrono::milliseconds(2000));
  EXPECT_EQ(c->limits.maxQueuedMessages, 10u);
  EXPECT_EQ(c->limits.coapMaxPendingPerSession, 4u);
  EXPECT_EQ(c->limits.coapMaxObservePerSession, 2u);
  EXPECT_EQ(c->limits.coapMaxObserve, 64u);
  EXPECT_EQ(c->limits.authThrottle.failuresBeforeLockout, 3u);
  EXPECT_EQ(c->limits.authThrottle.lockout, std::chrono::seconds(120));
  EXPECT_EQ(c->events.target, EventTarget::Stderr);
  EXPECT_EQ(c->events.burst, 5u);
  ASSERT_EQ(c->extraDefaultCredentials.size(), 1u);
  EXPECT_EQ(c->extraDefaultCredentials[0].username, "hub");
  const auto dirs = c->policyDirectories();
  ASSERT_EQ(dirs.size(), 2u);
  EXPECT_EQ(dirs[1], "/var/lib/iotgw-test/devices");
}

using iotgw::test::BadDocument;

class ConfigRejects : public testing::TestWithParam<BadDocument> {};

TEST_P(ConfigRejects, WithPosition) {
  iotgw::test::expectRejected(GetParam(), parseConfig(GetParam().text, "gw.toml"), "gw.toml");
}

const std::string kSegment = "[device_segment]\nsubnets = [\"192.168.50.0/24\"]\n"; // 2 lines

INSTANTIATE_TEST_SUITE_P(
    Documents, ConfigRejects,
    testing::Values(
        BadDocument{"Syntax", "[daemon\n", 1, 8, "expected"},
        BadDocument{"UnknownSection", "[deamon]\n", 1, 2, "unknown key 'deamon'"},
        BadDocument{"UnknownKey", "[daemon]\nstate_dir = \"/x\"\n", 2, 1,
                    "unknown key 'daemon.state_dir'"},
        BadDocument{"RelativeStateDir", "[daemon]\nstate_directory = \"var/lib\"\n", 2, 19,
                    "absolute path"},
        BadDocument{"StateDirWrongType", "[daemon]\nstate_directory = 1\n", 2, 19,
                    "must be a string"},
        BadDocument{"BadSubnet", "[device_segment]\nsubnets = [\"192.168.50.1/24\"]\n", 2, 12,
                    "host bits"},
        BadDocument{"BadInterface", "[device_segment]\ninterfaces = [\"br iot\"]\n", 2, 15,
                    "interface name"},
        BadDocument{"FirewallWithoutInterfaces", "[device_segment]\ninterfaces = []\n", 1, 1,
                    "needs 'device_segment.interfaces'"},
        BadDocument{"FirewallWithoutInterfacesPointsAtFirewall",
                    "[device_segment]\ninterfaces = []\n[firewall]\nenabled = true\n", 3, 1,
                    "needs 'device_segment.interfaces'"},
        BadDocument{"InterfaceTooLong", "[device_segment]\ninterfaces = [\"abcdefghijklmnop\"]\n",
                    2, 15, "longer than 15"},
        BadDocument{"PortRange",
                    kSegment + "[listeners.mqtt]\naddresses = [\"192.168.50.1\"]\nport = 0\n", 5, 8,
                    "out of range [1, 65535]"},
        BadDocument{"PortWrongType",
                    kSegment +
                        "[listeners.mqtt]\naddresses = [\"192.168.50.1\"]\nport = \"1883\"\n",
                    5, 8, "must be an integer"},
        BadDocument{"ListenerNoAddresses", "[listeners.mqtt]\nport = 1883\n", 1, 1,
                    "'listeners.mqtt.addresses'"},
        BadDocument{"WildcardDeviceListener",
                    kSegment + "[listeners.mqtt]\naddresses = [\"0.0.0.0\"]\n", 4, 14, "wildcard"},
        BadDocument{"DeviceListenerOutsideSegment",
                    kSegment + "[listeners.coap]\naddresses = [\"10.0.0.1\"]\n", 4, 14,
                    "not inside any"},
        BadDocument{"TlsListenerWithoutCert", "[listeners.mqtt_tls]\naddresses = [\"0.0.0.0\"]\n",
                    1, 1, "'listeners.mqtt_tls.certificate'"},
        BadDocument{"UnreadableCert",
                    "[listeners.mqtt_tls]\naddresses = [\"::\"]\ncertificate = "
                    "\"/nonexistent/c.pem\"\nprivate_key = \"/nonexistent/k\"\nca_file = "
                    "\"/nonexistent/ca\"\n",
                    3, 15, "cannot read"},
        BadDocument{"UnknownListener", "[listeners.http]\nport = 80\n", 1, 12,
                    "unknown key 'listeners.http'"},
        BadDocument{"UpstreamNoHost", "[upstream]\nport = 8883\n", 1, 1, "'upstream.host'"},
        BadDocument{"KeepaliveRange", "[upstream]\nenabled = false\nkeepalive_seconds = 1\n", 3, 21,
                    "out of range"},
        BadDocument{"PlaintextUpstreamElsewhere", "[upstream]\nhost = \"192.0.2.1\"\ntls = false\n",
                    2, 8, "only to a broker on this host's loopback"},
        BadDocument{"UpstreamWithNothingToLogInWith",
                    "[upstream]\nhost = \"b\"\nca_file = \"/dev/null\"\n", 1, 1,
                    "needs a client certificate"},
        BadDocument{
            "UpstreamCertificateWithoutKey",
            "[upstream]\nhost = \"b\"\nca_file = \"/dev/null\"\ncertificate = \"/dev/null\"\n", 4,
            15, "go together"},
        BadDocument{
            "UpstreamPasswordFileWithoutUser",
            "[upstream]\nhost = \"127.0.0.1\"\ntls = false\npassword_file = \"/dev/null\"\n", 4, 17,
            "needs 'upstream.username'"},
        BadDocument{"FirewallNotBool", "[firewall]\nenabled = \"yes\"\n", 2, 11,
                    "must be a boolean"},
        BadDocument{"SurgeAction", "[firewall]\nsurge_action = \"block\"\n", 2, 16,
                    "must be one of \"event\", \"quarantine\""},
        BadDocument{"TelemetryRange", "[firewall]\ntelemetry_interval_seconds = 99999\n", 2, 30,
                    "out of range"},
        BadDocument{"UnknownDbusKey", "[dbus]\nname = \"x\"\n", 2, 1, "unknown key 'dbus.name'"},
        BadDocument{"LimitZero", "[limits]\nmax_connections = 0\n", 2, 19, "out of range"},
        BadDocument{"LimitNegative", "[limits]\nmax_devices = -5\n", 2, 15, "out of range"},
        BadDocument{"PerSourceAboveTotal",
                    "[limits]\nmax_connections = 4\nmax_connections_per_source = 8\n", 3, 30,
                    "exceeds"},
        BadDocument{"HandshakesPerSourceAboveTotal",
                    "[limits]\nmax_handshakes = 4\nmax_handshakes_per_source = 8\n", 3, 29,
                    "'limits.max_handshakes_per_source' exceeds"},
        BadDocument{"ChecksPerSourceAboveTotal",
                    "[limits]\nmax_password_checks = 1\nmax_password_checks_per_source = 2\n", 3,
                    34, "exceeds 'limits.max_password_checks'"},
        BadDocument{"ConnectBytesAbovePacket",
                    "[limits]\nmax_packet_bytes = 1024\nmax_connect_bytes = 2048\n", 3, 21,
                    "exceeds 'limits.max_packet_bytes'"},
        BadDocument{"ConnectBytesAboveBudget",
                    "[limits]\nmax_unauthenticated_bytes = 4096\nmax_connect_bytes = 8192\n", 3, 21,
                    "exceeds 'limits.max_unauthenticated_bytes'"},
        BadDocument{"LimitFloat", "[limits]\nhandshake_timeout_ms = 1.5\n", 2, 24,
                    "must be an integer"},
        BadDocument{"UnknownLimit", "[limits]\nmax_sessions = 5\n", 2, 1,
                    "unknown key 'limits.max_sessions'"},
        BadDocument{"EventTarget", "[events]\ntarget = \"file\"\n", 2, 10,
                    "must be one of \"auto\", \"journal\""},
        BadDocument{"EventBurst", "[events]\nburst = 0\n", 2, 9, "out of range"},
        BadDocument{"RefuseNeedsPassword", "[[credentials.refuse]]\nusername = \"x\"\n", 1, 1,
                    "'credentials.refuse.password'"},
        BadDocument{"RefuseNotArray", "[credentials]\nrefuse = \"admin:admin\"\n", 2, 10,
                    "array of tables"},
        BadDocument{"DaemonNotTable", "daemon = 5\n", 1, 10, "must be a table"}));

TEST(Config, LoadReportsMissingFile) {
  auto c = loadConfig("/nonexistent/iotgw.toml");
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().front().str(),
            "/nonexistent/iotgw.toml:1:1: cannot open /nonexistent/iotgw.toml");
}

// Under the unit, a key in credentials/ beside the configuration is read from the copy systemd
// made for the service user; no other path is redirected, and without a copy nothing is.
TEST(Config, KeysInCredentialsAreReadFromTheServiceCopy) {
  const auto root = std::filesystem::temp_directory_path() / "iotgw-config-credentials";
  std::filesystem::remove_all(root);
  std::filesystem::create_directories(root / "etc/credentials");
  std::filesystem::create_directories(root / "run");
  std::ofstream(root / "etc/credentials/gateway.key") << "the root-only original\n";
  std::ofstream(root / "etc/gateway.crt") << "a certificate\n";
  std::ofstream(root / "run/credentials_gateway.key") << "systemd's copy\n";
  std::ofstream(root / "run/credentials_gateway.crt") << "not to be used\n";
  const std::string doc = "[upstream]\nhost = \"127.0.0.1\"\nca_file = \"gateway.crt\"\n"
                          "certificate = \"gateway.crt\"\n"
                          "private_key = \"credentials/../credentials/gateway.key\"\n";
  const auto source = (root / "etc/iotgw.toml").string();

  ::unsetenv("CREDENTIALS_DIRECTORY");
  auto byHand = parseConfig(doc, source);
  ASSERT_TRUE(byHand) << byHand.error().front().str();
  EXPECT_EQ(byHand->upstream.privateKey.lexically_normal(), root / "etc/credentials/gateway.key");

  ::setenv("CREDENTIALS_DIRECTORY", (root / "run").c_str(), 1);
  auto underUnit = parseConfig(doc, source);
  ASSERT_TRUE(underUnit) << underUnit.error().front().str();
  EXPECT_EQ(underUnit->upstream.privateKey, root / "run/credentials_gateway.key");
  EXPECT_EQ(underUnit->upstream.certificate, root / "etc/gateway.crt");

  std::filesystem::remove(root / "run/credentials_gateway.key");
  auto noCopy = parseConfig(doc, source);
  ::unsetenv("CREDENTIALS_DIRECTORY");
  ASSERT_TRUE(noCopy) << noCopy.error().front().str();
  EXPECT_EQ(noCopy->upstream.privateKey.lexically_normal(), root / "etc/credentials/gateway.key");
  std::filesystem::remove_all(root);
}

TEST(Config, PreLoginDefaultsFollowSmallerBounds) {
  auto c = parseConfig("[limits]\nmax_handshakes = 2\nmax_packet_bytes = 1024\n"
                       "max_password_checks = 1\n",
                       "t.toml");
  ASSERT_TRUE(c) << c.error().front().str();
  EXPECT_EQ(c->limits.maxHandshakesPerSource, 2u);
  EXPECT_EQ(c->limits.maxConnectBytes, 1024u);
  EXPECT_EQ(c->limits.maxPasswordChecksPerSource, 1u);
  auto d = parseConfig("", "t.toml");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->limits.maxConnectBytes, 8192u);
  EXPECT_EQ(d->limits.maxUnauthenticatedBytes, 4u * 1024 * 1024);
  EXPECT_EQ(d->limits.maxSubscriptionsPerSession, 100u);
}
