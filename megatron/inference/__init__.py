"""Text generation from checkpoints: `setup` (flags -> model of any checkpoint layout on the
tensor-parallel ranks), `generation` (the key/value-cached loop), `sampling` (greedy,
temperature, top-k, top-p), `checkpoint_args` (--use-checkpoint-args)."""
