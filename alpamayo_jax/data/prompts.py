"""Prompt assembly per training stage in the release's chat layout, with each stage's loss masks.

Layout: `<|im_start|>system\\n{SYSTEM}<|im_end|>\\n<|im_start|>user\\n` [images] [history block]
`{instruction}<|im_end|>\\n<|im_start|>assistant\\n` then per stage:
  0 VQA: the answer + `<|im_end|>` (text loss);
  1 trajectory: `<|traj_future_start|>` + future tokens (trajectory loss);
  2 CoC: `<|cot_start|>` reasoning `<|cot_end|>` (text loss) + the future block (trajectory loss);
  3 rollouts: the prompt ending in `<|cot_start|>`, no loss (the policy generates the rest).
"""

from __future__ import annotations

import numpy as np

from alpamayo_jax.data.batch import SequenceIds, assemble_sample
from alpamayo_jax.data.tokenizer import Tokenizer

SYSTEM = "You are a driving assistant. Explain the driving decision, then plan the ego trajectory."
TRAJECTORY_INSTRUCTION = "Predict the ego trajectory for the next 6.4 seconds."
REASONING_INSTRUCTION = (
    "Explain the driving decision, then predict the ego trajectory for the next 6.4 seconds."
)
STAGES = (0, 1, 2, 3)


def preamble(tok: Tokenizer) -> np.ndarray:
    """System turn and the opening of the user turn (before the images)."""
    return tok.encode(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n")


def user_close(tok: Tokenizer, text: str, open_reasoning: bool = False) -> np.ndarray:
    """The instruction or question, the end of the user turn and the opening of the assistant turn."""
    tail = "<|cot_start|>" if open_reasoning else ""
    return tok.encode(f"{text}<|im_end|>\n<|im_start|>assistant\n{tail}")


def stage_sample(
    stage: int,
    tok: Tokenizer,
    ids: SequenceIds,
    image_tokens: list[int],
    history_ids: np.ndarray | None = None,
    future_ids: np.ndarray | None = None,
    reasoning: str | None = None,
    question: str | None = None,
    answer: str | None = None,
) -> dict[str, np.ndarray | int]:
    """One sample of `stage` as `assemble_sample` returns it (tokens, text/traj loss, prefix length)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage}; stages are {STAGES}")
    head = preamble(tok)
    if stage == 0:
        if question is None or answer is None:
            raise ValueError("stage 0 needs a question and an answer")
        return assemble_sample(
            ids,
            image_tokens,
            None,
            user_close(tok, question),
            None,
            None,
            tok.encode(f"{answer}<|im_end|>"),
            head,
        )
    if history_ids is None:
        raise ValueError(f"stage {stage} needs the ego history tokens")
    if stage == 3:
        return assemble_sample(
            ids,
            image_tokens,
            history_ids,
            user_close(tok, REASONING_INSTRUCTION, True),
            None,
            None,
            None,
            head,
        )
    if future_ids is None:
        raise ValueError(f"stage {stage} needs the future trajectory tokens")
    if stage == 1:
        return assemble_sample(
            ids,
            image_tokens,
            history_ids,
            user_close(tok, TRAJECTORY_INSTRUCTION),
            None,
            future_ids,
            None,
            head,
        )
    if reasoning is None:
        raise ValueError("stage 2 needs a reasoning trace")
    return assemble_sample(
        ids,
        image_tokens,
        history_ids,
        user_close(tok, REASONING_INSTRUCTION),
        tok.encode(reasoning),
        future_ids,
        None,
        head,
    )
