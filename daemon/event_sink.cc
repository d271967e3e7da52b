// SPDX-License-Identifier: GPL-3.0-or-later
#include "daemon/event_sink.h"

#include "daemon/event_catalog.h"

#include <sys/uio.h>
#include <syslog.h>
#include <unistd.h>

#include <cstdio>
#include <fmt/format.h>
#include <vector>

#include "iotgw/build_config.h"

#if IOTGW_WITH_SYSTEMD
#define SD_JOURNAL_SUPPRESS_LOCATION
#include <systemd/sd-journal.h>
#endif

namespace iotgw::daemon {

using policy::Event;

namespace {

// Control characters would let a value forge extra lines or fields in text logs.
std::string sanitize(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (const char c : v) {
    const auto u = static_cast<unsigned char>(c);
    out.push_back(u < 0x20 || u == 0x7f ? '?' : c);
  }
  return out;
}

template <typename Fn> void forEachField(const Event& e, Fn&& fn) {
  const auto& ti = policy::info(e.type);
  fn("IOTGW_EVENT", ti.name);
  fn("IOTGW_DEVICE", e.device);
  fn("IOTGW_PROVISION", e.provision.empty() ? std::string(ti.provision) : e.provision);
  fn("IOTGW_RULE", e.rule);
  fn("IOTGW_PEER", e.peer);
  fn("IOTGW_PROTOCOL", e.protocol);
  fn("IOTGW_ACTION", e.action);
}

#if IOTGW_WITH_SYSTEMD
class JournalBackend final : public EventBackend {
public:
  void write(const Event& e) override {
    const JournalEntry& j = journalEntry(e.type);
    std::vector<std::string> fields;
    fields.reserve(12);
    fields.push_back("MESSAGE=" + sanitize(e.message));
    fields.push_back(fmt::format("MESSAGE_ID={}", j.messageId));
    fields.push_back(fmt::format("PRIORITY={}", j.priority));
    fields.emplace_back("SYSLOG_IDENTIFIER=iotgwd");
    forEachField(e, [&](std::string_view key, std::string_view value) {
      if (!value.empty()) {
        fields.push_back(fmt::format("{}={}", key, value));
      }
    });
    std::vector<iovec> iov;
    iov.reserve(fields.size());
    for (auto& f : fields) {
      iov.push_back(iovec{f.data(), f.size()});
    }
    sd_journal_sendv(iov.data(), static_cast<int>(iov.size()));
  }
  [[nodiscard]] std::string_view name() const override { return "journal"; }
};
#endif

class SyslogBackend final : public EventBackend {
public:
  SyslogBackend() { ::openlog("iotgwd", LOG_PID | LOG_NDELAY, LOG_DAEMON); }
  ~SyslogBackend() override { ::closelog(); }
  SyslogBackend(const SyslogBackend&) = delete;
  SyslogBackend& operator=(const SyslogBackend&) = delete;

  void write(const Event& e) override {
    ::syslog(journalEntry(e.type).priority, "%s", formatEventLine(e).c_str());
  }
  [[nodiscard]] std::string_view name() const override { return "syslog"; }
};

class StderrBackend final : public EventBackend {
public:
  void write(const Event& e) override {
    // "<N>" lets systemd or a log collector reading stderr recover the priority.
    const std::string line =
        fmt::format("<{}>iotgwd: {}\n", journalEntry(e.type).priority, formatEventLine(e));
    [[maybe_unused]] const auto n = ::write(STDERR_FILENO, line.data(), line.size());
  }
  [[nodiscard]] std::string_view name() const override { return "stderr"; }
};

} // namespace

std::string formatEventLine(const Event& e) {
  std::string line = sanitize(e.message);
  line += fmt::format(" [MESSAGE_ID={}", journalEntry(e.type).messageId);
  forEachField(e, [&](std::string_view key, std::string_view value) {
    if (!value.empty()) {
      line += fmt::format(" {}={}", key, sanitize(value));
    }
  });
  line += "]";
  return line;
}

std::unique_ptr<EventBackend> makeJournalBackend() {
#if IOTGW_WITH_SYSTEMD
  return std::make_unique<JournalBackend>();
#else
  return makeSyslogBackend();
#endif
}

std::unique_ptr<EventBackend> makeSyslogBackend() { return std::make_unique<SyslogBackend>(); }

std::unique_ptr<EventBackend> makeStderrBackend() { return std::make_unique<StderrBackend>(); }

std::unique_ptr<EventBackend> makeBackend(EventTarget target) {
  switch (target) {
  case EventTarget::Journal:
    return makeJournalBackend();
  case EventTarget::Syslog:
    return makeSyslogBackend();
  case EventTarget::Stderr:
    return makeStderrBackend();
  case EventTarget::Auto:
    break;
  }
#if IOTGW_WITH_SYSTEMD
  if (::access("/run/systemd/journal/socket", W_OK) == 0) {
    return makeJournalBackend();
  }
#endif
  if (::access("/dev/log", W_OK) == 0) {
    return makeSyslogBackend();
  }
  return makeStderrBackend();
}

EventSink::EventSink(std::unique_ptr<EventBackend> backend, EventsConfig settings, Now now)
    : backend_(std::move(backend)), settings_(settings), now_(std::move(now)) {}

void EventSink::emit(Event e) {
  if (e.provision.empty()) {
    e.provision = std::string(policy::info(e.type).provision);
  }
  Key key{e.device, e.type};
  auto it = buckets_.find(key);
  if (it == buckets_.end()) {
    if (buckets_.size() >= kMaxKeys) {
      // Memory stays bounded whatever peers do: forget every budget and start over.
      buckets_.clear();
    }
    const double perSecond =
        static_cast<double>(settings_.burst) / static_cast<double>(settings_.interval.count());
    it = buckets_
             .emplace(key,
                      policy::TokenBucket(perSecond, static_cast<double>(settings_.burst), now_()))
             .first;
  }
  if (!it->second.take(1, now_())) {
    ++suppressedTotal_;
    if (suppressed_.size() < kMaxKeys || suppressed_.contains(key)) {
      ++suppressed_[key];
    } else {
      ++suppressed_[Key{"*", e.type}];
    }
    if (observer_) {
      observer_(e, false);
    }
    return;
  }
  ++emitted_;
  backend_->write(e);
  if (observer_) {
    observer_(e, true);
  }
}

void EventSink::flushSuppressed() {
  auto pending = std::move(suppressed_);
  suppressed_.clear();
  for (const auto& [key, count] : pending) {
    const auto& [device, type] = key;
    Event e;
    e.type = policy::EventType::EventsSuppressed;
    e.device = device;
    e.rule = std::string(policy::info(type).name);
    e.provision = std::string(policy::info(type).provision);
    e.message = fmt::format("suppressed {} {} event{}{} (limit {} per {} s)", count,
                            policy::info(type).name, count == 1 ? "" : "s",
                            device.empty() ? "" : " for device " + device, settings_.burst,
                            settings_.interval.count());
    ++emitted_;
    backend_->write(e); // summaries themselves are never suppressed
  }
}

} // namespace iotgw::daemon
