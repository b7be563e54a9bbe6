// Force-included into Gloo's TCP pair (cmake/TenaxGloo.cmake): its writev() on a socket becomes
// sendmsg(..., MSG_NOSIGNAL), so a write to a peer that is gone fails with EPIPE instead of
// raising SIGPIPE. The program's SIGPIPE disposition is its own; tenax never changes it.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

namespace tenax_gloo_io {

inline ssize_t writev_nosignal(int fd, const struct iovec* iov, int count) {
  struct msghdr msg {};
  msg.msg_iov = const_cast<struct iovec*>(iov);
  msg.msg_iovlen = static_cast<size_t>(count);
  return ::sendmsg(fd, &msg, MSG_NOSIGNAL);
}

}  // namespace tenax_gloo_io

#define writev(fd, iov, count) ::tenax_gloo_io::writev_nosignal(fd, iov, count)
