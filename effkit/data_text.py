"""Text data for text models: a `.txt` file (one example per line) or `.jsonl` (one JSON object per
line, its text under `text` and an optional integer class under `label`), tokenized with the model's
own `tokenizer.json` (read as data by the `tokenizers` library: no code runs) and padded or truncated
to the model's sequence length.

The file is indexed once (line offsets and labels, which also checks every JSONL line), then lines
are read and tokenized as batches need them: memory holds a batch, not the file.

For a language model's perplexity the text is read as one stream instead (`token_windows`): every
line tokenized, the tokens concatenated and cut into windows of the model's sequence length.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from effkit.errors import InputError, UsageError, first_line
from effkit.samples import Samples

TEXT_SUFFIXES = (".txt", ".jsonl")
DEFAULT_MAX_LENGTH = 128  # when the model's example inputs give no sequence length
# the pad tokens of common tokenizers, in the order they are tried when tokenizer.json sets none
PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>", "<|endoftext|>", "</s>", "<unk>", "[UNK]")


@dataclass(frozen=True)
class TextPreprocess:
    """How text becomes model inputs: the tokenizer file, the sequence length every sample is padded
    or truncated to, and the JSONL fields that hold the text and the label."""

    tokenizer: Path | None
    max_length: int = DEFAULT_MAX_LENGTH
    text_field: str = "text"
    label_field: str = "label"


def is_text_file(path: Path) -> bool:
    return path.suffix.lower() in TEXT_SUFFIXES


def tokenizer_file(model) -> Path | None:
    """The model's tokenizer.json: in its Hugging Face folder, or beside its file (as optimum exports
    an ONNX model); None when there is none."""
    if model.path is None:
        return None
    path = Path(model.path)
    folder = path if path.is_dir() else path.parent
    file = folder / "tokenizer.json"
    return file if file.is_file() else None


def text_preprocess(model, max_length: int | None = None, text_field: str = "text",
                    label_field: str = "label") -> TextPreprocess:
    """How `model` reads text: its tokenizer and, unless given, the sequence length of its example
    inputs (so that the data's shapes are those the model was exported or measured with)."""
    if max_length is None:
        lengths = [a.shape[1] for a in model.example_inputs if a.ndim == 2 and np.issubdtype(a.dtype, np.integer)]
        max_length = lengths[0] if lengths else DEFAULT_MAX_LENGTH
    if max_length < 1:
        raise UsageError(f"--max-length must be at least 1, not {max_length}")
    return TextPreprocess(tokenizer_file(model), max_length, text_field, label_field)


def text_examples(texts: list[str], tokenizer: Path | None, input_names: list[str], dtypes: list[Any],
                  max_length: int | None = None, context: int | None = None) -> tuple[np.ndarray, ...]:
    """`texts` tokenized as one batch of example inputs, one array per model input, padded to the
    longest (or padded and truncated to `max_length`). A text longer than the model's `context` (its
    position embeddings) without `max_length` is an error saying how to cut it."""
    if tokenizer is None:
        raise InputError("--text needs the model's tokenizer.json, and the model has none",
                         "load the model from its Hugging Face folder with its tokenizer.json, or pass --inputs file.npz")
    if not texts:
        raise InputError("no text to tokenize", "give --text \"...\" or a --text-file with one example per line")
    tok = _read_tokenizer(tokenizer)
    longest = max(len(e.ids) for e in tok.encode_batch(texts))
    if max_length is None and context is not None and longest > context:
        raise InputError(f"--text is {longest} tokens long, longer than the model's {context} positions",
                         f"pass --max-length {context} to truncate it")
    prep = TextPreprocess(tokenizer, max_length or longest)
    tok = _tokenizer(prep)
    return _model_inputs(_arrays(tok.encode_batch(texts)), input_names, dtypes)


def read_text_lines(path: Path) -> list[str]:
    """The non-blank lines of a text file (`--text-file`)."""
    try:
        lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text ({e.reason})", "save the file as UTF-8") from e
    except OSError as e:
        raise InputError(f"cannot read {path}: {first_line(e)}") from e
    if not lines:
        raise InputError(f"{path} holds no text", "write one example per line")
    return lines


def text_samples(path: Path, prep: TextPreprocess | None, input_names: list[str], dtypes: list[Any],
                 limit: int | None) -> tuple[tuple[Samples, ...], np.ndarray | None]:
    """The file's examples as one lazily tokenized Samples per model input, and their labels (None
    when no line has one)."""
    if prep is None or prep.tokenizer is None:
        raise UsageError(f"{path} is text, and turning it into model inputs needs the model's tokenizer.json",
                         "load the model from its Hugging Face folder, or put its tokenizer.json beside the model file")
    offsets, labels = _index(path, prep, limit)
    if not offsets:
        raise InputError(f"{path} holds no examples", "write one example per line")
    tokenizer = _tokenizer(prep)
    fields = [_field(name, len(input_names)) for name in input_names]
    cache: dict[bytes, dict[str, np.ndarray]] = {}

    def encoded(k: np.ndarray) -> dict[str, np.ndarray]:
        key = k.tobytes()
        if key not in cache:  # every input of a batch reads the same rows: tokenize them once
            texts = [_read_text(path, offsets[int(j)], prep) for j in k]
            cache.clear()
            cache[key] = _arrays(tokenizer.encode_batch(texts))
        return cache[key]

    def reader(field: str):
        if field == "position_ids":
            return lambda k: np.broadcast_to(np.arange(prep.max_length), (len(k), prep.max_length))
        return lambda k: encoded(k)[field]

    inputs = tuple(Samples(len(offsets), (prep.max_length,), dtype, reader(field))
                   for field, dtype in zip(fields, dtypes))
    return inputs, None if labels is None else np.array(labels, dtype=np.int64)


def _field(name: str, n_inputs: int) -> str:
    """Which part of a tokenizer's encoding feeds the input `name`."""
    known = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids",
             "position_ids": "position_ids"}
    if name in known:
        return known[name]
    if n_inputs == 1:  # a model of token ids alone, whatever its input is called
        return "ids"
    raise InputError(f"the model's input {name!r} cannot be made from text",
                     "text gives input_ids, attention_mask, token_type_ids and position_ids; "
                     "pass the data as .npz arrays named like the model's inputs")


def _index(path: Path, prep: TextPreprocess, limit: int | None) -> tuple[list[int], list[int] | None]:
    """Byte offsets of the examples' lines and their labels; checks every JSONL line on the way."""
    jsonl = path.suffix.lower() == ".jsonl"
    offsets, labels, unlabelled = [], [], 0
    try:
        with open(path, "rb") as f:
            offset = 0
            for number, raw in enumerate(f, 1):
                start, offset = offset, offset + len(raw)
                if not raw.strip():
                    continue
                if limit is not None and len(offsets) >= limit:
                    break
                if jsonl:
                    label = _label(_record(raw, path, number, prep), path, number, prep)
                    if label is None:
                        unlabelled += 1
                    else:
                        labels.append(label)
                else:
                    _decode(raw, path, number)
                offsets.append(start)
    except OSError as e:
        raise InputError(f"cannot read {path}: {first_line(e)}") from e
    if labels and unlabelled:
        raise InputError(f"{path}: {len(labels)} lines have a {prep.label_field!r} field and {unlabelled} do not",
                         "label every line, or none")
    return offsets, labels if jsonl and labels else None


def _decode(raw: bytes, path: Path, number: int) -> str:
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}, line {number}: not UTF-8 text ({e.reason})", "save the file as UTF-8") from e


def _record(raw: bytes, path: Path, number: int, prep: TextPreprocess) -> dict:
    try:
        record = json.loads(_decode(raw, path, number))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}, line {number}: not JSON ({e.msg})", "write one JSON object per line") from e
    if not isinstance(record, dict) or not isinstance(record.get(prep.text_field), str):
        raise InputError(f"{path}, line {number}: no text field {prep.text_field!r}",
                         "give each line a string under that name (or name the field with --text-field)")
    return record


def _label(record: dict, path: Path, number: int, prep: TextPreprocess) -> int | None:
    label = record.get(prep.label_field)
    if label is None:
        return None
    if isinstance(label, bool) or not isinstance(label, int) or label < 0:
        raise InputError(f"{path}, line {number}: label {label!r} is not a class index (0, 1, ...)",
                         "store each label as the integer class the model predicts")
    return label


def _read_text(path: Path, offset: int, prep: TextPreprocess) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        text = f.readline().decode("utf-8").rstrip("\r\n")
    return json.loads(text)[prep.text_field] if path.suffix.lower() == ".jsonl" else text


def _tokenizer(prep: TextPreprocess):
    """The tokenizer, truncating and padding to `prep.max_length`."""
    tokenizer = _read_tokenizer(prep.tokenizer)
    tokenizer.enable_truncation(prep.max_length)
    padding = tokenizer.padding or {}
    pad_token = padding.get("pad_token") or next((t for t in PAD_TOKENS if tokenizer.token_to_id(t) is not None), None)
    pad_id = padding.get("pad_id", 0) if padding else (tokenizer.token_to_id(pad_token) if pad_token else 0)
    # padded positions get attention_mask 0, so the pad id only has to be a valid one
    tokenizer.enable_padding(length=prep.max_length, pad_id=pad_id, pad_token=pad_token or "[PAD]")
    return tokenizer


def _read_tokenizer(file: Path):
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise UsageError("reading text needs the tokenizers library", "pip install 'effkit[hf]'") from e
    try:
        return Tokenizer.from_file(str(file))
    except Exception as e:
        raise InputError(f"{file} is not a readable tokenizer.json: {first_line(e, 200)}") from e


def token_windows(path: Path, prep: TextPreprocess | None, input_names: list[str], dtypes: list[Any],
                  limit: int | None) -> tuple[np.ndarray, ...]:
    """A text file as one token stream cut into windows of `prep.max_length` tokens, one array per
    model input (token ids; an attention mask of ones; positions), at most `limit` windows. The
    tokens after the last whole window are left out, as perplexity evaluations usually do. A
    .jsonl file contributes its text fields."""
    if prep is None or prep.tokenizer is None:
        raise UsageError(f"{path} is text, and turning it into model inputs needs the model's tokenizer.json",
                         "load the model from its Hugging Face folder, or put its tokenizer.json beside the model file")
    tokenizer = _tokenizer(prep)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    wanted = None if limit is None else limit * prep.max_length
    ids: list[int] = []
    offsets, _ = _index(path, prep, None)
    for start in range(0, len(offsets), 256):  # a batch of lines at a time
        texts = [_read_text(path, offset, prep) for offset in offsets[start:start + 256]]
        for encoding in tokenizer.encode_batch(texts, add_special_tokens=False):
            ids.extend(encoding.ids)
        if wanted is not None and len(ids) >= wanted:
            break
    windows = len(ids) // prep.max_length if wanted is None else min(limit, len(ids) // prep.max_length)
    if windows == 0:
        raise InputError(f"{path} holds {len(ids)} tokens, fewer than one window of {prep.max_length}",
                         "give more text, or a shorter window with --max-length")
    tokens = np.array(ids[:windows * prep.max_length], dtype=np.int64).reshape(windows, prep.max_length)
    parts = {"ids": tokens, "attention_mask": np.ones_like(tokens), "type_ids": np.zeros_like(tokens)}
    return _model_inputs(parts, input_names, dtypes)


def token_dtypes(model, names: list[str]) -> list[Any]:
    """The dtype of each of `names` (the model's inputs that text feeds): the model's own example
    inputs' when they match one to one, else int64."""
    given = [a.dtype for a in model.example_inputs] if model is not None else []
    return given if len(given) == len(names) else [np.int64] * len(names)


def _arrays(encodings) -> dict[str, np.ndarray]:
    """A batch of the tokenizer's encodings (padded to one length) as arrays by field."""
    return {"ids": np.array([e.ids for e in encodings]),
            "attention_mask": np.array([e.attention_mask for e in encodings]),
            "type_ids": np.array([e.type_ids for e in encodings])}


def _model_inputs(parts: dict[str, np.ndarray], input_names: list[str], dtypes: list[Any]) -> tuple[np.ndarray, ...]:
    """One array per model input from a batch's token arrays (`_arrays`), positions added."""
    ids = parts["ids"]
    parts = {**parts, "position_ids": np.broadcast_to(np.arange(ids.shape[1]), ids.shape)}
    return tuple(np.ascontiguousarray(parts[_field(name, len(input_names))], dtype=dtype)
                 for name, dtype in zip(input_names, dtypes))
