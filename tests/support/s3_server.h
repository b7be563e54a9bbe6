#pragma once

// A real S3-compatible server for tests: moto's threaded server (tests/s3/moto_s3_server.py,
// run by the project's Python environment), started on a free loopback port with one bucket and
// signature checking on, and killed at the end.

#include <map>
#include <memory>
#include <string>

#include "support/process.h"

namespace tenax::testing {

class S3Server {
 public:
  // Starts `script` with `python`; port 0 picks a free one. Throws std::runtime_error when it
  // does not start within 30 s.
  S3Server(const std::string& python, const std::string& script, const std::string& bucket,
           int port = 0);
  ~S3Server();

  pid_t pid() const { return proc_ ? proc_->pid() : -1; }
  int port() const { return port_; }
  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }
  const std::string& bucket() const { return bucket_; }
  // The environment a client needs: endpoint, region and the server's access key.
  std::map<std::string, std::string> client_env() const;

 private:
  void stop();

  std::string bucket_, key_id_, secret_;
  int port_;
  std::unique_ptr<Process> proc_;
};

}  // namespace tenax::testing
