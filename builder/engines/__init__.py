"""Alternative engines that build a recipe's root tree (the native engine lives in builder.build)."""
