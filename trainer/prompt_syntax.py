"""Read a prompt's text the way a host does: its weight syntax, extra-network tags and 75-token chunks.

The policy decides on the host's own text conditioning, so the trainer must turn prompt text into token chunks exactly
as the host it will run in. The two hosts agree on plain short prompts and differ on the rest:

* ``comfyui`` (ComfyUI 0.3.75 ``CLIPTextEncode``): ``(text)`` multiplies the weight by 1.1, ``(text:w)`` sets it to w;
  ``\\(`` and ``\\)`` are literal brackets; everything else, square brackets, ``<lora:...>``, ``BREAK``, ``AND`` and
  prompt editing included, is literal text. Each weighted piece is tokenised on its own; a piece that no longer fits
  the current chunk moves whole to the next one unless it is 8 tokens or longer, in which case it is cut at the
  chunk's end (so a long plain prompt is cut at exactly 75 tokens). An ``embedding:name`` word names a textual
  inversion; the trainer has none, and ComfyUI drops names it cannot find, so the word is dropped here too.
* ``a1111`` (AUTOMATIC1111 v1.10.1 with default settings, as the extension reads prompts in ``process_batch``):
  ``<name:...>`` extra-network tags (LoRA, hypernetworks) are removed first, as the webui does before that hook;
  ``(text)`` x1.1, ``[text]`` /1.1, ``(text:w)`` x w, nested weights multiply, unclosed brackets weigh to the end,
  ``\\( \\) \\[ \\] \\\\`` are literal; ``BREAK`` ends the chunk; when a chunk fills up, the cut moves back to just
  after the last comma if that comma is at most 20 tokens back. Prompt editing and alternation (``[a:b:0.5]``,
  ``[a|b]``) are *not* expanded into schedules: the extension asks the webui's text encoder for the prompt as
  written, whose attention parser reads ``[a:b:0.5]`` as the words ``a:b:0.5`` at weight 1/1.1. The policy sees
  that, in training and in the webui alike (the images themselves follow each schedule).
* ``plain``: no syntax at all, one 77-token window (what diffusers' ``encode_prompt`` reads).

How each host then weighs the encoded tokens is in :mod:`.prompt_syntax_encoding`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

PromptSyntax = Literal["comfyui", "a1111", "plain"]
PROMPT_SYNTAXES: tuple[str, ...] = ("comfyui", "a1111", "plain")

ATTENTION_STEP = 1.1  # the weight factor of one bracket pair, in both hosts
COMFYUI_UNSPLIT_PIECE = 8  # ComfyUI keeps a weighted piece shorter than this in one chunk
A1111_COMMA_BACKTRACK = 20  # A1111's "comma padding backtrack" setting, at its default
BREAK = "BREAK"

_EXTRA_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")  # A1111's extra networks: <lora:name:0.8>, <hypernet:...>
_COMFYUI_EMBEDDING = "embedding:"
_A1111_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_A1111_ATTENTION = re.compile(r"""
\\[()\[\]\\] | \\ |           # escapes; a lone backslash
\( | \[ |                      # openers
:\s*([+-]?[.\d]+)\s*\) |       # ':1.2)' closes a round bracket with an explicit weight
\) | ] |                       # closers
[^\\()\[\]:]+ | :              # text
""", re.X)


def check_syntax(syntax: str) -> str:
    if syntax not in PROMPT_SYNTAXES:
        raise ValueError(f"unknown prompt syntax {syntax!r}: use one of {', '.join(PROMPT_SYNTAXES)}")
    return syntax


@dataclass(frozen=True)
class TokenChunk:
    """One host chunk: up to ``chunk_length`` prompt token ids (start, end and padding not included) and their
    weights. Padding weighs 1."""

    ids: tuple[int, ...]
    weights: tuple[float, ...]


# --- ComfyUI -----------------------------------------------------------------------------------------------------


def comfyui_weighted_pieces(text: str) -> list[tuple[str, float]]:
    """ComfyUI's reading of ``(text)``, ``(text:1.3)`` and ``\\(``: (piece, weight) in prompt order.

    Brackets are matched from the outside in; an inner explicit weight replaces the outer one, an inner plain
    bracket multiplies it by 1.1; a stray ``)`` or an unclosed ``(`` stays in the text.
    """
    escaped = text.replace("\\)", "\0\1").replace("\\(", "\0\2")
    return [(piece.replace("\0\1", ")").replace("\0\2", "("), weight)
            for piece, weight in _comfyui_groups(escaped, 1.0)]


def _comfyui_groups(text: str, weight: float) -> list[tuple[str, float]]:
    pieces = []
    for group in _comfyui_top_level(text):
        if len(group) >= 2 and group[0] == "(" and group[-1] == ")":
            inner, inner_weight = group[1:-1], weight * ATTENTION_STEP
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    inner_weight = float(inner[colon + 1:])
                    inner = inner[:colon]
                except ValueError:
                    pass
            pieces += _comfyui_groups(inner, inner_weight)
        else:
            pieces.append((group, weight))
    return pieces


def _comfyui_top_level(text: str) -> list[str]:
    """Split into plain runs and outermost ``(...)`` groups, counting depth as ComfyUI does (a stray ``)`` makes the
    depth negative, and brackets then stay inside the current run until it is back to zero)."""
    groups, current, depth = [], "", 0
    for char in text:
        if char == "(" and depth == 0:
            if current:
                groups.append(current)
            current = "("
            depth = 1
        elif char == "(":
            current += char
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                groups.append(current + ")")
                current = ""
            else:
                current += char
        else:
            current += char
    if current:
        groups.append(current)
    return groups


def _comfyui_words(piece: str) -> list[str]:
    """A piece as ComfyUI tokenises it: whole, except that ``embedding:name`` words (no embeddings here) drop out."""
    parts = re.split(f" {_COMFYUI_EMBEDDING}|\n{_COMFYUI_EMBEDDING}", piece)
    words = [parts[0]] + [_COMFYUI_EMBEDDING + part for part in parts[1:]]
    kept = []
    for word in words:
        if word.startswith(_COMFYUI_EMBEDDING):
            name, *rest = word[len(_COMFYUI_EMBEDDING):].split() or [""]
            trailing_commas = name[len(name.rstrip(",")):]
            word = " ".join([trailing_commas, *rest]).strip() if trailing_commas else " ".join(rest)
        if word:
            kept.append(word)
    return kept


def comfyui_chunks(tokenizer, text: str) -> list[TokenChunk]:
    chunk_length = tokenizer.model_max_length - 2
    chunks, ids, weights = [], [], []

    def close_chunk():
        nonlocal ids, weights
        chunks.append(TokenChunk(tuple(ids), tuple(weights)))
        ids, weights = [], []

    for piece, weight in comfyui_weighted_pieces(text):
        for word in _comfyui_words(piece):
            group = _ids(tokenizer, word)
            splittable = len(group) >= COMFYUI_UNSPLIT_PIECE
            while group:
                room = chunk_length - len(ids)
                if len(group) <= room:
                    ids, weights = ids + group, weights + [weight] * len(group)
                    break
                if splittable:
                    ids, weights = ids + group[:room], weights + [weight] * room
                    group = group[room:]
                close_chunk()
    close_chunk()
    return chunks


# --- AUTOMATIC1111 -----------------------------------------------------------------------------------------------


def strip_extra_network_tags(text: str) -> str:
    """Remove ``<lora:name:0.8>``-style tags, as A1111 does before the prompt reaches the text encoder."""
    return _EXTRA_NETWORK_TAG.sub("", text)


def a1111_weighted_pieces(text: str) -> list[tuple[str, float]]:
    """A1111's attention syntax: (piece, weight) in prompt order, ``(BREAK, -1)`` for a chunk break; runs of equal
    weight merged, as the webui merges them (which is why two adjacent BREAKs read as text)."""
    pieces: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale_from(start: int, factor: float):
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in _A1111_ATTENTION.finditer(text):
        token, explicit = match.group(0), match.group(1)
        if token.startswith("\\"):
            pieces.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(pieces))
        elif token == "[":
            square_open.append(len(pieces))
        elif explicit is not None and round_open:
            scale_from(round_open.pop(), float(explicit))
        elif token == ")" and round_open:
            scale_from(round_open.pop(), ATTENTION_STEP)
        elif token == "]" and square_open:
            scale_from(square_open.pop(), 1 / ATTENTION_STEP)
        else:
            for index, part in enumerate(_A1111_BREAK.split(token)):
                if index:
                    pieces.append([BREAK, -1])
                pieces.append([part, 1.0])
    for start in round_open:
        scale_from(start, ATTENTION_STEP)
    for start in square_open:
        scale_from(start, 1 / ATTENTION_STEP)
    merged: list[list] = []
    for piece in pieces or [["", 1.0]]:
        if merged and merged[-1][1] == piece[1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(list(piece))
    return [(piece, weight) for piece, weight in merged]


def a1111_chunks(tokenizer, text: str) -> list[TokenChunk]:
    chunk_length = tokenizer.model_max_length - 2
    comma = tokenizer.get_vocab().get(",</w>")
    chunks, ids, weights = [], [], []
    last_comma = -1

    def close_chunk():
        nonlocal ids, weights, last_comma
        chunks.append(TokenChunk(tuple(ids), tuple(weights)))
        ids, weights, last_comma = [], [], -1

    pieces = a1111_weighted_pieces(strip_extra_network_tags(text))
    for piece, weight in pieces:
        if piece == BREAK and weight == -1:
            close_chunk()
            continue
        for token in _ids(tokenizer, piece):
            if token == comma:
                last_comma = len(ids)
            elif len(ids) == chunk_length and last_comma != -1 and len(ids) - last_comma <= A1111_COMMA_BACKTRACK:
                cut = last_comma + 1
                moved = ids[cut:], weights[cut:]
                ids, weights = ids[:cut], weights[:cut]
                close_chunk()
                ids, weights = list(moved[0]), list(moved[1])
            if len(ids) == chunk_length:
                close_chunk()
            ids.append(token)
            weights.append(weight)
    if ids or not chunks:
        close_chunk()
    return chunks


# --- both --------------------------------------------------------------------------------------------------------


def prompt_chunks(tokenizer, text: str, syntax: PromptSyntax) -> list[TokenChunk]:
    """The host's chunks of ``text`` (``plain``: one chunk, cut at the encoder's limit)."""
    if check_syntax(syntax) == "comfyui":
        return comfyui_chunks(tokenizer, text)
    if syntax == "a1111":
        return a1111_chunks(tokenizer, text)
    ids = _ids(tokenizer, text)[:tokenizer.model_max_length - 2]
    return [TokenChunk(tuple(ids), (1.0,) * len(ids))]


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False, truncation=False).input_ids) if text else []
