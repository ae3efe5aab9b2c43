#!/usr/bin/env python3
"""Independent GPT-2 byte-level BPE, used to produce the expected ids in tests/Text/TokenizerTests.cs.

It shares nothing with the C# tokenizer (which goes through Microsoft.ML.Tokenizers): it reads
encoder.json and vocab.bpe itself and applies GPT-2's algorithm as published:
  1. split out the special token <|endoftext|> (id 50256), as Hugging Face's GPT-2 tokenizer does;
  2. pre-tokenize each remaining piece with GPT-2's regular expression;
  3. map each piece's UTF-8 bytes to GPT-2's printable byte alphabet;
  4. repeatedly merge the adjacent pair with the lowest merge rank, then look the symbols up in encoder.json.

With --vocab-limit V it emulates a model trained on the first V GPT-2 tokens: only the first V-256 merges
are applied and <|endoftext|> is ordinary text unless V > 50256.

How the ids in TokenizerTests.cs were produced (needs the `regex` module: pip install regex, or Debian's
python3-regex):
    python3 tests/reference/gpt2_bpe_reference.py                   # the GPT2Ids cases
    python3 tests/reference/gpt2_bpe_reference.py --vocab-limit 512 # the LimitedVocabIds cases
Each line printed is an NUnit [TestCase(...)] attribute, pasted into the test as is: first
(text, ids) for the strings in TEXTS, then (file, lines, token count, checksum) for the start of each
corpus in CORPORA, where checksum = sum over positions i of (i + 1) * id[i].
"""
import argparse
import json
import os

import regex

END_OF_TEXT = "<|endoftext|>"
PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

TEXTS = [
    "Hello world",
    END_OF_TEXT,
    "Hello<|endoftext|>world",
    " <|endoftext|> after",
    "",
    " ",
    "  leading spaces",
    "multiple   spaces   between  words",
    "trailing spaces   ",
    "line one\nline two\n\n\nthree\n",
    "windows\r\nline\tand\t\ttabs",
    "3.14159 and 1234567890 and 42nd, 2024-01-31",
    "Hello, world! How's it going? (Fine); [ok] {x} -- \"quoted\" ... 100%",
    "I'm sure they're fine, we've seen it; I'll go, he'd say, don't, can't",
    "I'M SHOUTING THEY'RE",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00dcber",
    "emoji \U0001F600 and \U0001F389\U0001F389!",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 and \u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440",
    "antidisestablishmentarianism",
    "def f(x):\n    return x**2  # square",
    "$100.00 @user #tag https://example.com/a?b=c&d=e",
]

# Corpus files under shared/data, and how many lines of each are encoded as one text.
CORPORA = [
    ("corpora/tinyshakespeare_input.txt", 3000),
    ("corpora/tinystories/train_v2_head.txt", 1000),
]


def byte_alphabet():
    """GPT-2 maps each byte to a printable character: printable Latin-1 bytes stand for themselves,
    the rest are moved, in byte order, to the characters from U+0100 on."""
    printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    alphabet = {}
    moved = 0
    for b in range(256):
        if b in printable:
            alphabet[b] = chr(b)
        else:
            alphabet[b] = chr(0x100 + moved)
            moved += 1
    return alphabet


class Gpt2Bpe:
    def __init__(self, data_dir, vocab_limit=None):
        with open(os.path.join(data_dir, "encoder.json"), encoding="utf-8") as f:
            self.encoder = json.load(f)
        with open(os.path.join(data_dir, "vocab.bpe"), encoding="utf-8") as f:
            lines = [line for line in f.read().split("\n") if line and not line.startswith("#version")]
        if vocab_limit is not None:
            lines = lines[: vocab_limit - 256]
            self.encoder = {tok: i for tok, i in self.encoder.items() if i < vocab_limit}
        self.ranks = {tuple(line.split(" ")): rank for rank, line in enumerate(lines)}
        self.alphabet = byte_alphabet()
        self.special = END_OF_TEXT in self.encoder
        self.cache = {}

    def merge(self, symbols):
        while len(symbols) > 1:
            best = None
            for pair in zip(symbols, symbols[1:]):
                rank = self.ranks.get(pair)
                if rank is not None and (best is None or rank < best[0]):
                    best = (rank, pair)
            if best is None:
                break
            first, second = best[1]
            merged = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def encode_plain(self, text):
        ids = []
        for piece in PATTERN.findall(text):
            if piece not in self.cache:
                symbols = [self.alphabet[b] for b in piece.encode("utf-8")]
                self.cache[piece] = [self.encoder[s] for s in self.merge(symbols)]
            ids.extend(self.cache[piece])
        return ids

    def encode(self, text):
        if not self.special:
            return self.encode_plain(text)
        ids = []
        for k, part in enumerate(text.split(END_OF_TEXT)):
            if k > 0:
                ids.append(self.encoder[END_OF_TEXT])
            ids.extend(self.encode_plain(part))
        return ids


def csharp_string(text):
    out = []
    for ch in text:
        code = ord(ch)
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code > 0xFFFF:
            out.append("\\U%08X" % code)
        else:
            out.append("\\u%04X" % code)
    return '"' + "".join(out) + '"'


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    shared_data = os.path.normpath(os.path.join(here, "..", "..", "..", "shared", "data"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared-data", default=shared_data, help="the shared data folder (tokenizers/gpt2, corpora)")
    parser.add_argument("--vocab-limit", type=int, default=None)
    args = parser.parse_args()
    bpe = Gpt2Bpe(os.path.join(args.shared_data, "tokenizers", "gpt2"), args.vocab_limit)
    for text in TEXTS:
        ids = bpe.encode(text)
        print("[TestCase(%s, new[] { %s })]" % (csharp_string(text), ", ".join(map(str, ids))))
    for name, lines in CORPORA:
        with open(os.path.join(args.shared_data, name), encoding="utf-8", newline="") as f:
            text = "\n".join(f.read().split("\n")[:lines])
        ids = bpe.encode(text)
        checksum = sum((i + 1) * t for i, t in enumerate(ids))
        print('[TestCase("%s", %d, %d, %dL)]' % (name, lines, len(ids), checksum))


if __name__ == "__main__":
    main()
