"""Run under ``torchrun --nproc_per_node=2`` by test_distributed.py (CPU, gloo)."""
import json
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from conftest import make_trainer  # noqa: E402
from ganstack.training import distributed  # noqa: E402
from ganstack.training.api import hookimpl  # noqa: E402


class StatRecorder:
    def __init__(self):
        self.seen = []

    @hookimpl
    def after_step(self, stats):
        self.seen.append(stats["Loss/signs/real"])


def assert_ranks_agree(stdout: str) -> None:
    """Checks the RESULT line that rank 0 prints (tests/test_distributed.py, tests/test_slurm.py)."""
    line = [l for l in stdout.splitlines() if l.startswith("RESULT ")][0]
    res = json.loads(line[len("RESULT "):])
    assert [x["rank"] for x in res] == [0, 1]
    # Gradients are averaged over ranks, so both hold the same weights.
    assert res[0]["checksum"] == res[1]["checksum"]
    # Statistics are all-reduced before after_step, so plugin decisions agree.
    assert res[0]["seen"] == res[1]["seen"] and len(res[0]["seen"]) == 4
    assert res[0]["nimg"] == res[1]["nimg"] == 4 * 32
    # Each rank reads its own slice of the data stream.
    assert res[0]["first_real"] != res[1]["first_real"]


def main():
    distributed.init_from_env("cpu")
    tr = make_trainer(["rec"], extra_plugins={"rec": StatRecorder}, batch=32)
    for _ in range(4):
        tr.step()
    checksum = float(sum(p.double().sum() for p in tr.G.parameters()) + sum(p.double().sum() for p in tr.D.parameters()))
    seen = tr.stack.plugins["rec"].seen
    gathered = distributed.all_gather_object({"checksum": checksum, "seen": seen, "rank": dist.get_rank(),
                                              "nimg": tr.cur_nimg,
                                              "first_real": tr.stream.sampler.index(tr.stream.sampler.start + dist.get_rank())})
    if dist.get_rank() == 0:
        print("RESULT " + json.dumps(gathered))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
