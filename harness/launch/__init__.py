"""One launch: request, plan, steps, the QEMU machine and its layers, accelerator, SSH, keys,
and the instance-type table (which a single launch already needs, so it lives here)."""
