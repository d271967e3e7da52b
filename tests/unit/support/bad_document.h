// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once
// A document a parser must reject, and where its first error must point.

#include <gtest/gtest.h>

#include <expected>
#include <ostream>
#include <string>

#include "policy/diagnostic.h"

namespace iotgw::test {

struct BadDocument {
  const char* name;
  std::string text;
  uint32_t line;
  uint32_t column;
  const char* messagePart;
};

inline void PrintTo(const BadDocument& d, std::ostream* os) { *os << d.name; }

// Checks that `result` failed and that its first diagnostic names `source` at d's position.
template <typename T>
void expectRejected(const BadDocument& d, const std::expected<T, policy::Diagnostics>& result,
                    const std::string& source) {
  ASSERT_FALSE(result.has_value()) << d.name << " was accepted";
  ASSERT_FALSE(result.error().empty()) << d.name;
  const policy::Diagnostic& first = result.error().front();
  EXPECT_EQ(first.source, source);
  EXPECT_EQ(first.line, d.line) << first.str();
  EXPECT_EQ(first.column, d.column) << first.str();
  EXPECT_NE(first.message.find(d.messagePart), std::string::npos) << first.str();
}

} // namespace iotgw::test
