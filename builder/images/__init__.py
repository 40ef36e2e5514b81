"""The image catalogue: records, the registry, import, copy and attributes, bundles, store."""
