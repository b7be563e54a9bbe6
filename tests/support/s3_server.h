#pragma once

// A real S3-compatible server for tests: s3rver (npm), installed from tests/s3/package.json's
// lockfile by the S3ServerIsInstalled fixture, started on a loopback port with a scratch
// directory and one bucket, stopped (and the directory removed) at the end.

#include <memory>
#include <string>

#include "support/process.h"

namespace tenax::testing {

class S3Server {
 public:
  // Starts s3rver from `install_dir`/node_modules; port 0 picks a free one. Throws
  // std::runtime_error when it does not start within 30 s.
  S3Server(const std::string& install_dir, const std::string& bucket, int port = 0);
  ~S3Server();

  void stop();   // kills the server (the data directory stays)
  void start();  // starts it again on the same port and directory
  pid_t pid() const { return proc_ ? proc_->pid() : -1; }

  int port() const { return port_; }
  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }
  const std::string& bucket() const { return bucket_; }
  const std::string& directory() const { return dir_; }
  // The environment a client needs: endpoint, region and s3rver's fixed credentials.
  std::map<std::string, std::string> client_env() const;

 private:
  std::string install_dir_, bucket_, dir_;
  int port_;
  std::unique_ptr<Process> proc_;
};

}  // namespace tenax::testing
