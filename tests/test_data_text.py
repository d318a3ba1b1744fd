"""Text and JSONL data for text models: tokenized with the model's tokenizer.json, lazily, with labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST, NO_BAR

pytest.importorskip("transformers")

WORDS = "the cat sat on a mat dog ran fast slow big small red blue".split()


def save_bert(folder: Path, seq: int = 12) -> Path:
    """A tiny BERT sentence classifier (2 classes) with a word-level tokenizer that adds [CLS] and [SEP]."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    torch.manual_seed(0)
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=seq, num_labels=2,
                                     architectures=["BertForSequenceClassification"])
    transformers.BertForSequenceClassification(config).eval().save_pretrained(folder)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                             special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return save_bert(tmp_path_factory.mktemp("bert") / "bert")


def _load(bert: Path):
    from effkit.load import load_model
    from effkit.specs import parse_input_shape

    return load_model(f"hf:{bert}", input_shapes=[parse_input_shape("int64:1x12")] * 2)


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_becomes_tokenized_inputs_and_labels(bert, tmp_path):
    from effkit.data import load_data

    model = _load(bert)
    file = _jsonl(tmp_path / "eval.jsonl", [{"text": "the cat sat", "label": 1}, {"text": "a dog ran fast", "label": 0},
                                            {"text": "big red mat " * 10, "label": 1}])
    data = load_data(str(file), model=model)
    assert model.input_names == ["input_ids", "attention_mask"]
    assert len(data) == 3 and data.labels.tolist() == [1, 0, 1]
    ids, mask = (np.asarray(a) for a in data.inputs)
    assert ids.shape == mask.shape == (3, 12) and ids.dtype == np.int64
    # [CLS] the cat sat [SEP], then padding that the mask leaves out
    assert ids[0, :5].tolist() == [2, 4, 5, 6, 3] and ids[0, 5:].tolist() == [0] * 7
    assert mask[0].tolist() == [1] * 5 + [0] * 7 and mask[2].tolist() == [1] * 12  # truncated to 12


def test_txt_is_unlabelled_and_limit_takes_the_first_lines(bert, tmp_path):
    from effkit.data import load_data

    file = tmp_path / "calib.txt"
    file.write_text("the cat\n\nsmall blue dog\nred mat\n")
    data = load_data(str(file), model=_load(bert), limit=2)
    assert len(data) == 2 and data.labels is None  # the blank line is no example
    assert np.asarray(data.inputs[0])[1, :5].tolist() == [2, 15, 17, 10, 3]


@pytest.mark.parametrize("rows, message", [
    (['{"text": "the cat", "label": 1}', "{not json", '{"text": "a mat", "label": 0}'], "eval.jsonl, line 2: not JSON"),
    ([{"text": "the cat", "label": "positive"}], "eval.jsonl, line 1: label 'positive' is not a class index"),
    ([{"words": "the cat"}], "eval.jsonl, line 1: no text field 'text'"),
    ([{"text": "the cat", "label": 1}, {"text": "a mat"}], "1 lines have a 'label' field and 1 do not"),
])
def test_bad_jsonl_names_the_file_and_line(bert, tmp_path, rows, message):
    from effkit.data import load_data
    from effkit.errors import InputError

    with pytest.raises(InputError, match=message):
        load_data(str(_jsonl(tmp_path / "eval.jsonl", rows)), model=_load(bert))


def test_text_without_a_tokenizer_is_refused(tmp_path):
    from effkit.data import load_data
    from effkit.errors import UsageError

    (tmp_path / "calib.txt").write_text("the cat\n")
    with pytest.raises(UsageError, match="needs the model's tokenizer.json"):
        load_data(str(tmp_path / "calib.txt"), ["input_ids"])


def test_quantize_judges_accuracy_on_jsonl(bert, tmp_path, cli):
    """A user's text classifier, calibrated on a .txt and judged on a labelled .jsonl, end to end."""
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(WORDS, size=rng.integers(3, 9))) for _ in range(24)]
    (tmp_path / "calib.txt").write_text("\n".join(sentences[:16]) + "\n")
    _jsonl(tmp_path / "eval.jsonl", [{"text": s, "label": int(i % 2)} for i, s in enumerate(sentences[16:])])
    code, out, err = cli("quantize", f"hf:{bert}", "--input-shape", "int64:1x12", "--input-shape", "int64:1x12",
                         "--calib", tmp_path / "calib.txt", "--eval",
                         tmp_path / "eval.jsonl", "--backend", "onnxruntime", "--method", "dynamic", *NO_BAR, *FAST,
                         "--min-time", "0.05", "--allow-slower", "--json", tmp_path / "q.json", "-o", tmp_path / "q")
    assert code == 0, err  # --allow-slower: whether int8 beats fp32 on a 16-wide BERT is the machine's to say
    result = json.loads((tmp_path / "q.json").read_text())
    assert result["fidelity"]["inputs"].endswith("eval.jsonl") and result["fidelity"]["samples"] == 8
    for side in ("before", "after"):  # over the 8 labelled lines
        assert (result["accuracy"][side] * 8) % 1 == 0, result["accuracy"]


def test_text_gives_a_hugging_face_model_its_example_inputs(bert, cli):
    code, out, err = cli("bench", f"hf:{bert}", "--text", "the cat sat on a mat", "--text", "a dog", *FAST,
                         "--json", "b.json")
    assert code == 0, err
    assert "inputs (--text: 2 tokenized, length 8): input_ids: 2x8 int64, attention_mask: 2x8 int64" in out
    Path("lines.txt").write_text("the cat\n\nred mat big\n")
    code, out, err = cli("inspect", f"hf:{bert}", "--text-file", "lines.txt", "--max-length", "10")
    assert code == 0, err
    assert "inputs (--text: 2 tokenized, length 10): input_ids: 2x10 int64" in out


@pytest.mark.parametrize("args, message", [
    (["--text", " ".join(WORDS[:11])], "Error: --text is 13 tokens long, longer than the model's 12 positions "
                                       "(pass --max-length 12 to truncate it)"),
    (["--text", "the cat", "--input-shape", "int64:1x4"],
     "Error: give the example inputs one way: --text, --image, --inputs or --input-shape"),
    (["--text-file", "empty.txt"], "Error: empty.txt holds no text (write one example per line)"),
])
def test_bad_text_inputs_are_one_error_line(bert, cli, args, message):
    Path("empty.txt").write_text("\n\n")
    code, _, err = cli("bench", f"hf:{bert}", *args)
    assert (code, err.strip()) == (2, message)


def test_text_for_a_model_without_a_tokenizer_says_what_is_missing(cli):
    from conftest import spec

    code, _, err = cli("bench", spec("mlp"), "--text", "hello")
    assert code == 2 and err.startswith("Error: --text needs the model's tokenizer.json, and the model has none")
