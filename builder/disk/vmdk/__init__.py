"""VMDK: a validating reader (every descriptor and sparse layout) and a streamOptimized
writer in VMware's layout. Untrusted files are checked here before anything else opens
them; see image.open_vmdk."""

from builder.disk.vmdk.image import VmdkImage, open_vmdk, sniff

__all__ = ["VmdkImage", "open_vmdk", "sniff"]
