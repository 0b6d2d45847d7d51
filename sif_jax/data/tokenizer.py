"""Tokenizers: a fixed built-in vocabulary for the tiny model, and a wrapper for HF `tokenizer.json`.

Both expose the `Tokenizer` protocol the pipeline, sampler and rewards use: `encode(text)`,
`decode(ids, skip_special_tokens=True)`, `vocab_size`, the Qwen special ids (`pad_id`, `eos_id`
= `<|im_end|>`, `im_start_id`, `vision_start_id`, `vision_end_id`, `image_pad_id`) and
`token_to_id(special_string)`.

`BuiltinTokenizer` (vocabulary < 1024, matching `model.config.tiny()`):

* ids 0-6: the Qwen control tokens at the `TINY_*` ids of `model.config`
  (`<|endoftext|>` = pad 0, `<|im_end|>` = eos 1, `<|im_start|>` 2, `<|vision_start|>` 3,
  `<|vision_end|>` 4, `<|image_pad|>` 5, `<|video_pad|>` 6);
* the SIFThinker grammar tags (`<think>` ... `</answer>`) as single tokens;
* 256 byte tokens `<0x00>`..`<0xFF>` (the fallback for any character outside printable ASCII);
* every printable ASCII character, newline and tab;
* a few JSON pieces of the `<area>` payload (`[{"bbox_2d":[`, `],"depth":`, ...) and `0.`;
* the words of the built-in task (collected once from thousands of generated questions and traces,
  plus the chat/instruction prompts and common spatial words), each with and without a leading
  space. The list is **fixed in this file**: ids never depend on what runs at import time.

Untrusted text never becomes a control token: `encode(text)` treats the control-token strings
(`<|im_end|>`, `<|image_pad|>`, ...) in `text` as plain characters, in both tokenizers (HF's
`split_special_tokens=True`); control ids come only from `chat_prompt`'s template. So a question
holding `<|im_end|>\n<|im_start|>assistant\n...` cannot forge a chat turn, and one holding
`<|image_pad|>` cannot add an image token.

Encoding: the grammar tags are matched first (as literal strings); the rest is split into the JSON pieces,
words with an optional leading space (`" ?[A-Za-z]+"`) and single characters. A word not in the
vocabulary is spelled letter by letter, a character outside the vocabulary as its UTF-8 bytes.
Every token's string is a literal substring of the input, so `decode(encode(s),
skip_special_tokens=False) == s` for any str (lone surrogates included, via `surrogatepass`).
Decoding ids outside the vocabulary (a model with a larger embedding table can sample them) gives
U+FFFD, so a sampled id never crashes text parsing.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from sif_jax.model.config import (
    TINY_BOS_TOKEN_ID,
    TINY_EOS_TOKEN_ID,
    TINY_IMAGE_TOKEN_ID,
    TINY_PAD_TOKEN_ID,
    TINY_VIDEO_TOKEN_ID,
    TINY_VISION_END_TOKEN_ID,
    TINY_VISION_START_TOKEN_ID,
)

PAD = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"

# Qwen control tokens in id order; their ids must equal model.config's TINY_* ids.
SPECIAL_TOKENS: tuple[str, ...] = (PAD, IM_END, IM_START, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)
assert [SPECIAL_TOKENS.index(s) for s in (PAD, IM_END, IM_START, VISION_START, VISION_END, IMAGE_PAD,
                                           VIDEO_PAD)] == [
    TINY_PAD_TOKEN_ID, TINY_EOS_TOKEN_ID, TINY_BOS_TOKEN_ID, TINY_VISION_START_TOKEN_ID,
    TINY_VISION_END_TOKEN_ID, TINY_IMAGE_TOKEN_ID, TINY_VIDEO_TOKEN_ID]

GRAMMAR_TAGS: tuple[str, ...] = (
    "<think>", "</think>", "<area>", "</area>", "<text>", "</text>", "<answer>", "</answer>",
)
BYTE_TOKENS: tuple[str, ...] = tuple(f"<0x{b:02X}>" for b in range(256))
CHARS: tuple[str, ...] = tuple(chr(c) for c in range(0x20, 0x7F)) + ("\n", "\t")
# Multi-character pieces of the <area> JSON payload (see data.format.area_json), and "0.".
PIECES: tuple[str, ...] = ('[{"bbox_2d":[', '}, {"bbox_2d":[', '],"depth":', "}]", "0.")

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
# SIFThinker-style instruction a caller may append to the question (its words are in WORDS).
SIF_INSTRUCTION = (
    'First think: alternate <area> with the region you look at, as [{"bbox_2d":[x1,y1,x2,y2],"depth":d}] '
    "normalised to [0,1], and <text> with what you see there, inside <think></think>; then give the answer "
    "in <answer></answer>."
)

# Words of the built-in task, with and without a leading space. FIXED: do not regenerate or reorder
# (ids would move); append new words at the end only.
WORDS: tuple[str, ...] = (
    ' a', ' about', 'about', ' above', 'above', ' all', 'all', ' alternate', 'alternate', ' an', 'an', ' and', 'and',
    ' Answer', ' answer', 'Answer', 'answer', ' are', 'are', ' area', 'area', ' around', 'around', ' as', 'as',
    ' assistant', 'assistant', ' At', ' at', 'At', 'at', ' back', 'back', ' ball', 'ball', ' bbox', 'bbox', ' be',
    'be', ' because', 'because', ' behind', 'behind', ' below', 'below', ' beside', 'beside', ' between', 'between',
    ' big', 'big', ' bigger', 'bigger', ' black', 'black', ' blue', 'blue', ' bottom', 'bottom', ' box', 'box',
    ' brown', 'brown', ' but', 'but', ' by', 'by', ' camera', 'camera', ' candidates', 'candidates', ' car', 'car',
    ' cat', 'cat', ' center', 'center', ' chair', 'chair', ' Checking', 'Checking', ' Closer', ' closer', 'Closer',
    'closer', ' color', 'color', ' colour', 'colour', ' compare', 'compare', ' cone', 'cone', ' cones', 'cones',
    ' contains', 'contains', ' correct', 'correct', ' count', 'count', ' covers', 'covers', ' cube', 'cube',
    ' cubes', 'cubes', ' cup', 'cup', ' cyan', 'cyan', ' cylinder', 'cylinder', ' cylinders', 'cylinders', ' d',
    ' depth', 'depth', ' different', 'different', ' dog', 'dog', ' down', 'down', ' eight', 'eight', ' elsewhere',
    'elsewhere', ' entire', 'entire', ' far', 'far', ' farther', 'farther', ' farthest', 'farthest', ' find', 'find',
    ' First', ' first', 'First', 'first', ' five', 'five', ' focus', 'focus', ' for', 'for', ' format', 'format',
    ' four', 'four', ' from', 'from', ' front', 'front', ' full', 'full', ' give', 'give', ' gray', 'gray', ' green',
    'green', ' grey', 'grey', ' ground', 'ground', ' has', 'has', ' helpful', 'helpful', ' here', 'here', ' holds',
    'holds', ' How', ' how', 'How', 'how', ' I', ' if', 'if', ' image', 'image', ' in', 'in', ' inside', 'inside',
    ' Is', ' is', 'Is', 'is', ' it', 'it', ' its', 'its', ' large', 'large', ' larger', 'larger', ' largest',
    'largest', ' last', 'last', ' least', 'least', ' left', 'left', ' less', 'less', ' lie', 'lie', ' long', 'long',
    ' look', 'look', ' man', 'man', ' many', 'many', ' mean', 'mean', ' medium', 'medium', ' middle', 'middle',
    ' more', 'more', ' most', 'most', ' much', 'much', ' my', 'my', ' narrow', 'narrow', ' Narrowing', 'Narrowing',
    ' near', 'near', ' nearest', 'nearest', ' need', 'need', ' next', 'next', ' nine', 'nine', ' no', 'no',
    ' normalised', 'normalised', ' Not', ' not', 'Not', 'not', ' now', 'now', ' number', 'number', ' object',
    'object', ' objects', 'objects', ' of', 'of', ' on', 'on', ' one', 'one', ' ones', 'ones', ' only', 'only',
    ' or', 'or', ' orange', 'orange', ' outside', 'outside', ' over', 'over', ' part', 'part', ' person', 'person',
    ' photo', 'photo', ' picture', 'picture', ' pink', 'pink', ' purple', 'purple', ' question', 'question', ' red',
    'red', ' region', 'region', ' relevant', 'relevant', ' right', 'right', ' same', 'same', ' scene', 'scene',
    ' second', 'second', ' see', 'see', ' seems', 'seems', ' seven', 'seven', ' shape', 'shape', ' short', 'short',
    ' shown', 'shown', ' shows', 'shows', ' side', 'side', ' six', 'six', ' size', 'size', ' small', 'small',
    ' smaller', 'smaller', ' smallest', 'smallest', ' so', 'so', ' sphere', 'sphere', ' spheres', 'spheres',
    ' Starting', 'Starting', ' step', 'step', ' table', 'table', ' tall', 'tall', ' ten', 'ten', ' text', 'text',
    ' than', 'than', ' that', 'that', ' The', ' the', 'The', 'the', ' then', 'then', ' there', 'there', ' these',
    'these', ' Think', ' think', 'Think', 'think', ' third', 'third', ' This', ' this', 'This', 'this', ' those',
    'those', ' three', 'three', ' to', 'to', ' top', 'top', ' two', 'two', ' under', 'under', ' view', 'view',
    ' was', 'was', ' were', 'were', ' What', ' what', 'What', 'what', ' where', 'where', ' Which', ' which', 'Which',
    'which', ' white', 'white', ' who', 'who', ' whole', 'whole', ' wide', 'wide', ' with', 'with', ' woman',
    'woman', ' x', ' y', ' yellow', 'yellow', ' yes', 'yes', ' You', ' you', 'You', 'you', ' zero', 'zero',
    ' Zooming', 'Zooming',
    # chat-template roles
    'system', 'user',
)


@runtime_checkable
class Tokenizer(Protocol):
    """What the pipeline, sampler and rewards need from a tokenizer."""

    vocab_size: int
    pad_id: int
    eos_id: int
    im_start_id: int
    vision_start_id: int
    vision_end_id: int
    image_pad_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str: ...

    def token_to_id(self, token: str) -> int: ...


def check_tokenizer(tokenizer: Tokenizer, config: Any, what: str = "--tokenizer") -> None:
    """Does this tokenizer fit this model: its vocabulary is no larger than the model's
    (`config.text.vocab_size`) and its special ids are the ones the model family expects
    (`family.tokenizer_ids(config)`: image pad and EOS, plus vision start/end for Qwen).

    Raises `errors.InputError` (a ValueError) naming `what` (the flag or config field that chose
    the tokenizer) and both values."""
    from sif_jax.errors import InputError
    from sif_jax.model.family import family_of

    if tokenizer.vocab_size > config.text.vocab_size:
        raise InputError(f"{what}: the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary has "
                         f"{config.text.vocab_size}; wrong tokenizer for this model?")
    for name, want in family_of(config).tokenizer_ids(config).items():
        if getattr(tokenizer, name) != want:
            raise InputError(f"{what}: the tokenizer's {name}={getattr(tokenizer, name)} but the model expects "
                             f"{want}; wrong tokenizer for this model?")


def _check_vocab(vocab: Sequence[str]) -> None:
    seen: set[str] = set()
    dups = [t for t in vocab if t in seen or seen.add(t)]  # type: ignore[func-returns-value]
    if dups:
        raise ValueError(f"BuiltinTokenizer vocabulary has duplicate tokens: {dups[:5]}")


class BuiltinTokenizer:
    """The fixed word/piece vocabulary of the built-in task, with byte fallback (see module doc)."""

    def __init__(self) -> None:
        self.vocab: tuple[str, ...] = SPECIAL_TOKENS + GRAMMAR_TAGS + BYTE_TOKENS + CHARS + PIECES + WORDS
        _check_vocab(self.vocab)
        self.vocab_size = len(self.vocab)
        self._byte_offset = len(SPECIAL_TOKENS) + len(GRAMMAR_TAGS)
        # Byte tokens are reachable only through the fallback, never by matching their string.
        self._piece_to_id = {t: i for i, t in enumerate(self.vocab)
                             if not self._byte_offset <= i < self._byte_offset + 256}
        self._special_ids = frozenset(range(len(SPECIAL_TOKENS)))
        literals = sorted(GRAMMAR_TAGS, key=len, reverse=True)
        pieces = sorted(PIECES, key=len, reverse=True)
        self._split = re.compile(
            "(" + "|".join(map(re.escape, literals)) + ")|"
            + "|".join(map(re.escape, pieces)) + r"| ?[A-Za-z]+|.",
            re.DOTALL,
        )
        self.pad_id = TINY_PAD_TOKEN_ID
        self.eos_id = TINY_EOS_TOKEN_ID
        self.im_start_id = TINY_BOS_TOKEN_ID
        self.vision_start_id = TINY_VISION_START_TOKEN_ID
        self.vision_end_id = TINY_VISION_END_TOKEN_ID
        self.image_pad_id = TINY_IMAGE_TOKEN_ID
        self.video_pad_id = TINY_VIDEO_TOKEN_ID
        self._encode_piece = functools.lru_cache(maxsize=65536)(self._encode_piece_uncached)

    def __reduce__(self):  # the vocabulary is fixed: rebuild instead of pickling the regex and cache
        return (BuiltinTokenizer, ())

    @property
    def byte_ids(self) -> range:
        """The ids of the 256 byte-fallback tokens."""
        return range(self._byte_offset, self._byte_offset + 256)

    def token_to_id(self, token: str) -> int:
        i = self._piece_to_id.get(token)
        if i is None:
            raise KeyError(f"token {token!r} is not in the BuiltinTokenizer vocabulary")
        return i

    def id_to_token(self, i: int) -> str:
        return self.vocab[i]

    def _encode_piece_uncached(self, piece: str) -> tuple[int, ...]:
        i = self._piece_to_id.get(piece)
        if i is not None:
            return (i,)
        out: list[int] = []
        if len(piece) > 1 and piece[0] == " ":
            word = self._piece_to_id.get(piece[1:])
            if word is not None:
                return (self._piece_to_id[" "], word)
        for ch in piece:
            j = self._piece_to_id.get(ch)
            if j is not None:
                out.append(j)
            else:
                out.extend(self._byte_offset + b for b in ch.encode("utf-8", "surrogatepass"))
        return tuple(out)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no BOS/EOS added): grammar tags are single ids; control-token strings
        are spelled as plain characters (never a control id)."""
        ids: list[int] = []
        for m in self._split.finditer(text):
            ids.extend(self._encode_piece(m.group(0)))
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`; `skip_special_tokens` drops the Qwen control tokens (not the grammar tags).
        Ids outside the vocabulary decode to U+FFFD; invalid UTF-8 byte runs decode with
        replacement characters."""
        parts: list[str] = []
        buf = bytearray()
        lo, hi = self._byte_offset, self._byte_offset + 256
        for i in ids:
            i = int(i)
            if lo <= i < hi:
                buf.append(i - lo)
                continue
            if buf:
                parts.append(_decode_bytes(buf))
                buf = bytearray()
            if skip_special_tokens and i in self._special_ids:
                continue
            parts.append(self.vocab[i] if 0 <= i < self.vocab_size else "\ufffd")
        if buf:
            parts.append(_decode_bytes(buf))
        return "".join(parts)


def _decode_bytes(buf: bytes | bytearray) -> str:
    try:
        return bytes(buf).decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return bytes(buf).decode("utf-8", "replace")


CONTROL_TOKENS: tuple[str, ...] = SPECIAL_TOKENS  # the strings only `chat_prompt`'s template may emit as ids


class HFTextTokenizer:
    """A Hugging Face `tokenizer.json` read with the `tokenizers` library, text only (any model).

    `path` is the file or a directory holding `tokenizer.json`. `encode(text)` adds no BOS/EOS and
    does not parse special added tokens in `text` (`tokenizers.Tokenizer.encode_special_tokens =
    True`, what transformers' `split_special_tokens=True` sets): their strings are BPE-encoded as
    text. Non-special added tokens (Qwen3's `<think>`, `<tool_call>`) are still matched, as HF
    does. No network access.

    Raises:
      FileNotFoundError: no tokenizer file at `path`.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        from tokenizers import Tokenizer as _HF

        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{type(self).__name__}: no tokenizer file at {path}")
        self.path = path
        self._tok = _HF.from_file(path)
        self._tok.encode_special_tokens = True
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))

    def token_to_id(self, token: str) -> int:
        i = self._tok.token_to_id(token)
        if i is None:
            raise KeyError(f"{type(self).__name__}: token {token!r} is not in {self.path}")
        return int(i)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


class HFTokenizer(HFTextTokenizer):
    """A Qwen2-VL / Qwen2.5-VL `tokenizer.json` (or any with the Qwen control tokens): `HFTextTokenizer`
    plus the Qwen special ids, looked up by their strings.

    Raises:
      FileNotFoundError: no tokenizer file.
      KeyError: a control token missing from the file (naming it and the file).
      ValueError: a control token that the file does not mark `special` (its string in user text
        would then still be parsed as the control id).
    """

    def __init__(self, path: str | os.PathLike, pad_token: str = PAD) -> None:
        super().__init__(path)
        self.pad_id = self.token_to_id(pad_token)
        self.eos_id = self.token_to_id(IM_END)
        self.im_start_id = self.token_to_id(IM_START)
        self.vision_start_id = self.token_to_id(VISION_START)
        self.vision_end_id = self.token_to_id(VISION_END)
        self.image_pad_id = self.token_to_id(IMAGE_PAD)
        specials = {int(i) for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        for name in (pad_token, IM_END, IM_START, VISION_START, VISION_END, IMAGE_PAD):
            if self.token_to_id(name) not in specials:
                raise ValueError(f"HFTokenizer: {name!r} is not a special added token in {self.path}; user text "
                                 f"holding it would be encoded as the control id")


def chat_prompt(
    tokenizer: Tokenizer,
    question: str,
    num_image_tokens: int,
    system: str | None = DEFAULT_SYSTEM_PROMPT,
) -> list[int]:
    """Qwen2.5-VL's chat template for one image and one user turn, ending with the assistant header:

    `<|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n<|vision_start|>` +
    `<|image_pad|>` x num_image_tokens + `<|vision_end|>{question}<|im_end|>\\n<|im_start|>assistant\\n`

    (`system=None` leaves the system turn out): `chat_prompt_parts(tokenizer, [num_image_tokens,
    question], system)`. Control ids come only from this template; the text between them is encoded
    piece by piece with `tokenizer.encode` (which never parses control tokens), which is what HF's
    processor produces for text without control-token strings (HF splits on added special tokens
    first); for a question *with* them, the ids equal HF's with `split_special_tokens=True` on the
    question.

    Raises:
      ValueError: num_image_tokens < 0, or a tokenizer whose `encode` returns a control id for
        text (naming the id and the text).
    """
    if num_image_tokens < 0:
        raise ValueError(f"chat_prompt: num_image_tokens={num_image_tokens} must be >= 0")
    return chat_prompt_parts(tokenizer, [num_image_tokens, question], system)


def chat_prompt_parts(
    tokenizer: Tokenizer,
    parts: Sequence[str | int],
    system: str | None = DEFAULT_SYSTEM_PROMPT,
) -> list[int]:
    """Qwen's chat template for one user turn whose content is `parts` in order: a str is text, an int
    n is an image of n tokens (`<|vision_start|>` + `<|image_pad|>` x n + `<|vision_end|>`), as HF's
    Qwen2.5-VL / Qwen3-VL chat template renders a content list of {"type": "text"} / {"type": "image"}
    items. E.g. SIFThinker's two-image turn: `["Original image: ", n_rgb, "\\nDepth image: ", n_depth,
    "\\n" + question]`. Ends with the assistant header; `system=None` leaves the system turn out.

    Raises:
      ValueError: an image with a negative or non-integer token count, a part that is neither str
        nor int, or a tokenizer whose `encode` returns a control id for text.
    """
    t = tokenizer
    control = {t.im_start_id, t.eos_id, t.vision_start_id, t.vision_end_id, t.image_pad_id, t.pad_id}

    def text(s: str) -> list[int]:
        ids = t.encode(s) if s else []
        bad = sorted(control.intersection(ids))
        if bad:
            raise ValueError(f"chat_prompt: the tokenizer encoded text {s[:80]!r} to control id(s) {bad}; "
                             f"encode() must not parse control tokens in text")
        return ids

    ids: list[int] = []
    if system is not None:
        ids += [t.im_start_id, *text(f"system\n{system}"), t.eos_id, *text("\n")]
    ids += [t.im_start_id, *text("user\n")]
    for i, part in enumerate(parts):
        if isinstance(part, str):
            ids += text(part)
        elif isinstance(part, int | np.integer) and not isinstance(part, bool) and part >= 0:
            ids += [t.vision_start_id, *[t.image_pad_id] * int(part), t.vision_end_id]
        else:
            raise ValueError(f"chat_prompt_parts: parts[{i}]={part!r} must be text (str) or an image's token "
                             "count (int >= 0)")
    ids += [t.eos_id, *text("\n")]
    ids += [t.im_start_id, *text("assistant\n")]
    return ids


def chat_prompt_text(question: str, num_image_tokens: int, system: str | None = DEFAULT_SYSTEM_PROMPT) -> str:
    """The string `chat_prompt`'s ids decode to (`decode(..., skip_special_tokens=False)`)."""
    head = f"{IM_START}system\n{system}{IM_END}\n" if system is not None else ""
    return (f"{head}{IM_START}user\n{VISION_START}{IMAGE_PAD * num_image_tokens}{VISION_END}{question}"
            f"{IM_END}\n{IM_START}assistant\n")
