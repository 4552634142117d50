"""Generation: greedy/sampled decoding and self-speculative decoding."""
