"""amilab's state kept consistent across crashes: the work area and durable placement of
artifacts (`workarea`), records left pending by a dead process (`pending`), and the check and
repair of the registry against the artifact store (`fsck`, with its digest cache `verified`)."""
