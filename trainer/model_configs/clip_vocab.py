"""CLIP's BPE vocabulary, written out as the vocab.json / merges.txt pair a Hugging Face CLIPTokenizer reads.

The vocabulary ships inside open_clip (``bpe_simple_vocab_16e6.txt.gz``); built in open_clip's order, the token
ids equal OpenAI CLIP's (start 49406, end 49407), so nothing multi-MB has to be committed or downloaded.
"""
from __future__ import annotations

import gzip
import json
from importlib.resources import files
from pathlib import Path

VOCAB_SIZE = 49408
_MERGES = VOCAB_SIZE - 256 * 2 - 2


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def bpe_merges() -> list[str]:
    text = gzip.decompress(files("open_clip").joinpath("bpe_simple_vocab_16e6.txt.gz").read_bytes()).decode("utf-8")
    return text.split("\n")[1:_MERGES + 1]


def write_clip_vocab(folder: Path) -> None:
    """Write vocab.json and merges.txt for the CLIP tokenizer into `folder`."""
    merges = bpe_merges()
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False),
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
