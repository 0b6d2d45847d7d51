"""Inference pieces shared by training, evaluation and generation: the KV-cache sampler, AdaptVis
decoding, the teacher-forced scoring pass, chunked LM-head statistics and prompt-group sharing."""
