"""The malloc settings really keep a freed activation-sized tensor in the process."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt settings apply to glibc on Linux only")

PROBE = r"""
import os, torch
from btu.training.allocator import keep_freed_memory
applied = keep_freed_memory()
page = os.sysconf("SC_PAGE_SIZE")
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
y = torch.empty(1 << 20, dtype=torch.uint8).fill_(1)  # warm-up: thread pool and kernels, outside the count
del y
before = rss()
x = torch.empty(30 << 20, dtype=torch.uint8).fill_(1)  # 30 MB: above glibc's default mmap threshold
del x
print(applied, (rss() - before) >> 20)
"""


def probe(env_extra):
    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    applied, kept_mb = out.stdout.split()
    return applied == "True", int(kept_mb)


def test_freed_tensor_stays_mapped_with_the_settings_and_not_without():
    applied, kept = probe({"BTU_NO_MALLOPT": "0"})
    assert applied and kept >= 20  # the 30 MB stay in the heap, ready for the next step
    applied, kept = probe({"BTU_NO_MALLOPT": "1"})
    assert not applied and kept < 12  # glibc's default: unmapped on free
