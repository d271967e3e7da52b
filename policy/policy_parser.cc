// SPDX-License-Identifier: GPL-3.0-or-later
#include "policy/policy_parser.h"

#include <algorithm>
#include <charconv>
#include <fmt/format.h>
#include <tuple>

#include "policy/toml_schema.h"
#include "policy/topic.h"
#include "policy/utf8.h"

namespace iotgw::policy {

namespace {

std::optional<uint16_t> parsePort(std::string_view s) {
  unsigned v = 0;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc{} || p != s.data() + s.size() || v == 0 || v > 65535) {
    return std::nullopt;
  }
  return static_cast<uint16_t>(v);
}

std::optional<Transport> parseTransport(std::string_view s) {
  if (s == "tcp") {
    return Transport::Tcp;
  }
  if (s == "udp") {
    return Transport::Udp;
  }
  return std::nullopt;
}

std::optional<JsonKind> parseJsonKind(std::string_view s) {
  static constexpr std::pair<std::string_view, JsonKind> kKinds[] = {
      {"any", JsonKind::Any},         {"object", JsonKind::Object}, {"array", JsonKind::Array},
      {"string", JsonKind::String},   {"number", JsonKind::Number}, {"integer", JsonKind::Integer},
      {"boolean", JsonKind::Boolean}, {"null", JsonKind::Null}};
  for (const auto& [name, kind] : kKinds) {
    if (s == name) {
      return kind;
    }
  }
  return std::nullopt;
}

class PolicyParser {
public:
  PolicyParser(const std::string& source, const PolicyLimits& limits, Diagnostics& diags)
      : source_(source), limits_(limits), diags_(diags) {}

  std::optional<DevicePolicy> parse(const toml::table& root) {
    TableReader top(root, "", source_, diags_);
    const toml::table* deviceTable = top.table("device", Need::Required);
    if (deviceTable == nullptr) {
      top.finish();
      return std::nullopt;
    }
    TableReader device(*deviceTable, "device", source_, diags_);
    auto idText = device.string("id", Need::Required, 63);
    std::optional<DeviceId> id;
    if (idText) {
      id = DeviceId::parse(*idText);
      if (!id) {
        device.error(*deviceTable->get("id"),
                     "'device.id' must be 1-63 characters of [a-z0-9._-] starting with a letter "
                     "or digit");
      }
    }
    if (!id) {
      // Keep checking the rest of the document so that every error is reported at once.
      id = DeviceId::parse("invalid");
    }
    DevicePolicy p{*id};
    p.sourceName = source_;
    parseDevice(device, *deviceTable, p);
    recordPositions(*deviceTable, p);

    if (const auto* t = top.table("mqtt")) {
      parseMqtt(*t, p.mqttRules);
    }
    if (const auto* t = top.table("coap")) {
      parseCoap(*t, p.coapRules);
    }
    if (const auto* t = top.table("network")) {
      parseNetwork(*t, p.network);
    }
    if (const auto* t = top.table("violation")) {
      TableReader v(*t, "violation", source_, diags_);
      p.onViolation =
          v.choice<ViolationAction>("action", {{"drop", ViolationAction::Drop},
                                               {"disconnect", ViolationAction::Disconnect},
                                               {"quarantine", ViolationAction::Quarantine}})
              .value_or(ViolationAction::Drop);
      v.finish();
    }
    top.finish();
    if (diags_.empty()) {
      // Only a document that is right in its parts is judged as a whole.
      crossCheck(root, p);
    }
    return p;
  }

private:
  static void recordPositions(const toml::table& device, DevicePolicy& p) {
    const auto put = [&](const std::string& key, const toml::node* n) {
      if (n != nullptr) {
        p.positions[key] = SourcePosition{n->source().begin.line, n->source().begin.column};
      }
    };
    put("device", &device);
    put("device.id", device.get("id"));
    put("device.mac", device.get("mac"));
    if (const auto* arr = device.get_as<toml::array>("addresses")) {
      for (size_t i = 0; i < arr->size(); ++i) {
        put(fmt::format("device.addresses[{}]", i), arr->get(i));
      }
    }
    if (const auto* m = device.get_as<toml::table>("mqtt")) {
      put("device.mqtt.client_id", m->get("client_id"));
      put("device.mqtt.username", m->get("username"));
    }
    if (const auto* c = device.get_as<toml::table>("certificate")) {
      put("device.certificate.common_name", c->get("common_name"));
      put("device.certificate.subject_alt_names", c->get("subject_alt_names"));
      if (const auto* arr = c->get_as<toml::array>("subject_alt_names")) {
        for (size_t i = 0; i < arr->size(); ++i) {
          put(fmt::format("device.certificate.subject_alt_names[{}]", i), arr->get(i));
        }
      }
    }
  }

  void parseDevice(TableReader& r, const toml::table& t, DevicePolicy& p) {
    if (auto mac = r.string("mac", Need::Optional, 17 + 1)) {
      p.mac = MacAddress::parse(*mac);
      if (!p.mac) {
        r.error(*t.get("mac"), "'device.mac' must look like 02:00:00:00:00:10");
      }
    }
    if (auto addrs = r.strings("addresses", Need::Optional, 16, 64)) {
      const auto& arr = *t.get("addresses")->as_array();
      for (size_t i = 0; i < addrs->size(); ++i) {
        auto a = IpAddress::parse((*addrs)[i]);
        if (!a) {
          r.error(arr[i], fmt::format("'{}' is not an IPv4 or IPv6 address", (*addrs)[i]));
        } else {
          p.addresses.push_back(*a);
        }
      }
    }
    p.metadata.manufacturer = r.string("manufacturer", Need::Optional, 128).value_or("");
    p.metadata.model = r.string("model", Need::Optional, 128).value_or("");
    p.metadata.firmwareVersion = r.string("firmware_version", Need::Optional, 64).value_or("");
    p.metadata.vulnerabilityContact =
        r.string("vulnerability_contact", Need::Optional, 512).value_or("");
    if (auto d = r.date("support_until")) {
      p.metadata.supportUntil = CivilDate{d->year, d->month, d->day};
    }
    if (const auto* m = r.table("mqtt")) {
      TableReader mr(*m, "device.mqtt", source_, diags_);
      p.mqtt.clientId = mr.string("client_id", Need::Optional, 256).value_or("");
      p.mqtt.username = mr.string("username", Need::Optional, 256).value_or("");
      if (auto h = mr.string("password_hash", Need::Optional, 512)) {
        auto parsed = PasswordHash::parse(*h);
        if (!parsed) {
          mr.error(*m->get("password_hash"), "'device.mqtt.password_hash': " + parsed.error());
        } else {
          p.mqtt.passwordHash = std::move(*parsed);
        }
      }
      if (!p.mqtt.clientId.empty() && !isValidUtf8(p.mqtt.clientId)) {
        mr.error(*m->get("client_id"), "'device.mqtt.client_id' is not valid UTF-8");
      }
      if (!p.mqtt.username.empty() && m->get("password_hash") == nullptr) {
        mr.error(*m, "'device.mqtt.username' is set without 'password_hash'; a device that "
                     "logs in must have a password (hash one with `iotgwd --hash-password`)");
      }
      if (p.mqtt.passwordHash && p.mqtt.username.empty()) {
        mr.error(*m->get("password_hash"), "'device.mqtt.password_hash' needs 'username'");
      }
      mr.finish();
    }
    if (const auto* c = r.table("certificate")) {
      TableReader cr(*c, "device.certificate", source_, diags_);
      p.certificate.commonName = cr.string("common_name", Need::Optional, 64).value_or("");
      bool sansGiven = false;
      if (auto sans = cr.strings("subject_alt_names", Need::Optional, 16, 256)) {
        sansGiven = !sans->empty();
        const auto& arr = *c->get("subject_alt_names")->as_array();
        for (size_t i = 0; i < sans->size(); ++i) {
          if (auto san = parseSubjectAltName((*sans)[i])) {
            p.certificate.subjectAltNames.push_back(std::move(*san));
          } else {
            cr.error(arr[i], "'device.certificate.subject_alt_names': " + san.error());
          }
        }
      }
      if (p.certificate.commonName.empty() && !sansGiven) {
        cr.error(*c, "'device.certificate' needs 'common_name' or 'subject_alt_names'");
      }
      cr.finish();
    }
    r.finish();
  }

  void patterns(TableReader& r, const toml::table& t, std::string_view key,
                std::vector<std::string>& out) {
    auto list = r.strings(key, Need::Optional, limits_.maxTopicPatterns, 65535);
    if (!list) {
      return;
    }
    const auto& arr = *t.get(key)->as_array();
    for (size_t i = 0; i < list->size(); ++i) {
      if (auto e = validateTopicPattern((*list)[i])) {
        r.error(arr[i],
                fmt::format("topic pattern \"{}\": {} ({})", (*list)[i], describe(*e), clause(*e)));
      } else {
        out.push_back((*list)[i]);
      }
    }
  }

  void parseMqtt(const toml::table& t, MqttRules& m) {
    TableReader r(t, "mqtt", source_, diags_);
    patterns(r, t, "publish", m.publish);
    patterns(r, t, "subscribe", m.subscribe);
    if (auto q = r.integer("max_qos", 0, 2)) {
      m.maxQos = static_cast<uint8_t>(*q);
    }
    if (auto b = r.integer("max_payload_bytes", 0, 256 * 1024 * 1024)) {
      m.maxPayloadBytes = static_cast<uint32_t>(*b);
    }
    m.retainAllowed = r.boolean("retain").value_or(false);
    m.upstreamUsername = r.string("upstream_username", Need::Optional, 256).value_or("");
    if (auto n = r.integer("max_clients", 1, 64)) {
      m.maxClients = static_cast<uint32_t>(*n);
    }
    m.whenQueueFull =
        r.choice<MqttRules::WhenQueueFull>("when_queue_full",
                                           {{"refuse", MqttRules::WhenQueueFull::Refuse},
                                            {"drop-oldest", MqttRules::WhenQueueFull::DropOldest}})
            .value_or(MqttRules::WhenQueueFull::Refuse);
    m.upstreamIdentity =
        r.choice<UpstreamIdentity>("upstream_identity", {{"shared", UpstreamIdentity::Shared},
                                                         {"issued", UpstreamIdentity::Issued}})
            .value_or(UpstreamIdentity::Shared);
    if (auto prefix = r.string("upstream_prefix", Need::Optional, 1024)) {
      // Checked with a sample id: "%d" must be a whole level, the rest a topic name, ending in '/'.
      std::string sample = *prefix;
      if (const size_t at = sample.find("%d"); at != std::string::npos) {
        sample.replace(at, 2, "device");
      }
      const bool wholeLevel =
          prefix->find("%d") == std::string::npos ||
          ((prefix->find("%d") == 0 || (*prefix)[prefix->find("%d") - 1] == '/') &&
           prefix->substr(prefix->find("%d") + 2, 1) == "/");
      if (prefix->empty() || prefix->back() != '/' || !wholeLevel ||
          sample.find('%') != std::string::npos || validateTopicName(sample + "x")) {
        r.error(*t.get("upstream_prefix"),
                "'mqtt.upstream_prefix' must be a topic prefix ending in '/', without wildcards, "
                "where \"%d\" (the device id) may stand as a whole level");
      } else {
        m.upstreamPrefix = *prefix;
      }
    }
    if (const auto* rate = r.table("rate")) {
      TableReader rr(*rate, "mqtt.rate", source_, diags_);
      const auto positive = [&](std::string_view key, double& out) {
        if (auto v = rr.number(key)) {
          if (*v < 0 || *v > 1e9) {
            rr.error(*rate->get(key), fmt::format("'mqtt.rate.{}' must be in [0, 1e9]", key));
          } else {
            out = *v;
          }
        }
      };
      positive("messages_per_second", m.rate.messagesPerSecond);
      positive("message_burst", m.rate.messageBurst);
      positive("bytes_per_second", m.rate.bytesPerSecond);
      positive("byte_burst", m.rate.byteBurst);
      // A burst smaller than one message would refuse everything.
      if (m.rate.messagesPerSecond > 0 && m.rate.messageBurst == 0) {
        m.rate.messageBurst = std::max(1.0, m.rate.messagesPerSecond);
      }
      if (m.rate.bytesPerSecond > 0 && m.rate.byteBurst == 0) {
        m.rate.byteBurst = std::max(static_cast<double>(m.maxPayloadBytes), m.rate.bytesPerSecond);
      }
      // Budgets that could never admit a message the policy otherwise allows are mistakes.
      if (m.rate.messagesPerSecond > 0 && m.rate.messageBurst < 1) {
        rr.error(*rate->get("message_burst"), "'mqtt.rate.message_burst' must be at least 1");
      }
      if (m.rate.bytesPerSecond > 0 && m.rate.byteBurst < static_cast<double>(m.maxPayloadBytes)) {
        rr.error(
            rate->get("byte_burst") != nullptr ? *rate->get("byte_burst") : *rate,
            fmt::format("'mqtt.rate.byte_burst' is smaller than 'mqtt.max_payload_bytes' ({}): "
                        "a message of allowed size could never pass",
                        m.maxPayloadBytes));
      }
      rr.finish();
    }
    const auto rules = r.tables("payload", limits_.maxPayloadRules);
    for (size_t i = 0; i < rules.size(); ++i) {
      m.payloadRules.push_back(parsePayloadRule(*rules[i], i));
    }
    r.finish();
  }

  PayloadRule parsePayloadRule(const toml::table& t, size_t index) {
    const std::string path = fmt::format("mqtt.payload[{}]", index);
    TableReader r(t, path, source_, diags_);
    PayloadRule rule;
    rule.id = path;
    if (auto topic = r.string("topic", Need::Required, 65535)) {
      if (auto e = validateTopicPattern(*topic)) {
        r.error(*t.get("topic"),
                fmt::format("topic pattern \"{}\": {} ({})", *topic, describe(*e), clause(*e)));
      }
      rule.topic = *topic;
    }
    if (t.get("format") == nullptr) {
      r.error(t, fmt::format("missing required key '{}.format' (\"json\", \"utf8\" or \"binary\")",
                             path));
    }
    rule.format = r.choice<PayloadFormat>("format", {{"json", PayloadFormat::Json},
                                                     {"utf8", PayloadFormat::Utf8},
                                                     {"binary", PayloadFormat::Binary}})
                      .value_or(PayloadFormat::Binary);
    const bool json = rule.format == PayloadFormat::Json;
    const auto needJson = [&](std::string_view key) {
      if (!json && t.get(key) != nullptr) {
        r.error(*t.get(key), fmt::format("'{}.{}' applies only to format = \"json\"", path, key));
      }
    };
    needJson("type");
    needJson("required");
    needJson("fields");
    needJson("allow_other_keys");
    if (auto k = r.string("type")) {
      if (auto kind = parseJsonKind(*k)) {
        rule.kind = *kind;
      } else {
        r.error(*t.get("type"), fmt::format("'{}.type' is not a JSON type", path));
      }
    }
    rule.required =
        r.strings("required", Need::Optional, 64, 256).value_or(std::vector<std::string>{});
    rule.allowOtherKeys = r.boolean("allow_other_keys").value_or(true);
    if (const auto* fields = r.table("fields")) {
      TableReader fr(*fields, path + ".fields", source_, diags_);
      for (auto&& [key, node] : *fields) {
        const std::string name(key.str());
        if (const auto* ft = fr.table(name)) {
          rule.fields.push_back(parseField(*ft, name, fr.child(name)));
        }
      }
      fr.finish();
    }
    if (json && (!rule.required.empty() || !rule.fields.empty() || !rule.allowOtherKeys)) {
      if (rule.kind == JsonKind::Any) {
        rule.kind = JsonKind::Object;
      } else if (rule.kind != JsonKind::Object) {
        r.error(t, fmt::format("'{}': required keys and fields need type = \"object\"", path));
      }
    }
    r.finish();
    return rule;
  }

  JsonFieldRule parseField(const toml::table& t, const std::string& name, const std::string& path) {
    TableReader r(t, path, source_, diags_);
    JsonFieldRule f;
    f.name = name;
    if (auto k = r.string("type")) {
      if (auto kind = parseJsonKind(*k)) {
        f.kind = *kind;
      } else {
        r.error(*t.get("type"), fmt::format("'{}.type' is not a JSON type", path));
      }
    }
    f.min = r.number("min");
    f.max = r.number("max");
    if (f.min && f.max && *f.min > *f.max) {
      r.error(*t.get("max"), fmt::format("'{}.max' is smaller than its min", path));
    }
    if (auto len = r.integer("max_length", 0, 1 << 24)) {
      f.maxLength = static_cast<size_t>(*len);
    }
    f.enumValues =
        r.strings("enum", Need::Optional, 256, 1024).value_or(std::vector<std::string>{});
    const bool numeric = f.kind == JsonKind::Number || f.kind == JsonKind::Integer;
    if ((f.min || f.max) && !numeric) {
      r.error(t, fmt::format("'{}': min/max need type = \"number\" or \"integer\"", path));
    }
    if ((f.maxLength || !f.enumValues.empty()) && f.kind != JsonKind::String) {
      r.error(t, fmt::format("'{}': max_length/enum need type = \"string\"", path));
    }
    r.finish();
    return f;
  }

  static std::optional<std::string> coapPathPattern(TableReader& r, const toml::table& t,
                                                    const std::string& path) {
    auto pattern = r.string("path", Need::Required, 1024);
    if (!pattern) {
      return std::nullopt;
    }
    if (pattern->empty() || pattern->front() != '/') {
      r.error(*t.get("path"), fmt::format("'{}.path' must start with '/'", path));
    } else if (pattern->find("**") != std::string::npos && !pattern->ends_with("/**")) {
      r.error(*t.get("path"), fmt::format("'{}.path': '**' may only be the last segment", path));
    }
    return pattern;
  }

  void parseCoap(const toml::table& t, CoapRules& c) {
    TableReader r(t, "coap", source_, diags_);
    if (auto b = r.integer("max_payload_bytes", 0, 1024 * 1024)) {
      c.maxPayloadBytes = static_cast<uint32_t>(*b);
    }
    if (auto cf = r.integers("content_formats", 0, 65535, 64)) {
      for (auto v : *cf) {
        c.contentFormats.push_back(static_cast<uint16_t>(v));
      }
    }
    if (auto port = r.integer("port", 1, 65535)) {
      c.port = static_cast<uint16_t>(*port);
    }
    if (auto clients = r.strings("clients", Need::Optional, 64, 253)) {
      c.clients = *clients;
    }
    const auto pushes = r.tables("push", limits_.maxCoapRules);
    for (size_t i = 0; i < pushes.size(); ++i) {
      const std::string path = fmt::format("coap.push[{}]", i);
      TableReader pr(*pushes[i], path, source_, diags_);
      CoapPush push;
      push.id = path;
      if (auto pattern = coapPathPattern(pr, *pushes[i], path)) {
        push.path = *pattern;
      }
      if (auto topic = pr.string("topic", Need::Required, 256)) {
        if (topic->empty() || topic->find_first_of("+#") != std::string::npos) {
          pr.error(*pushes[i]->get("topic"),
                   fmt::format("'{}.topic' must be a topic name without wildcards", path));
        }
        push.topic = *topic;
      }
      if (auto qos = pr.integer("qos", 0, 1)) {
        push.qos = static_cast<uint8_t>(*qos);
      }
      pr.finish();
      c.push.push_back(std::move(push));
    }
    const auto rules = r.tables("rule", limits_.maxCoapRules);
    for (size_t i = 0; i < rules.size(); ++i) {
      const std::string path = fmt::format("coap.rule[{}]", i);
      TableReader rr(*rules[i], path, source_, diags_);
      CoapRule rule;
      rule.id = path;
      if (auto methods = rr.strings("methods", Need::Required, 8, 8)) {
        const auto& arr = *rules[i]->get("methods")->as_array();
        for (size_t k = 0; k < methods->size(); ++k) {
          if (auto m = parseCoapMethod((*methods)[k])) {
            rule.methods.push_back(*m);
          } else {
            rr.error(arr[k], fmt::format("'{}' is not a CoAP method (GET, POST, PUT, DELETE, "
                                         "FETCH, PATCH, iPATCH)",
                                         (*methods)[k]));
          }
        }
      }
      if (auto pattern = coapPathPattern(rr, *rules[i], path)) {
        rule.path = *pattern;
      }
      rr.finish();
      c.rules.push_back(std::move(rule));
    }
    r.finish();
  }

  void parseNetwork(const toml::table& t, NetworkRules& n) {
    TableReader r(t, "network", source_, diags_);
    if (auto out = r.strings("outbound", Need::Optional, limits_.maxEndpoints, 64)) {
      const auto& arr = *t.get("outbound")->as_array();
      for (size_t i = 0; i < out->size(); ++i) {
        if (auto e = parseEndpoint((*out)[i])) {
          n.outbound.push_back(*e);
        } else {
          r.error(arr[i], fmt::format("\"{}\" is not address:port/proto (for example "
                                      "\"203.0.113.10:8883/tcp\" or \"[2001:db8::1]:443/tcp\")",
                                      (*out)[i]));
        }
      }
    }
    if (auto svc = r.strings("services", Need::Optional, limits_.maxEndpoints, 16)) {
      const auto& arr = *t.get("services")->as_array();
      for (size_t i = 0; i < svc->size(); ++i) {
        if (auto e = parseService((*svc)[i])) {
          n.services.push_back(*e);
        } else {
          r.error(arr[i],
                  fmt::format("\"{}\" is not port/proto (for example \"80/tcp\")", (*svc)[i]));
        }
      }
    }
    n.intercept = r.boolean("intercept").value_or(true);
    r.finish();
  }

  void crossCheck(const toml::table& root, const DevicePolicy& p) {
    const bool password = p.mqtt.passwordHash.has_value();
    const bool cert = !p.certificate.commonName.empty() || !p.certificate.subjectAltNames.empty();
    if (!password && !cert && p.addresses.empty()) {
      const toml::node* at = root.get("device");
      diags_.push_back(Diagnostic{source_, at->source().begin.line, at->source().begin.column,
                                  "device has no way to be recognised: give it "
                                  "'device.addresses', a 'device.mqtt' login or a "
                                  "'device.certificate'"});
    }
    if (!p.addresses.empty() && !p.mac) {
      const toml::node* at = root["device"]["addresses"].node();
      diags_.push_back(Diagnostic{source_, at->source().begin.line, at->source().begin.column,
                                  "'device.addresses' needs 'device.mac': an address is only "
                                  "trusted when bound to the device's MAC (anti-spoofing)"});
    }
    checkPlaceholders(root, p);
  }

  // A topic scope may only come from verified identity: %c stands for the client id the policy
  // pins (a client id the device picks itself would let it choose its scope), %u for the user
  // name it logs in with.
  void checkPlaceholders(const toml::table& root, const DevicePolicy& p) {
    struct Needs {
      const char* placeholder;
      bool missing;
      const char* key;
      const char* why;
    };
    const Needs needs[] = {
        {"%c", p.mqtt.clientId.empty(), "device.mqtt.client_id",
         "the device would choose its own scope (pin its client id, or use %d, the device id)"},
        {"%u", p.mqtt.username.empty(), "device.mqtt.username",
         "%u stands only for the user name the device logs in with (use %d, the device id)"},
    };
    const auto check = [&](const toml::node& at, std::string_view key, std::string_view pattern) {
      const auto pos = at.source().begin;
      for (const auto& n : needs) {
        if (n.missing && patternUses(pattern, n.placeholder)) {
          diags_.push_back(Diagnostic{source_, pos.line, pos.column,
                                      fmt::format("'{}' uses {}, but '{}' is not set: {}", key,
                                                  n.placeholder, n.key, n.why)});
        }
      }
    };
    for (const char* key : {"publish", "subscribe"}) {
      if (const toml::array* list = root["mqtt"][key].as_array()) {
        for (const auto& item : *list) {
          if (const auto* text = item.as_string()) {
            check(item, fmt::format("mqtt.{}", key), text->get());
          }
        }
      }
    }
    if (const toml::array* rules = root["mqtt"]["payload"].as_array()) {
      for (size_t i = 0; i < rules->size(); ++i) {
        if (const toml::node* topic =
                (*rules)[i].as_table() ? (*rules)[i].as_table()->get("topic") : nullptr) {
          if (const auto* text = topic->as_string()) {
            check(*topic, fmt::format("mqtt.payload[{}].topic", i), text->get());
          }
        }
      }
    }
  }

  const std::string& source_;
  const PolicyLimits& limits_;
  Diagnostics& diags_;
};

} // namespace

std::optional<Endpoint> parseService(std::string_view text) {
  const size_t slash = text.rfind('/');
  if (slash == std::string_view::npos) {
    return std::nullopt;
  }
  auto port = parsePort(text.substr(0, slash));
  auto transport = parseTransport(text.substr(slash + 1));
  if (!port || !transport) {
    return std::nullopt;
  }
  return Endpoint{std::nullopt, *port, *transport};
}

std::optional<Endpoint> parseEndpoint(std::string_view text) {
  const size_t slash = text.rfind('/');
  if (slash == std::string_view::npos) {
    return std::nullopt;
  }
  auto transport = parseTransport(text.substr(slash + 1));
  const std::string_view hostPort = text.substr(0, slash);
  std::string_view host;
  std::string_view portText;
  if (!hostPort.empty() && hostPort.front() == '[') {
    const size_t close = hostPort.find(']');
    if (close == std::string_view::npos || close + 1 >= hostPort.size() ||
        hostPort[close + 1] != ':') {
      return std::nullopt;
    }
    host = hostPort.substr(1, close - 1);
    portText = hostPort.substr(close + 2);
  } else {
    const size_t colon = hostPort.rfind(':');
    if (colon == std::string_view::npos) {
      return std::nullopt;
    }
    host = hostPort.substr(0, colon);
    portText = hostPort.substr(colon + 1);
  }
  auto port = parsePort(portText);
  if (!port || !transport) {
    return std::nullopt;
  }
  std::optional<IpPrefix> prefix;
  if (host.find('/') != std::string_view::npos) {
    prefix = IpPrefix::parse(host);
  } else if (auto a = IpAddress::parse(host)) {
    prefix = IpPrefix{*a, static_cast<uint8_t>(a->family == AF_INET ? 32 : 128)};
  }
  if (!prefix) {
    return std::nullopt;
  }
  return Endpoint{prefix, *port, *transport};
}

std::string toString(const Endpoint& e) {
  const std::string_view proto = e.transport == Transport::Tcp ? "tcp" : "udp";
  if (!e.address) {
    return fmt::format("{}/{}", e.port, proto);
  }
  const bool host = e.address->length == (e.address->address.family == AF_INET ? 32 : 128);
  const std::string addr = host ? e.address->address.str() : e.address->str();
  if (e.address->address.family == AF_INET6) {
    return fmt::format("[{}]:{}/{}", addr, e.port, proto);
  }
  return fmt::format("{}:{}/{}", addr, e.port, proto);
}

std::expected<DevicePolicy, Diagnostics> parseDevicePolicy(std::string_view text,
                                                           const std::string& sourceName,
                                                           const PolicyLimits& limits) {
  Diagnostics diags;
  if (text.size() > limits.maxDocumentBytes) {
    diags.push_back(Diagnostic{sourceName, 1, 1,
                               fmt::format("policy document is {} bytes; at most {} are allowed",
                                           text.size(), limits.maxDocumentBytes)});
    return std::unexpected(std::move(diags));
  }
  auto root = parseToml(text, sourceName, diags);
  if (!root) {
    return std::unexpected(std::move(diags));
  }
  PolicyParser parser(sourceName, limits, diags);
  auto policy = parser.parse(*root);
  if (!diags.empty() || !policy) {
    sortByPosition(diags);
    return std::unexpected(std::move(diags));
  }
  policy->document.assign(text);
  return std::move(*policy);
}

namespace {

// The byte offset in `text` of (line, column), both 1-based, columns counting code points (as
// toml++ reports them).
size_t byteOffset(std::string_view text, size_t line, size_t column) {
  size_t at = 0;
  for (size_t l = 1; l < line && at < text.size(); ++l) {
    const size_t nl = text.find('\n', at);
    at = nl == std::string_view::npos ? text.size() : nl + 1;
  }
  for (size_t c = 1; c < column && at < text.size() && text[at] != '\n'; ++c) {
    ++at;
    while (at < text.size() && (static_cast<unsigned char>(text[at]) & 0xC0) == 0x80) {
      ++at; // continuation bytes of the same code point
    }
  }
  return at;
}

} // namespace

std::string redactSecrets(std::string_view document) {
  toml::table doc;
  try {
    doc = toml::parse(document);
  } catch (const toml::parse_error&) {
    // Never the case for a document in force; nothing of it is shown rather than a secret.
    return "# this document cannot be read back, so it is not shown\n";
  }
  const toml::node* value = doc["device"]["mqtt"]["password_hash"].node();
  if (value == nullptr) {
    return std::string(document);
  }
  // Exactly the value's text, wherever and however it is written (inline tables, escaped keys,
  // multi-line strings): everything else stays as written, and the result is still TOML.
  const auto& where = value->source();
  const size_t from = byteOffset(document, where.begin.line, where.begin.column);
  const size_t to = byteOffset(document, where.end.line, where.end.column);
  std::string out(document.substr(0, from));
  out += "\"(redacted)\"";
  out += document.substr(std::max(from, to));
  return out;
}

} // namespace iotgw::policy
