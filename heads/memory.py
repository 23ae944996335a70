"""Memory checks before a large allocation: a problem too big for the device is one clear error
up front (what it would need, what is available, what to do) instead of an out-of-memory
traceback minutes into the run.

`available_bytes(device)`: CUDA: free device memory (`torch.cuda.mem_get_info`) plus what
torch's caching allocator holds unused; CPU: `MemAvailable` of /proc/meminfo, capped by the
cgroup limit of a container (v2 `memory.max`, v1 `memory.limit_in_bytes`), falling back to
`os.sysconf`; None where it cannot be known (the check is then skipped).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from clipcbm.core.disk import human_bytes
from clipcbm.heads.errors import InsufficientMemoryError

CGROUP_FILES = (  # (limit, usage): cgroup v2, then v1
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _cgroup_headroom() -> int | None:
    for limit_file, usage_file in CGROUP_FILES:
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # "max" / a huge v1 value: no limit
            return max(0, int(limit) - usage)
    return None


def host_available_bytes() -> int | None:
    """Memory a new allocation of this process can get on the host (None: unknown)."""
    known = [b for b in (_meminfo_available(), _cgroup_headroom()) if b is not None]
    return min(known) if known else None


def available_bytes(device) -> int | None:
    """Free memory on `device` for new tensors (None: unknown, e.g. mps)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev))
    if dev.type == "cpu":
        return host_available_bytes()
    return None


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else human_bytes(n)


def require(need: int, device, what: str, advice: str) -> None:
    """Raise InsufficientMemoryError when `need` bytes are more than `device` has available."""
    have = available_bytes(device)
    if have is None or need <= have:
        return
    raise InsufficientMemoryError(
        f"{what} needs about {gib(need)} of {torch.device(device).type} memory, but only "
        f"{gib(have)} is available. {advice}"
    )
