"""Two CPU processes: DDP (gloo, 2 processes x 1 thread) vs 1 process of 2 threads, per step.

python -m benchmarks.ddp_cpu [--quick]

The step is the ``experiment=camvid_fpn_lite0`` recipe's training step, built from its config
(:func:`segkit.config.compose`, :func:`segkit.tasks.build_task`): FPN on EfficientNet-Lite0,
11 classes, the task's loss (:meth:`SemanticSegmentationTask.training_loss`), AdamW with the
recipe's parameter groups (backbone at 0.1 x lr, no decay on norm/bias), the poly schedule
stepped per optimiser step and the EMA of the weights updated after it - what Lightning runs
per batch, without Lightning's loop (``benchmarks/train_step.py`` measures that separately).
Random encoder weights (the cost does not depend on them) and unweighted cross-entropy
(the recipe's median-frequency weights are computed from the training labels; a weight
vector does not change the cost). The batches are synthetic, of the recipe's shape: a
global batch of 8 random 256x352 images with random labels, held in memory (no loader).

Layouts of the same global step of 8 images:

* 1 process, ``torch.set_num_threads(2)``, batch 8 (what a lone run on 2 cores uses); and
  the same with 1 thread (what a run beside other work uses, ``OMP_NUM_THREADS=1``);
* DDP: 2 processes started by ``torch.multiprocessing`` (spawn), 1 thread each, gloo process
  group on 127.0.0.1, ``DistributedDataParallel`` around the model (as Lightning's
  ``strategy=ddp`` wraps it: gradients all-reduced during backward, BatchNorm buffers
  broadcast from rank 0 before each forward), batch 4 each - rank r takes images 4r..4r+3.
  Each rank's BatchNorm normalises with the statistics of its own 4 images: torch's
  SyncBatchNorm does not run on the CPU, so ``trainer.sync_batchnorm`` is off there.

The DDP processes start once and wait for commands, so only steps are timed. One step of each
layout in turn (:func:`benchmarks.common.compare`: the DDP step is the wall time from
telling both ranks to step until both are done), after warm-up steps; the table gives
medians. After the last step both ranks' parameters are compared: they must be equal (DDP
keeps the replicas in step).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import DictConfig
from torch.nn.parallel import DistributedDataParallel

from benchmarks.common import compare, ratio, run_alone, table
from segkit.config import compose
from segkit.tasks import build_task
from segkit.tasks.optim import build_optimizer

TITLE = "Two CPU processes: DDP (gloo, 2 x 1 thread) vs 1 process of 2 threads"
RECIPE = ["experiment=camvid_fpn_lite0", "model.encoder_weights=null", "loss.class_weights=null"]
NUM_CLASSES = 11
GLOBAL_BATCH = 8
WORLD = 2  # DDP processes of one thread each; the single process gets as many threads


def recipe_config() -> DictConfig:
    """train.py's config of the recipe (random encoder weights, unweighted loss)."""
    return compose(RECIPE)


def batch(crop: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch: ``images [8, 3, H, W]`` and ``masks [8, H, W]`` (seed 0, so every
    process draws the same one)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(GLOBAL_BATCH, 3, *crop, generator=generator)
    masks = torch.randint(0, NUM_CLASSES, (GLOBAL_BATCH, *crop), generator=generator)
    return images, masks


def recipe_step(
    cfg: DictConfig, images: torch.Tensor, masks: torch.Tensor, ddp: bool
) -> tuple[Callable[[], float], torch.nn.Module]:
    """One training step of the recipe on ``images [B,3,H,W]``, ``masks [B,H,W]``.

    Returns:
        the zero-argument step (returns its loss) and the bare model it trains.
    """
    torch.manual_seed(0)  # the same initial weights in every process and layout
    task = build_task(cfg).train()
    net = task.model
    optimizer = build_optimizer(task.optimizer_factory, task.optimizer_groups())
    schedule = task.scheduler_factory(optimizer, total_steps=1000)  # sets rates, not cost
    if ddp:  # after the optimiser: the parameter groups read net.backbone
        task.model = DistributedDataParallel(net)

    def step() -> float:
        loss, _ = task.training_loss(images, masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP: the all-reduce of the gradients runs here
        optimizer.step()
        schedule.step()
        task.ema_model.update_parameters(net)
        return float(loss.detach())

    return step, net


def with_threads(step: Callable[[], float], count: int) -> Callable[[], float]:
    """``step`` run with ``count`` torch intra-op threads (the caller's count restored)."""

    def run() -> float:
        before = torch.get_num_threads()
        torch.set_num_threads(count)
        try:
            return step()
        finally:
            torch.set_num_threads(before)

    return run


def _worker(rank: int, port: int, crop: tuple[int, int], commands: Any, results: Any) -> None:
    """DDP rank ``rank``: builds its step, then runs one step per ``True`` on its command
    queue; ``None`` ends it, rank 0 putting the largest parameter difference between ranks."""
    torch.set_num_threads(1)
    address = f"tcp://127.0.0.1:{port}"
    dist.init_process_group("gloo", init_method=address, rank=rank, world_size=WORLD)
    images, masks = batch(crop)
    share = GLOBAL_BATCH // WORLD
    part = slice(share * rank, share * (rank + 1))
    step, net = recipe_step(recipe_config(), images[part], masks[part], ddp=True)
    results.put(("ready", rank))
    while commands.get():
        step()
        results.put(("done", rank))
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])
    low, high = flat.clone(), flat.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if rank == 0:
        results.put(("difference", float((high - low).abs().max())))
    dist.destroy_process_group()


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for the process group's rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class DDPGroup:
    """``WORLD`` spawned DDP processes, each stepping when told to."""

    def __init__(self, crop: tuple[int, int]) -> None:
        context = mp.get_context("spawn")
        self.commands = [context.Queue() for _ in range(WORLD)]
        self.results = context.Queue()
        port = free_port()
        self.processes = [
            context.Process(
                target=_worker,
                args=(rank, port, crop, self.commands[rank], self.results),
                daemon=True,
            )
            for rank in range(WORLD)
        ]
        for process in self.processes:
            process.start()
        self._collect("ready")

    def _collect(self, kind: str) -> list[Any]:
        values = []
        for _ in range(WORLD if kind != "difference" else 1):
            got, value = self.results.get(timeout=600)
            if got != kind:
                raise RuntimeError(f"DDP worker sent {got!r}, expected {kind!r}")
            values.append(value)
        return values

    def step(self) -> None:
        """One global step: both ranks step; returns when both are done."""
        for queue in self.commands:
            queue.put(True)
        self._collect("done")

    def close(self) -> float:
        """Stop the processes; return the largest parameter difference between the ranks."""
        for queue in self.commands:
            queue.put(None)
        (difference,) = self._collect("difference")
        for process in self.processes:
            process.join(timeout=60)
        return difference


def run(quick: bool = False) -> str:
    """Time every layout of the recipe's step; return the Markdown section."""
    crop, repeats, warmup = ((64, 96), 2, 1) if quick else ((256, 352), 6, 1)
    threads = torch.get_num_threads()
    group = DDPGroup(crop)
    try:
        images, masks = batch(crop)
        methods = {}
        for count, name in ((WORLD, f"{WORLD} threads"), (1, "1 thread")):
            step, _ = recipe_step(recipe_config(), images, masks, ddp=False)
            methods[f"1 process x {name}, batch 8"] = with_threads(step, count)
        methods[f"DDP {WORLD} processes x 1 thread, batch 4 each"] = group.step
        times = compare(methods, repeats, warmup)
    finally:
        torch.set_num_threads(threads)
        difference = group.close()
    if difference != 0.0:
        raise AssertionError(f"DDP ranks' parameters differ by {difference:g} after the steps")
    names = list(times)
    reference = times[names[0]]
    rows = [
        [name, f"{t:.3g}", f"{GLOBAL_BATCH / t:.3g}", ratio(reference / t)]
        for name, t in times.items()
    ]
    speedups = [f"{ratio(times[name] / times[names[-1]])} ({name})" for name in names[:-1]]
    return "\n\n".join(
        [
            f"## {TITLE}",
            "What is timed: one global training step of 8 images of the "
            "`experiment=camvid_fpn_lite0` recipe (FPN on EfficientNet-Lite0, random weights, "
            f"11 classes, unweighted cross-entropy, synthetic {crop[0]}x{crop[1]} batches held "
            "in memory; forward, loss, backward, "
            "AdamW with the recipe's parameter groups, poly schedule, EMA update), in 1 process "
            f"of {WORLD} threads, in 1 process of 1 thread and in {WORLD} gloo DDP processes "
            "of 1 thread with 4 images each (started once with torch.multiprocessing; the DDP "
            "time runs from telling both ranks to step until both are done). One step of each "
            f"layout in turn; median of {repeats} after {warmup} untimed. Speed-up = "
            f"{names[0]} time / this row's time (>1 is faster). Both DDP ranks' parameters "
            "were equal after the last step.",
            table(["layout", "s per global step", "img/s", "speed-up"], rows),
            f"DDP's speed against 1 process: {', '.join(speedups)}.",
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    run_alone(run, __doc__, argv)


if __name__ == "__main__":
    main()
