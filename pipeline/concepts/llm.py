"""A local causal language model as a concept source (thesis §4.3, the three prompts).

Each class name is put into the thesis' three prompts (features, surroundings, generalisation)
and the answers are parsed into one concept per item. The model is any Hugging Face causal LM
given by hub id or local directory (AutoModelForCausalLM + AutoTokenizer, never remote code),
prompted through the tokenizer's chat template when it has one, decoded greedily. Generation is
injected as a `Generate` callable so parsing and bookkeeping are tested on recorded answers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from clipcbm.core.progress import bar as progress_bar
from clipcbm.pipeline.errors import PipelineError

log = logging.getLogger(__name__)

# prompt kind -> the thesis' wording (§4.3, Prompt 1-3); the kind becomes the source "llm:<kind>"
PROMPTS: dict[str, str] = {
    "important": "List the most important features for recognizing something as a {label}. "
    "Write them one by one.",
    "around": "List the things most commonly seen around a {label}. Write them one by one.",
    "superclass": "Give a generalization for the word {label}. Answer with a single sentence.",
}

Generate = Callable[[list[str]], list[str]]  # prompts -> generated answers (new text only)

_MARKER = re.compile(r"^(?:\(?\d{1,3}[.):]|[-*•·–—+]|\(?[a-z][.)])\s+", re.IGNORECASE)
_MARKDOWN = re.compile(r"\*\*|__|`|(?<!\w)[*_](?=\w)|(?<=\w)[*_](?!\w)")
_CHATTER = re.compile(
    r"^(?:sure|certainly|of course|here (?:is|are)|i hope|hope this|note\b|let me know|"
    r"these (?:are|features)|overall|in summary|as an ai)",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])")
_HEAD_SEP = re.compile(r"\s*(?::|\s[-–—]\s)\s*")
_COPULA = re.compile(
    r"^.*?\b(?:is|are|as)\s+(?:(?:a|an|the)\s+)?(?:(?:type|kind|sort|form|member|class|"
    r"category|variety|species|breed|example|group|subset)s?\s+of\s+)?(?:(?:a|an|the)\s+)?(.+)$",
    re.IGNORECASE,
)
_CLAUSE = re.compile(
    r",|;|:|\s(?:that|which|who|whose|with|for|used|known|typically|often|commonly|such as|"
    r"characterized|found|kept|including|designed|made|built)\s",
    re.IGNORECASE,
)
_TRIM = " \t\"'“”‘’.,;:!?()[]"


def _clean(item: str) -> str:
    return _MARKDOWN.sub("", item).strip(_TRIM).strip()


def _split_comma_list(line: str) -> list[str]:
    """'fur, whiskers, a tail and four legs' -> 4 items, but only when there is a comma and
    every part is short (<= 4 words): a longer part means the commas belong to a sentence."""
    if "," not in line:
        return [line]
    parts = [p for p in re.split(r",\s*|\s+(?:and|or)\s+", line.strip(_TRIM)) if p.strip()]
    return parts if all(len(p.split()) <= 4 for p in parts) else [line]


def parse_list_answer(text: str) -> list[str]:
    """An answer to a "list ... one by one" prompt -> items: numbered or bulleted lines
    ("1. Fur", "- **Tail**: long and bushy" -> "Tail"), a single comma-separated line, or
    sentences. Lead-in lines ending in ':' and polite chatter are skipped."""
    lines = [_MARKER.sub("", ln.strip()).strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.endswith(":") and not _CHATTER.match(ln)]
    items: list[str] = []
    for line in lines:
        head, *rest = _HEAD_SEP.split(_MARKDOWN.sub("", line), maxsplit=1)
        if rest and len(head.split()) <= 6:  # "Fur: dogs are covered in fur" -> "Fur"
            items.append(head)
            continue
        sentences = _SENTENCE_END.split(line)
        # a one-sentence, one-line answer may be an inline list: "fur, whiskers and a tail"
        items += _split_comma_list(line) if len(lines) == len(sentences) == 1 else sentences
    return [c for c in (_clean(i) for i in items) if c]


def parse_generalization(text: str) -> list[str]:
    """The one-sentence answer to the generalisation prompt -> its head noun phrase:
    'A dog is a domesticated mammal that ...' -> 'domesticated mammal';
    'Dogs are a type of animal.' -> 'animal'. Falls back to the cleaned sentence."""
    sentences = [
        s.strip()
        for ln in _MARKDOWN.sub("", text).splitlines()
        for s in _SENTENCE_END.split(_MARKER.sub("", ln.strip()))
        if s.strip()
    ]
    sentences = [s for s in sentences if not _CHATTER.match(s)] or sentences
    if not sentences:
        return []
    sentence = sentences[0]
    match = _COPULA.match(sentence)
    phrase = match.group(1) if match else sentence
    phrase = _CLAUSE.split(phrase, maxsplit=1)[0]
    cleaned = _clean(phrase)
    return [cleaned] if cleaned else []


# prompt kind -> answer parser
PARSERS: dict[str, Callable[[str], list[str]]] = {
    "important": parse_list_answer,
    "around": parse_list_answer,
    "superclass": parse_generalization,
}


def llm_candidates(
    classes: list[str], generate: Generate, chunk: int = 16, progress: bool = False
) -> tuple[list[tuple[str, str, str]], list[dict]]:
    """Ask the three prompts for every class -> ((concept, class, 'llm:<kind>') candidates,
    one record per prompt: class, kind, prompt, answer, parsed concepts)."""
    jobs = [
        (cls, kind, template.format(label=cls))
        for cls in classes
        for kind, template in PROMPTS.items()
    ]
    records: list[dict] = []
    bar = progress_bar(total=len(jobs), desc="LLM prompts", unit="prompt", enabled=progress)
    for start in range(0, len(jobs), chunk):
        batch = jobs[start : start + chunk]
        answers = generate([prompt for _, _, prompt in batch])
        if len(answers) != len(batch):
            raise RuntimeError(
                f"generator returned {len(answers)} answers for {len(batch)} prompts"
            )
        for (cls, kind, prompt), answer in zip(batch, answers, strict=True):
            records.append(
                {
                    "class": cls,
                    "kind": kind,
                    "prompt": prompt,
                    "answer": answer,
                    "concepts": PARSERS[kind](answer),
                }
            )
        bar.update(len(batch))
    bar.close()
    candidates = [(c, r["class"], f"llm:{r['kind']}") for r in records for c in r["concepts"]]
    return candidates, records


# ------------------------------------------------------------------------- Hugging Face model


class LLMError(PipelineError, RuntimeError):
    """The language model could not be loaded."""


@dataclass
class HFGenerator:
    """Greedy generation with a local Hugging Face causal LM; call with a list of prompts."""

    model: object
    tokenizer: object
    model_id: str
    max_new_tokens: int = 256
    batch_size: int = 8

    @classmethod
    def load(
        cls, model_id: str, device: str = "auto", max_new_tokens: int = 256, batch_size: int = 8
    ) -> HFGenerator:
        from clipcbm.pipeline.hub import pretrained_kwargs

        kw = pretrained_kwargs(model_id, flag="--llm /path/to/model")  # offline: fail fast
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from clipcbm.core.device import resolve_device

        dev = resolve_device(device)
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=False, **kw)
            model = AutoModelForCausalLM.from_pretrained(
                model_id, dtype=dtype, trust_remote_code=False, **kw
            )
        except (OSError, ValueError) as e:
            raise LLMError(
                f"could not load causal LM {model_id!r}: {e}. Give a local directory or a hub id "
                "of a model whose code ships with transformers (remote code is never run)."
            ) from e
        tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        log.info("LLM %s on %s (%s)", model_id, dev, dtype)
        return cls(model.to(dev).eval(), tokenizer, model_id, max_new_tokens, batch_size)

    @property
    def uses_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def format(self, prompt: str) -> str:
        if not self.uses_chat_template:
            return prompt
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )

    def __call__(self, prompts: list[str]) -> list[str]:
        import torch

        out: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            texts = [self.format(p) for p in prompts[start : start + self.batch_size]]
            # a chat template already writes the special tokens (BOS) it wants
            enc = self.tokenizer(
                texts,
                return_tensors="pt",
                padding=True,
                add_special_tokens=not self.uses_chat_template,
            )
            enc = enc.to(self.model.device)
            with torch.inference_mode():
                gen = self.model.generate(
                    **enc,
                    do_sample=False,
                    num_beams=1,
                    max_new_tokens=self.max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new = gen[:, enc["input_ids"].shape[1] :]  # (B, new tokens): drop the echoed prompt
            out += self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return out
