#pragma once

// A real etcd cluster for tests (Debian's etcd-server): `n` members on loopback ports, each
// with a scratch data directory, started together and waited for, killed and removed at the
// end. Members can be killed and started again, and authentication switched on.

#include <memory>
#include <string>
#include <vector>

#include "support/process.h"

namespace tenax::testing {

class EtcdCluster {
 public:
  // True when the etcd binary is installed.
  static bool available();
  // The command line of one member `name` serving clients on ip:client_port and peers on
  // ip:peer_port, joining `initial_cluster` ("n1=http://ip:port,…"), data in `dir`.
  static std::vector<std::string> member_command(const std::string& name, const std::string& ip,
                                                 int client_port, int peer_port,
                                                 const std::string& initial_cluster,
                                                 const std::string& dir);

  // The index in `endpoints` of the leader that `etcdctl endpoint status -w json` printed, or -1.
  static int leader_in(const std::string& status_json, const std::vector<std::string>& endpoints);

  // Starts `n` members and waits until the cluster has a leader. Throws std::runtime_error
  // when it does not within 30 s. With `tls`, clients reach the members over https only, with
  // a client certificate signed by the cluster's own CA (made with openssl for the test).
  explicit EtcdCluster(int n = 3, bool tls = false);
  ~EtcdCluster();
  EtcdCluster(const EtcdCluster&) = delete;

  int size() const { return static_cast<int>(members_.size()); }
  // "127.0.0.1:port" of each member.
  std::vector<std::string> endpoints() const;
  // "etcd://127.0.0.1:p1,…/prefix" ("etcds://" with TLS).
  std::string address(const std::string& prefix = "") const;
  // With TLS: the CA that signed the members' and the client's certificates, and the client's.
  std::string ca_file() const { return tls_dir_ + "/ca.crt"; }
  std::string client_cert() const { return tls_dir_ + "/client.crt"; }
  std::string client_key() const { return tls_dir_ + "/client.key"; }
  // The index of the member that leads now (asked of the live members), or -1.
  int leader() const;
  void kill(int i);
  void start(int i);
  bool running(int i) const { return members_[i].proc != nullptr; }
  // Adds user root with `password` and turns authentication on.
  void enable_auth(const std::string& password);

 private:
  struct Member {
    std::string name, dir;
    int client_port = 0, peer_port = 0;
    std::unique_ptr<Process> proc;
  };
  std::string initial_cluster() const;
  std::vector<std::string> etcdctl() const;  // etcdctl with the live endpoints and credentials
  void make_certificates();
  void wait_for_leader() const;
  std::vector<Member> members_;
  std::string root_;
  std::string password_;
  std::string tls_dir_;  // empty without TLS
};

}  // namespace tenax::testing
