"""amilab harness: boot AMIs under QEMU, metadata service, SSH checks (may import builder)."""
