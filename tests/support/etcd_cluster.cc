#include "support/etcd_cluster.h"

#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <thread>

namespace tenax::testing {

namespace {
const char* kEtcd = "/usr/bin/etcd";
const char* kEtcdctl = "/usr/bin/etcdctl";
}  // namespace

bool EtcdCluster::available() {
  return ::access(kEtcd, X_OK) == 0 && ::access(kEtcdctl, X_OK) == 0;
}

std::vector<std::string> EtcdCluster::member_command(const std::string& name, const std::string& ip,
                                                     int client_port, int peer_port,
                                                     const std::string& initial_cluster,
                                                     const std::string& dir) {
  const std::string client = "http://" + ip + ":" + std::to_string(client_port);
  const std::string peer = "http://" + ip + ":" + std::to_string(peer_port);
  return {kEtcd,
          "--name",
          name,
          "--data-dir",
          dir,
          "--listen-client-urls",
          client,
          "--advertise-client-urls",
          client,
          "--listen-peer-urls",
          peer,
          "--initial-advertise-peer-urls",
          peer,
          "--initial-cluster",
          initial_cluster,
          "--initial-cluster-state",
          "new",
          "--initial-cluster-token",
          "tenax-test",
          "--log-level",
          "warn",
          "--logger",
          "zap"};
}

EtcdCluster::EtcdCluster(int n, bool tls) {
  // Data in memory where there is a tmpfs: the tests are about the protocol, not the disk, and
  // a loaded machine's fsyncs would otherwise stall the members for seconds.
  char tmpl[] = "/dev/shm/tenax-etcd-XXXXXX";
  root_ = mkdtemp(tmpl);
  if (tls) make_certificates();
  for (int i = 0; i < n; ++i) {
    Member m;
    m.name = "m" + std::to_string(i);
    m.dir = root_ + "/" + m.name;
    m.client_port = free_port();
    m.peer_port = free_port();
    members_.push_back(std::move(m));
  }
  for (int i = 0; i < n; ++i) start(i);
  wait_for_leader();
}

EtcdCluster::~EtcdCluster() {
  for (int i = 0; i < size(); ++i) kill(i);
  std::error_code ec;
  std::filesystem::remove_all(root_, ec);
}

std::string EtcdCluster::initial_cluster() const {
  std::string s;
  for (const auto& m : members_) {
    s += (s.empty() ? "" : ",") + m.name + "=http://127.0.0.1:" + std::to_string(m.peer_port);
  }
  return s;
}

std::vector<std::string> EtcdCluster::endpoints() const {
  std::vector<std::string> e;
  for (const auto& m : members_) e.push_back("127.0.0.1:" + std::to_string(m.client_port));
  return e;
}

std::string EtcdCluster::address(const std::string& prefix) const {
  std::string s;
  for (const auto& e : endpoints()) s += (s.empty() ? "" : ",") + e;
  s = (tls_dir_.empty() ? "etcd://" : "etcds://") + s;
  return prefix.empty() ? s : s + "/" + prefix;
}

void EtcdCluster::make_certificates() {
  tls_dir_ = root_ + "/tls";
  std::filesystem::create_directories(tls_dir_);
  const std::string d = tls_dir_;
  const std::string script =
      "set -e; cd " + d + "\n" +
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=tenax-test-ca "
      "-keyout ca.key -out ca.crt 2>/dev/null\n"
      "for who in server client; do\n"
      "  openssl req -newkey rsa:2048 -nodes -subj /CN=$who -keyout $who.key -out $who.csr "
      "2>/dev/null\n"
      "  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nextendedKeyUsage=serverAuth,"
      "clientAuth\\n' > $who.ext\n"
      "  openssl x509 -req -in $who.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 "
      "-extfile $who.ext -out $who.crt 2>/dev/null\n"
      "done\n";
  auto r = run_command({"/bin/sh", "-c", script}, {}, std::chrono::seconds(60));
  if (r.exit_code != 0) throw std::runtime_error("openssl failed: " + r.output);
}

std::vector<std::string> EtcdCluster::etcdctl() const {
  std::string live;
  for (int i = 0; i < size(); ++i) {
    if (members_[i].proc) live += (live.empty() ? "" : ",") + endpoints()[i];
  }
  std::vector<std::string> argv = {kEtcdctl, "--endpoints=" + live, "--command-timeout=2s"};
  if (!tls_dir_.empty()) {
    argv.insert(argv.end(),
                {"--cacert=" + ca_file(), "--cert=" + client_cert(), "--key=" + client_key()});
  }
  if (!password_.empty()) argv.push_back("--user=root:" + password_);
  return argv;
}

void EtcdCluster::start(int i) {
  Member& m = members_[i];
  if (m.proc) return;
  auto argv =
      member_command(m.name, "127.0.0.1", m.client_port, m.peer_port, initial_cluster(), m.dir);
  if (!tls_dir_.empty()) {
    // Clients over https with a certificate from the cluster's CA; peers stay on http.
    for (auto& a : argv) {
      if (a == "http://127.0.0.1:" + std::to_string(m.client_port)) {
        a = "https://127.0.0.1:" + std::to_string(m.client_port);
      }
    }
    argv.insert(argv.end(),
                {"--cert-file", tls_dir_ + "/server.crt", "--key-file", tls_dir_ + "/server.key",
                 "--client-cert-auth", "--trusted-ca-file", ca_file()});
  }
  m.proc = std::make_unique<Process>(argv, std::map<std::string, std::string>{});
}

void EtcdCluster::kill(int i) {
  Member& m = members_[i];
  if (!m.proc) return;
  m.proc->kill(SIGKILL);
  m.proc->wait(std::chrono::seconds(10));
  m.proc.reset();
}

int EtcdCluster::leader() const {
  auto argv = etcdctl();
  if (argv[1] == "--endpoints=") return -1;
  argv.insert(argv.end(), {"endpoint", "status", "-w", "json"});
  return leader_in(run_command(argv, {}, std::chrono::seconds(10)).output, endpoints());
}

int EtcdCluster::leader_in(const std::string& status_json,
                           const std::vector<std::string>& endpoints) {
  const auto j = nlohmann::json::parse(
      status_json.substr(std::min(status_json.find('['), status_json.size())), nullptr, false);
  if (j.is_discarded() || !j.is_array()) return -1;
  for (const auto& s : j) {
    const auto& st = s["Status"];
    if (st["header"]["member_id"] != st["leader"]) continue;
    const std::string ep = s["Endpoint"].get<std::string>();
    for (size_t i = 0; i < endpoints.size(); ++i) {
      if (endpoints[i] == ep) return static_cast<int>(i);
    }
  }
  return -1;
}

void EtcdCluster::wait_for_leader() const {
  for (int i = 0; i < 150; ++i) {
    if (leader() >= 0) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  std::string logs;
  for (const auto& m : members_) {
    if (m.proc) logs += m.name + ":\n" + m.proc->output() + "\n";
  }
  throw std::runtime_error("etcd cluster had no leader within 30 s\n" + logs);
}

void EtcdCluster::enable_auth(const std::string& password) {
  for (const auto& args : std::vector<std::vector<std::string>>{{"user", "add", "root:" + password},
                                                                {"auth", "enable"}}) {
    auto argv = etcdctl();
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = run_command(argv, {}, std::chrono::seconds(20));
    if (r.exit_code != 0) throw std::runtime_error("etcdctl failed: " + r.output);
  }
  password_ = password;
}

}  // namespace tenax::testing
