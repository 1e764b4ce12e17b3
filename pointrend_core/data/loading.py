"""The training data stream: which samples each process sees in which order, and their augmentation seeds.

- Order: `EpochSampler` = DistributedSampler(shuffle, seed, set_epoch) permutation, able to start in the
  middle of an epoch (a resume).
- Augmentation randomness is seeded per sample from (seed, epoch, index) (`SeededSamples`), so neither the
  number of loader workers nor a resume changes the data stream.
- `training_loader` builds the DataLoader; `worker_error_message` and `stop_workers` make a loader worker's
  error end the run at once with the worker's own message.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from pointrend_core.interrupts import ignore_stop_signals


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed for the augmentation of sample `index` in `epoch`, well mixed (numpy SeedSequence)."""
    return _derived_seed(seed, (0, epoch, index))


def process_seed(seed: int, rank: int) -> int:
    """The seed of process `rank`'s training random stream (point sampling), distinct from every sample seed."""
    return _derived_seed(seed, (1, rank))


def _derived_seed(seed: int, key: tuple[int, ...]) -> int:
    high, low = np.random.SeedSequence(seed, spawn_key=key).generate_state(2, np.uint32)
    return (int(high) << 32) | int(low)


@contextmanager
def seeded_host_rngs(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator, `random` and numpy's global generator for the block, then restore them.

    Only the CPU generator is touched (not CUDA ones), so data loading in the main process (workers=0) leaves
    the model's random stream exactly as it was.
    """
    torch_state, random_state, numpy_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(random_state)
        np.random.set_state(numpy_state)


class SeededSamples(Dataset):
    """`dataset` indexed by (epoch, index) keys: sample `index` augmented with its own seeded randomness.

    Returns plain tensors (image (3, h, w) float32, target (h, w) int64), whatever tv_tensor types the
    transforms produce.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        epoch, index = key
        with seeded_host_rngs(sample_seed(self.seed, epoch, index)):
            image, target = self.dataset[index]
        return torch.as_tensor(image).as_subclass(Tensor), torch.as_tensor(target).as_subclass(Tensor).long()


class EpochSampler(Sampler[tuple[int, int]]):
    """(epoch, index) keys of one process: DistributedSampler's shuffled share of `epoch`, from sample `skip`.

    Same permutation as `DistributedSampler(shuffle=True, seed=seed, drop_last=False)` after `set_epoch`
    (padded to a multiple of the world size); `skip` drops the samples already consumed before a resume.
    """

    def __init__(self, dataset: Dataset, world_size: int, rank: int, seed: int) -> None:
        self._inner = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip
        self._inner.set_epoch(epoch)

    def __len__(self) -> int:
        return max(0, len(self._inner) - self.skip)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in list(self._inner)[self.skip :]:
            yield self.epoch, index


def training_loader(
    dataset: Dataset, *, world_size: int, rank: int, seed: int, batch_size: int, workers: int, pin_memory: bool
) -> tuple[DataLoader, EpochSampler]:
    """The loader of one process (batches of `batch_size`, last partial batch dropped) and its sampler."""
    sampler = EpochSampler(dataset, world_size, rank, seed)
    loader = DataLoader(
        SeededSamples(dataset, seed),
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        worker_init_fn=ignore_stop_signals if workers > 0 else None,
        # Its own generator, so that creating loader iterators never draws from the global stream.
        generator=torch.Generator().manual_seed(seed),
    )
    return loader, sampler


def worker_error_message(error: BaseException) -> str | None:
    """The original message of an exception raised in a loader worker, or None for any other exception.

    torch re-raises a worker's exception in the main process with the worker's whole traceback as its message
    ("Caught ValueError in DataLoader worker process 0. Original Traceback ..."); the last line holds the
    original "ValueError: <message>".
    """
    text = str(error)
    if not (text.startswith("Caught ") and "Original Traceback" in text):
        return None
    last = text.rstrip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last


def stop_workers(loader: DataLoader) -> None:
    """End the loader's worker processes now, whatever state they are in.

    They ignore stop signals (`interrupts.ignore_stop_signals`), and torch's own shutdown ends a straggler with
    SIGTERM: after an error (a bad image in a worker, a NaN) a worker blocked on its full result queue would outlive the run and
    the interpreter would wait for it at exit forever. The workers hold nothing worth keeping, so SIGKILL.
    """
    iterator = getattr(loader, "_iterator", None)  # persistent workers live in the loader's iterator
    if iterator is None:
        return
    iterator._shutdown_workers()  # first, so that torch no longer treats a worker's death as an error
    for worker in iterator._workers:
        if worker.is_alive():
            worker.kill()
            worker.join()
