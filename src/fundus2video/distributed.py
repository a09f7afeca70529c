"""Per-network gradient reduction under DDP.

Lightning wraps the whole LightningModule (generator, projector, discriminator) in one
DistributedDataParallel. Every window runs two backward passes, G's loss then D's, and DDP
all-reduces every gradient bucket in each: G's loss also reaches D (the adversarial terms go through
it; those gradients are cleared before D's backward), and D's loss reaches no G parameter, whose
buckets DDP then reduces as zeros. At the paper size that is about 0.7 GB of G gradients reduced
twice per window, half of it for nothing.

`per_network_hook` is a DDP communication hook that all-reduces, in each backward, only the
gradients of the network whose loss is being back-propagated (in a bucket that holds both
networks, only that network's part of it). The rest keeps the rank's own gradients, which are never
used: D's are cleared before D's backward, and G's stepped before it. The stepped gradients, and so
the training, are those of plain DDP (tests/test_distributed.py compares both on two gloo ranks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
import torch.distributed as dist


class PerNetworkReduction:
    """The hook's state: which parameters belong to which network, which network's backward is
    running (`active`; None: reduce everything), and the gradient elements reduced and skipped."""

    def __init__(self, networks: dict[str, Iterable[torch.nn.Parameter]], process_group=None):
        self.owner = {id(p): name for name, params in networks.items() for p in params}
        self.active: str | None = None
        self.process_group = process_group
        self.reduced = 0
        self.skipped = 0

    @contextlib.contextmanager
    def backward_of(self, network: str) -> Iterator[None]:
        """Within: a backward pass of `network`'s loss (the hook skips the other network's buckets)."""
        self.active = network
        try:
            yield
        finally:
            self.active = None


def _mean_over_ranks(process_group, tensor: torch.Tensor) -> torch.futures.Future:
    """All-reduce `tensor` in place to its mean over the ranks (divided first, as DDP does)."""
    group = process_group if process_group is not None else dist.group.WORLD
    tensor.div_(group.size())
    return dist.all_reduce(tensor, group=group, async_op=True).get_future()


def _own_ranges(state: PerNetworkReduction, bucket) -> list[list[int]] | None:
    """The contiguous [start, end) element ranges of the bucket's flat buffer that hold the active
    network's gradients, or None when a gradient does not lie in the buffer (then all is reduced)."""
    buffer = bucket.buffer()
    base, size, ranges = buffer.data_ptr(), buffer.element_size(), []
    for param, grad in zip(bucket.parameters(), bucket.gradients(), strict=True):
        start, rest = divmod(grad.data_ptr() - base, size)
        if rest or start < 0 or start + grad.numel() > buffer.numel():
            return None
        if state.owner.get(id(param)) != state.active:
            continue
        if ranges and ranges[-1][1] == start:
            ranges[-1][1] = start + grad.numel()
        else:
            ranges.append([start, start + grad.numel()])
    return ranges


def per_network_hook(state, bucket):  # unannotated: DDP compares real annotations, and this file's are strings
    """The communication hook (state: a PerNetworkReduction, bucket: a dist.GradBucket; returns a
    torch.futures.Future of the bucket's flat tensor). Inside `backward_of(network)`, only the
    parts of the bucket holding that network's gradients are all-reduced (mean over ranks); the
    rest keeps the rank's own values. Outside it, the whole bucket, as plain DDP."""
    buffer = bucket.buffer()
    ranges = _own_ranges(state, bucket) if state.active is not None else None
    if ranges is None:
        ranges = [[0, buffer.numel()]]
    reduced = sum(end - start for start, end in ranges)
    state.reduced += reduced
    state.skipped += buffer.numel() - reduced
    if not ranges:
        done = torch.futures.Future()
        done.set_result(buffer)
        return done
    # One all-reduce, and the future DDP waits on chained from its own: on a GPU the communication
    # library's future carries the events of its stream and `then` passes them on, so DDP's copy into
    # .grad waits for the reduction (a future made by collect_all carries none). Several ranges are
    # reduced as one flat copy, written back in the callback.
    if len(ranges) == 1:
        start, end = ranges[0]
        return _mean_over_ranks(state.process_group, buffer[start:end]).then(lambda _: buffer)
    flat = torch.cat([buffer[start:end] for start, end in ranges])

    def write_back(_):
        offset = 0
        for start, end in ranges:
            buffer[start:end].copy_(flat[offset:offset + end - start])
            offset += end - start
        return buffer

    return _mean_over_ranks(state.process_group, flat).then(write_back)


def install(ddp_model: torch.nn.Module, networks: dict[str, Iterable[torch.nn.Parameter]]
            ) -> PerNetworkReduction | None:
    """Register a PerNetworkReduction on `ddp_model` when it is a DistributedDataParallel (else None).
    Must run before its first backward."""
    if not isinstance(ddp_model, torch.nn.parallel.DistributedDataParallel):
        return None
    hook = PerNetworkReduction(networks, ddp_model.process_group)
    ddp_model.register_comm_hook(hook, per_network_hook)
    return hook
