"""One launch: request, plan, steps, the QEMU machine and its layers, accelerator, SSH, keys."""
