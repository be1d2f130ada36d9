"""Shared fixtures: one math verifier pool for the whole session (workers start once)."""
from __future__ import annotations

import pytest

from r1hpc.rewards.math import math_pool
from r1hpc.rewards.sandbox import bwrap_usable

@pytest.fixture(scope="session")
def pool():
    with math_pool(2) as p:
        p.start()  # so start-up never counts against a timing bound
        yield p


needs_bwrap = pytest.mark.skipif(not bwrap_usable(), reason="bubblewrap (bwrap) is not installed or cannot create "
                                 "namespaces here; run scripts/install_system_deps.sh as root")
