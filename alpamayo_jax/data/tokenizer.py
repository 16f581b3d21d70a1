"""Text tokenizers with the model's added tokens: a sentencepiece model and an HF `tokenizer.json`.

Both split text on marker strings `<|...|>` first: chat markers (`<|im_start|>`, `<|im_end|>`) come
from the base tokenizer, vision markers from the backbone config, the special tokens of SPEC 1.3 from
the `TokenLayout`, and trajectory tokens are written `<|traj_f_K|>` (future bin K) and `<|traj_h_K|>`
(history bin K). Everything else goes through the base tokenizer, so `decode(encode(s)) == s`.
"""

from __future__ import annotations

import abc
import os
import re
from typing import Protocol

import numpy as np

from alpamayo_jax.trajectory_tokens import TokenLayout

CHAT_MARKERS = ("<|im_start|>", "<|im_end|>")
VISION_MARKERS = ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>")
_MARKER = re.compile(r"(<\|[A-Za-z0-9_]+\|>)")
_TRAJ = re.compile(r"<\|traj_([fh])_(\d+)\|>")


class Tokenizer(Protocol):
    """What prompt assembly needs from a tokenizer."""

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: np.ndarray) -> str: ...

    def token_id(self, marker: str) -> int: ...


class _MarkedTokenizer(abc.ABC):
    """Marker handling shared by both implementations; subclasses give the base text codec."""

    def __init__(self, layout: TokenLayout, markers: dict[str, int], base_size: int):
        self.layout, self.base_size = layout, base_size
        self.markers = dict(markers) | {t: layout.special_id(t) for t in layout.special_tokens}
        self._names = {v: k for k, v in self.markers.items()}
        if len(self._names) != len(self.markers):
            raise ValueError(f"tokenizer markers share ids: {self.markers}")
        if base_size > layout.base_vocab_size:
            raise ValueError(
                f"base tokenizer has {base_size} ids, more than the layout's base vocabulary "
                f"{layout.base_vocab_size}"
            )
        clash = sorted(m for m, i in self.markers.items() if i < base_size and self._base_id(m) != i)
        if clash:
            raise ValueError(f"markers {clash} reuse ids of other base tokenizer entries (< {base_size})")

    @abc.abstractmethod
    def _base_id(self, token: str) -> int | None: ...

    @abc.abstractmethod
    def _encode_text(self, text: str) -> list[int]: ...

    @abc.abstractmethod
    def _decode_text(self, ids: list[int]) -> str: ...

    def token_id(self, marker: str) -> int:
        """Id of a marker such as `<|im_start|>` or `<|cot_start|>`."""
        if marker not in self.markers:
            raise KeyError(f"unknown marker {marker!r}; known: {', '.join(sorted(self.markers))}")
        return self.markers[marker]

    def _marker_id(self, piece: str) -> int | None:
        if piece in self.markers:
            return self.markers[piece]
        m = _TRAJ.fullmatch(piece)
        if m is None:
            return None
        k = int(m.group(2))
        lay = self.layout
        start, bins = (
            (lay.future_start, lay.num_future_bins)
            if m.group(1) == "f"
            else (lay.history_start, lay.num_history_bins)
        )
        if k >= bins:
            raise ValueError(f"trajectory token {piece} is out of range: {bins} bins")
        return start + k

    def encode(self, text: str) -> np.ndarray:
        """Text (with markers) -> int32 ids."""
        ids: list[int] = []
        for piece in _MARKER.split(text):
            if not piece:
                continue
            marker = self._marker_id(piece)
            ids.extend([marker] if marker is not None else self._encode_text(piece))
        return np.asarray(ids, np.int32)

    def _id_name(self, i: int) -> str | None:
        lay = self.layout
        if i in self._names:
            return self._names[i]
        if lay.future_start <= i < lay.future_end:
            return f"<|traj_f_{i - lay.future_start}|>"
        if lay.history_start <= i < lay.history_end:
            return f"<|traj_h_{i - lay.history_start}|>"
        if i >= self.base_size:  # padding rows of the embedding (an untrained model can emit them)
            return f"<|unused_{i}|>"
        return None

    def decode(self, ids: np.ndarray) -> str:
        """Ids -> text, markers and trajectory tokens written out (ids the base tokenizer lacks as
        `<|unused_N|>`, so nothing is dropped)."""
        out: list[str] = []
        run: list[int] = []
        for i in np.asarray(ids).reshape(-1).tolist():
            name = self._id_name(i)
            if name is None:
                run.append(i)
                continue
            if run:
                out.append(self._decode_text(run))
                run = []
            out.append(name)
        if run:
            out.append(self._decode_text(run))
        return "".join(out)


class SentencePieceTokenizer(_MarkedTokenizer):
    """A sentencepiece model (from `tools/train_tokenizer.py`) whose pieces include the chat markers."""

    def __init__(self, model_path: str | os.PathLike, layout: TokenLayout, vision_ids: dict[str, int]):
        import sentencepiece

        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"sentencepiece model {model_path} does not exist")
        self._sp = sentencepiece.SentencePieceProcessor(model_file=os.fspath(model_path))
        chat = {}
        for m in CHAT_MARKERS:
            i = self._sp.piece_to_id(m)
            if i == self._sp.unk_id():
                raise ValueError(f"sentencepiece model {model_path} has no piece {m}")
            chat[m] = i
        super().__init__(layout, chat | _vision(vision_ids), self._sp.get_piece_size())

    def _base_id(self, token: str) -> int | None:
        i = self._sp.piece_to_id(token)
        return None if i == self._sp.unk_id() else i

    def _encode_text(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def _decode_text(self, ids: list[int]) -> str:
        return self._sp.decode(ids)


class HFTokenizer(_MarkedTokenizer):
    """An HF `tokenizer.json` (e.g. of a converted Qwen3-VL checkpoint) through `tokenizers`."""

    def __init__(self, path: str | os.PathLike, layout: TokenLayout, vision_ids: dict[str, int]):
        import tokenizers

        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer file {path} does not exist")
        self._tok = tokenizers.Tokenizer.from_file(os.fspath(path))
        chat = {}
        for m in CHAT_MARKERS:
            i = self._tok.token_to_id(m)
            if i is None:
                raise ValueError(f"tokenizer {path} has no token {m}")
            chat[m] = i
        vision = _vision(vision_ids)
        for m, i in vision.items():
            own = self._tok.token_to_id(m)
            if own is not None and own != i:
                raise ValueError(f"tokenizer {path} maps {m} to {own} but the model config uses {i}")
        super().__init__(layout, chat | vision, self._tok.get_vocab_size())

    def _base_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def _encode_text(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def _decode_text(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)


def _vision(vision_ids: dict[str, int]) -> dict[str, int]:
    missing = [m for m in VISION_MARKERS if m not in vision_ids]
    if missing:
        raise ValueError(f"vision_ids lacks {missing}")
    return {m: int(vision_ids[m]) for m in VISION_MARKERS}


def vision_ids_of(vlm_cfg) -> dict[str, int]:
    """Vision marker ids from a Qwen3-VL config."""
    return {
        "<|image_pad|>": vlm_cfg.image_token_id,
        "<|vision_start|>": vlm_cfg.vision_start_token_id,
        "<|vision_end|>": vlm_cfg.vision_end_token_id,
    }


def load(kind: str, path: str | os.PathLike, model_cfg) -> Tokenizer:
    """A tokenizer for an `AlpamayoConfig`: kind "sentencepiece" or "hf"."""
    impls = {"sentencepiece": SentencePieceTokenizer, "hf": HFTokenizer}
    if kind not in impls:
        raise ValueError(f"unknown tokenizer kind {kind!r}; known: {', '.join(impls)}")
    return impls[kind](path, model_cfg.tokens, vision_ids_of(model_cfg.vlm))
