#!/usr/bin/env python3
"""Independent preprocessing of the evaluation tasks (spec §10), used to produce
tests/fixtures/eval/tasks_reference.json for tests/Eval/EvalTaskLoaderTests.cs. Standard library only; it
reads the raw files under shared/data/eval itself and builds the text pieces the way the paper's
evaluation scripts build them, with Python's own string functions:

  lambada     line.strip(); prefix = " ".join(words[:-1]), target = words[-1] with words = line.split()
  hellaswag   the 6-line file (context, label, 4 endings), already cleaned of WikiHow markup by its writer;
              ctx_b (the unfinished sentence after the last ". " of a context that does not end with ".",
              the ActivityNet tasks) gets str.capitalize(); every remaining [...] span is removed with
              re.sub(r"\\[.*?\\]", "") and, when one was, "  " becomes " " once
  piqa        "Question: {goal}\\nAnswer: " and " " + sol1, " " + sol2; gold = the 0/1 label
  siqa        "Question: {context} {question}\\nAnswer: " and the three options; gold = label - 1
  rocstories  csv.reader; the fifth sentence is Quiz1 if AnswerRightEnding == "1" else Quiz2;
              prefix = s1 + " " + s2, middle = s3, suffix = s4 + " " + s5 (first 1000 stories)
  gsm8k       prompt = instruction, answer = output

For each task: the number of examples, the first 5, and a SHA-256 digest of all of them, which covers
every example without storing it: the fields of an example joined by U+001F (the choices of a question
by U+001D, the gold index in decimal), the examples joined by U+001E, encoded as UTF-8. For HellaSwag also
the first WikiHow tasks and every task with a bracket span or a double space, which exercise the
clean-up. It also records the code points for which Python's str.isspace() is true, which the C# port of
str.split() must match.

    python3 tests/reference/eval_tasks_reference.py   # rewrites tests/fixtures/eval/tasks_reference.json
"""
import argparse
import csv
import hashlib
import json
import os
import re

FIRST = 5


def lambada(path):
    examples = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            words = line.split()
            if words:
                examples.append({"text": line.strip(), "prefix": " ".join(words[:-1]), "target": words[-1]})
    return examples


def hellaswag_context(context):
    if context.endswith("."):
        return context
    cut = context.rfind(". ") + 2
    return context[:cut] + context[cut:].capitalize()


def hellaswag_clean(text):
    removed = re.sub(r"\[.*?\]", "", text)
    return removed.replace("  ", " ") if removed != text else text


def hellaswag(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines[-1] == "":
        lines.pop()
    tasks = []
    for k in range(0, len(lines), 6):
        block = lines[k:k + 6]
        tasks.append({
            "index": k // 6,
            "context": hellaswag_clean(hellaswag_context(block[0])),
            "choices": [hellaswag_clean(e) for e in block[2:6]],
            "gold": int(block[1]),
        })
    return tasks, lines


def jsonl_with_labels(questions, labels):
    with open(questions, encoding="utf-8") as f:
        items = [json.loads(line) for line in f]
    with open(labels, encoding="utf-8") as f:
        golds = [int(line) for line in f]
    assert len(items) == len(golds)
    return items, golds


def piqa(root):
    items, golds = jsonl_with_labels(os.path.join(root, "piqa", "valid.jsonl"), os.path.join(root, "piqa", "valid-labels.lst"))
    return [{"context": "Question: %s\nAnswer: " % d["goal"], "choices": [" " + d["sol1"], " " + d["sol2"]], "gold": g}
            for d, g in zip(items, golds)]


def siqa(root):
    items, golds = jsonl_with_labels(os.path.join(root, "siqa", "dev.jsonl"), os.path.join(root, "siqa", "dev-labels.lst"))
    out = []
    for d, g in zip(items, golds):
        assert d["options"][g - 1] == d["answer"]
        out.append({"context": "Question: %s %s\nAnswer: " % (d["context"], d["question"]), "choices": list(d["options"]), "gold": g - 1})
    return out


def rocstories(path):
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][-1] == "AnswerRightEnding"
    out = []
    for row in rows[1:1001]:
        s = row[1:5] + [row[5] if row[7] == "1" else row[6]]
        out.append({"prefix": s[0] + " " + s[1], "middle": s[2], "suffix": s[3] + " " + s[4]})
    return out, len(rows) - 1


def gsm8k(path):
    with open(path, encoding="utf-8") as f:
        return [{"prompt": d["instruction"], "answer": d["output"]} for d in json.load(f)]


def digest(examples, fields):
    def field(value):
        return "\x1d".join(value) if isinstance(value, list) else str(value)

    text = "\x1e".join("\x1f".join(field(e[name]) for name in fields) for e in examples)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.normpath(os.path.join(here, "..", ".."))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared-data", default=os.path.join(repo, "..", "shared", "data"))
    parser.add_argument("--out", default=os.path.join(repo, "tests", "fixtures", "eval", "tasks_reference.json"))
    args = parser.parse_args()
    root = os.path.join(args.shared_data, "eval")

    lam = lambada(os.path.join(root, "lambada_test_plain_text.txt"))
    hs, hs_lines = hellaswag(os.path.join(root, "hellaswag", "hellaswag_val_full.txt"))
    special = sorted({k // 6 for k, line in enumerate(hs_lines) if "[" in line or "]" in line or "  " in line})
    wikihow = [t["index"] for t in hs if hs_lines[6 * t["index"]].endswith(".")][:3]
    pq, sq = piqa(root), siqa(root)
    roc, roc_rows = rocstories(os.path.join(root, "cloze_test_val__spring2016.csv"))
    gsm = gsm8k(os.path.join(root, "gsm_test_diffullama.json"))

    fixture = {
        "counts": {"lambada": len(lam), "hellaswag": len(hs), "piqa": len(pq), "siqa": len(sq),
                   "rocstories": len(roc), "rocstories_rows": roc_rows, "gsm8k": len(gsm)},
        "digests": {"lambada": digest(lam, ["text", "prefix", "target"]),
                    "hellaswag": digest(hs, ["context", "choices", "gold"]),
                    "piqa": digest(pq, ["context", "choices", "gold"]),
                    "siqa": digest(sq, ["context", "choices", "gold"]),
                    "rocstories": digest(roc, ["prefix", "middle", "suffix"]),
                    "gsm8k": digest(gsm, ["prompt", "answer"])},
        "lambada": lam[:FIRST],
        "hellaswag": hs[:FIRST] + [hs[i] for i in wikihow + special],
        "piqa": pq[:FIRST],
        "siqa": sq[:FIRST],
        "rocstories": roc[:FIRST],
        "gsm8k": gsm[:FIRST],
        "python_whitespace": [c for c in range(0x10000) if chr(c).isspace()],
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=True, indent=1)
        f.write("\n")
    print("wrote %s (%d HellaSwag tasks)" % (args.out, len(fixture["hellaswag"])))


if __name__ == "__main__":
    main()
