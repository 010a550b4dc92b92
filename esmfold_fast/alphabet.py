"""The ESM-2 alphabet and batch converter.

Token order is fair-esm's ``Alphabet.from_architecture("ESM-1b")`` (which is also transformers'
``EsmTokenizer`` vocab list for every ESM-2 checkpoint): four leading specials, the 25 residue
and gap characters, padding up to a multiple of 8 with ``<null_1>``, then ``<mask>``. ``<cls>`` is
prepended and ``<eos>`` appended to every sequence.

ESMFold reads sequences as AlphaFold2 residue indices (:func:`encode_sequence`, 0-19 in
``residue_constants.restypes`` order, 20 = X): multimer chains split on ``':'`` and joined by a
poly-G linker, each chain's residue index offset by 512 (fair-esm's ``batch_encode_sequences``).
Letters are upper-cased first, so ``"mktay"`` folds like ``"MKTAY"``; fair-esm instead reads a
lower-case letter as X (unknown), transformers rejects it. Letters outside the 20 standard amino
acids read as X, as in both peers. Any character that is not an ASCII letter or ``':'`` raises
``ValueError`` naming the sequence (fair-esm would read it as X).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from . import residue_constants as rc

# fair-esm esm/constants.py ``proteinseq_toks["toks"]`` (residue letters, X/B/U/Z/O, gap symbols).
STANDARD_TOKENS: tuple[str, ...] = (
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C",
    "X", "B", "U", "Z", "O", ".", "-",
)
PREPEND_TOKENS: tuple[str, ...] = ("<cls>", "<pad>", "<eos>", "<unk>")
APPEND_TOKENS: tuple[str, ...] = ("<mask>",)


class Alphabet:
    """fair-esm's ESM-1b / ESM-2 alphabet (33 tokens); only this architecture is supported."""

    def __init__(self, architecture: str = "ESM-1b") -> None:
        if architecture not in ("ESM-1b", "roberta_large", "ESM-2"):
            raise ValueError(f"unknown alphabet architecture {architecture!r}; ESM-2 uses 'ESM-1b'")
        toks = list(PREPEND_TOKENS) + list(STANDARD_TOKENS)
        # fair-esm pads the vocabulary to a multiple of 8 before the appended specials.
        toks += [f"<null_{i + 1}>" for i in range((8 - len(toks) % 8) % 8)]
        toks += list(APPEND_TOKENS)
        self.all_toks: list[str] = toks
        self.tok_to_idx: dict[str, int] = {t: i for i, t in enumerate(toks)}
        self.prepend_bos = True
        self.append_eos = True
        self.unk_idx = self.tok_to_idx["<unk>"]
        self.padding_idx = self.tok_to_idx["<pad>"]
        self.cls_idx = self.tok_to_idx["<cls>"]
        self.mask_idx = self.tok_to_idx["<mask>"]
        self.eos_idx = self.tok_to_idx["<eos>"]
        # Multi-character tokens, longest first, so "<null_1>" is matched whole.
        self._specials = sorted((t for t in toks if len(t) > 1), key=len, reverse=True)

    @classmethod
    def from_architecture(cls, name: str) -> "Alphabet":
        return cls(name)

    def __len__(self) -> int:
        return len(self.all_toks)

    def get_idx(self, tok: str) -> int:
        """Index of ``tok``; unknown tokens map to ``<unk>`` (fair-esm's ``get_idx``)."""
        return self.tok_to_idx.get(tok, self.unk_idx)

    def get_tok(self, idx: int) -> str:
        return self.all_toks[idx]

    def tokenize(self, text: str) -> list[str]:
        """Split ``text`` into tokens: ``<...>`` specials whole, every other character alone.

        Whitespace separates nothing and is dropped, as in fair-esm's tokenizer.
        """
        out: list[str] = []
        i = 0
        while i < len(text):
            ch = text[i]
            if ch.isspace():
                i += 1
                continue
            if ch == "<":
                special = next((s for s in self._specials if text.startswith(s, i)), None)
                if special is not None:
                    out.append(special)
                    i += len(special)
                    continue
            out.append(ch)
            i += 1
        return out

    def encode(self, text: str) -> list[int]:
        """Token indices of ``text`` (no cls/eos). Unknown characters raise ``KeyError`` like fair-esm."""
        idx = []
        for tok in self.tokenize(text):
            if tok not in self.tok_to_idx:
                raise KeyError(f"{tok!r} is not in the ESM-2 alphabet (sequence {text[:40]!r})")
            idx.append(self.tok_to_idx[tok])
        return idx

    def get_batch_converter(self, truncation_seq_length: int | None = None) -> "BatchConverter":
        return BatchConverter(self, truncation_seq_length)


class BatchConverter:
    """``[(label, seq), ...] -> (labels, strs, tokens [B, T])`` with cls/eos and padding (fair-esm's)."""

    def __init__(self, alphabet: Alphabet, truncation_seq_length: int | None = None) -> None:
        self.alphabet = alphabet
        self.truncation_seq_length = truncation_seq_length

    def __call__(self, raw_batch: Sequence[tuple[str, str]]) -> tuple[list[str], list[str], torch.Tensor]:
        a = self.alphabet
        labels = [label for label, _ in raw_batch]
        strs = [seq for _, seq in raw_batch]
        encoded = [a.encode(s) for s in strs]
        if self.truncation_seq_length:
            # fair-esm truncates the residues, then still adds cls and eos.
            encoded = [e[: self.truncation_seq_length] for e in encoded]
        width = max((len(e) for e in encoded), default=0) + 2
        tokens = torch.full((len(encoded), width), a.padding_idx, dtype=torch.int64)  # [B, T]
        for i, e in enumerate(encoded):
            tokens[i, 0] = a.cls_idx
            tokens[i, 1 : len(e) + 1] = torch.tensor(e, dtype=torch.int64)
            tokens[i, len(e) + 1] = a.eos_idx
        return labels, strs, tokens


def as_alphabet(alphabet: "Alphabet | str | object") -> Alphabet:
    """Accept our :class:`Alphabet`, an architecture name, or any object with fair-esm's token list."""
    if isinstance(alphabet, Alphabet):
        return alphabet
    if isinstance(alphabet, str):
        return Alphabet(alphabet)
    toks: Iterable[str] | None = getattr(alphabet, "all_toks", None)
    ours = Alphabet()
    if toks is None or list(toks) != ours.all_toks:
        raise ValueError("only the ESM-1b/ESM-2 alphabet is supported")
    return ours


# ----------------------------------------------------------------------------------------------
# ESMFold's sequence encoding: AlphaFold2 residue indices (fair-esm's esm/esmfold/v1/misc.py layout)
# ----------------------------------------------------------------------------------------------


def _check_sequence(seq: str) -> str:
    if not isinstance(seq, str):
        raise ValueError(f"a sequence must be a str, got {type(seq).__name__}")
    bad = sorted({ch for ch in seq if not (ch == ":" or (ch.isascii() and ch.isalpha()))})
    if bad:
        raise ValueError(f"sequence {seq!r} contains characters that are not amino-acid letters or ':': {bad}")
    chains = seq.split(":")
    if any(len(c) == 0 for c in chains):
        raise ValueError(f"sequence {seq!r} has an empty chain")
    return seq.upper()


def encode_sequence(
    seq: str, residue_index_offset: int | None = 512, chain_linker: str | None = "G" * 25
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One (possibly multi-chain) sequence -> aatype [L], residx [L], linker_mask [L] (float), chain_index [L].

    A linker residue carries the chain index and residue-index offset of the chain before it.
    """
    seq = _check_sequence(seq)
    linker = _check_sequence(chain_linker).upper() if chain_linker else ""
    offset = residue_index_offset or 0
    chains = seq.split(":")
    unk = rc.restype_order_with_x["X"]
    aatype, residx, linker_mask, chain_index = [], [], [], []
    for i, chain in enumerate(chains):
        if i > 0:
            start = len(aatype)
            aatype += [rc.restype_order_with_x.get(a, unk) for a in linker]
            residx += [start + j + (i - 1) * offset for j in range(len(linker))]
            linker_mask += [0.0] * len(linker)
            chain_index += [i - 1] * len(linker)
        start = len(aatype)
        aatype += [rc.restype_order_with_x.get(a, unk) for a in chain]
        residx += [start + j + i * offset for j in range(len(chain))]
        linker_mask += [1.0] * len(chain)
        chain_index += [i] * len(chain)
    return (
        torch.tensor(aatype, dtype=torch.int64),
        torch.tensor(residx, dtype=torch.int64),
        torch.tensor(linker_mask, dtype=torch.float32),
        torch.tensor(chain_index, dtype=torch.int64),
    )


def collate_dense(samples: Sequence[torch.Tensor], pad_value: float = 0) -> torch.Tensor:
    """Stack tensors of different shapes into one, padded with ``pad_value`` at the end of each dim."""
    shape = [max(sizes) for sizes in zip(*(t.shape for t in samples))]
    out = samples[0].new_full((len(samples), *shape), pad_value)
    for i, t in enumerate(samples):
        out[(i, *(slice(0, d) for d in t.shape))] = t
    return out


def batch_encode_sequences(
    sequences: Sequence[str], residue_index_offset: int | None = 512, chain_linker: str | None = "G" * 25
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """aatype, mask, residx, linker_mask, chain_index, each [B, L_max] (chain_index -1 at padding)."""
    encoded = [encode_sequence(s, residue_index_offset, chain_linker) for s in sequences]
    aatype = collate_dense([e[0] for e in encoded])
    mask = collate_dense([torch.ones_like(e[0]) for e in encoded])
    residx = collate_dense([e[1] for e in encoded])
    linker_mask = collate_dense([e[2] for e in encoded])
    chain_index = collate_dense([e[3] for e in encoded], -1)
    return aatype, mask, residx, linker_mask, chain_index
