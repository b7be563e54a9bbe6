#pragma once

// A process mesh: the world's ranks arranged as dp x tp x pp (Megatron-style), with one
// communicator per dimension. The order string names the dimensions from fastest-varying to
// slowest: with "tp-dp-pp" consecutive ranks form a tp group, so a tp group stays on one host.

#include <array>
#include <memory>
#include <string>

#include "tenax/comm/communicator.h"
#include "tenax/core/export.h"

namespace tenax {

struct TENAX_API MeshOptions {
  int dp = 0;  // 0: world / (tp * pp)
  int tp = 1;
  int pp = 1;
  std::string order = "tp-dp-pp";

  MeshOptions& data_parallel(int v) { dp = v; return *this; }
  MeshOptions& tensor_parallel(int v) { tp = v; return *this; }
  MeshOptions& pipeline_parallel(int v) { pp = v; return *this; }
  MeshOptions& dim_order(std::string v) { order = std::move(v); return *this; }
};

// Thread rules: construction is a collective over the world communicator (every rank, one
// thread each). After it, the sizes and coordinates never change (any thread), and the group
// communicators it hands out (dp, tp, pp, world) follow Communicator's rules; it keeps them
// alive.
class TENAX_API ProcessMesh {
 public:
  // Collective over `world`: every rank calls it with the same options. Throws ConfigError,
  // saying what would fit, when a size is < 1, when world % (tp * pp) != 0, when dp * tp * pp
  // != world, or when `order` is not a permutation of tp, dp, pp.
  ProcessMesh(std::shared_ptr<Communicator> world, const MeshOptions& options);

  // Checks `options` against a world of `world_size` ranks without building anything; returns
  // the resolved options (dp filled in). Throws ConfigError as the constructor does.
  static MeshOptions resolve(int world_size, MeshOptions options);

  int dp_size() const { return opts_.dp; }
  int tp_size() const { return opts_.tp; }
  int pp_size() const { return opts_.pp; }
  int dp_rank() const { return dp_->rank(); }
  int tp_rank() const { return tp_->rank(); }
  int pp_rank() const { return pp_->rank(); }

  // The communicator of each dimension (size 1 when that dimension is 1).
  const std::shared_ptr<Communicator>& dp() const { return dp_; }
  const std::shared_ptr<Communicator>& tp() const { return tp_; }
  const std::shared_ptr<Communicator>& pp() const { return pp_; }
  const std::shared_ptr<Communicator>& world() const { return world_; }

  // The world rank at coordinates (dp, tp, pp).
  int rank_of(int dp, int tp, int pp) const;

 private:
  MeshOptions opts_;
  std::array<int, 3> dims_;  // dimension ids (0 tp, 1 dp, 2 pp) from fastest to slowest
  std::shared_ptr<Communicator> world_, dp_, tp_, pp_;
};

}  // namespace tenax
