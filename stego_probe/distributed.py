"""The process group of a multi-process extraction (``torchrun`` / ``torch.distributed``).

:func:`stego_probe.extract.extract` runs as one of ``world_size`` ranks when ``world_size > 1``
(passed, or read from the ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` variables ``torchrun``
sets). :class:`Ranks` holds a rank's place in the group, joins the default process group when
none is initialised (``gloo`` on CPU, ``nccl`` on CUDA, ``env://`` rendezvous) and leaves it
again, and exchanges the small Python objects the ranks agree on (the store's state after rank
0 opened it, each rank's outcome). With ``world_size == 1`` nothing touches
``torch.distributed``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass


def _env_int(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}: expected an int, got {text!r}") from None


@dataclass(frozen=True)
class Ranks:
    """A rank's place in a group of ``world_size`` extraction processes.

    ``local_rank`` is the rank on its machine (the CUDA device index of the rank).

    >>> r = Ranks.resolve(rank=1, world_size=3)
    >>> (r.rank, r.world_size, r.distributed, r.mine([0, 1, 2, 3, 4, 5, 6]))
    (1, 3, True, [1, 4])
    >>> Ranks.resolve(rank=0, world_size=1).distributed
    False
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def resolve(cls, rank: int | None = None, world_size: int | None = None) -> Ranks:
        """``rank`` / ``world_size`` as given, else from ``RANK`` / ``WORLD_SIZE`` (each read
        on its own: ``world_size=2`` under ``torchrun`` still takes the rank from ``RANK``; a
        world of one is rank 0 whatever ``RANK`` says; without either, 0 / 1); ``local_rank``
        from ``LOCAL_RANK`` (else ``rank``).

        Raises:
            ValueError: a world size below 1, a rank outside ``[0, world_size)``, or more than
                one rank with no rank given and no ``RANK`` set (every process would be rank 0).
        """
        import numbers

        if world_size is None:
            env_world = _env_int("WORLD_SIZE")
            world_size = 1 if env_world is None else env_world
        for name, v in (("rank", rank), ("world_size", world_size)):
            if v is not None and (not isinstance(v, numbers.Integral) or isinstance(v, bool)):
                raise ValueError(f"{name}: expected an int, got {v!r}")
        world_size = int(world_size)
        if rank is None:
            rank = _env_int("RANK") if world_size > 1 else 0
            if rank is None:
                if world_size > 1:
                    raise ValueError(
                        f"rank: world_size is {world_size} but no rank was given and RANK is "
                        "not set (torchrun sets it; else pass rank=)"
                    )
                rank = 0
        rank = int(rank)
        if world_size < 1:
            raise ValueError(f"world_size (WORLD_SIZE): expected >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank (RANK): expected 0 <= rank < {world_size}, got {rank}")
        local = _env_int("LOCAL_RANK") if world_size > 1 else None
        return cls(int(rank), int(world_size), rank if local is None else local)

    @property
    def distributed(self) -> bool:
        """True with more than one rank."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that creates, validates and completes the store."""
        return self.rank == 0

    def mine(self, blocks: Sequence[int]) -> list[int]:
        """This rank's share of ``blocks``: every ``world_size``-th one from position ``rank``
        (deterministic, disjoint, and balanced also for the pending blocks of a resume)."""
        return [int(b) for b in list(blocks)[self.rank :: self.world_size]]

    @contextlib.contextmanager
    def group(self, device_type: str) -> Iterator[None]:
        """Be a member of the default process group while inside (a no-op for one rank).

        An initialised group (the caller's) is used and left alone; else one is created with
        ``env://`` rendezvous (``MASTER_ADDR`` / ``MASTER_PORT``, which ``torchrun`` sets),
        backend ``nccl`` for ``device_type == "cuda"`` and ``gloo`` otherwise, and destroyed
        on exit.

        Raises:
            ValueError: the group's rank or size differs from this one's.
        """
        if not self.distributed:
            yield
            return
        import torch.distributed as dist

        created = False
        if not dist.is_initialized():
            backend = "nccl" if device_type == "cuda" else "gloo"
            dist.init_process_group(
                backend, init_method="env://", rank=self.rank, world_size=self.world_size
            )
            created = True
        try:
            if (dist.get_rank(), dist.get_world_size()) != (self.rank, self.world_size):
                raise ValueError(
                    f"rank / world_size: {self.rank} / {self.world_size} given, but the process "
                    f"group has rank {dist.get_rank()} of {dist.get_world_size()}"
                )
            yield
        finally:
            if created:
                dist.destroy_process_group()

    def broadcast(self, obj=None):
        """Rank 0's ``obj`` on every rank (picklable; the value of other ranks is ignored)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank (a barrier)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out
