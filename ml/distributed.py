"""The process group every training loop runs in: one process today, N under `accelerate launch`.

A loop asks `Distributed` which rank it is, which contiguous shard of a global batch is its own, and
for the few collectives that keep ranks in step: a sum of tensors over ranks (statistics, gradients),
the concatenation of per-rank tensors in rank order (per-answer scores), and an object broadcast from
rank 0 (an evaluation run there). At world size 1 every collective returns its input, so the single
process runs exactly the same code with no process group at all.

Built on Hugging Face accelerate's `PartialState`, which reads the launcher's environment
(`accelerate launch`, `torchrun`): NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather, reduce


@dataclass(frozen=True)
class Distributed:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of a global batch of n items; n must divide evenly, so every
        rank does the same work and the global batch is the same at any world size."""
        if n % self.world_size:
            raise ValueError(f"a global batch of {n} does not split evenly over {self.world_size} processes")
        return self.shard_of(n)

    def shard_of(self, n: int) -> slice:
        """This rank's contiguous part of n items when n need not divide evenly (the first n % world
        ranks take one more; a rank may get none)."""
        size, extra = divmod(n, self.world_size)
        start = self.rank * size + min(self.rank, extra)
        return slice(start, start + size + (self.rank < extra))

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks (a new tensor; the input itself at world size 1)."""
        if self.world_size == 1:
            return tensor
        return reduce(tensor.detach().clone(), reduction="sum")

    def cat(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's tensor concatenated along dim 0 in rank order (equal shapes on all ranks)."""
        if self.world_size == 1:
            return tensor
        return gather(tensor.contiguous())

    def from_main(self, value):
        """Rank 0's `value` on every rank (pickled); what the other ranks pass is ignored."""
        if self.world_size == 1:
            return value
        box = [value]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def sum_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Replace each gradient by its sum over ranks. Loops that divide their loss by the global
        count (not the local one) then hold the gradient of the global batch on every rank."""
        if self.world_size == 1:
            return
        for p in parameters:
            if p.grad is None:
                p.grad = torch.zeros_like(p)  # a rank with no rows in a minibatch still joins the sum
            torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()


@cache
def current() -> Distributed:
    """The process group of this process, created once: world size 1 unless a launcher set
    WORLD_SIZE (accelerate launch / torchrun)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return SINGLE
    # accelerate only picks gloo on a CPU machine when told it is a CPU run.
    state = PartialState(cpu=not torch.cuda.is_available())
    return Distributed(rank=state.process_index, world_size=state.num_processes,
                       local_rank=state.local_process_index, device=state.device)


SINGLE = Distributed(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
"""The single in-process run (its device is unused: single-process loops keep their own device setting)."""
