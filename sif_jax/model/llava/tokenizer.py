"""The LLaVA-1.5 tokenizer: a LLaMA-2 `tokenizer.json` plus LLaVA's `<image>` and `<pad>` tokens.

llava-hf's tokenizer is LLaMA-2's (32,000 tokens; `<s>` = 1 BOS, `</s>` = 2 EOS) with `<image>` = 32000
and `<pad>` = 32001 added as special tokens. A file that lacks them (the plain LLaMA-2 tokenizer) gets
them appended in that order, so the ids are the released ones. Exposes the `Tokenizer` protocol of
`sif_jax.data.tokenizer` (`image_pad_id` = `<image>`, `eos_id`, `pad_id`, `bos_id`); LLaVA has no
vision start/end or chat-turn tokens, so those ids are -1.
"""

from __future__ import annotations

import os

from sif_jax.data.tokenizer import HFTextTokenizer

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"


class LlavaTokenizer(HFTextTokenizer):
    """`HFTextTokenizer` over a LLaMA-2 tokenizer.json with `<image>` / `<pad>` (module doc).

    Raises FileNotFoundError (no file) or KeyError (no `<s>` / `</s>` in the file)."""

    def __init__(self, path: str | os.PathLike) -> None:
        from tokenizers import AddedToken

        super().__init__(path)
        for token in (IMAGE_TOKEN, PAD_TOKEN):
            if self._tok.token_to_id(token) is None:
                self._tok.add_special_tokens([AddedToken(token, special=True, normalized=False)])
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        self.image_pad_id = self.token_to_id(IMAGE_TOKEN)
        self.pad_id = self.token_to_id(PAD_TOKEN)
        self.bos_id = self.token_to_id(BOS_TOKEN)
        self.eos_id = self.token_to_id(EOS_TOKEN)
        self.vision_start_id = self.vision_end_id = self.im_start_id = -1
