#include "support/s3_server.h"

#include <csignal>
#include <regex>
#include <stdexcept>

namespace tenax::testing {

S3Server::S3Server(const std::string& python, const std::string& script,
                   const std::string& bucket, int port)
    : bucket_(bucket), port_(port) {
  proc_ = std::make_unique<Process>(std::vector<std::string>{python, script, "--port",
                                                             std::to_string(port_), bucket_},
                                    std::map<std::string, std::string>{});
  const std::regex listening(R"(listening on 127\.0\.0\.1:(\d+) key (\S+) secret (\S+))");
  for (int i = 0; i < 300; ++i) {
    std::smatch m;
    const std::string out = proc_->output();
    if (std::regex_search(out, m, listening)) {
      port_ = std::stoi(m[1]);
      key_id_ = m[2];
      secret_ = m[3];
      return;
    }
    if (proc_->wait(std::chrono::milliseconds(100)) >= 0) {
      throw std::runtime_error("the S3 server exited: " + proc_->output());
    }
  }
  const std::string out = proc_->output();
  stop();
  throw std::runtime_error("the S3 server did not start within 30 s: " + out);
}

S3Server::~S3Server() { stop(); }

void S3Server::stop() {
  if (proc_) {
    proc_->kill(SIGKILL);
    proc_->wait(std::chrono::seconds(10));
    proc_.reset();
  }
}

std::map<std::string, std::string> S3Server::client_env() const {
  return {{"AWS_ENDPOINT_URL", endpoint()},
          {"AWS_ACCESS_KEY_ID", key_id_},
          {"AWS_SECRET_ACCESS_KEY", secret_},
          {"AWS_REGION", "us-east-1"},
          {"AWS_SHARED_CREDENTIALS_FILE", "/dev/null"},
          {"AWS_CONFIG_FILE", "/dev/null"}};
}

}  // namespace tenax::testing
