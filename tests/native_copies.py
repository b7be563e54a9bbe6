"""How many copies of Gloo and of NCCL a process maps.

Two copies of one C++ library in a process interpose on each other's symbols and corrupt memory
without an error. A process that loads LibTorch holds torch's Gloo (inside libtorch_cpu) and the
NCCL its wheel loads; tenax must add none: its own Gloo is compiled into libtenax under the
namespace tenax_gloo, with hidden symbols, and its NCCL backend links the NCCL LibTorch loads.

A mapped object holds a copy of Gloo when it defines gloo::Context's constructor (a function of
Gloo's own sources, never inlined into a user), and a copy of NCCL when it defines
ncclGetVersion; both symbol tables are read (the dynamic one, and the full one of an object that
is not stripped), so a copy linked in statically with hidden symbols counts too. LibTorch's own
libraries (those beside libtorch_cpu.so) count as one copy: they come from one build (the torch
2.15 wheel carries Gloo in both libtorch_cpu and libtorch_cuda).

Usage: native_copies.py BINARY...   each binary as the dynamic loader maps it at start (ldd);
       exits 1, naming the objects, when any maps two copies of either library.
As a module: copies(paths) for the objects of a running process (/proc/self/maps).
"""

import functools
import os
import re
import subprocess
import sys

GLOO = re.compile(r"^_ZN4gloo7ContextC[12]E")
NCCL = re.compile(r"^ncclGetVersion$")


def _defined(path, dynamic):
    args = ["nm", "--defined-only"] + (["-D"] if dynamic else []) + [path]
    out = subprocess.run(args, capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] in "TtWw":
            yield parts[2]


@functools.lru_cache(maxsize=None)
def library_of(path):
    """'gloo', 'nccl', both or neither: which of the two libraries `path` holds a copy of."""
    held = set()
    for dynamic in (True, False):
        for sym in _defined(path, dynamic):
            if GLOO.match(sym):
                held.add("gloo")
            elif NCCL.match(sym):
                held.add("nccl")
    return frozenset(held)


def copies(paths):
    """{'gloo': [copies], 'nccl': [copies]} over the given mapped objects; a copy is one object,
    or 'LibTorch (a, b)' for those of LibTorch's own directory."""
    torch_dirs = {os.path.dirname(p) for p in paths if os.path.basename(p) == "libtorch_cpu.so"}
    found = {"gloo": [], "nccl": []}
    torch_held = {"gloo": [], "nccl": []}
    for p in sorted(set(paths)):
        for lib in library_of(p):
            (torch_held if os.path.dirname(p) in torch_dirs else found)[lib].append(p)
    for lib, objs in torch_held.items():
        if objs:
            found[lib].insert(0, "LibTorch (" + ", ".join(os.path.basename(o) for o in objs) + ")")
    return found


def mapped_objects(pid="self"):
    """The executable and shared objects a running process has mapped."""
    exe = os.path.realpath(f"/proc/{pid}/exe")
    objs = set()
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            path = parts[5].strip() if len(parts) == 6 else ""
            if path == exe or (path.startswith("/") and ".so" in os.path.basename(path)):
                objs.add(path)
    return objs


def loaded_at_start(binary):
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    objs = {binary}
    for line in out.splitlines():
        m = re.search(r"=>\s+(/\S+)", line) or re.match(r"\s*(/\S+)", line)
        if m:
            objs.add(m.group(1))
    return objs


def report(name, found):
    """Prints the copies; returns False when there are two of either."""
    ok = True
    for lib, objs in found.items():
        if len(objs) > 1:
            ok = False
            print(f"{name} maps {len(objs)} copies of {lib}: " + ", ".join(objs))
        else:
            print(f"{name}: {lib} {objs[0] if objs else 'not mapped'}")
    return ok


def main(binaries):
    ok = True
    for b in binaries:
        ok = report(b, copies(loaded_at_start(b))) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
