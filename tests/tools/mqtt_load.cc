// SPDX-License-Identifier: GPL-3.0-or-later
// A small MQTT load generator on libmosquitto, run the same way against the gateway and against
// mosquitto directly, so that the two can be compared as ratios.
//
//   mqtt_load throughput PUB SUB --count N --size B --qos Q [--inflight 20]
//   mqtt_load latency    PUB SUB --rate R --seconds S --size B
//   mqtt_load idle       PUB --connections N --hold S [--user-prefix P --password W]
//   mqtt_load publish    PUB --count N --size B --qos Q [--inflight 20]  (no subscriber: the
//                        rate at which PUB acknowledges, e.g. iotgwd storing with no broker)
//   mqtt_load drain      SUB --count N --topic T [--qos 1] [--wait S]  (how fast N messages
//                        arrive, from the first to the last)
//
// PUB and SUB are endpoints: host:port[,tls:CA:CERT:KEY][,user:U:P][,id:ID]. Prints one line of
// key=value results.
#include <mosquitto.h>
#include <poll.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Endpoint {
  std::string host;
  int port = 1883;
  std::string ca, cert, key;
  std::string user, password;
  std::string id;
};

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t at = s.find(sep, start);
    out.push_back(s.substr(start, at == std::string::npos ? std::string::npos : at - start));
    if (at == std::string::npos) {
      return out;
    }
    start = at + 1;
  }
}

Endpoint parseEndpoint(const std::string& text) {
  Endpoint e;
  const auto parts = split(text, ',');
  const auto hp = split(parts[0], ':');
  e.host = hp[0];
  e.port = std::atoi(hp.at(1).c_str());
  for (size_t i = 1; i < parts.size(); ++i) {
    const auto f = split(parts[i], ':');
    if (f[0] == "tls" && f.size() == 4) {
      e.ca = f[1];
      e.cert = f[2];
      e.key = f[3];
    } else if (f[0] == "user" && f.size() == 3) {
      e.user = f[1];
      e.password = f[2];
    } else if (f[0] == "id" && f.size() == 2) {
      e.id = f[1];
    }
  }
  return e;
}

[[noreturn]] void die(const char* what, int rc) {
  std::fprintf(stderr, "mqtt_load: %s: %s\n", what, mosquitto_strerror(rc));
  std::exit(1);
}

mosquitto* connect(const Endpoint& e, const std::string& id, void* user) {
  mosquitto* m = mosquitto_new(id.c_str(), true, user);
  mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
  mosquitto_int_option(m, MOSQ_OPT_TCP_NODELAY, 1);
  if (!e.ca.empty()) {
    if (int rc =
            mosquitto_tls_set(m, e.ca.c_str(), nullptr, e.cert.c_str(), e.key.c_str(), nullptr)) {
      die("tls_set", rc);
    }
  }
  if (!e.user.empty()) {
    mosquitto_username_pw_set(m, e.user.c_str(), e.password.c_str());
  }
  if (int rc = mosquitto_connect(m, e.host.c_str(), e.port, 60)) {
    die("connect", rc);
  }
  return m;
}

struct SubState {
  std::atomic<uint64_t> received{0};
  std::atomic<int64_t> firstNs{0}, lastNs{0}; // when the first and the last message came
  std::mutex mu;
  std::vector<double> latenciesUs;
  bool latency = false;
};

void onMessage(mosquitto*, void* user, const mosquitto_message* msg) {
  auto* s = static_cast<SubState*>(user);
  if (s->latency && msg->payloadlen >= static_cast<int>(sizeof(int64_t))) {
    int64_t sent = 0;
    std::memcpy(&sent, msg->payload, sizeof sent);
    const int64_t now = Clock::now().time_since_epoch().count();
    std::lock_guard lock(s->mu);
    s->latenciesUs.push_back(static_cast<double>(now - sent) / 1000.0);
  }
  const int64_t now = Clock::now().time_since_epoch().count();
  int64_t none = 0;
  s->firstNs.compare_exchange_strong(none, now, std::memory_order_relaxed);
  s->lastNs.store(now, std::memory_order_relaxed);
  s->received.fetch_add(1, std::memory_order_relaxed);
}

struct PubState {
  std::atomic<int> inflight{0};
};

void onPublish(mosquitto*, void* user, int) {
  static_cast<PubState*>(user)->inflight.fetch_sub(1, std::memory_order_relaxed);
}

long arg(int argc, char** argv, const char* name, long def) {
  for (int i = 0; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], name) == 0) {
      return std::atol(argv[i + 1]);
    }
  }
  return def;
}

std::string sarg(int argc, char** argv, const char* name, const char* def) {
  for (int i = 0; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], name) == 0) {
      return argv[i + 1];
    }
  }
  return def;
}

void finish(mosquitto* publisher, mosquitto* sub) {
  for (mosquitto* m : {publisher, sub}) {
    mosquitto_disconnect(m);
    mosquitto_loop_stop(m, true);
    mosquitto_destroy(m);
  }
}

// A publisher with `window` QoS > 0 messages in flight, counted in `pub`, once its session (and
// the gateway's upstream connect) has settled.
mosquitto* publisher(const Endpoint& e, PubState& pub, int window) {
  mosquitto* p = connect(e, e.id.empty() ? "bench-pub" : e.id, &pub);
  mosquitto_max_inflight_messages_set(p, static_cast<unsigned>(window));
  mosquitto_publish_callback_set(p, onPublish);
  mosquitto_loop_start(p);
  std::this_thread::sleep_for(std::chrono::seconds(1));
  return p;
}

mosquitto* subscriber(const Endpoint& e, SubState& state, const std::string& topic, int qos) {
  mosquitto* s = connect(e, e.id.empty() ? "bench-sub" : e.id + "-sub", &state);
  mosquitto_message_callback_set(s, onMessage);
  mosquitto_loop_start(s);
  mosquitto_subscribe(s, nullptr, topic.c_str(), qos);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  return s;
}

int throughput(int argc, char** argv) {
  const Endpoint pubEp = parseEndpoint(argv[2]);
  const Endpoint subEp = parseEndpoint(argv[3]);
  const long count = arg(argc, argv, "--count", 100000);
  const long size = arg(argc, argv, "--size", 64);
  const int qos = static_cast<int>(arg(argc, argv, "--qos", 0));
  const int window = static_cast<int>(arg(argc, argv, "--inflight", 20));
  const std::string topic = sarg(argc, argv, "--topic", "bench/t");
  const std::string subTopic = sarg(argc, argv, "--sub-topic", topic.c_str());
  SubState sub;
  mosquitto* s = subscriber(subEp, sub, subTopic, qos);
  PubState pub;
  mosquitto* p = publisher(pubEp, pub, window);
  std::vector<char> payload(static_cast<size_t>(size), 'x');
  const auto t0 = Clock::now();
  for (long i = 0; i < count; ++i) {
    if (qos > 0) {
      while (pub.inflight.load(std::memory_order_relaxed) >= window) {
        std::this_thread::yield();
      }
    } else if (i % 1000 == 0) {
      // QoS 0 has no flow control: keep the publisher from buffering without bound.
      while (static_cast<long>(sub.received.load()) + 20000 < i &&
             Clock::now() - t0 < std::chrono::seconds(60)) {
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    }
    pub.inflight.fetch_add(1, std::memory_order_relaxed);
    const int rc = mosquitto_publish(p, nullptr, topic.c_str(), static_cast<int>(size),
                                     payload.data(), qos, false);
    if (rc != 0) {
      die("publish", rc);
    }
  }
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  while (static_cast<long>(sub.received.load()) < count && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  std::printf("sent=%ld received=%lu seconds=%.3f rate=%.0f\n", count,
              static_cast<unsigned long>(sub.received.load()), secs,
              static_cast<double>(sub.received.load()) / secs);
  finish(p, s);
  return 0;
}

int latency(int argc, char** argv) {
  const Endpoint pubEp = parseEndpoint(argv[2]);
  const Endpoint subEp = parseEndpoint(argv[3]);
  const long rate = arg(argc, argv, "--rate", 1000);
  const long seconds = arg(argc, argv, "--seconds", 5);
  const long size = std::max<long>(arg(argc, argv, "--size", 64), 8);
  const std::string topic = sarg(argc, argv, "--topic", "bench/t");
  const std::string subTopic = sarg(argc, argv, "--sub-topic", topic.c_str());
  SubState sub;
  sub.latency = true;
  mosquitto* s = subscriber(subEp, sub, subTopic, 0);
  PubState pub;
  mosquitto* p = connect(pubEp, pubEp.id.empty() ? "bench-pub" : pubEp.id, &pub);
  mosquitto_loop_start(p);
  std::this_thread::sleep_for(std::chrono::seconds(1));
  std::vector<char> payload(static_cast<size_t>(size), 'x');
  const long total = rate * seconds;
  const auto t0 = Clock::now();
  for (long i = 0; i < total; ++i) {
    std::this_thread::sleep_until(t0 + std::chrono::nanoseconds(1'000'000'000LL * i / rate));
    const int64_t now = Clock::now().time_since_epoch().count();
    std::memcpy(payload.data(), &now, sizeof now);
    mosquitto_publish(p, nullptr, topic.c_str(), static_cast<int>(size), payload.data(), 0, false);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  std::vector<double> l;
  {
    std::lock_guard lock(sub.mu);
    l = sub.latenciesUs;
  }
  std::sort(l.begin(), l.end());
  const auto pct = [&](double q) {
    return l.empty()
               ? 0.0
               : l[std::min(l.size() - 1, static_cast<size_t>(q * static_cast<double>(l.size())))];
  };
  std::printf("sent=%ld received=%zu p50_us=%.0f p99_us=%.0f max_us=%.0f\n", total, l.size(),
              pct(0.5), pct(0.99), l.empty() ? 0.0 : l.back());
  finish(p, s);
  return 0;
}

// One round of a client's network loop, waiting up to timeoutMs for its socket. Not
// mosquitto_loop(): that uses select(), which fails on descriptors past FD_SETSIZE (1024), and
// every libmosquitto client holds three (its socket and a socket pair), so past ~340 clients
// each call returned at once and the wait for a CONNACK spun for its whole deadline.
void pump(mosquitto* c, int timeoutMs) {
  pollfd p{mosquitto_socket(c),
           static_cast<short>(POLLIN | (mosquitto_want_write(c) ? POLLOUT : 0)), 0};
  if (p.fd >= 0 && poll(&p, 1, timeoutMs) > 0) {
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      mosquitto_loop_read(c, 1);
    }
    if (p.revents & POLLOUT) {
      mosquitto_loop_write(c, 1);
    }
  }
  mosquitto_loop_misc(c);
}

// Opens N connections (user names P0000, P0001, ... when --user-prefix is given), one after
// another, each waiting for its CONNACK (iotgwd checks few passwords at a time and answers
// "server unavailable" past that), and holds them for --hold seconds, driving their keepalive
// from one thread. Prints how many were accepted.
int idle(int argc, char** argv) {
  const Endpoint ep = parseEndpoint(argv[2]);
  const long n = arg(argc, argv, "--connections", 1000);
  const long hold = arg(argc, argv, "--hold", 10);
  const std::string userPrefix = sarg(argc, argv, "--user-prefix", "");
  const std::string password = sarg(argc, argv, "--password", "");
  std::vector<mosquitto*> clients;
  std::vector<int> connack(static_cast<size_t>(n), -1);
  long accepted = 0;
  for (long i = 0; i < n; ++i) {
    Endpoint e = ep;
    char name[64];
    std::snprintf(name, sizeof name, "%s%04ld", userPrefix.empty() ? "idle-" : userPrefix.c_str(),
                  i);
    if (!userPrefix.empty()) {
      e.user = name;
      e.password = password;
    }
    int* rc = &connack[static_cast<size_t>(i)];
    mosquitto* c = connect(e, name, rc);
    mosquitto_connect_callback_set(
        c, [](mosquitto*, void* user, int result) { *static_cast<int*>(user) = result; });
    const auto deadline = Clock::now() + std::chrono::seconds(5);
    while (*rc < 0 && Clock::now() < deadline) {
      pump(c, 10);
    }
    accepted += *rc == 0 ? 1 : 0;
    clients.push_back(c);
  }
  std::printf("connected=%ld\n", accepted);
  std::fflush(stdout);
  const auto until = Clock::now() + std::chrono::seconds(hold);
  while (Clock::now() < until) {
    for (auto* c : clients) {
      pump(c, 0);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  for (auto* c : clients) {
    mosquitto_disconnect(c);
    mosquitto_destroy(c);
  }
  return 0;
}

int publishOnly(int argc, char** argv) {
  const Endpoint ep = parseEndpoint(argv[2]);
  const long count = arg(argc, argv, "--count", 100000);
  const long size = arg(argc, argv, "--size", 64);
  const int qos = static_cast<int>(arg(argc, argv, "--qos", 1));
  const int window = static_cast<int>(arg(argc, argv, "--inflight", 20));
  const std::string topic = sarg(argc, argv, "--topic", "bench/t");
  PubState pub;
  mosquitto* p = publisher(ep, pub, window);
  std::vector<char> payload(static_cast<size_t>(size), 'x');
  const auto t0 = Clock::now();
  for (long i = 0; i < count; ++i) {
    while (pub.inflight.load(std::memory_order_relaxed) >= window) {
      std::this_thread::yield();
    }
    pub.inflight.fetch_add(1, std::memory_order_relaxed);
    if (const int rc = mosquitto_publish(p, nullptr, topic.c_str(), static_cast<int>(size),
                                         payload.data(), qos, false)) {
      die("publish", rc);
    }
  }
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  while (pub.inflight.load() > 0 && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  const long acked = count - pub.inflight.load();
  std::printf("sent=%ld acknowledged=%ld seconds=%.3f rate=%.0f\n", count, acked, secs,
              static_cast<double>(acked) / secs);
  mosquitto_disconnect(p);
  mosquitto_loop_stop(p, true);
  mosquitto_destroy(p);
  return 0;
}

int drain(int argc, char** argv) {
  const Endpoint ep = parseEndpoint(argv[2]);
  const long count = arg(argc, argv, "--count", 100000);
  const int qos = static_cast<int>(arg(argc, argv, "--qos", 1));
  const long wait = arg(argc, argv, "--wait", 120);
  const std::string topic = sarg(argc, argv, "--topic", "bench/t");
  SubState sub;
  mosquitto* s = subscriber(ep, sub, topic, qos);
  std::printf("subscribed=1\n");
  std::fflush(stdout);
  const auto deadline = Clock::now() + std::chrono::seconds(wait);
  while (static_cast<long>(sub.received.load()) < count && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const double secs = static_cast<double>(sub.lastNs.load() - sub.firstNs.load()) / 1e9;
  const auto got = sub.received.load();
  std::printf("received=%lu seconds=%.3f rate=%.0f\n", static_cast<unsigned long>(got), secs,
              secs > 0 ? static_cast<double>(got) / secs : 0.0);
  mosquitto_disconnect(s);
  mosquitto_loop_stop(s, true);
  mosquitto_destroy(s);
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fputs("usage: mqtt_load throughput|latency|idle ENDPOINT [ENDPOINT] [options]\n", stderr);
    return 2;
  }
  mosquitto_lib_init();
  const std::string mode = argv[1];
  if (mode == "throughput" && argc >= 4) {
    return throughput(argc, argv);
  }
  if (mode == "latency" && argc >= 4) {
    return latency(argc, argv);
  }
  if (mode == "idle") {
    return idle(argc, argv);
  }
  if (mode == "publish") {
    return publishOnly(argc, argv);
  }
  if (mode == "drain") {
    return drain(argc, argv);
  }
  std::fputs("mqtt_load: unknown mode\n", stderr);
  return 2;
}
