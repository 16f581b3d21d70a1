"""Tokenizers: round trips, marker ids from the layout and the config, clear errors."""

import pathlib

import numpy as np
import pytest

from alpamayo_jax.data import tokenizer
from alpamayo_jax.models.alpamayo import alpamayo_config

SP_MODEL = pathlib.Path(__file__).parents[1] / "data" / "tokenizers" / "tiny_sp.model"
TEXT = (
    "<|im_start|>system\nYou are a driving assistant.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>How many pedestrians?  2, é<|im_end|>\n"
    "<|cot_start|>Stop for the red light.<|cot_end|><|traj_future_start|><|traj_f_0|><|traj_f_255|>"
    "<|traj_h_127|><|traj_future_end|>"
)


@pytest.fixture(scope="module")
def cfg():
    return alpamayo_config("tiny")


def _hf_file(tmp_path):
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=list(tokenizer.CHAT_MARKERS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["Stop for the red light.", "How many pedestrians are there?"] * 20, trainer)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


def _check(tok, cfg):
    ids = tok.encode(TEXT)
    assert ids.dtype == np.int32
    assert tok.decode(ids) == TEXT
    lay = cfg.tokens
    for marker, want in [
        ("<|image_pad|>", cfg.vlm.image_token_id),
        ("<|vision_start|>", cfg.vlm.vision_start_token_id),
        ("<|cot_start|>", lay.special_id("cot_start")),
        ("<|traj_future_end|>", lay.special_id("traj_future_end")),
    ]:
        assert tok.token_id(marker) == want
        assert want in ids.tolist()
    assert lay.future_start in ids and lay.future_start + 255 in ids and lay.history_start + 127 in ids
    text_ids = ids[ids < cfg.vlm.image_token_id]
    assert np.isin(
        ids[ids >= cfg.vlm.image_token_id],
        list(tok.markers.values()) + list(range(lay.future_start, lay.history_end)),
    ).all()
    assert text_ids.size > 40


def test_sentencepiece_round_trip(cfg):
    tok = tokenizer.load("sentencepiece", SP_MODEL, cfg)
    _check(tok, cfg)
    assert SP_MODEL.stat().st_size < 1_000_000


def test_hf_round_trip(cfg, tmp_path):
    _check(tokenizer.load("hf", _hf_file(tmp_path), cfg), cfg)


def test_errors(cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tokenizer.load("sentencepiece", tmp_path / "none.model", cfg)
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        tokenizer.load("bpe", SP_MODEL, cfg)
    tok = tokenizer.load("sentencepiece", SP_MODEL, cfg)
    with pytest.raises(ValueError, match="out of range"):
        tok.encode("<|traj_f_256|>")
    with pytest.raises(KeyError, match="unknown marker"):
        tok.token_id("<|nope|>")


def test_ids_outside_the_base_tokenizer_decode_as_unused_markers():
    cfg = alpamayo_config("tiny")
    tok = tokenizer.load("sentencepiece", SP_MODEL, cfg)
    assert tok.base_size < cfg.tokens.base_vocab_size  # the tiny model's embedding has padding rows
    hello = tok.encode("stop")
    text = tok.decode(np.concatenate([hello, [tok.base_size], hello]))
    assert text == f"stop<|unused_{tok.base_size}|>stop"
