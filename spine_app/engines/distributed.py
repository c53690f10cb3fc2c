"""The end of a multi-process (torchrun) bundle run: every rank meets, tears its process group down and,
under torchrun, leaves without the interpreter's own teardown.

Why the last step: the DistributedDataParallel wrapper (and the engines that hold it, in reference
cycles) keep the gloo process group alive after ``destroy_process_group``, so its C++ worker threads are
only destroyed while the interpreter finalises. A worker that then drops the last reference to a tensor
created from Python needs the GIL, which a finalising interpreter no longer grants: the rank aborts
("terminate called without an active exception", exit -6) after its run has finished and its files are
written, now and then: one CI run in several dozen, never in 31 runs in a row here, with or without
load; the mechanism pytorch/pytorch#179291 describes fits that symptom. Once every output is flushed
and closed there is nothing left for that teardown to do, so a rank started by torchrun ends with
``os._exit(0)``. Outside torchrun (a workflow driven from Python) the process, and its logging, are
left to the caller.
"""

from __future__ import annotations

import logging
import os
import sys

import torch.distributed as dist

#: set by torchrun (torch.distributed.elastic) in every worker it starts
TORCHRUN_ENV = "TORCHELASTIC_RUN_ID"


def end_distributed_run(writers: list | tuple = ()) -> None:
    """Barrier, ``destroy_process_group``, close ``writers`` (objects with ``close()``, e.g. TensorBoard
    handlers), then, where torchrun started the process, shut logging down, flush the standard streams
    and ``os._exit(0)``. Elsewhere it returns after flushing the streams (logging stays open). Without
    an initialised process group it skips the barrier and the teardown."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    for writer in writers:
        if writer is not None:
            writer.close()
    leaving = bool(os.environ.get(TORCHRUN_ENV))
    if leaving:
        logging.shutdown()  # flushes and closes every handler: nothing of this process logs after it
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    if leaving:
        os._exit(0)


__all__ = ["TORCHRUN_ENV", "end_distributed_run"]
