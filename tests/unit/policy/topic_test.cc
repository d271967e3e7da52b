// SPDX-License-Identifier: GPL-3.0-or-later
// Topic names, filters and matching, with the examples of MQTT 3.1.1 / 5.0 §4.7.
#include <gtest/gtest.h>

#include "policy/topic.h"

using namespace iotgw::policy;

struct MatchCase {
  const char* filter;
  const char* topic;
  bool matches;
};

class TopicMatch : public testing::TestWithParam<MatchCase> {};

TEST_P(TopicMatch, FollowsSpecification) {
  const auto& c = GetParam();
  ASSERT_FALSE(validateTopicFilter(c.filter)) << c.filter;
  ASSERT_FALSE(validateTopicName(c.topic)) << c.topic;
  EXPECT_EQ(topicMatches(c.filter, c.topic), c.matches) << c.filter << " vs " << c.topic;
}

INSTANTIATE_TEST_SUITE_P(
    Spec, TopicMatch,
    testing::Values(
        // §4.7.1.2 multi-level wildcard
        MatchCase{"sport/tennis/player1/#", "sport/tennis/player1", true},
        MatchCase{"sport/tennis/player1/#", "sport/tennis/player1/ranking", true},
        MatchCase{"sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true},
        MatchCase{"sport/#", "sport", true}, MatchCase{"#", "sport/tennis", true},
        MatchCase{"#", "/", true},
        // §4.7.1.3 single-level wildcard
        MatchCase{"sport/tennis/+", "sport/tennis/player1", true},
        MatchCase{"sport/tennis/+", "sport/tennis/player2", true},
        MatchCase{"sport/tennis/+", "sport/tennis/player1/ranking", false},
        MatchCase{"sport/+", "sport", false}, MatchCase{"sport/+", "sport/", true},
        MatchCase{"+/+", "/finance", true}, MatchCase{"/+", "/finance", true},
        MatchCase{"+", "/finance", false}, MatchCase{"+/tennis/#", "sport/tennis/x", true},
        // §4.7.2 topics beginning with $
        MatchCase{"#", "$SYS/broker/load", false},
        MatchCase{"+/monitor/Clients", "$SYS/monitor/Clients", false},
        MatchCase{"$SYS/#", "$SYS/monitor/Clients", true},
        MatchCase{"$SYS/monitor/+", "$SYS/monitor/Clients", true},
        // case sensitivity and empty levels (§4.7.3)
        MatchCase{"ACCOUNTS", "accounts", false}, MatchCase{"a//b", "a//b", true},
        MatchCase{"a/+/b", "a//b", true}, MatchCase{"a/b", "a/b/", false},
        MatchCase{"/", "/", true}, MatchCase{"a b", "a b", true}));

TEST(TopicValidation, RejectsInvalidFilters) {
  EXPECT_EQ(validateTopicFilter("sport/tennis#"), TopicError::MisplacedHash);
  EXPECT_EQ(validateTopicFilter("sport/tennis/#/ranking"), TopicError::MisplacedHash);
  EXPECT_EQ(validateTopicFilter("sport+"), TopicError::MisplacedPlus);
  EXPECT_EQ(validateTopicFilter("sport/+x/a"), TopicError::MisplacedPlus);
  EXPECT_EQ(validateTopicFilter(""), TopicError::Empty);
  EXPECT_EQ(validateTopicFilter(std::string("a\0b", 3)), TopicError::NulCharacter);
  EXPECT_EQ(validateTopicFilter("\xC0\xAF"), TopicError::BadUtf8);     // overlong '/'
  EXPECT_EQ(validateTopicFilter("\xED\xA0\x80"), TopicError::BadUtf8); // surrogate U+D800
  EXPECT_EQ(validateTopicFilter(std::string(65536, 'a')), TopicError::TooLong);
  EXPECT_FALSE(validateTopicFilter("+/+/#"));
  EXPECT_FALSE(validateTopicFilter("caf\xC3\xA9/+"));
}

TEST(TopicValidation, NamesHaveNoWildcards) {
  EXPECT_EQ(validateTopicName("a/+"), TopicError::WildcardInName);
  EXPECT_EQ(validateTopicName("a/#"), TopicError::WildcardInName);
  EXPECT_EQ(validateTopicName("a+b"), TopicError::WildcardInName);
  // MQTT 5 §1.5.4: control characters and non-characters may be treated as malformed.
  EXPECT_EQ(validateTopicName("a/\x07"
                              "b"),
            TopicError::ControlCharacter);
  EXPECT_EQ(validateTopicName("a/\x7f"), TopicError::ControlCharacter);
  EXPECT_EQ(validateTopicName("a/\xc2\x85"), TopicError::ControlCharacter);         // U+0085
  EXPECT_EQ(validateTopicName("a/\xef\xbf\xbe"), TopicError::ControlCharacter);     // U+FFFE
  EXPECT_EQ(validateTopicName("a/\xef\xb7\x90"), TopicError::ControlCharacter);     // U+FDD0
  EXPECT_EQ(validateTopicName("a/\xf4\x8f\xbf\xbf"), TopicError::ControlCharacter); // U+10FFFF
  EXPECT_EQ(validateTopicFilter("a/\x1f/#"), TopicError::ControlCharacter);
  EXPECT_FALSE(validateTopicName("caf\xc3\xa9/\xc2\xa0/\xef\xbf\xbd")); // é, NBSP, U+FFFD
  EXPECT_EQ(clause(TopicError::ControlCharacter), "MQTT-1.5.4");
  EXPECT_FALSE(validateTopicName("$SYS/x"));
  EXPECT_EQ(clause(TopicError::WildcardInName), "MQTT-3.3.2-2");
}

TEST(TopicPattern, SubstitutesWholeLevels) {
  EXPECT_EQ(substitutePattern("devices/%c/state", {"dev", "thermo-01", "u"}),
            "devices/thermo-01/state");
  EXPECT_EQ(substitutePattern("users/%u/#", {"dev", "c", "alice"}), "users/alice/#");
  EXPECT_EQ(substitutePattern("%c", {"dev", "x", "y"}), "x");
  EXPECT_EQ(substitutePattern("devices/%d/#", {"plug-7", "", ""}), "devices/plug-7/#");
  EXPECT_FALSE(validateTopicPattern("devices/%d/%u"));
  EXPECT_TRUE(patternUses("a/%c/b", "%c"));
  EXPECT_FALSE(patternUses("a/%d/b", "%c"));
  EXPECT_FALSE(validateTopicPattern("devices/%c/#"));
  EXPECT_EQ(validateTopicPattern("devices/x%c/#"), TopicError::BadSubstitution);
  EXPECT_EQ(validateTopicPattern("devices/%x"), TopicError::BadSubstitution);
}

TEST(TopicPattern, RefusesValuesThatWouldWidenTheRule) {
  EXPECT_FALSE(substitutePattern("devices/%c/state", {"dev", "a/b", "u"}));
  EXPECT_FALSE(substitutePattern("devices/%c/state", {"dev", "#", "u"}));
  EXPECT_FALSE(substitutePattern("devices/%c/state", {"dev", "+", "u"}));
  EXPECT_FALSE(substitutePattern("devices/%c/state", {"dev", "", "u"}));
  EXPECT_FALSE(substitutePattern("%u/x", {"dev", "c", "$SYS"}));
  EXPECT_FALSE(substitutePattern("users/%u", {"dev", "c", ""}));
  // A pattern without substitutions is unaffected by unsafe values.
  EXPECT_EQ(substitutePattern("fixed/topic", {"dev", "a/b", ""}), "fixed/topic");
}

struct CoverCase {
  const char* allowed;
  const char* requested;
  bool covers;
};

class FilterCovers : public testing::TestWithParam<CoverCase> {};

TEST_P(FilterCovers, IsSubsetRelation) {
  const auto& c = GetParam();
  EXPECT_EQ(filterCovers(c.allowed, c.requested), c.covers) << c.allowed << " ⊇ " << c.requested;
}

INSTANTIATE_TEST_SUITE_P(
    Acl, FilterCovers,
    testing::Values(CoverCase{"a/#", "a/#", true}, CoverCase{"a/#", "a/b/+", true},
                    CoverCase{"a/#", "a", true}, CoverCase{"a/+", "a/b", true},
                    CoverCase{"a/+", "a/+", true}, CoverCase{"a/+", "a/#", false},
                    CoverCase{"a/b", "a/+", false}, CoverCase{"a/+", "a/b/c", false},
                    CoverCase{"a/b", "a", false}, CoverCase{"#", "$SYS/#", false},
                    CoverCase{"+/x", "$SYS/x", false}, CoverCase{"$SYS/#", "$SYS/a", true},
                    CoverCase{"#", "anything/+/#", true}, CoverCase{"a/+/c", "a/+/c", true},
                    CoverCase{"a/+/c", "a/b/#", false}));
