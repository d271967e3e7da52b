// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace iotgw::policy {

// One problem found in a configuration or policy document, with the position that a text editor
// shows (1-based line and column).
struct Diagnostic {
  std::string source; // file name, or a label such as "dbus:thermostat-01"
  uint32_t line = 0;
  uint32_t column = 0;
  std::string message;

  // "file:line:column: message"
  [[nodiscard]] std::string str() const;
  bool operator==(const Diagnostic&) const = default;
};

using Diagnostics = std::vector<Diagnostic>;

// Orders diagnostics by line and column, keeping the order of those at the same position.
void sortByPosition(Diagnostics& diags);

} // namespace iotgw::policy
