"""The process group every training loop runs in: one process today, N under `accelerate launch`.

A loop asks `Distributed` which rank it is, which contiguous shard of a global batch is its own, and
for the few collectives that keep ranks in step: a sum of tensors over ranks (statistics, gradients),
the concatenation of per-rank tensors or lists in rank order (per-answer scores, first words), and an
object broadcast from rank 0 (an evaluation run there). At world size 1 every collective returns its
input, so the single process runs exactly the same code with no process group at all.

Data-parallel by default: every rank holds the whole model and the gradients are summed. Launched with
accelerate's FSDP plugin (`--use_fsdp --fsdp_version 2`, or `distributed_type: FSDP` in an accelerate
config), `sharded` is true and `shard_model` splits every parameter over the ranks (PyTorch FSDP2,
`fully_shard`), for a policy that does not fit one device; FSDP then sums the gradients itself, and
every rank must run the same forward passes (ml.policy.sampling and the loops keep them in step).

Built on Hugging Face accelerate's `PartialState`, which reads the launcher's environment
(`accelerate launch`, `torchrun`): NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
from accelerate import PartialState
from accelerate.utils import (
    FullyShardedDataParallelPlugin,
    broadcast_object_list,
    gather,
    gather_object,
    parse_flag_from_env,
    reduce,
)


@dataclass(frozen=True)
class Distributed:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    sharded: bool = False  # FSDP: each parameter split over the ranks (see shard_model)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def reporter(self, progress: Callable[[str], None]) -> Callable[[str], None]:
        """`progress` on rank 0, a no-op elsewhere: every rank holds the same numbers, one reports them."""
        return progress if self.is_main else _silent

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

    def gather_objects(self, values: list) -> list:
        """Every rank's list concatenated in rank order (pickled; lists may differ in length)."""
        if self.world_size == 1:
            return list(values)
        return gather_object(list(values))

    def max(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise maximum over ranks (the input itself at world size 1)."""
        if self.world_size == 1:
            return tensor
        tensor = tensor.detach().clone()
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return tensor

    def from_main(self, value):
        """Rank 0's `value` on every rank (pickled); what the other ranks pass is ignored."""
        if self.world_size == 1:
            return value
        box = [value]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def sum_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Replace each gradient by its sum over ranks. Loops that divide their loss by the global
        count (not the local one) then hold the gradient of the global batch on every rank. A parameter
        sharded by FSDP (a DTensor) was already summed in the backward pass (shard_model)."""
        if self.world_size == 1:
            return
        from torch.distributed.tensor import DTensor

        for p in parameters:
            if isinstance(p, DTensor):
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)  # a rank with no rows in a minibatch still joins the sum
            torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def shard_model(self, model: torch.nn.Module, *others: torch.nn.Module) -> None:
        """FSDP2 in place when `sharded` (else nothing): each transformer block of `model` one unit
        (the plugin's transformer_cls_names_to_wrap, else the model's `_no_split_modules`, as accelerate
        wraps), the rest of `model` one unit, each of `others` (a value head) one unit. Forward passes
        must go through `model` (or a block of it) so its parameters are gathered. Call it before
        building the optimizer: the parameters become DTensors.

        The plugin's settings (reshard after forward, CPU offload, mixed precision) come from the
        launcher's environment, but the sharding is torch's `fully_shard` called here: accelerate
        applies FSDP only to models passed through `Accelerator.prepare`, and only on GPUs."""
        if not self.sharded:
            return
        from torch.distributed.fsdp import fully_shard

        plugin = FullyShardedDataParallelPlugin()  # reads FSDP_* set by `accelerate launch`
        if plugin.fsdp_version != 2:
            raise ValueError("the training loops shard with FSDP2: launch with --fsdp_version 2 "
                             "(fsdp_version: 2 in the accelerate config)")
        options = {"reshard_after_forward": plugin.reshard_after_forward, "offload_policy": plugin.cpu_offload}
        if plugin.mixed_precision_policy is not None:
            options["mp_policy"] = plugin.mixed_precision_policy
        names = set(plugin.transformer_cls_names_to_wrap or [])
        inner = getattr(model, "get_base_model", lambda: model)()  # a peft model's transformers model
        names = names or set(getattr(inner, "_no_split_modules", None) or [])
        blocks = [module for module in model.modules() if type(module).__name__ in names]
        if not blocks:
            raise ValueError(f"no transformer block to shard in {type(inner).__name__} (looked for {sorted(names)})")
        for module in [*blocks, model, *others]:
            fully_shard(module, **options)
            # The loops divide each loss by the global count: the reduced gradient is a sum, not a mean
            # (a plain SUM reduction: gloo has no pre-multiplied one).
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)

    def full_weights(self, named: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
        """Whole, detached CPU copies of `named` on every rank (FSDP shards gathered: every rank must call)."""
        from torch.distributed.tensor import DTensor

        return {name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().cpu().clone()
                for name, p in named.items()}

    def optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """The optimizer's state to save, whole and keyed by parameter name (PyTorch's full optimizer
        state dict), so it loads at any world size, sharded or not. Every rank must call; under FSDP
        only rank 0 gets it."""
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(model, optimizer,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        # The same form by hand: torch's loader of that form needs a process group.
        plain, names = optimizer.state_dict(), _parameter_names(model, optimizer)
        return {"state": {names[index]: value for index, value in plain["state"].items()},
                "param_groups": [{**group, "params": [names[i] for i in group["params"]]}
                                 for group in plain["param_groups"]]}

    def load_optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """Load what `optimizer_state` saved."""
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                                     options=StateDictOptions(full_state_dict=True))
            return
        index = {name: i for i, name in _parameter_names(model, optimizer).items()}
        optimizer.load_state_dict({
            "state": {index[name]: value for name, value in state["state"].items()},
            "param_groups": [{**group, "params": [index[name] for name in group["params"]]}
                             for group in state["param_groups"]]})

    def load_weights(self, named: dict[str, torch.nn.Parameter], weights: dict[str, torch.Tensor]) -> None:
        """Copy whole tensors into `named` parameters (this rank's shard of each under FSDP)."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        missing, unexpected = sorted(set(named) - set(weights)), sorted(set(weights) - set(named))
        if missing or unexpected:
            raise ValueError(f"the saved weights do not fit the model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        with torch.no_grad():
            for name, p in named.items():
                value = weights[name].to(dtype=p.dtype)
                if isinstance(p, DTensor):
                    value = distribute_tensor(value.to(p.device), p.device_mesh, p.placements)
                p.copy_(value)


def _silent(_line: str) -> None:
    pass


def _parameter_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[int, str]:
    """Position of each parameter in `optimizer.state_dict()` -> its name in `model`."""
    names = {id(p): name for name, p in model.named_parameters()}
    return dict(enumerate(names[id(p)] for group in optimizer.param_groups for p in group["params"]))


@cache
def current() -> Distributed:
    """The process group of this process, created once: world size 1 unless a launcher set
    WORLD_SIZE (accelerate launch / torchrun)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return SINGLE
    # accelerate only picks gloo on a CPU machine when told it is a CPU run.
    state = PartialState(cpu=not torch.cuda.is_available())
    return Distributed(rank=state.process_index, world_size=state.num_processes,
                       local_rank=state.local_process_index, device=state.device,
                       sharded=parse_flag_from_env("ACCELERATE_USE_FSDP"))


SINGLE = Distributed(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
"""The single in-process run (its device is unused: single-process loops keep their own device setting)."""
