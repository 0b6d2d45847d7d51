"""LLaVA's chat prompt with the real LLaMA-2 tokenizer equals the HF processor's tokenization of the
template text (`<image>` expanded, specials parsed, BOS added by the tokenizer's post-processor)."""

import os

import pytest

from sif_jax.model import family
from sif_jax.model.llava.inputs import IMAGE, chat_prompt_text
from sif_jax.model.llava.tokenizer import LlavaTokenizer
from tests.data.conftest import tokenizers_dir  # noqa: F401  (fixture)


@pytest.mark.parametrize("question", ["What is to the left of the red cube?", "Is it <image> or <pad>? </s>"])
def test_chat_prompt_equals_hf_tokenization_of_the_template(tokenizers_dir, question):  # noqa: F811
    from tokenizers import Tokenizer

    tok = LlavaTokenizer(os.path.join(tokenizers_dir, "llama2"))
    config = family.get_preset("llava_1_5_7b")
    assert (tok.image_pad_id, tok.pad_id, tok.bos_id, tok.eos_id) == (32000, 32001, 1, 2)
    assert (tok.image_pad_id, tok.pad_id, tok.eos_id) == (config.image_token_id, config.pad_token_id,
                                                         config.eos_token_id)
    ids = family.family_of(config).chat_prompt(tok, question, config.image_seq_length, None)
    assert ids[0] == tok.bos_id and ids.count(tok.image_pad_id) == 576
    # Oracle: the processor's path — the whole template text with <image> x 576, specials parsed.
    hf = Tokenizer.from_file(os.path.join(tokenizers_dir, "llama2", "tokenizer.json"))
    hf.add_special_tokens(["<image>", "<pad>"])
    text = chat_prompt_text(question).replace(IMAGE, IMAGE * config.image_seq_length)
    if "<image>" in question or "</s>" in question:
        # a question holding control strings cannot add control ids (split_special_tokens on it)
        assert ids.count(tok.image_pad_id) == 576 and tok.eos_id not in ids
        return
    assert ids == hf.encode(text, add_special_tokens=True).ids
