"""Two CPU processes under torchrun (gloo): identical weights and identical all-reduced statistics."""
import json
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")


def test_two_ranks_stay_in_lockstep():
    here = os.path.dirname(__file__)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                        os.path.join(here, "dist_worker.py")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")][0]
    res = json.loads(line[len("RESULT "):])
    assert [x["rank"] for x in res] == [0, 1]
    # Gradients are averaged over ranks, so both hold the same weights.
    assert res[0]["checksum"] == res[1]["checksum"]
    # Statistics are all-reduced before after_step, so plugin decisions agree.
    assert res[0]["seen"] == res[1]["seen"] and len(res[0]["seen"]) == 4
    assert res[0]["nimg"] == res[1]["nimg"] == 4 * 32
    # Each rank reads its own slice of the data stream.
    assert res[0]["first_real"] != res[1]["first_real"]
