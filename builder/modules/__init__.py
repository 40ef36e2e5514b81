"""Out-of-tree kernel modules: what a .ko says about itself (`elf.py`), what a kernel exports
(`symvers.py`, from its linux-headers package, `headers.py`), and whether the one loads into
the other (`verdict.py`), without booting."""
