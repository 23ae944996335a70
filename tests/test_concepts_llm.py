"""LLM source: answer parsing on recorded outputs, and one end-to-end `llm` run through a tiny
random causal LM saved with save_pretrained and loaded by path (structure only)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from clipcbm.pipeline.concepts.config import ConceptsConfig
from clipcbm.pipeline.concepts.llm import PARSERS, PROMPTS, HFGenerator, llm_candidates
from clipcbm.pipeline.concepts.run import run

CASES = json.loads(
    (Path(__file__).parent / "fixtures" / "concepts" / "llm_answers.json").read_text(
        encoding="utf-8"
    )
)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_parse_recorded_answers(case):
    assert PARSERS[case["kind"]](case["answer"]) == case["expected"]


def test_prompts_are_the_thesis_wording():
    assert PROMPTS["important"].format(label="dog") == (
        "List the most important features for recognizing something as a dog. "
        "Write them one by one."
    )
    assert PROMPTS["around"].format(label="dog") == (
        "List the things most commonly seen around a dog. Write them one by one."
    )
    assert PROMPTS["superclass"].format(label="dog") == (
        "Give a generalization for the word dog. Answer with a single sentence."
    )


def test_llm_candidates_with_recorded_generator():
    answers = {
        "important": "1. Fur\n2. Four legs",
        "around": "- a kennel",
        "superclass": "A dog is an animal.",
    }
    sent: list[list[str]] = []

    def generate(prompts):
        sent.append(prompts)
        return [
            answers[next(k for k, t in PROMPTS.items() if p == t.format(label="dog"))]
            for p in prompts
        ]

    cands, records = llm_candidates(["dog"], generate, chunk=2)
    assert [len(batch) for batch in sent] == [2, 1]
    assert cands == [
        ("Fur", "dog", "llm:important"),
        ("Four legs", "dog", "llm:important"),
        ("a kennel", "dog", "llm:around"),
        ("animal", "dog", "llm:superclass"),
    ]
    assert [r["kind"] for r in records] == ["important", "around", "superclass"]


def build_tiny_lm(out: Path, chat: bool) -> Path:
    """A 2-layer GPT-2 (E=32) with a byte-level tokenizer built offline. The LM head is zero,
    so greedy decoding always picks token 0 ('a'): random weights, deterministic text."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    alphabet.remove("a")
    vocab = {c: i for i, c in enumerate(["a", *alphabet, "<|endoftext|>"])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
    if chat:
        tok.chat_template = (
            "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n"
            "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
        )
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(vocab),
        n_positions=256,
        n_embd=32,
        n_layer=2,
        n_head=2,
        tie_word_embeddings=False,
        eos_token_id=vocab["<|endoftext|>"],
        bos_token_id=vocab["<|endoftext|>"],
    )
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def hash_embed(texts: list[str]) -> np.ndarray:
    """Deterministic pseudo-random unit vectors (no model): similarities near 0."""
    seeds = [int(hashlib.sha256(t.encode()).hexdigest()[:8], 16) for t in texts]
    rows = [np.random.default_rng(s).normal(size=64) for s in seeds]
    return np.asarray(rows, dtype=np.float32)


def test_end_to_end_llm_source_with_a_tiny_causal_lm(tmp_path):
    model_dir = build_tiny_lm(tmp_path / "tiny_lm", chat=True)
    classes = tmp_path / "classes.txt"
    classes.write_text("dog\ncat\n")
    cfg = ConceptsConfig(
        source="llm",
        llm=str(model_dir),
        classes_file=classes,
        out=tmp_path / "out" / "c.csv",
        llm_max_new_tokens=6,
        llm_batch_size=4,
        device="cpu",
        progress=False,
    )
    res = run(cfg, embed=hash_embed)
    records = [json.loads(line) for line in res.paths["llm"].read_text().splitlines()]
    assert [(r["class"], r["kind"]) for r in records] == [
        (c, k) for c in ("dog", "cat") for k in PROMPTS
    ]
    assert [r["prompt"] for r in records] == [
        PROMPTS[r["kind"]].format(label=r["class"]) for r in records
    ]
    for r in records:
        assert r["answer"] == "aaaaaa"  # 6 greedy tokens of the zeroed head
        assert r["concepts"] == PARSERS[r["kind"]](r["answer"]) == ["aaaaaa"]
    # six identical answers -> one concept with both classes and all three sources
    rows = list(csv.DictReader(res.paths["csv"].open()))
    assert rows == [
        {
            "concept": "aaaaaa",
            "class": "dog|cat",
            "source": "llm:important|llm:around|llm:superclass",
        }
    ]
    assert res.counts["duplicate"] == 5 and res.n_kept == 1 and res.n_raw == 6
    meta = json.loads(res.paths["meta"].read_text())
    assert meta["source"]["model"] == str(model_dir) and meta["sha256"] == res.sha256


def test_generator_without_chat_template_formats_plain_prompts(tmp_path):
    gen = HFGenerator.load(
        str(build_tiny_lm(tmp_path / "plain", chat=False)),
        device="cpu",
        max_new_tokens=3,
        batch_size=2,
    )
    assert not gen.uses_chat_template and gen.format("hi") == "hi"
    assert gen(["short", "a longer prompt", "x"]) == ["aaa", "aaa", "aaa"]
    chat = HFGenerator.load(str(build_tiny_lm(tmp_path / "chat", chat=True)), device="cpu")
    assert chat.format("hi") == "<|user|>hi\n<|assistant|>"
