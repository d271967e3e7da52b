// SPDX-License-Identifier: GPL-3.0-or-later
// The firewall service over a stand-in for the kernel's nftables (an Applier that records each
// transaction and fails when told to), with the real notification monitor, interface list and
// report listener in a network namespace of the test's own. What it checks is the service's
// part: which transaction goes out, that a failed one changes nothing, and that a quarantine is
// on disk before it is applied.
#include <gtest/gtest.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "daemon/firewall_service.h"
#include "policy/policy_parser.h"

using namespace iotgw;
using namespace iotgw::daemon;

namespace {

struct Kernel {
  std::vector<std::vector<firewall::Ruleset>> replaced;     // each whole-table transaction
  std::vector<std::vector<firewall::ElementDelta>> updated; // each element batch, per table
  bool failReplace = false;
  bool failUpdate = false;
  uint32_t generation = 1;
  std::map<std::string, firewall::CounterValue> counters;
};

class FakeApplier final : public firewall::Applier {
public:
  explicit FakeApplier(Kernel& k) : k_(k) {}
  std::expected<firewall::BatchStats, std::string>
  replace(std::span<const firewall::Ruleset> tables) override {
    if (k_.failReplace) {
      return std::unexpected("Operation not supported");
    }
    k_.replaced.emplace_back(tables.begin(), tables.end());
    ++k_.generation;
    return firewall::BatchStats{tables.size(), 0};
  }
  std::expected<firewall::BatchStats, std::string>
  update(std::span<const firewall::TableUpdate> updates) override {
    if (k_.failUpdate) {
      return std::unexpected("No such file or directory");
    }
    auto& batch = k_.updated.emplace_back();
    for (const auto& u : updates) {
      batch.push_back(*u.delta);
    }
    ++k_.generation;
    return firewall::BatchStats{updates.size(), 0};
  }
  std::expected<void, std::string> remove() override { return {}; }
  std::expected<std::map<std::string, firewall::CounterValue>, std::string> counters() override {
    return k_.counters;
  }
  std::expected<uint32_t, std::string> generation() override { return k_.generation; }
  uint32_t portId() const override { return 0; }

private:
  Kernel& k_;
};

class Recorder final : public EventBackend {
public:
  explicit Recorder(std::vector<policy::Event>& out) : out_(out) {}
  void write(const policy::Event& e) override { out_.push_back(e); }
  std::string_view name() const override { return "test"; }

private:
  std::vector<policy::Event>& out_;
};

std::string device(const std::string& id, const std::string& mac, const std::string& address) {
  return "[device]\nid = \"" + id + "\"\nmac = \"" + mac + "\"\naddresses = [\"" + address +
         "\"]\n[network]\noutbound = [\"203.0.113.10:8883/tcp\"]\n";
}

std::shared_ptr<const policy::PolicySet> policies(const std::vector<std::string>& docs) {
  std::vector<policy::DevicePolicy> v;
  for (const auto& d : docs) {
    auto p = policy::parseDevicePolicy(d, "test.toml");
    EXPECT_TRUE(p) << p.error().front().str();
    v.push_back(std::move(*p));
  }
  return *policy::PolicySet::build(std::move(v));
}

// Elements a batch adds to (or removes from) `set`, over its tables.
size_t added(const std::vector<firewall::ElementDelta>& batch, const std::string& set) {
  size_t n = 0;
  for (const auto& d : batch) {
    n += d.add.contains(set) ? d.add.at(set).size() : 0;
  }
  return n;
}
size_t removed(const std::vector<firewall::ElementDelta>& batch, const std::string& set) {
  size_t n = 0;
  for (const auto& d : batch) {
    n += d.remove.contains(set) ? d.remove.at(set).size() : 0;
  }
  return n;
}

size_t elements(const firewall::Ruleset& rs, std::string_view set) {
  const firewall::Set* s = rs.findSet(set);
  return s != nullptr ? s->elements.size() : 0;
}

class FirewallServiceTest : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    // The monitor, the interface list and the report listener are the kernel's own: in a
    // network namespace of this process (a test binary of its own), nothing the host runs can
    // see or disturb them.
    isolated_ = ::geteuid() == 0 && ::unshare(CLONE_NEWNET) == 0;
  }

  void SetUp() override {
    if (!isolated_) {
      GTEST_SKIP() << "needs root for a network namespace of its own";
    }
    auto r = io::Reactor::create();
    ASSERT_TRUE(r);
    reactor_ = std::move(*r);
    state_ = std::filesystem::temp_directory_path() /
             ("iotgw-fw-" + std::to_string(::getpid()) + "-" +
              ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(state_);
    std::filesystem::create_directories(state_);
    config_ = builtinDefault();
    config_.stateDirectory = state_;
    config_.firewall.enabled = true;
    sink_ = std::make_unique<EventSink>(std::make_unique<Recorder>(events_), EventsConfig{});
    service_ = std::make_unique<FirewallService>(
        *reactor_, *sink_, [this](const policy::DeviceId& id) { closed_.push_back(id.str()); },
        [this]() -> std::expected<std::unique_ptr<firewall::Applier>, std::string> {
          return std::make_unique<FakeApplier>(kernel_);
        });
    one_ = policies({device("thermo-01", "02:00:00:00:00:10", "192.168.50.10")});
    two_ = policies({device("thermo-01", "02:00:00:00:00:10", "192.168.50.10"),
                     device("plug-02", "02:00:00:00:00:11", "192.168.50.11")});
  }

  void TearDown() override {
    service_.reset();
    std::filesystem::remove_all(state_);
  }

  [[nodiscard]] bool event(policy::EventType type, std::string_view action) const {
    return std::ranges::any_of(
        events_, [&](const policy::Event& e) { return e.type == type && e.action == action; });
  }

  static inline bool isolated_ = false;
  std::unique_ptr<io::Reactor> reactor_;
  std::filesystem::path state_;
  Config config_;
  Kernel kernel_;
  std::vector<policy::Event> events_;
  std::vector<std::string> closed_;
  std::unique_ptr<EventSink> sink_;
  std::unique_ptr<FirewallService> service_;
  std::shared_ptr<const policy::PolicySet> one_, two_;
};

TEST_F(FirewallServiceTest, StartInstallsBothTablesInOneTransaction) {
  ASSERT_TRUE(service_->start(config_, one_));
  ASSERT_EQ(kernel_.replaced.size(), 1u);
  const auto& tables = kernel_.replaced[0];
  ASSERT_EQ(tables.size(), 2u);
  EXPECT_EQ(tables[0].family, firewall::Family::Inet);
  EXPECT_EQ(tables[1].family, firewall::Family::Bridge);
  EXPECT_EQ(elements(tables[0], "bound4"), 1u);
  EXPECT_EQ(elements(tables[0], "quarantine4"), 0u);
}

TEST_F(FirewallServiceTest, ADeviceAddedIsAnElementBatchNotNewTables) {
  ASSERT_TRUE(service_->start(config_, one_));
  ASSERT_TRUE(service_->apply(config_, two_));
  EXPECT_EQ(kernel_.replaced.size(), 1u);
  ASSERT_EQ(kernel_.updated.size(), 1u);
  EXPECT_EQ(added(kernel_.updated[0], "bound4"), 2u); // one in each table
  // The same snapshot again: nothing to send at all.
  const size_t batches = kernel_.updated.size();
  ASSERT_TRUE(service_->apply(config_, two_));
  EXPECT_EQ(kernel_.updated.size(), batches);
  EXPECT_EQ(kernel_.replaced.size(), 1u);
}

TEST_F(FirewallServiceTest, AFailedElementBatchFallsBackToWholeTables) {
  ASSERT_TRUE(service_->start(config_, one_));
  kernel_.failUpdate = true;
  ASSERT_TRUE(service_->apply(config_, two_));
  ASSERT_EQ(kernel_.replaced.size(), 2u);
  EXPECT_EQ(elements(kernel_.replaced[1][0], "bound4"), 2u);
}

TEST_F(FirewallServiceTest, ARefusedTransactionChangesNothing) {
  ASSERT_TRUE(service_->start(config_, one_));
  kernel_.failUpdate = true;
  kernel_.failReplace = true;
  const auto r = service_->apply(config_, two_);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().find("Operation not supported"), std::string::npos) << r.error();
  // What the service believes is in force is still the first snapshot: applying it again sends
  // nothing, and the second one is sent whole once the kernel takes it.
  kernel_.failUpdate = false;
  kernel_.failReplace = false;
  ASSERT_TRUE(service_->apply(config_, one_));
  EXPECT_TRUE(kernel_.updated.empty());
  EXPECT_EQ(kernel_.replaced.size(), 1u);
  ASSERT_TRUE(service_->apply(config_, two_));
  ASSERT_EQ(kernel_.updated.size(), 1u);
  EXPECT_EQ(added(kernel_.updated[0], "bound4"), 2u); // one in each table
}

TEST_F(FirewallServiceTest, AQuarantineIsOnDiskBeforeItIsAppliedAndSurvivesAFailure) {
  ASSERT_TRUE(service_->start(config_, one_));
  const auto id = *policy::DeviceId::parse("thermo-01");
  kernel_.failUpdate = true;
  kernel_.failReplace = true;
  EXPECT_FALSE(service_->quarantine(id, "mqtt.publish", "test"));
  // Not in force in the kernel, but marked (a restart applies it) and its sessions are closed.
  EXPECT_TRUE(std::filesystem::exists(state_ / "quarantine" / "thermo-01"));
  EXPECT_TRUE(service_->quarantined(id));
  EXPECT_EQ(closed_, std::vector<std::string>{"thermo-01"});
  EXPECT_TRUE(event(policy::EventType::DeviceQuarantined, "quarantine-failed"));
  // Once the kernel takes transactions again, the next apply puts it in force.
  kernel_.failUpdate = false;
  kernel_.failReplace = false;
  ASSERT_TRUE(service_->apply(config_, one_));
  ASSERT_FALSE(kernel_.updated.empty());
  EXPECT_EQ(added(kernel_.updated.back(), "quarantine4"), 1u);
}

TEST_F(FirewallServiceTest, AReleaseTheKernelRefusesKeepsTheDeviceQuarantined) {
  ASSERT_TRUE(service_->start(config_, one_));
  const auto id = *policy::DeviceId::parse("thermo-01");
  ASSERT_TRUE(service_->quarantine(id, "mqtt.publish", "test"));
  EXPECT_EQ(added(kernel_.updated.back(), "quarantine4"), 1u);
  kernel_.failUpdate = true;
  kernel_.failReplace = true;
  EXPECT_FALSE(service_->release(id));
  EXPECT_TRUE(service_->quarantined(id));
  EXPECT_TRUE(std::filesystem::exists(state_ / "quarantine" / "thermo-01")); // still after restart
  EXPECT_FALSE(event(policy::EventType::DeviceReleased, "release"));
  kernel_.failUpdate = false;
  kernel_.failReplace = false;
  ASSERT_TRUE(service_->release(id));
  EXPECT_FALSE(service_->quarantined(id));
  EXPECT_FALSE(std::filesystem::exists(state_ / "quarantine" / "thermo-01"));
  EXPECT_EQ(removed(kernel_.updated.back(), "quarantine4"), 1u);
  EXPECT_TRUE(event(policy::EventType::DeviceReleased, "release"));
}

TEST_F(FirewallServiceTest, AQuarantineMarkWrittenByHandTakesEffectOnReload) {
  ASSERT_TRUE(service_->start(config_, one_));
  std::filesystem::create_directories(state_ / "quarantine");
  std::ofstream(state_ / "quarantine" / "thermo-01") << "rule = \"administrator\"\n";
  ASSERT_TRUE(service_->apply(config_, one_));
  EXPECT_TRUE(service_->quarantined(*policy::DeviceId::parse("thermo-01")));
  EXPECT_EQ(added(kernel_.updated.back(), "quarantine4"), 1u);
  EXPECT_EQ(closed_, std::vector<std::string>{"thermo-01"});
  EXPECT_TRUE(event(policy::EventType::DeviceQuarantined, "quarantine"));
}

TEST_F(FirewallServiceTest, CountersAreReadPerDevice) {
  ASSERT_TRUE(service_->start(config_, one_));
  kernel_.counters["tx-thermo-01"] = {10, 1000};
  kernel_.counters["rx-thermo-01"] = {5, 400};
  kernel_.counters["tx-gone"] = {1, 1}; // a counter of no enrolled device's is not one
  service_->sampleTraffic();
  const auto& read = service_->traffic().counters();
  ASSERT_TRUE(read.contains("thermo-01"));
  EXPECT_EQ(read.at("thermo-01").tx.bytes, 1000u);
  EXPECT_EQ(read.at("thermo-01").rx.packets, 5u);
}

} // namespace
