// SPDX-License-Identifier: GPL-3.0-or-later
// Sends UDP datagrams as fast as one core can for a fixed time (sendmmsg, 64 per call), for the
// forwarded-packet-rate benchmark. The rate is measured where the packets come out, not here.
//
//   udp_blast ADDRESS PORT SECONDS [PAYLOAD_BYTES]   prints sent=<datagrams>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fputs("usage: udp_blast ADDRESS PORT SECONDS [PAYLOAD_BYTES]\n", stderr);
    return 2;
  }
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<uint16_t>(std::atoi(argv[2])));
  if (inet_pton(AF_INET, argv[1], &to.sin_addr) != 1) {
    std::fprintf(stderr, "udp_blast: bad address %s\n", argv[1]);
    return 2;
  }
  const double seconds = std::atof(argv[3]);
  const size_t size = argc > 4 ? std::strtoul(argv[4], nullptr, 10) : 18; // 64-byte frames
  const int fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) != 0) {
    std::fprintf(stderr, "udp_blast: %s\n", std::strerror(errno));
    return 1;
  }
  constexpr size_t kBatch = 64;
  std::vector<char> payload(size, 'x');
  std::array<iovec, kBatch> iov{};
  std::array<mmsghdr, kBatch> msgs{};
  for (size_t i = 0; i < kBatch; ++i) {
    iov[i] = {payload.data(), payload.size()};
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  using Clock = std::chrono::steady_clock;
  const auto end = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(seconds));
  unsigned long long sent = 0;
  while (Clock::now() < end) {
    const int n = sendmmsg(fd, msgs.data(), kBatch, 0);
    if (n > 0) {
      sent += static_cast<unsigned>(n);
    } else if (errno != ENOBUFS && errno != EAGAIN && errno != EPERM) {
      std::fprintf(stderr, "udp_blast: sendmmsg: %s\n", std::strerror(errno));
      return 1;
    }
  }
  std::printf("sent=%llu\n", sent);
  return 0;
}
