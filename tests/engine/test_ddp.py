"""2-process CPU DDP (gloo): rank-independent evaluation, Hydra multirun + DDP, DDP training,
and 2 nodes x 1 process (simulated on this machine) against 1 node x 2 processes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DistributedSampler

from segkit.data.datamodule import UnpaddedDistributedSampler

from ..helpers import ENV, FAST, PROJECT_ROOT, load, run, train_command


def multirun_command(tmp_path, sweep) -> list[str]:
    """train.py -m with data, logs and the sweep folder under ``tmp_path``."""
    return [
        sys.executable,
        str(PROJECT_ROOT / "train.py"),
        "-m",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"hydra.sweep.dir={sweep}",
    ]


@pytest.mark.parametrize("replicas", [2, 4, 5])  # none divides 9
def test_unpadded_sampler_visits_every_index_once(replicas):
    dataset = list(range(9))
    shards = [
        list(UnpaddedDistributedSampler(dataset, num_replicas=replicas, rank=r))
        for r in range(replicas)
    ]
    assert sorted(i for shard in shards for i in shard) == dataset
    lengths = [len(UnpaddedDistributedSampler(dataset, replicas, r)) for r in range(replicas)]
    assert [len(s) for s in shards] == lengths
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    # what it replaces: torch's sampler pads to a multiple of the replica count
    padded = [
        list(DistributedSampler(dataset, replicas, r, shuffle=False)) for r in range(replicas)
    ]
    assert sum(map(len, padded)) == -(-9 // replicas) * replicas > 9


@pytest.mark.slow
def test_ddp_confusion_matrix_equals_single_process_inside_a_multirun(tmp_path):
    # One Hydra multirun, two jobs: job 0 validates in 1 process, job 1 in 2 processes
    # (gloo) over 9 images, an odd count: the default sampler would count one image twice.
    # The same seed gives both jobs the same (untrained) weights; batch size 1 and one
    # thread make each image's logits independent of the process layout.
    sweep = tmp_path / "multirun"
    command = [
        *multirun_command(tmp_path, sweep),
        *FAST,
        "data.prepare.num_train=4",
        "data.prepare.num_val=9",
        "data.eval_batch_size=1",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.sync_batchnorm=false",
        "trainer.devices=1,2",
        "train=false",
    ]
    run(command)
    single = np.load(sweep / "0" / "confusion_matrix.npy")
    ddp = np.load(sweep / "1" / "confusion_matrix.npy")
    assert single.sum() == ddp.sum() == 9 * 64 * 64  # every pixel exactly once
    np.testing.assert_array_equal(ddp, single)
    assert len(np.flatnonzero(single)) > 1  # not a trivial matrix
    # rank 1 of job 1 ran job 1 (not the sweep again) and wrote only into job 1's folder
    assert (sweep / "1" / "train_ddp_process_1.log").is_file()
    assert not (sweep / "0" / "train_ddp_process_1.log").exists()
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    assert not (tmp_path / "logs").exists()  # no stray timestamped run folder


@pytest.mark.slow
def test_ddp_training_run_on_cpu(tmp_path):
    # python train.py trainer=ddp trainer.devices=2 trainer.accelerator=cpu, shrunk
    run_dir = tmp_path / "run"
    output = run(
        train_command(
            tmp_path,
            run_dir,
            "data.prepare.num_train=16",
            "trainer=ddp",
            "trainer.devices=2",
            "trainer.accelerator=cpu",
            "trainer.max_epochs=1",
        )
    )
    assert "sync_batchnorm=true is ignored: torch's SyncBatchNorm does not run on CPU" in output
    assert "Starting with 2 processes" in output
    # 16 images / (2 processes x batch 4) = 2 steps per epoch
    checkpoint = load(run_dir / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())
    assert np.load(run_dir / "confusion_matrix.npy").sum() == 8 * 64 * 64
    assert (run_dir / "train_ddp_process_1.log").is_file()
    assert not (tmp_path / "logs").exists()


@pytest.mark.slow
def test_ddp_instance_evaluation_counts_each_image_once(tmp_path):
    # As above for the instance task (Mask R-CNN, COCO AP + semantic view): one multirun, job
    # 0 validates 9 images in 1 process, job 1 in 2 processes. Same seed, same untrained
    # weights, batch 1: the semantic confusion matrix and every AP must not depend on the
    # process layout (a padded sampler would score one image twice).
    sweep = tmp_path / "multirun"
    command = [
        *multirun_command(tmp_path, sweep),
        "experiment=shapes_maskrcnn",
        "data.prepare.num_train=4",
        "data.prepare.num_val=9",
        "data.prepare.num_test=4",
        "data.prepare.size=64",
        "data.batch_size=2",
        "data.eval_batch_size=1",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "model.min_size=64",
        "model.max_size=64",
        "logger=csv",
        "test=false",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.sync_batchnorm=false",
        "trainer.devices=1,2",
        "train=false",
    ]
    run(command)
    single = np.load(sweep / "0" / "confusion_matrix.npy")
    ddp = np.load(sweep / "1" / "confusion_matrix.npy")
    assert single.sum() == ddp.sum() == 9 * 64 * 64  # every pixel exactly once
    np.testing.assert_array_equal(ddp, single)
    metrics = [json.loads((sweep / job / "metrics.json").read_text()) for job in ("0", "1")]
    ap_keys = [k for k in metrics[0] if "AP" in k]
    assert ap_keys and all(metrics[0][k] == pytest.approx(metrics[1][k]) for k in ap_keys)
    assert (sweep / "1" / "train_ddp_process_1.log").is_file()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_of_one_process_train_as_one_node_of_two(tmp_path):
    """A 2-node x 1-process job equals a 1-node x 2-process run step for step.

    Both "nodes" run on this machine, each a train.py started by hand with the variables
    Lightning's on-prem multi-node route sets on every node (docs/cluster.md): MASTER_ADDR,
    MASTER_PORT, NODE_RANK and WORLD_SIZE. Lightning's default ``LightningEnvironment`` gives
    global rank = NODE_RANK x devices + local rank and world size = num_nodes x devices, so
    node 1's process is rank 1 of 2, as the second process of the 1-node run is; LOCAL_RANK
    is left to Lightning, which starts a node's other devices - 1 processes itself (setting it
    by hand would mean starting every process yourself). Same seed, the same sampler shards
    (ranks 0 and 1 of 2), the same augmentation streams (seeded by global rank), the same
    2-rank gloo all-reduce and no SyncBatchNorm on CPU in either: the global batch (2 x 4), the
    learning rate and loss of every step, the weights and the validation confusion matrix
    agree exactly. Each node writes into its own folder, as separate machines would; only
    global rank 0 (node 0) writes the report and checkpoints.
    """
    common = [
        "data.prepare.num_train=16",
        "trainer=ddp",
        "trainer.sync_batchnorm=false",  # CPU: off either way
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",  # the learning rate of every step in metrics.csv
    ]
    one_node = tmp_path / "one_node"
    run(train_command(tmp_path, one_node, *common, "trainer.devices=2", "trainer.num_nodes=1"))

    port, nodes = str(free_port()), [tmp_path / "node0", tmp_path / "node1"]
    processes = []
    for rank, folder in enumerate(nodes):
        env = {**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODE_RANK": str(rank)}
        env["WORLD_SIZE"] = "2"
        command = train_command(
            tmp_path, folder, *common, "trainer.devices=1", "trainer.num_nodes=2"
        )
        processes.append(
            subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outputs = []
    try:
        outputs = [process.communicate(timeout=600)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-5000:]
    assert "Starting with 2 processes" in outputs[0]

    # the global batch: 16 images / (2 processes x batch 4) = 2 steps per epoch, 2 epochs
    single, multi = (load(d / "checkpoints" / "last.ckpt") for d in (one_node, nodes[0]))
    assert single["global_step"] == multi["global_step"] == 4
    for key, value in single["state_dict"].items():
        assert torch.equal(value, multi["state_dict"][key]), key
    # the learning-rate schedule (and the losses): metrics.csv line for line, less the
    # epochs' wall minutes (EpochLines' time/epoch_minutes), which no two runs share
    logged = [
        pd.read_csv(next(d.glob("csv/**/metrics.csv"))).drop(columns="time/epoch_minutes")
        for d in (one_node, nodes[0])
    ]
    pd.testing.assert_frame_equal(logged[0], logged[1], check_exact=True)
    lr_steps = logged[0][logged[0]["epoch"].isna()]
    assert len(lr_steps) == 4  # one learning-rate row per optimiser step
    matrices = [np.load(d / "confusion_matrix.npy") for d in (one_node, nodes[0])]
    np.testing.assert_array_equal(matrices[1], matrices[0])
    assert matrices[0].sum() == 8 * 64 * 64
    # node 1 (global rank 1) wrote no report and no checkpoint
    assert not (nodes[1] / "confusion_matrix.npy").exists()
    assert not list(nodes[1].glob("checkpoints/*.ckpt"))
