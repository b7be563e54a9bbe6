// The cross-rank argument check of the Gloo backend: every rank shares (op, dtype, count, root)
// before the operation, so a mismatch is an error naming the rank instead of a hang or garbage.
// One round: each rank sends its 32 bytes to every other directly (a ring all-gather would take
// n-1 rounds, each a wake-up of every rank; on 4 ranks of a 2-core host that cost 18% of a
// 16 MiB all-reduce). The comparison and its wording are the backends' (argument_checks.h).

#include <gloo/types.h>

#include <algorithm>

#include "comm/gloo_state.h"
#include "comm/gloo_work.h"

namespace tenax::detail {

void check_same_call_across_ranks(GlooState& st, const OpContext& c, Task& t,
                                  const CallSignature& sig) {
  auto& chk = st.signature_check;
  if (!chk.send) {  // built once, reused by every check
    chk.all.assign(chk.mine.size() * st.size, 0);
    chk.send = st.ctx->createUnboundBuffer(chk.mine.data(), sizeof(chk.mine));
    chk.recv = st.ctx->createUnboundBuffer(chk.all.data(), chk.all.size() * sizeof(int64_t));
  }
  chk.mine = sig.row();
  std::copy(chk.mine.begin(), chk.mine.end(), chk.all.begin() + st.rank * chk.mine.size());
  {
    Tracked tracked(st, {chk.send.get(), chk.recv.get()});
    const uint64_t slot = gloo::Slot::build(kDebugCheckSlotPrefix, 0);
    const size_t bytes = sizeof(chk.mine);
    for (int j = 0; j < st.size; ++j) {
      if (j == st.rank) continue;
      chk.recv->recv(j, slot, j * bytes, bytes);
      chk.send->send(j, slot, 0, bytes);
    }
    for (int k = 1; k < st.size; ++k) wait_buffers(st, t, chk.send.get(), chk.recv.get());
  }
  check_same_call(c, t.desc, chk.mine, chk.all);
}

}  // namespace tenax::detail
