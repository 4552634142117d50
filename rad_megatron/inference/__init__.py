"""Generation: batched greedy/sampled decoding (engine), speculative generation with a self-draft or a draft model
(spec_generate, draft, rollback), and the probe's self-speculative decoding (speculative)."""
