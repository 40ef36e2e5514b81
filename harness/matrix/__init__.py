"""`amilab matrix`: images × kernels × launch options, one smoke run per cell, in parallel."""
