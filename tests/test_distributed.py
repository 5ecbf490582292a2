"""Two CPU processes under torchrun (gloo): identical weights and identical all-reduced statistics."""
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

from dist_worker import assert_ranks_agree

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")


def test_two_ranks_stay_in_lockstep():
    here = os.path.dirname(__file__)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                        os.path.join(here, "dist_worker.py")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_ranks_agree(r.stdout)
