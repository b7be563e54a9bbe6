// The checkpoint layer's launch edge: its options as the environment asks for them.

#include <fstream>
#include <map>
#include <string>

#include "tenax/checkpoint/engine.h"
#include "tenax/core/config.h"
#include "tenax/core/fault_injection.h"
#include "tenax/store/launch.h"

namespace tenax {
namespace {

// [profile] section of an AWS credentials file: key = value lines.
std::map<std::string, std::string> read_profile(const std::string& path, const std::string& profile) {
  std::map<std::string, std::string> out;
  std::ifstream in(path);
  std::string line, section;
  auto trim = [](std::string s) {
    s.erase(0, s.find_first_not_of(" \t\r"));
    s.erase(s.find_last_not_of(" \t\r") + 1);
    return s;
  };
  while (std::getline(in, line)) {
    line = trim(line);
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line.front() == '[' && line.back() == ']') {
      section = trim(line.substr(1, line.size() - 2));
      continue;
    }
    const size_t eq = line.find('=');
    if (section == profile && eq != std::string::npos) {
      out[trim(line.substr(0, eq))] = trim(line.substr(eq + 1));
    }
  }
  return out;
}

}  // namespace

S3Options S3Options::from_environment() { return from_environment(S3Options{}); }

S3Options S3Options::from_environment(S3Options o) {
  const AwsEnvironment& aws = settings().aws;
  if (o.region.empty()) o.region = aws.region;
  if (o.endpoint.empty()) o.endpoint = aws.endpoint;
  if (o.injected_failures < 0) {
    o.injected_failures = FaultInjector::from_env(launch_info().rank).s3_failures();
  }
  if (o.access_key.empty()) {
    o.access_key = aws.access_key;
    o.secret_key = aws.secret_key;
    o.session_token = aws.session_token;
  }
  if (o.access_key.empty()) {
    auto p = read_profile(aws.credentials_file, aws.profile);
    o.access_key = p["aws_access_key_id"];
    o.secret_key = p["aws_secret_access_key"];
    o.session_token = p["aws_session_token"];
  }
  return o;
}

CheckpointOptions CheckpointOptions::from_environment() {
  CheckpointOptions o;
  o.timeout = settings().timeout;
  o.s3 = S3Options::from_environment();
  return o;
}

}  // namespace tenax
