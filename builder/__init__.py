"""amilab builder: recipe → rootfs → kernel/modules/ramdisk → disk → formats → registry."""
