#include "support/s3_server.h"

#include <csignal>
#include <filesystem>
#include <regex>
#include <stdexcept>
#include <thread>

namespace tenax::testing {

S3Server::S3Server(const std::string& install_dir, const std::string& bucket, int port)
    : install_dir_(install_dir), bucket_(bucket), port_(port) {
  char tmpl[] = "/tmp/tenax-s3-XXXXXX";
  dir_ = mkdtemp(tmpl);
  start();
}

S3Server::~S3Server() {
  stop();
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

void S3Server::start() {
  const std::string bin = install_dir_ + "/node_modules/.bin/s3rver";
  proc_ = std::make_unique<Process>(
      std::vector<std::string>{bin, "-d", dir_, "-a", "127.0.0.1", "-p", std::to_string(port_),
                               "--configure-bucket", bucket_},
      // s3rver's continuation tokens use a cipher OpenSSL 3 keeps in its legacy provider.
      std::map<std::string, std::string>{{"NODE_OPTIONS", "--openssl-legacy-provider"}});
  const std::regex listening(R"(listening on 127\.0\.0\.1:(\d+))");
  for (int i = 0; i < 300; ++i) {
    std::smatch m;
    const std::string out = proc_->output();
    if (std::regex_search(out, m, listening)) {
      port_ = std::stoi(m[1]);
      return;
    }
    if (proc_->wait(std::chrono::milliseconds(100)) >= 0) {
      throw std::runtime_error("s3rver exited: " + proc_->output());
    }
  }
  throw std::runtime_error("s3rver did not start within 30 s: " + proc_->output());
}

void S3Server::stop() {
  if (proc_) {
    proc_->kill(SIGKILL);
    proc_->wait(std::chrono::seconds(10));
    proc_.reset();
  }
}

std::map<std::string, std::string> S3Server::client_env() const {
  return {{"AWS_ENDPOINT_URL", endpoint()},
          {"AWS_ACCESS_KEY_ID", "S3RVER"},
          {"AWS_SECRET_ACCESS_KEY", "S3RVER"},
          {"AWS_REGION", "us-east-1"},
          {"AWS_SHARED_CREDENTIALS_FILE", "/dev/null"},
          {"AWS_CONFIG_FILE", "/dev/null"}};
}

}  // namespace tenax::testing
