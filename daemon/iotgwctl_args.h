// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// iotgwctl's command line, parsed and checked before anything talks to the bus: options anywhere
// (`iotgwctl status --json`), `--opt value` or `--opt=value` (getopt_long), and an error that
// names the one thing wrong — an unknown command or option, a missing or extra argument, an
// option the command does not take, a malformed device id or count — rather than the whole help.

#include <expected>
#include <optional>
#include <string>
#include <vector>

namespace iotgw::ctl {

struct Invocation {
  bool help = false;    // --help: print the usage, nothing else
  bool version = false; // --version
  bool json = false;    // --json: read commands print JSON
  std::string command;
  std::vector<std::string> operands; // ID, FILE, as the command takes them
  std::optional<std::string> reason; // quarantine --reason TEXT
  std::optional<unsigned> count;     // watch --count N
};

// argv as main() has it (argv[0] the program). Uses getopt_long: not reentrant, main thread only.
[[nodiscard]] std::expected<Invocation, std::string> parseCommandLine(int argc, char** argv);

extern const char* const kUsage;

} // namespace iotgw::ctl
