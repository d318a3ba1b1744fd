"""Tiny causal language models (GPT-2, Llama, Qwen2) saved as Hugging Face folders, with a word-level
tokenizer built offline: seeded random weights, a few thousand parameters, loaded in a second."""

from __future__ import annotations

from pathlib import Path

WORDS = ("the of and to a in is it that was he for on are as with his they at be this from have or by one "
         "had not but what all were when we there can an your which their said if do will each about how up "
         "out them then she many some so these would other into has more her two like him see time could no "
         "make than first been its who now people my made over did down only way find use may water long").split()
VOCAB = 64  # [UNK] and the first 63 words
CONTEXT = 64


def save_tokenizer(folder: Path) -> None:
    """A word-level tokenizer over WORDS, written as tokenizer.json (what effkit reads)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS[:VOCAB - 1])}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))


def _config(kind: str):
    import transformers

    if kind == "gpt2":
        return transformers.GPT2Config(vocab_size=VOCAB, n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=4,
                                       bos_token_id=0, eos_token_id=0)
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT,
                  bos_token_id=0, eos_token_id=0)
    if kind == "llama":
        return transformers.LlamaConfig(**common)
    if kind == "qwen2":
        return transformers.Qwen2Config(**common)
    raise ValueError(kind)


def save_causal_lm(folder: Path, kind: str = "gpt2", tokenizer: bool = True, seed: int = 0) -> Path:
    """Build a tiny `kind` causal LM with seeded weights and save it (and a tokenizer) into `folder`."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = _config(kind)
    cls = {"gpt2": transformers.GPT2LMHeadModel, "llama": transformers.LlamaForCausalLM,
           "qwen2": transformers.Qwen2ForCausalLM}[kind]
    model = cls(config).eval()
    with torch.no_grad():  # larger weights than the init's 0.02 spread, so that greedy tokens vary
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    if tokenizer:
        save_tokenizer(folder)
    return folder
