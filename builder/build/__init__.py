"""The build pipeline: recipe, root engines, elements, kernels, ramdisk, disk, bootloader."""
