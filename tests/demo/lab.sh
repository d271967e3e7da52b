#!/bin/bash
# SPDX-License-Identifier: GPL-3.0-or-later
# The demo lab: three network namespaces joined by veth pairs, with no route out of them.
#
#   iotgw-lan (home LAN host, 192.168.1.20)
#        |  192.168.1.0/24
#   iotgw-gw  (the hub: iotgwd, routing)        legacy device segment "br-iot"
#        |  192.168.50.0/24
#   iotgw-dev (legacy thermostat, 192.168.50.10: telnet and an HTTP admin page open)
#
# iotgwd runs in iotgw-gw with its built-in default (no configuration file), under a private
# systemd-journald. The lab prints what the gateway allows and blocks; it grows as capabilities
# land. Run as root inside a private mount namespace (packaging/run-demo.sh does this).
#
# usage: lab.sh BUILD_DIR
set -euo pipefail

build=$(realpath "${1:?usage: lab.sh BUILD_DIR}")
iotgwd=$build/daemon/iotgwd
iotgwctl=$build/daemon/iotgwctl
probe=$build/tests/iotgw-policy-probe
here=$(dirname "$(realpath "$0")")
work=$(mktemp -d /tmp/iotgw-demo-XXXXXX)
pids=()

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
row() { printf '  %-58s %s\n' "$1" "$2"; }

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for ns in iotgw-lan iotgw-gw iotgw-dev; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$work"
  if umount /etc/iotgw 2>/dev/null && [ "${etc_created:-0}" = 1 ]; then rmdir /etc/iotgw; fi
}
trap cleanup EXIT

if [ "${IOTGW_DEMO_IN_NS:-}" != 1 ]; then
  echo "lab.sh must run in a private mount namespace (use packaging/run-demo.sh)" >&2
  exit 2
fi

# --- private journald; the host's /etc/iotgw and /var/lib hidden so the built-in default runs
mount -t tmpfs tmpfs /run/systemd && mkdir -p /run/systemd/journal
mkdir -p /run/log && mount -t tmpfs tmpfs /run/log
[ -d /var/log/journal ] && mount -t tmpfs tmpfs /var/log/journal
etc_created=0
if [ ! -d /etc/iotgw ]; then mkdir /etc/iotgw && etc_created=1; fi
mount -t tmpfs tmpfs /etc/iotgw
mount -t tmpfs tmpfs /var/lib
/lib/systemd/systemd-journald >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
# A private system bus at the usual address, with the project's bus policy
# (systemd/org.iotgw.Gateway1.conf): iotgwd and iotgwctl find it as they would on a hub.
mkdir -p /run/dbus && mount -t tmpfs tmpfs /run/dbus
sed -e 's|@SOCKET@|/run/dbus/system_bus_socket|' \
    -e "s|@EXTRA@|<include>$(realpath "$here/../../systemd/org.iotgw.Gateway1.conf")</include>|" \
    "$here/../integration/system-bus.conf.in" > "$work/system-bus.conf"
dbus-daemon --config-file "$work/system-bus.conf" --nofork >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -S /run/dbus/system_bus_socket ] && break; sleep 0.05; done

# --- the lab network
bold "Building the lab: home LAN host, gateway, legacy device (network namespaces, no route out)"
for ns in iotgw-lan iotgw-gw iotgw-dev; do ip netns del "$ns" 2>/dev/null || true; ip netns add "$ns"; done
ip link add gw-iot netns iotgw-gw type veth peer name eth0 netns iotgw-dev
ip link add gw-lan netns iotgw-gw type veth peer name eth0 netns iotgw-lan
# The device segment is a bridge, br-iot, as on OpenWrt; the device's veth is one of its ports.
ip -n iotgw-gw link add br-iot type bridge
ip -n iotgw-gw link set gw-iot master br-iot
ip -n iotgw-gw link set br-iot up
ip -n iotgw-gw addr add 192.168.50.1/24 dev br-iot
ip -n iotgw-gw addr add 192.168.1.1/24 dev gw-lan
ip -n iotgw-dev addr add 192.168.50.10/24 dev eth0
ip -n iotgw-lan addr add 192.168.1.20/24 dev eth0
ip -n iotgw-dev link set dev eth0 address 02:00:00:00:00:10
for ns in iotgw-lan iotgw-gw iotgw-dev; do ip -n "$ns" link set lo up; done
ip -n iotgw-gw link set gw-iot up; ip -n iotgw-gw link set gw-lan up
ip -n iotgw-dev link set eth0 up; ip -n iotgw-lan link set eth0 up
ip -n iotgw-dev route add default via 192.168.50.1
ip -n iotgw-lan route add default via 192.168.1.1
ip netns exec iotgw-gw sysctl -qw net.ipv4.ip_forward=1
row "iotgw-lan  192.168.1.20" "home LAN client"
row "iotgw-gw   192.168.1.1 | 192.168.50.1 (br-iot)" "the hub, running iotgwd"
row "iotgw-dev  192.168.50.10 (02:00:00:00:00:10)" "legacy thermostat: telnet :23, HTTP admin :80, CoAP :5683"

# The legacy device's exposed services, and two services on the LAN host (the thermostat's
# policy lets it reach 192.168.1.20:8883 only).
for port in 23 80; do
  ip netns exec iotgw-dev socat TCP-LISTEN:$port,reuseaddr,fork SYSTEM:'echo legacy-login:' >/dev/null 2>&1 &
  pids+=($!)
done
for port in 22 8883; do
  ip netns exec iotgw-lan socat TCP-LISTEN:$port,reuseaddr,fork SYSTEM:'echo lan' >/dev/null 2>&1 &
  pids+=($!)
done

# --- iotgwd with its built-in default
bold "Starting iotgwd in the gateway with its built-in default (no configuration file)"
notify=$work/notify.sock
python3 - "$notify" > "$work/notify.log" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
while True:
    print(s.recv(4096).decode().replace("\n", " | "), flush=True)
PY
pids+=($!)
for _ in $(seq 100); do [ -S "$notify" ] && break; sleep 0.05; done
ip netns exec iotgw-gw env NOTIFY_SOCKET="$notify" "$iotgwd" >"$work/iotgwd.out" 2>&1 &
gwpid=$!
pids+=($gwpid)
for _ in $(seq 100); do grep -q READY=1 "$work/notify.log" && break; sleep 0.05; done
row "sd_notify" "$(grep -m1 READY=1 "$work/notify.log" || echo 'no READY=1 (build without systemd)')"
row "iotgwd --check-config" "$("$iotgwd" --check-config 2>&1)"
sleep 0.3
echo "  journal (SYSLOG_IDENTIFIER=iotgwd):"
journalctl --no-pager -o short-iso SYSLOG_IDENTIFIER=iotgwd | sed 's/^/    /'
journalctl --no-pager -o json SYSLOG_IDENTIFIER=iotgwd | python3 -c '
import json, sys
for line in sys.stdin:
    e = json.loads(line)
    fields = {k: v for k, v in e.items() if k.startswith("IOTGW_") or k in ("MESSAGE_ID", "PRIORITY")}
    print("    fields:", " ".join(f"{k}={v}" for k, v in sorted(fields.items())))'

# --- what crosses the network today
probe_tcp() { # ns host port -> reachable | refused (nothing listens) | dropped (no answer)
  local rc=0
  ip netns exec "$1" timeout 2 bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null || rc=$?
  case $rc in 0) echo reachable ;; 124) echo dropped ;; *) echo refused ;; esac
}
bold "Network reachability with the built-in default: table inet iotgw on br-iot, no device trusted"
row "lan -> device :23 telnet (Mirai's way in)" "$(probe_tcp iotgw-lan 192.168.50.10 23)   [5.6-1: blocked]"
row "lan -> device :80 HTTP admin page" "$(probe_tcp iotgw-lan 192.168.50.10 80)   [5.5-5: blocked]"
row "device -> lan :8883" "$(probe_tcp iotgw-dev 192.168.1.20 8883)   [not enrolled: nothing allowed]"
row "device -> gateway :1883 MQTT" "$(probe_tcp iotgw-dev 192.168.50.1 1883)   [built-in default: no device-side listener]"
echo "  nftables (the rules never name a device; devices are elements of sets and maps):"
ip netns exec iotgw-gw nft list chain inet iotgw device_forward_out | grep -E 'allow|drop' | sed 's/^\s*/    /'

# --- what the policy engine decides for an enrolled legacy device
bold "Policy engine decisions for an enrolled legacy thermostat (enforced on the wire by the MQTT/CoAP proxies)"
mkdir -p "$work/devices.d"
hash=$(echo demo-password | "$iotgwd" --hash-password)
sed "s|@HASH@|$hash|" "$here/devices.d/thermo-01.toml" > "$work/devices.d/thermo-01.toml"
"$probe" "$work/devices.d" demo-password

# --- reload with a broken configuration keeps the running one
bold "A broken configuration is rejected and the running one stays in force"
printf '[limits]\nmax_connections = "lots"\n' > /etc/iotgw/iotgw.toml
row "iotgwd --check-config" "$("$iotgwd" --check-config 2>&1 || true)"
kill -HUP "$gwpid"
sleep 0.5
journalctl --no-pager -o cat MESSAGE_ID=ea544e8e870e44f3ac4cde967ee935ae | sed 's/^/    journal: /'
row "iotgwd still running" "$(kill -0 "$gwpid" 2>/dev/null && echo yes || echo NO)"
rm /etc/iotgw/iotgw.toml
kill -TERM "$gwpid"
wait "$gwpid" && rc=0 || rc=$?
bold "iotgwd (built-in default) stopped (exit code $rc)"
journalctl --no-pager -o cat MESSAGE_ID=34de99166a50412092525355db56601a | sed 's/^/    journal: /'

# --- part 2: the MQTT proxy with a configuration: the hub's broker behind mutual TLS
bold "iotgwd as the thermostat's MQTT server, re-originating over mutual TLS to the hub's broker"
pki=$work/pki
mkdir -p "$pki"
(
  cd "$pki"
  for ca in ca; do
    openssl ecparam -name prime256v1 -genkey -noout -out $ca.key
    openssl req -x509 -new -key $ca.key -sha256 -days 1 -subj "/CN=demo-hub-ca" -out $ca.crt
  done
  leaf() { # name cn ext
    openssl ecparam -name prime256v1 -genkey -noout -out "$1.key"
    openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
    printf '%s\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -sha256 \
      -extfile "$1.ext" -out "$1.crt"
  }
  leaf broker localhost "subjectAltName=IP:127.0.0.1"
  leaf gateway iotgw-gateway "extendedKeyUsage=clientAuth"
  leaf app companion-app "extendedKeyUsage=clientAuth"
  leaf gateway-dtls iotgw-gateway $'subjectAltName=IP:192.168.1.1\nextendedKeyUsage=serverAuth'
) >/dev/null 2>&1
cat > /etc/iotgw/iotgw.toml <<CONF
[device_segment]
interfaces = ["br-iot"]
subnets = ["192.168.50.0/24"]

[listeners.mqtt]
addresses = ["192.168.50.1"]

[listeners.coap]
addresses = ["192.168.50.1"]

[listeners.coap_dtls]
addresses = ["192.168.1.1"]
certificate = "$pki/gateway-dtls.crt"
private_key = "$pki/gateway-dtls.key"
ca_file = "$pki/ca.crt"

[upstream]
host = "127.0.0.1"
port = 8883
ca_file = "$pki/ca.crt"
certificate = "$pki/gateway.crt"
private_key = "$pki/gateway.key"
CONF
row "iotgwd --check-config" "$("$iotgwd" --check-config 2>&1)"
: > "$work/notify.log"
ip netns exec iotgw-gw env NOTIFY_SOCKET="$notify" "$iotgwd" >"$work/iotgwd2.out" 2>&1 &
gwpid=$!
pids+=($gwpid)
for _ in $(seq 100); do grep -aq "MQTT on port" "$work/notify.log" && break; sleep 0.05; done
row "sd_notify" "$(grep -a READY=1 "$work/notify.log" | tail -1 | tr -d '\0')"

# First start made the gateway's own CA (5.1-1): the hub's broker is told to trust it.
row "gateway CA (made on first start)" "$(openssl x509 -in /var/lib/iotgw/ca/ca.pem -noout -subject | sed 's/subject=//')"
row "its key" "$(stat -c '%A %U' /var/lib/iotgw/ca/ca.key)"
cat "$pki/ca.crt" /var/lib/iotgw/ca/ca.pem > "$pki/trusted.pem"
cat > "$work/mosquitto.conf" <<CONF
user root
allow_anonymous true
persistence true
persistence_location $work/
log_dest stderr
log_type error
log_type notice
listener 8883 127.0.0.1
cafile $pki/trusted.pem
certfile $pki/broker.crt
keyfile $pki/broker.key
require_certificate true
use_identity_as_username true
CONF
ip netns exec iotgw-gw mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
mosqpid=$!
pids+=($mosqpid)
for _ in $(seq 100); do ip netns exec iotgw-gw bash -c 'exec 3<>/dev/tcp/127.0.0.1/8883' 2>/dev/null && break; sleep 0.05; done

# The companion app's way in: enrol the thermostat over D-Bus, with its own identity.
bold "Enrolling the thermostat through iotgwctl (D-Bus org.iotgw.Gateway1, as the companion app does)"
"$iotgwctl" watch > "$work/signals.txt" 2>&1 &
watchpid=$!
pids+=($watchpid)
sleep 0.3
row "iotgwctl enroll thermo-01 thermo-01.toml" "$("$iotgwctl" enroll thermo-01 "$work/devices.d/thermo-01.toml" 2>&1)"
row "iotgwctl devices" "$("$iotgwctl" devices 2>&1 | tr -s ' ')"
"$iotgwctl" show thermo-01 | sed -n '2,20p' | grep -E 'identity|certificate|source|quarantined' | sed 's/^ */    /'
row "as nobody: iotgwctl remove thermo-01" "$( (setpriv --reuid=nobody --regid=nogroup --clear-groups "$iotgwctl" remove thermo-01 2>&1; echo "(exit $?)") | tr '\n' ' ')"

app_tls=(-h 127.0.0.1 -p 8883 --cafile "$pki/ca.crt" --cert "$pki/app.crt" --key "$pki/app.key")
ip netns exec iotgw-gw mosquitto_sub "${app_tls[@]}" -c -i demo-app -q 1 -t 'devices/#' -v >"$work/app.txt" 2>&1 &
pids+=($!)
sleep 0.5

# The thermostat: one MQTT client (paho), as a real device has one connection.
cat > "$work/device.py" <<'PY'
import sys, time
import paho.mqtt.client as paho

def connect(user, password):
    c = paho.Client(client_id="thermo-01", protocol=paho.MQTTv311)
    c.username_pw_set(user, password)
    result = {}
    c.on_connect = lambda cl, u, f, rc: result.setdefault("rc", rc)
    c.connect("192.168.50.1", 1883, keepalive=30)
    c.loop_start()
    for _ in range(100):
        if "rc" in result:
            break
        time.sleep(0.05)
    return c, result.get("rc")

c, rc = connect("root", "xc3511")
print("login root/xc3511:", paho.connack_string(rc) if rc is not None else "no answer", flush=True)
c.loop_stop()
c, rc = connect("thermo", "demo-password")
print("login thermo/<its password>:", paho.connack_string(rc), flush=True)
commands = []
c.on_message = lambda cl, u, m: commands.append(m.payload.decode(errors="replace"))
c.subscribe("devices/thermo-01/cmd/#", qos=1)
for topic, payload in [("devices/thermo-01/telemetry/temp", '{"t":21.5,"unit":"C"}'),
                       ("devices/door-lock/cmd/open", "1"),
                       ("devices/thermo-01/telemetry/temp", '{"t":900,"unit":"C"}')]:
    info = c.publish(topic, payload, qos=1)
    info.wait_for_publish()
    print(f"publish {topic} {payload}: acknowledged by the gateway", flush=True)
print("subscribed", flush=True)
time.sleep(3)
for cmd in commands:
    print("command received:", cmd, flush=True)
c.loop_stop()
c.disconnect()
PY
ip netns exec iotgw-dev /usr/bin/python3 "$work/device.py" >"$work/device.txt" 2>&1 &
devpid=$!
pids+=($devpid)
for _ in $(seq 100); do grep -q subscribed "$work/device.txt" && break; sleep 0.1; done
ip netns exec iotgw-gw mosquitto_pub "${app_tls[@]}" -t devices/thermo-01/cmd/setpoint -m '{"t":20}' -q 1
ip netns exec iotgw-gw mosquitto_pub "${app_tls[@]}" -t devices/thermo-01/cmd/setpoint -m 'AAAA%n%n%n-overflow' -q 1
wait "$devpid" || true
echo "  the thermostat (a plaintext MQTT client on the device segment):"
grep -v subscribed "$work/device.txt" | sed 's/^/    /'
arrived() { grep -qF -- "$2" "$1" && echo "arrived" || echo "never arrived"; }
echo "  at the broker (an app subscribed to devices/# over mutual TLS):"
row "  reading {\"t\":21.5}" "$(arrived "$work/app.txt" '{"t":21.5,"unit":"C"}')"
row "  devices/door-lock/cmd/open (another device's topic)" "$(arrived "$work/app.txt" 'door-lock')"
row "  reading {\"t\":900} (out of range)" "$(arrived "$work/app.txt" '"t":900')"
row "  the broker knows the sender as" "$(grep -o "u'thermo-01'" "$work/mosquitto.log" | head -1 || echo '?')   [its own certificate, 5.4-4]"
echo "  at the thermostat (commands from the broker, checked by iotgwd):"
row "  command {\"t\":20}" "$(arrived "$work/device.txt" 'command received: {"t":20}')"
row "  command 'AAAA%n%n%n-overflow' (not JSON)" "$(arrived "$work/device.txt" 'AAAA')"
echo "  journal (security events of this run, as journalctl -o json shows them):"
journalctl --no-pager -o json SYSLOG_IDENTIFIER=iotgwd | python3 -c '
import json, sys
for line in sys.stdin:
    e = json.loads(line)
    if e.get("IOTGW_EVENT") in ("daemon-started", "daemon-stopping", "config-rejected"):
        continue
    print("    {:<27} device={:<10} provision={:<7} rule={:<24} {}".format(
        e.get("IOTGW_EVENT", ""), e.get("IOTGW_DEVICE", "-"), e.get("IOTGW_PROVISION", ""),
        e.get("IOTGW_RULE", ""), e.get("MESSAGE", "")))'

# --- store-and-forward: the hub's broker goes away and comes back (5.9-1, 5.9-3)
bold "The hub's broker goes away: the thermostat keeps publishing, every reading arrives later"
kill -TERM "$mosqpid"
wait "$mosqpid" 2>/dev/null || true
cat > "$work/outage.py" <<'PY'
import time
import paho.mqtt.client as paho
c = paho.Client(client_id="thermo-01", protocol=paho.MQTTv311)
c.username_pw_set("thermo", "demo-password")
c.connect("192.168.50.1", 1883, keepalive=30)
c.loop_start()
for i in range(5):
    reading = f'{{"t":{19.0 + i / 10:.1f},"unit":"C"}}'
    info = c.publish("devices/thermo-01/telemetry/temp", reading, qos=1)
    info.wait_for_publish()
    print(f"publish {reading}: acknowledged by the gateway (the broker is down)", flush=True)
c.loop_stop()
c.disconnect()
PY
ip netns exec iotgw-dev /usr/bin/python3 "$work/outage.py" 2>&1 | sed 's/^/    /'
row "iotgwctl show thermo-01 (broker down)" "$("$iotgwctl" show thermo-01 | grep -E 'queued_messages' | tr -s ' ')   [in its outbox on disk]"
ip netns exec iotgw-gw mosquitto -c "$work/mosquitto.conf" >>"$work/mosquitto.log" 2>&1 &
mosqpid=$!
pids+=($mosqpid)
for _ in $(seq 300); do
  "$iotgwctl" show thermo-01 | grep -qE 'queued_messages +0$' && grep -qF '"t":19.4' "$work/app.txt" && break
  sleep 0.1
done
row "iotgwctl show thermo-01 (broker back)" "$("$iotgwctl" show thermo-01 | grep -E 'queued_messages' | tr -s ' ')"
row "at the broker: the 5 readings sent during the outage" "$(grep -cE '"t":19\.[0-4]' "$work/app.txt") of 5, $(grep -E '"t":19\.[0-4]' "$work/app.txt" | sed 's/.*"t":\([0-9.]*\).*/\1/' | tr '\n' ' ')"
journalctl --no-pager -o json SYSLOG_IDENTIFIER=iotgwd | python3 -c '
import json, sys
for line in sys.stdin:
    e = json.loads(line)
    if e.get("IOTGW_EVENT") in ("outbox-queuing", "outbox-drained"):
        print("    {:<16} device={:<10} provision={:<6} {}".format(e.get("IOTGW_EVENT", ""),
              e.get("IOTGW_DEVICE", "-"), e.get("IOTGW_PROVISION", ""), e.get("MESSAGE", "")))'

# --- CoAP: the thermostat's plain CoAP server behind the DTLS reverse proxy
bold "The thermostat's plain CoAP server, reached only through iotgwd's DTLS endpoint (coaps://192.168.1.1)"
ip netns exec iotgw-dev coap-server-notls -A 192.168.50.10 -v 7 >"$work/coap-device.log" 2>&1 &
pids+=($!)
sleep 0.3
coaps() { # method path [payload] [no-cert]: what coap-client-openssl prints, on one line
  local args=(-B 6 -m "$1")
  [ -n "${3:-}" ] && args+=(-e "$3")
  [ "${4:-}" != no-cert ] && args+=(-C "$pki/ca.crt" -c "$pki/app.crt" -j "$pki/app.key")
  ip netns exec iotgw-lan coap-client-openssl "${args[@]}" "coaps://192.168.1.1/thermo-01$2" 2>&1 |
    grep -v '^$' | tr '\n' ' ' | sed 's/ $//'
}
plain() { # ns method url [payload]: the answer's code and text, from coap-client's own trace
  local args=(-v 7 -B 3 -m "$2")
  [ -n "${4:-}" ] && args+=(-e "$4")
  ip netns exec "$1" coap-client-notls "${args[@]}" "$3" 2>&1 |
    grep -E '^v:1 t:(ACK|CON|NON|RST) c:[2-5]\.' | tail -1 |
    sed -E "s/^v:1 t:[A-Z]+ c:([0-9.]+).* :: '(.*)'\$/\1 \2/; s/^v:1 t:[A-Z]+ c:([0-9.]+) .*/\1/" |
    grep . || echo "no answer"
}
row "lan -> device :5683/udp (plain CoAP, directly)" "$(plain iotgw-lan get coap://192.168.50.10/time)   [blocked]"
row "app: GET coaps://192.168.1.1/thermo-01/time" "$(coaps get /time)"
row "app: PUT /time 'Jan 1 1970' (would set its clock)" "$(coaps put /time 'Jan 1 1970')"
row "app: GET /example_data (not in its policy)" "$(coaps get /example_data)"
row "app without a client certificate: GET /time" "$(coaps get /time '' no-cert | grep -oE 'handshake failure|Alert [0-9]+' | head -1 || echo 'no answer')   [DTLS refused]"
echo "  what the device itself received (its own log, coap-server-notls -v 7):"
grep -E 'c:(GET|PUT|POST|DELETE)' "$work/coap-device.log" | sed 's/^/    /'

bold "The thermostat pushes a reading over plain CoAP; iotgwd publishes it to the broker over mutual TLS"
row "device: POST coap://192.168.50.1/readings" "$(plain iotgw-dev post coap://192.168.50.1/readings '{"t":21.7,"unit":"C"}')   [once the broker acknowledged it]"
row "device: POST coap://192.168.50.1/firmware (no push rule)" "$(plain iotgw-dev post coap://192.168.50.1/firmware 'AAAA')"
sleep 0.3
row "at the broker: devices/thermo-01/telemetry/coap" "$(grep -F 'telemetry/coap' "$work/app.txt" || echo 'never arrived')"
echo "  counters (iotgwctl status):"
"$iotgwctl" status 2>&1 | grep -E 'coap_(requests|forwarded|answered|denied|pushes_published)' | sed 's/^ */    /'
echo "  journal (CoAP events of this run):"
journalctl --no-pager -o json SYSLOG_IDENTIFIER=iotgwd IOTGW_PROTOCOL=coap | python3 -c '
import json, sys
for line in sys.stdin:
    e = json.loads(line)
    print("    {:<22} device={:<10} provision={:<7} rule={:<16} {}".format(
        e.get("IOTGW_EVENT", ""), e.get("IOTGW_DEVICE", "-"), e.get("IOTGW_PROVISION", ""),
        e.get("IOTGW_RULE", ""), e.get("MESSAGE", "")))'

# --- the firewall for the enrolled thermostat, then a quarantine and its release
bold "The enrolled thermostat on the network: only what its policy names"
row "lan -> device :23 telnet" "$(probe_tcp iotgw-lan 192.168.50.10 23)   [5.6-1: blocked]"
row "device -> lan :8883 (its policy: outbound 192.168.1.20:8883/tcp)" "$(probe_tcp iotgw-dev 192.168.1.20 8883)"
row "device -> lan :22 (not in its policy)" "$(probe_tcp iotgw-dev 192.168.1.20 22)"
row "device -> gateway :1883 MQTT" "$(probe_tcp iotgw-dev 192.168.50.1 1883)"
ip netns exec iotgw-gw nft list counter inet iotgw tx-thermo-01 | grep packets | sed 's/^\s*/  counter tx-thermo-01: /'

bold "Quarantine (5.3-15): the administrator isolates the thermostat, then releases it"
row "iotgwctl quarantine thermo-01 --reason demo" "$("$iotgwctl" quarantine thermo-01 --reason demo 2>&1)"
row "device -> lan :8883" "$(probe_tcp iotgw-dev 192.168.1.20 8883)   [quarantined]"
row "device -> gateway :1883 MQTT" "$(probe_tcp iotgw-dev 192.168.50.1 1883)   [quarantined: DHCP only]"
row "iotgwctl release thermo-01" "$("$iotgwctl" release thermo-01 2>&1)"
row "device -> lan :8883" "$(probe_tcp iotgw-dev 192.168.1.20 8883)   [released]"
bold "Someone deletes the table (nft delete table inet iotgw): iotgwd puts it back"
ip netns exec iotgw-gw nft delete table inet iotgw
sleep 0.3
row "table inet iotgw" "$(ip netns exec iotgw-gw nft list table inet iotgw >/dev/null 2>&1 && echo 'present again' || echo MISSING)"
row "lan -> device :23 telnet" "$(probe_tcp iotgw-lan 192.168.50.10 23)"
journalctl --no-pager -o json SYSLOG_IDENTIFIER=iotgwd | python3 -c '
import json, sys
for line in sys.stdin:
    e = json.loads(line)
    if e.get("IOTGW_EVENT") in ("device-quarantined", "device-released", "firewall-repaired"):
        print("    {:<20} device={:<10} provision={:<6} {}".format(e.get("IOTGW_EVENT", ""),
              e.get("IOTGW_DEVICE", "-"), e.get("IOTGW_PROVISION", ""), e.get("MESSAGE", "")))'

bold "Removing the thermostat (5.11-1): nothing of it stays, its certificate is revoked"
serial=$(openssl x509 -in /var/lib/iotgw/identities/thermo-01.pem -noout -serial | cut -d= -f2)
row "iotgwctl remove thermo-01" "$("$iotgwctl" remove thermo-01 2>&1)"
row "files naming thermo-01 under /var/lib/iotgw" "$(grep -rl thermo-01 /var/lib/iotgw | wc -l) (and $(find /var/lib/iotgw -name '*thermo-01*' | wc -l) named so)"
row "serial $serial in the CRL" "$(openssl crl -in /var/lib/iotgw/ca/crl.pem -noout -text | tr -d ':' | grep -qi "$serial" && echo listed || echo 'NOT listed')"
sleep 0.3
echo "  D-Bus signals seen by iotgwctl watch during the demo:"
sed -n '2,$p' "$work/signals.txt" | sed 's/^/    /'

kill -TERM "$gwpid"
wait "$gwpid" && rc=0 || rc=$?
bold "iotgwd stopped (exit code $rc)"
