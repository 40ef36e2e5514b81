"""Alternative engines that build a recipe's root tree (the native one: mmdebstrap)."""
