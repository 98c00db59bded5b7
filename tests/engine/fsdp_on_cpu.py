"""TEST-ONLY launch wrapper: run a module under accelerate's real FSDP2 path on CPU (gloo).

Run as (what tests/engine/test_fsdp.py does, with engine.training.parallel.launch_command, the
command every multi-process job is started with):
    accelerate launch --multi_gpu --num_processes 2 ... tests/engine/fsdp_on_cpu.py \
        engine.training.loop CONFIG.yaml

accelerate decides the layout in AcceleratorState: on CPU it picks MULTI_CPU and ignores an FSDP
plugin (it "falls back" to DDP). torch's fully_shard itself runs on CPU with gloo (two processes
give the one-process gradients), so this wrapper makes exactly one change before running the
module: where accelerate would have dropped the plugin on MULTI_CPU, it keeps it and marks the
state FSDP, as it does on GPUs. Everything after that (fully_shard on each layer, DTensor shards,
the optimizer swap, clipping, checkpoints) is accelerate's and torch's own code. Production code
never imports this file; without it the same run fails with engine.training.parallel's error.
"""

from __future__ import annotations

import runpy
import sys


def force_fsdp_on_cpu() -> None:
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = init


if __name__ == "__main__":
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    force_fsdp_on_cpu()
    runpy.run_module(module, run_name="__main__", alter_sys=True)
