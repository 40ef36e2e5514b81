"""amilab's state as a whole: the work area, records left pending, fsck, the space used (df),
reclaiming it (prune), full filesystems, and what the records reference."""
