"""Trains the small sentencepiece tokenizer of the tiny presets from synthetic CoC / VQA text.

Example: python tools/make_synthetic.py --out /tmp/synth --clips 24 --width 112 --height 64
         python tools/train_tokenizer.py --synthetic /tmp/synth --out data/tokenizers/tiny_sp.model
The vocabulary (default 496) stays below the tiny backbone's vision ids (500..502); the chat markers
are pieces of the model; the trajectory and special tokens are added by `data.tokenizer`.
"""

import argparse
import io
import json
import os
import pathlib

import sentencepiece

from alpamayo_jax.data import prompts, synthetic, tokenizer, vqa


def corpus(root: pathlib.Path) -> list[str]:
    """Lines of text the tiny models see: prompts, CoC traces and VQA pairs at several keyframes."""
    index = json.loads((root / synthetic.GT_DIR / "index.json").read_text())
    lines = [
        prompts.SYSTEM,
        prompts.TRAJECTORY_INSTRUCTION,
        prompts.REASONING_INSTRUCTION,
        vqa.NO_EVENT_ANSWER,
    ]
    for clip in index["clips"]:
        gt = synthetic.read_ground_truth(root, clip["clip_id"])
        lines += [e["description"] for e in gt["events"]]
        for t0_us in range(2_000_000, 13_000_001, 1_000_000):
            lines += [text for pair in vqa.synthetic_pairs(gt, t0_us) for text in pair]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--synthetic", required=True, help="output root of tools/make_synthetic.py")
    parser.add_argument("--out", required=True, help="model file to write (.model)")
    parser.add_argument("--vocab", type=int, default=496)
    args = parser.parse_args()
    lines = corpus(pathlib.Path(args.synthetic))
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=args.vocab,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        split_digits=True,
        user_defined_symbols=list(tokenizer.CHAT_MARKERS) + ["\n"],
        bos_id=-1,
        eos_id=-1,
        minloglevel=2,
    )
    tmp = f"{args.out}.tmp"
    pathlib.Path(tmp).write_bytes(model.getvalue())
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: {args.vocab} pieces from {len(lines)} lines ({len(model.getvalue())} bytes)")


if __name__ == "__main__":
    main()
