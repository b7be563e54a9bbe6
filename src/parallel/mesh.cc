#include "tenax/parallel/mesh.h"

#include <sstream>

#include "tenax/core/error.h"

namespace tenax {
namespace {

constexpr const char* kNames[3] = {"tp", "dp", "pp"};

std::array<int, 3> parse_order(const std::string& order) {
  std::array<int, 3> dims{};
  std::stringstream ss(order);
  std::string part;
  int n = 0;
  bool seen[3] = {false, false, false};
  while (std::getline(ss, part, '-')) {
    int id = -1;
    for (int k = 0; k < 3; ++k) {
      if (part == kNames[k]) id = k;
    }
    if (id < 0 || n >= 3 || seen[id]) {
      throw ConfigError("mesh order '" + order +
                        "' must name tp, dp and pp once each, e.g. \"tp-dp-pp\"");
    }
    seen[id] = true;
    dims[n++] = id;
  }
  if (n != 3) {
    throw ConfigError("mesh order '" + order + "' must name tp, dp and pp once each");
  }
  return dims;
}

}  // namespace

MeshOptions ProcessMesh::resolve(int world, MeshOptions o) {
  parse_order(o.order);
  if (o.tp < 1 || o.pp < 1 || o.dp < 0) {
    throw ConfigError("mesh sizes must be >= 1 (got dp=" + std::to_string(o.dp) + ", tp=" +
                      std::to_string(o.tp) + ", pp=" + std::to_string(o.pp) + ")");
  }
  const int model = o.tp * o.pp;
  if (world % model != 0) {
    throw ConfigError("mesh tp=" + std::to_string(o.tp) + " x pp=" + std::to_string(o.pp) +
                      " = " + std::to_string(model) + " ranks per model replica does not divide a "
                      "world of " + std::to_string(world) + " ranks; use a world that is a "
                      "multiple of " + std::to_string(model) + ", or tp x pp dividing " +
                      std::to_string(world));
  }
  if (o.dp == 0) o.dp = world / model;
  if (o.dp * model != world) {
    throw ConfigError("mesh dp=" + std::to_string(o.dp) + " x tp=" + std::to_string(o.tp) +
                      " x pp=" + std::to_string(o.pp) + " = " + std::to_string(o.dp * model) +
                      " ranks does not fit a world of " + std::to_string(world) +
                      "; with tp=" + std::to_string(o.tp) + " and pp=" + std::to_string(o.pp) +
                      " it takes dp=" + std::to_string(world / model));
  }
  return o;
}

ProcessMesh::ProcessMesh(std::shared_ptr<Communicator> world, const MeshOptions& options)
    : opts_(resolve(world->size(), options)), dims_(parse_order(options.order)),
      world_(std::move(world)) {
  const std::array<int, 3> size = {opts_.tp, opts_.dp, opts_.pp};
  // Coordinates of this rank, fastest dimension first.
  std::array<int, 3> coord{};
  int rest = world_->rank();
  for (int d : dims_) {
    coord[d] = rest % size[d];
    rest /= size[d];
  }
  // For each dimension, the group is the ranks that share the other two coordinates.
  std::array<std::shared_ptr<Communicator>, 3> groups;
  for (int d = 0; d < 3; ++d) {
    int color = 0;
    for (int e : dims_) {
      if (e != d) color = color * size[e] + coord[e];
    }
    groups[d] = world_->split(color, coord[d]);
  }
  tp_ = groups[0];
  dp_ = groups[1];
  pp_ = groups[2];
}

int ProcessMesh::rank_of(int dp, int tp, int pp) const {
  const std::array<int, 3> size = {opts_.tp, opts_.dp, opts_.pp};
  const std::array<int, 3> coord = {tp, dp, pp};
  int rank = 0;
  for (int k = 2; k >= 0; --k) rank = rank * size[dims_[k]] + coord[dims_[k]];
  return rank;
}

}  // namespace tenax
