"""DDP with 2 CPU processes (gloo): same paths on every rank, same result as one process.

Fast (default run): ``torch.distributed.run`` starts 2 ranks that train the
all-in-one model (tiny real ElasticConformerEncoder) under
DistributedDataParallel(find_unused_parameters=True) on halves of each global
batch; rank 0 also trains a single-process copy on the whole batch. Checks:
per-step subsystem choices identical on both ranks, per-step losses and final
parameters equal to the single-process run.

Then ESPnet's own CLI (~30 s) under ``torch.distributed.run`` (``--multiprocessing_distributed
false --dist_backend gloo --ngpu 0``) against a single-process run of the same
config, with batches that split unevenly across the ranks.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Tiny models on a shared CPU: one thread per process avoids OpenMP oversubscription.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = ROOT / "conf" / "train_allinone_tiny.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp: Path, *args: str, timeout: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]
    # A hang (e.g. ranks out of step at an epoch end) fails the test by timeout.
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          check=False, env=ONE_THREAD)


def _paths_by_step(log: Path) -> dict[int, str]:
    out = {}
    for line in log.read_text().splitlines():
        m = re.fullmatch(r"rank=\d+ step=(\d+) paths=(\S+)", line)
        assert m, line
        out[int(m.group(1))] = m.group(2)
    return out


FAST = r"""
import json, os, sys
import torch, torch.distributed as dist
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
from test_allinone_model import TOKENS, build
from espnet_allinone.encoders.elastic_conformer import ElasticConformerEncoder

dist.init_process_group("gloo")
rank = dist.get_rank()
log = sys.argv[2]
# stacked: 2 blocks, depths 1 and 2; unfolded: a 1-block seed run at depths 1, 2 and 3
shape = ({"num_blocks": 2, "depths": [1, 2]} if sys.argv[3] == "stacked"
         else {"num_blocks": 3, "seed_blocks": 1, "depths": [1, 2, 3]})

def make(sampling_log=None):
    torch.manual_seed(0)
    enc = ElasticConformerEncoder(
        20, output_size=16, attention_heads=2, linear_units=32, **shape,
        input_layer="linear", use_cnn_module=False, widths=[0.5, 1.0],
        precisions=["int4", "int8", "fp"], dropout_rate=0.0, positional_dropout_rate=0.0,
    )
    return build(encoder=enc, sampling="sandwich", num_random=1, distill_weight=0.5,
                 sampling_log=sampling_log, seed=0)

def global_batch(step, n=4, frames=24):
    g = torch.Generator().manual_seed(100 + step)
    # Each half (rank r takes r::2) keeps the whole batch's padded lengths.
    lengths = torch.tensor([frames, frames, frames - 5, frames - 9])
    text_lengths = torch.tensor([4, 4, 3, 2])
    text = torch.randint(2, len(TOKENS) - 1, (n, 4), generator=g)
    for i, k in enumerate(text_lengths.tolist()):
        text[i, k:] = -1
    return {"speech": torch.randn(n, frames, 20, generator=g), "speech_lengths": lengths,
            "text": text, "text_lengths": text_lengths}

model = make(log)
ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
ddp.train()
losses = []
for step in range(4):
    b = global_batch(step)
    half = {k: v[rank::2].clone() for k, v in b.items()}
    loss, stats, w = ddp(**half)
    opt.zero_grad()
    loss.backward()
    opt.step()
    t = stats["loss"].detach().clone()
    dist.all_reduce(t)
    losses.append(float(t) / 2)
if rank == 0:
    ref = make()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.01)
    ref.train()
    ref_losses = []
    for step in range(4):
        loss, stats, _ = ref(**global_batch(step))
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        ref_losses.append(float(stats["loss"]))
    diff = max((p - q).abs().max().item() for p, q in zip(model.parameters(), ref.parameters()))
    print("RESULT " + json.dumps({"ddp": losses, "single": ref_losses, "param_diff": diff}),
          flush=True)
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.parametrize("shape", ["stacked", "unfolded"])
def test_ddp_two_ranks_same_paths_same_result(tmp_path: Path, shape: str) -> None:
    script = tmp_path / "fast_ddp.py"
    script.write_text(FAST)
    proc = _launch(tmp_path, str(script), str(ROOT), str(tmp_path / "paths.{rank}.log"), shape,
                   timeout=300)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[0][7:])
    r0, r1 = (_paths_by_step(tmp_path / f"paths.{r}.log") for r in (0, 1))
    assert sorted(r0) == [0, 1, 2, 3]
    assert r0 == r1
    assert len(set(r0.values())) > 1  # the random path changes between steps
    # Mean of the halves' per-utterance losses == the whole batch's; so are the updates.
    assert out["ddp"] == pytest.approx(out["single"], rel=1e-5), out
    assert out["param_diff"] < 1e-5, out


ENDS_ON_COLLECTIVES = r"""
import sys
import torch, torch.distributed as dist
from espnet_allinone.train.ddp_exit import install_exit_yield
dist.init_process_group("gloo")
if sys.argv[1] == "hook":
    install_exit_yield()
if sys.argv[2] == "ddp_destroy":  # DDP keeps the group alive past its destruction
    ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(50, 50))
    ddp(torch.randn(4, 50)).sum().backward()
for _ in range(5):  # like ESPnet's trainer, whose last call is all_reduce(iterator_stop)
    stop = torch.ones(3)
    dist.all_reduce(stop)
if sys.argv[2] == "ddp_destroy":  # gloo's threads outlive this: the hook must still yield
    dist.destroy_process_group()
"""


def test_ranks_that_end_on_a_collective_exit_cleanly(tmp_path: Path) -> None:
    """Without the exit hook (a first argument other than ``hook``) such launches abort
    (SIGABRT) after finishing: 6 of 10 ending on ``all_reduce``, 3 of 10 destroying a
    group that DDP holds; 0 of 20 with it."""
    script = tmp_path / "ends_on_collectives.py"
    script.write_text(ENDS_ON_COLLECTIVES)
    for end in ("keep", "ddp_destroy") * 3:
        proc = _launch(tmp_path, str(script), "hook", end, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "terminate called" not in proc.stderr


PREP = r"""
import json, sys
from pathlib import Path
from espnet2.tasks.asr import ASRTask
sys.path.insert(0, "tests")  # tests/helpers (cwd: the repository root)
from helpers import espnet_run as R
data, work, conf = map(Path, sys.argv[1:4])
tok = R.char_token_list([data / "train" / "text", data / "dev" / "text"], work / "tokens.txt")
ASRTask.main(cmd=R.collect_stats_args(conf, data, tok, work / "stats"))
common = R.train_args(conf, data, tok, work / "stats", work / "single", *json.loads(sys.argv[4]))
ASRTask.main(cmd=common)
ddp = R.train_args(conf, data, tok, work / "stats", work / "ddp", *json.loads(sys.argv[4]))
(work / "ddp_args.json").write_text(json.dumps(ddp))
"""


def test_espnet_cli_ddp_matches_single_process(tiny_corpus: Path, tmp_path: Path) -> None:
    cfg = yaml.safe_load(TINY.read_text())
    cfg["encoder_conf"]["use_cnn_module"] = False  # BatchNorm statistics are per rank
    cfg.update(optim="sgd", optim_conf={"lr": 0.002}, scheduler=None, max_epoch=1)
    cfg.pop("scheduler_conf")
    conf = tmp_path / "ddp.yaml"
    conf.write_text(yaml.safe_dump(cfg))
    # Batches of 5: the ranks get 3 and 2 utterances (uneven). Under DDP ESPnet sets
    # min_batch_size to the world size; give the single run the same global batches.
    extra = ["--batch_size", "5", "--min_batch_size", "2", "--seed", "0",
             "--keep_nbest_models", "1",
             "--model_conf", json.dumps({"sampling_log": str(tmp_path / "{rank}.log")})]
    prep = subprocess.run(
        [sys.executable, "-c", PREP, str(tiny_corpus), str(tmp_path), str(conf),
         json.dumps(extra)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False, env=ONE_THREAD,
    )
    assert prep.returncode == 0, prep.stderr[-5000:]
    single_log = (tmp_path / "0.log").read_text()
    (tmp_path / "0.log").unlink()
    ddp_args = json.loads((tmp_path / "ddp_args.json").read_text())
    proc = _launch(tmp_path, "-m", "espnet2.bin.asr_train", *ddp_args,
                   "--multiprocessing_distributed", "false", "--dist_backend", "gloo",
                   timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]

    r0, r1 = (_paths_by_step(tmp_path / f"{r}.log") for r in (0, 1))
    assert r0 == r1 == _paths_by_step_text(single_log)
    single = torch.load(tmp_path / "single" / "checkpoint.pth", weights_only=False)
    ddp = torch.load(tmp_path / "ddp" / "checkpoint.pth", weights_only=False)
    diff = max(
        (single["model"][k].float() - ddp["model"][k].float()).abs().max().item()
        for k in single["model"]
    )
    assert diff < 1e-4
    from espnet2.train.reporter import Reporter

    reps = []
    for ck in (single, ddp):
        rep = Reporter()
        rep.load_state_dict(ck["reporter"])
        reps.append(rep)
    # The reported losses differ only by padding effects (a rank pads its part of a
    # batch to its own longest utterance): ~1e-3 relative.
    for phase, key in (("train", "loss"), ("valid", "loss"), ("valid", "loss_d1-w0.5-int4")):
        a, b = (rep.get_value(phase, key, 1) for rep in reps)
        assert b == pytest.approx(a, rel=5e-3), (phase, key, a, b)


def _paths_by_step_text(text: str) -> dict[int, str]:
    return {
        int(m.group(1)): m.group(2)
        for m in re.finditer(r"rank=\d+ step=(\d+) paths=(\S+)", text)
    }
