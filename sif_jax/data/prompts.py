"""The prompt wordings a run can use (`config.data.prompt`): system turn + text after the question.

    builtin     sif_jax's own: Qwen's default system turn, the question, a newline, then
                `tokenizer.SIF_INSTRUCTION` (the built-in task's default; its words are in the
                built-in tokenizer's vocabulary).
    sifthinker  SIFThinker's GRPO-SIF question template (GRPO-SIF/.../vlm_modules/qwen_module.py,
                `get_question_template("GRPO-SIF")`): the question, a space, then its instruction, after
                the image; Qwen's default system turn (LLaMA-Factory's qwen2_vl template).
    sayo        a SAYO-style system turn (think briefly, final answer in <answer></answer>; METHODS §2)
                and the bare question.

SIFThinker's SFT data and its evaluation scripts put two images in the user turn
(`Original image: <image>\nDepth image: <image>\n{question}{instruction}`); sif_jax prompts carry one
image, so `sifthinker` reproduces the one-image GRPO-SIF prompt, not the two-image SFT one.
"""

from __future__ import annotations

import dataclasses

from sif_jax.data.tokenizer import DEFAULT_SYSTEM_PROMPT, SIF_INSTRUCTION

# GRPO-SIF's question template suffix, verbatim.
SIFTHINKER_INSTRUCTION = (
    "Please first output the thinking process in <think> </think> tags, where bounding box is enclosed in "
    "<area> </area> tags and text analysis is enclosed in <text> </text> tags, alternating between them to "
    "iteratively refine the focused area. Then output the final answer in <answer> </answer> tags."
)
# What SIFThinker's data generation (data_generation/produce.py) puts in the SFT user turn after the
# question: the same words, with boxes "with depth".
SIFTHINKER_SFT_INSTRUCTION = SIFTHINKER_INSTRUCTION.replace("where bounding box is", "where bounding box with depth is")
SAYO_SYSTEM_PROMPT = (
    "A conversation between user and assistant. The user asks a question about an image, and the assistant "
    "answers it. The assistant first thinks briefly about the relevant region of the image, then gives the "
    "final answer enclosed within <answer> </answer> tags."
)


@dataclasses.dataclass(frozen=True)
class Prompt:
    """system: the system turn (None: none). instruction: text after the question (None: none),
    joined to it by `separator`."""

    system: str | None
    instruction: str | None
    separator: str = "\n"

    def question(self, problem: str) -> str:
        return problem if not self.instruction else f"{problem}{self.separator}{self.instruction}"


PROMPTS: dict[str, Prompt] = {
    "builtin": Prompt(DEFAULT_SYSTEM_PROMPT, SIF_INSTRUCTION, "\n"),
    "sifthinker": Prompt(DEFAULT_SYSTEM_PROMPT, SIFTHINKER_INSTRUCTION, " "),
    "sayo": Prompt(SAYO_SYSTEM_PROMPT, None),
}


def get_prompt(name: str, field: str = "config.data.prompt") -> Prompt:
    """The named wording; ValueError naming `field` and the choices otherwise."""
    if name not in PROMPTS:
        raise ValueError(f"{field}={name!r}: choose one of {sorted(PROMPTS)}")
    return PROMPTS[name]


def instruction_text(value: str) -> str | None:
    """A command line's `--instruction` / `config.data.instruction`: 'sif' -> the SIFThinker
    instruction (`tokenizer.SIF_INSTRUCTION`), '' / 'none' -> no instruction, anything else as is."""
    if value == "sif":
        return SIF_INSTRUCTION
    if value in ("", "none"):
        return None
    return value
