"""amilab's state as a whole, kept consistent across crashes and within its space: the work
area and durable placement of artifacts (`workarea`), records left pending by a dead process
(`pending`), the check and repair of the registry against the artifact store (`fsck`, with
its digest cache `verified`), what the records reference, the space used (`space`, `blocks`),
reclaiming it (`prune`) and full filesystems (`diskfull`)."""
