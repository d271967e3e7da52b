// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once
// Policy documents shared by several tests.

#include <string>

namespace iotgw::test {

// The hash of "s3cret-thermo" with 10,000 iterations (the minimum, to keep tests fast).

// A document using every construct of the policy language.
inline std::string fullPolicy(const std::string& hash) {
  return R"(# every construct
[device]
id = "thermo-01"
mac = "02:00:00:00:00:10"
addresses = ["192.168.50.10", "fd00:50::10"]
manufacturer = "Acme"
model = "T-100"
firmware_version = "1.2.3"
support_until = 2027-12-31
vulnerability_contact = "https://acme.example/security"

[device.mqtt]
client_id = "thermo-01"
username = "thermo"
password_hash = ")" +
         hash + R"("

[device.certificate]
common_name = "thermo-01"
subject_alt_names = ["thermo-01.hub.local", "urn:dev:thermo-01"]

[mqtt]
upstream_prefix = "home/%d/"
upstream_identity = "issued"
upstream_username = "%d"
max_clients = 2
when_queue_full = "drop-oldest"
publish = ["devices/%c/telemetry/#", "devices/%c/state"]
subscribe = ["devices/%c/cmd/#", "broadcast/+"]
max_qos = 1
max_payload_bytes = 1024
retain = true

[mqtt.rate]
messages_per_second = 5
message_burst = 20
bytes_per_second = 4096.5
byte_burst = 16384

[[mqtt.payload]]
topic = "devices/%c/telemetry/temp"
format = "json"
type = "object"
required = ["t", "unit"]
allow_other_keys = false

[mqtt.payload.fields.t]
type = "number"
min = -40
max = 85.5

[mqtt.payload.fields.unit]
type = "string"
enum = ["C", "F"]
max_length = 1

[mqtt.payload.fields.seq]
type = "integer"

[[mqtt.payload]]
topic = "devices/%c/state"
format = "utf8"

[coap]
max_payload_bytes = 512
content_formats = [0, 50]

[[coap.rule]]
methods = ["GET"]
path = "/sensors/*"

[[coap.rule]]
methods = ["PUT", "POST"]
path = "/config/**"

[network]
outbound = ["203.0.113.10:8883/tcp", "198.51.100.0/24:123/udp", "[2001:db8::1]:443/tcp"]
services = ["80/tcp", "5683/udp"]

[violation]
action = "quarantine"
)";
}

} // namespace iotgw::test
