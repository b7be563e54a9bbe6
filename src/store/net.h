#pragma once

// Blocking TCP helpers with deadlines, for the store and the launcher. Internal.

#include <chrono>
#include <cstddef>
#include <string>

namespace tenax::detail::net {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

inline Deadline deadline_after(std::chrono::milliseconds d) { return Clock::now() + d; }

// Connects to host:port, retrying refused connections until `deadline`. Returns the socket.
// Throws StoreError (naming host:port) when the deadline passes.
int connect_tcp(const std::string& host, int port, Deadline deadline);

// Listens on host:port (0 = any free port). Writes the bound port to *bound_port.
// Throws StoreError when it cannot bind.
int listen_tcp(const std::string& host, int port, int* bound_port);

// Sends or receives exactly `n` bytes before `deadline`. Returns false when the peer closed the
// connection (or reset it); throws StoreError(`what` ...) on timeout.
bool send_all(int fd, const void* data, size_t n, Deadline deadline, const std::string& what);
bool recv_all(int fd, void* data, size_t n, Deadline deadline, const std::string& what);

// Sends one frame (u32 length + body) / receives one. recv_frame returns false on EOF.
bool send_frame(int fd, const std::string& body, Deadline deadline, const std::string& what);
bool recv_frame(int fd, std::string* body, Deadline deadline, const std::string& what);

// An address of this host that other hosts can reach: `configured` if not empty, else the first
// non-loopback IPv4 address of the host name, else 127.0.0.1.
std::string reachable_host_address(const std::string& configured);

}  // namespace tenax::detail::net
