"""A small causal language model trained on Jane Austen's *Persuasion*, for effkit's language-model examples.

Text: examples/data/persuasion-train.txt (chapters 1-20) and persuasion-test.txt (chapters 21-24, held
out), one paragraph per line. *Persuasion* (Jane Austen, 1818) is in the public domain. The text was taken
from the Debian package r-cran-janeaustenr 1.0.0-1 (Julia Silge's R package janeaustenr, MIT licence, whose
texts come from Project Gutenberg without its header and licence), data set `persuasion`, with the title
lines dropped and each paragraph's lines joined.

The model is Llama-style (4 blocks, width 128, 4 query heads sharing 2 key/value heads, FFN 384; 1.1M
parameters, embeddings tied to the LM head) with a 2,048-token byte-level BPE tokenizer trained on the same
text. Training is seeded and takes a few minutes on 2 cores; the folder it writes is what `hf:` loads:

    python examples/austen_lm.py out/austen-lm
    effkit bench hf:out/austen-lm --generate --prompt "Anne Elliot" --new-tokens 32
    effkit prune hf:out/austen-lm -o out/narrow.pt2 --ratio heads=0.5,ffn=0.5 --runtime torch \\
        --finetune-epochs 2 --data examples/data/persuasion-train.txt --eval-text examples/data/persuasion-test.txt
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

DATA = Path(__file__).parent / "data"
VOCAB = 2048
CONTEXT = 128
SPECIAL = "<|endoftext|>"


def train_tokenizer(text_file: Path):
    """A byte-level BPE tokenizer of VOCAB tokens, trained on `text_file` (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[SPECIAL],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train([str(text_file)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=SPECIAL, eos_token=SPECIAL,
                                   pad_token=SPECIAL, model_max_length=CONTEXT)


def windows(tokenizer, text_file: Path):
    """The text as one token stream (paragraphs joined by the end-of-text token), cut into windows of CONTEXT."""
    import torch

    ids: list[int] = []
    for line in text_file.read_text().splitlines():
        ids += tokenizer.backend_tokenizer.encode(line).ids + [tokenizer.eos_token_id]  # no length warning
    count = len(ids) // CONTEXT
    return torch.tensor(ids[:count * CONTEXT]).reshape(count, CONTEXT)


def build(tokenizer):
    """The untrained model, seeded."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT,
                                      tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return transformers.LlamaForCausalLM(config)


def perplexity(model, data) -> float:
    """exp of the mean next-token loss over `data`'s windows."""
    import torch

    model.eval()
    with torch.no_grad():  # every window has CONTEXT - 1 predicted tokens: the mean of batch means is the mean
        losses = [float(model(input_ids=batch, labels=batch).loss) * len(batch) for batch in data.split(16)]
    model.train()
    return math.exp(sum(losses) / len(data))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", type=Path, help="the Hugging Face folder to write")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    import torch

    tokenizer = train_tokenizer(DATA / "persuasion-train.txt")
    train, test = windows(tokenizer, DATA / "persuasion-train.txt"), windows(tokenizer, DATA / "persuasion-test.txt")
    model = build(tokenizer).train()
    steps = args.epochs * math.ceil(len(train) / 16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        for batch in train[torch.randperm(len(train), generator=generator)].split(16):
            loss = model(input_ids=batch, labels=batch).loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
        print(f"epoch {epoch + 1}/{args.epochs}: train loss {float(loss.detach()):.3f}, held-out perplexity "
              f"{perplexity(model, test):.2f} ({time.perf_counter() - start:.0f} s)", flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(str(args.output))
    tokenizer.save_pretrained(str(args.output))
    print(f"wrote {args.output}: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{len(train)} training windows of {CONTEXT} tokens")


if __name__ == "__main__":
    main()
