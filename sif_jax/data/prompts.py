"""The prompt wordings a run can use (`config.data.prompt`): system turn, the images of the user turn
and the text after the question.

    builtin          sif_jax's own: Qwen's default system turn, the image, the question, a newline,
                     then `tokenizer.SIF_INSTRUCTION` (the built-in task's default; its words are in
                     the built-in tokenizer's vocabulary).
    sifthinker       SIFThinker's inference prompt, two images: the user turn is
                     `Original image: <image>\\nDepth image: <image>\\n{question} {instruction}`, the
                     depth map drawn as SIFThinker stores it (a Spectral_r pseudo-colour PNG), with
                     the instruction of its inference and evaluation scripts (SIFThinker repository,
                     commit 613c94a, `scripts/infer.py` (`subfix`), `evaluation/sat/eval_sat.py`).
    sifthinker_sft   the same two-image turn with the wording of SIFThinker's SFT data
                     (`data_generation/produce.py`, `prompt_generation`): boxes "with depth".
    sifthinker_grpo  the one-image GRPO-SIF prompt (`GRPO-SIF/src/open-r1-multimodal/src/open_r1/
                     vlm_modules/qwen_module.py`, `get_question_template("GRPO-SIF")`): the image, then
                     the question, a space and the instruction; GRPO-SIF's active dataset code
                     (`grpo_jsonl.py`, `make_conversation_from_jsonl`) gives the policy the RGB image
                     only and keeps the depth map for the reward.
    sayo             a SAYO-style system turn (think briefly, final answer in <answer></answer>;
                     METHODS §2) and the bare question. **A paraphrase, not SAYO's words**: SAYO's
                     prompt is not public as far as we could find. Searched: GitHub code and issues
                     (no SAYO repository; the project page https://cratileo.github.io/Sayo-Pages/ says
                     the code is not uploaded yet), and the paper (arXiv 2602.08241, "Do MLLMs Really
                     See It"), whose text we found prints no system prompt. Replace
                     `SAYO_SYSTEM_PROMPT` with the released wording when it appears.

All SIFThinker prompts use Qwen's default system turn ("You are a helpful assistant.", which both
LLaMA-Factory's qwen2_vl template and HF's Qwen2.5-VL chat template insert when none is given).

Two-image prompts (`Prompt.depth_image`): the RGB image comes first, then the depth image, each
processed by the model family as a separate image (its own `image_grid_thw` row and M-RoPE block,
as HF's processor does for a two-image message). Target regions (`region_mask`, TAS's numerator)
are cells of the RGB image only; `visual_tokens` and the visual attention mass (TAS's reference)
count the tokens of both images, so uniform attention over all image tokens still gives TAS 0.5.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from sif_jax.data.tokenizer import DEFAULT_SYSTEM_PROMPT, SIF_INSTRUCTION

# The text pieces around SIFThinker's two images (scripts/infer.py, evaluation/sat/eval_sat.py: "Original image: ",
# image, "\nDepth image: ", image, "\n" + question + subfix; produce.py: "Original image: <image>\nDepth image:
# <image>\n{prompt} ...").
SIFTHINKER_RGB_LABEL = "Original image: "
SIFTHINKER_DEPTH_LABEL = "\nDepth image: "
# SIFThinker's instruction after the question, verbatim (scripts/infer.py `subfix` without its leading space;
# the same words as GRPO-SIF's question template).
SIFTHINKER_INSTRUCTION = (
    "Please first output the thinking process in <think> </think> tags, where bounding box is enclosed in "
    "<area> </area> tags and text analysis is enclosed in <text> </text> tags, alternating between them to "
    "iteratively refine the focused area. Then output the final answer in <answer> </answer> tags."
)
# What SIFThinker's data generation (data_generation/produce.py) puts in the SFT user turn after the
# question: the same words, with boxes "with depth".
SIFTHINKER_SFT_INSTRUCTION = SIFTHINKER_INSTRUCTION.replace("where bounding box is", "where bounding box with depth is")
# A labelled paraphrase of SAYO's described behaviour (see the module doc: SAYO's own prompt was not found).
SAYO_SYSTEM_PROMPT = (
    "A conversation between user and assistant. The user asks a question about an image, and the assistant "
    "answers it. The assistant first thinks briefly about the relevant region of the image, then gives the "
    "final answer enclosed within <answer> </answer> tags."
)


@dataclasses.dataclass(frozen=True)
class Prompt:
    """system: the system turn (None: none). instruction: text after the question (None: none),
    joined to it by `separator`. depth_image: the user turn carries the RGB image and then the
    depth image (SIFThinker's two-image layout, `user_parts`)."""

    system: str | None
    instruction: str | None
    separator: str = "\n"
    depth_image: bool = False

    @property
    def num_images(self) -> int:
        return 2 if self.depth_image else 1

    def question(self, problem: str) -> str:
        return problem if not self.instruction else f"{problem}{self.separator}{self.instruction}"

    def user_parts(self, problem: str, image_tokens: Sequence[int]) -> list[str | int]:
        """The user turn as `tokenizer.chat_prompt_parts` takes it: text (str) and images (token counts).

        One image: `[n, question]`. Two images: `["Original image: ", n_rgb, "\\nDepth image: ",
        n_depth, "\\n" + question]` (SIFThinker's layout). ValueError when `image_tokens` does not
        hold `num_images` counts."""
        if len(image_tokens) != self.num_images:
            raise ValueError(f"prompt with {self.num_images} image(s) got {len(image_tokens)} image token counts")
        if not self.depth_image:
            return [int(image_tokens[0]), self.question(problem)]
        return [SIFTHINKER_RGB_LABEL, int(image_tokens[0]), SIFTHINKER_DEPTH_LABEL, int(image_tokens[1]),
                "\n" + self.question(problem)]


PROMPTS: dict[str, Prompt] = {
    "builtin": Prompt(DEFAULT_SYSTEM_PROMPT, SIF_INSTRUCTION, "\n"),
    "sifthinker": Prompt(DEFAULT_SYSTEM_PROMPT, SIFTHINKER_INSTRUCTION, " ", depth_image=True),
    "sifthinker_sft": Prompt(DEFAULT_SYSTEM_PROMPT, SIFTHINKER_SFT_INSTRUCTION, " ", depth_image=True),
    "sifthinker_grpo": Prompt(DEFAULT_SYSTEM_PROMPT, SIFTHINKER_INSTRUCTION, " "),
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
