"""Disks: the format table, qemu-img, VMDK, OVA/OVF, conversion and libguestfs inspection."""
