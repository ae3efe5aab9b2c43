#!/usr/bin/env python3
"""Independent ROUGE-1, ROUGE-2 and ROUGE-L, used to produce tests/fixtures/eval/rouge_cases.json for
tests/Eval/RougeTests.cs. Standard library only, written from the definitions of ROUGE (Lin, 2004) with
the conventions of Google's rouge_score package, which Hugging Face `evaluate`'s "rouge" metric wraps with
its defaults (no stemmer, the default tokenizer):

  tokens   the text lower-cased by str.lower(); the tokens are the maximal runs of [a-z0-9] in it (every
           other character separates words);
  ROUGE-N  n-gram multisets of prediction P and reference R; overlap = sum over n-grams of min(count in P,
           count in R); precision = overlap / max(|P|, 1), recall = overlap / max(|R|, 1);
  ROUGE-L  LCS = the length of a longest common subsequence of the two token lists (whole text, one
           "sentence"); precision = LCS / |P|, recall = LCS / |R|; all zero if either list is empty;
  F        2 * precision * recall / (precision + recall), or 0 when both are 0.

The corpus figure is the mean of the per-example F-measures times 100.

The cases: hand-made pairs that probe the tokenizer and the counting (punctuation, case, repeated words,
empty texts, unicode, numbers), then the third sentence of each of the first 30 ROCStories cloze stories
against perturbed copies of itself (words dropped, swapped, repeated, case and punctuation changed, or the
neighbour story's sentence), drawn from random.Random(2024).

    python3 tests/reference/rouge_reference.py    # rewrites tests/fixtures/eval/rouge_cases.json
"""
import argparse
import collections
import csv
import json
import os
import random
import re

WORD = re.compile(r"[a-z0-9]+")

HAND_MADE = [
    ("The cat sat on the mat.", "The cat sat on the mat."),
    ("the cat sat on the mat", "THE CAT SAT ON THE MAT!!!"),
    ("cat the mat on sat the", "the cat sat on the mat"),
    ("the the the the", "the cat sat on the mat"),
    ("the cat the cat the cat", "the cat sat with the cat"),
    ("", "the cat sat on the mat"),
    ("the cat sat on the mat", ""),
    ("", ""),
    ("...!!! ???", "the cat"),
    ("...", "---"),
    ("Don't stop-believing; it's 9:30 a.m.", "dont stop believing its 930 am"),
    ("He paid $1,234.56 for 3 items in 2019.", "he paid 1 234 56 for three items in 2019"),
    ("caf\u00e9 na\u00efve r\u00e9sum\u00e9", "cafe naive resume"),
    ("caf\u00e9 na\u00efve", "caf na ve"),
    ("\u0130stanbul \u212aelvin", "i stanbul kelvin"),
    ("\u65e5\u672c\u8a9e text \u041f\u0440\u0438\u0432\u0435\u0442 word", "text word"),
    ("emoji \U0001F600 between\U0001F389words", "emoji between words"),
    ("ｆｕｌｌｗｉｄｔｈ ＡＢＣ abc", "abc fullwidth"),
    ("a", "a"),
    ("a", "b"),
    ("a b", "b a"),
    ("one two three four five", "one two three"),
    ("one two three", "one two three four five"),
    ("new\nline\ttab  spaces", "new line tab spaces"),
    ("x_y x-y x.y x/y", "x y"),
    ("I I I", "I"),
    ("to be or not to be", "to be to be"),
    ("A B C D E F", "F E D C B A"),
]


def tokenize(text):
    return WORD.findall(text.lower())


def f_measure(precision, recall):
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def rouge_n(prediction, reference, n):
    def grams(tokens):
        return collections.Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))

    p, r = grams(prediction), grams(reference)
    overlap = sum((p & r).values())
    return f_measure(overlap / max(sum(p.values()), 1), overlap / max(sum(r.values()), 1))


def lcs_length(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a, 1):
        for j, y in enumerate(b, 1):
            table[i][j] = table[i - 1][j - 1] + 1 if x == y else max(table[i - 1][j], table[i][j - 1])
    return table[len(a)][len(b)]


def rouge_l(prediction, reference):
    if not prediction or not reference:
        return 0.0
    lcs = lcs_length(prediction, reference)
    return f_measure(lcs / len(prediction), lcs / len(reference))


def scores(prediction, reference):
    p, r = tokenize(prediction), tokenize(reference)
    return {"rouge1": rouge_n(p, r, 1), "rouge2": rouge_n(p, r, 2), "rougeL": rouge_l(p, r)}


def perturb(sentence, other, rng):
    words = sentence.split(" ")
    kind = rng.choice(["drop", "swap", "repeat", "case", "punct", "other", "truncate", "shuffle"])
    if kind == "drop" and len(words) > 1:
        del words[rng.randrange(len(words))]
    elif kind == "swap" and len(words) > 1:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    elif kind == "repeat":
        i = rng.randrange(len(words))
        words.insert(i, words[i])
    elif kind == "case":
        words = [w.upper() if rng.random() < 0.5 else w.lower() for w in words]
    elif kind == "punct":
        words = [w + rng.choice([",", ";", "!", "", ""]) for w in words]
    elif kind == "other":
        return other
    elif kind == "truncate":
        words = words[: max(1, len(words) // 2)]
    else:
        rng.shuffle(words)
    return " ".join(words)


def rocstories_middles(path, count):
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))[1:count + 2]
    return [row[3] for row in rows]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.normpath(os.path.join(here, "..", ".."))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared-data", default=os.path.join(repo, "..", "shared", "data"))
    parser.add_argument("--out", default=os.path.join(repo, "tests", "fixtures", "eval", "rouge_cases.json"))
    args = parser.parse_args()

    rng = random.Random(2024)
    middles = rocstories_middles(os.path.join(args.shared_data, "eval", "cloze_test_val__spring2016.csv"), 30)
    pairs = list(HAND_MADE)
    for k in range(30):
        pairs.append((perturb(middles[k], middles[k + 1], rng), middles[k]))

    cases = [dict(prediction=p, reference=r, **scores(p, r)) for p, r in pairs]
    corpus = {key: 100 * sum(c[key] for c in cases) / len(cases) for key in ("rouge1", "rouge2", "rougeL")}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"cases": cases, "corpus_percent": corpus}, f, ensure_ascii=True, indent=1)
        f.write("\n")
    print("wrote %d cases to %s" % (len(cases), args.out))


if __name__ == "__main__":
    main()
