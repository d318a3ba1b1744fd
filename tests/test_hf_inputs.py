"""Hugging Face folders take every input their model has: BERT's token_type_ids, vision models'
pixel_values (and --image files through the folder's image processor), Wav2Vec2's input_values and
Whisper's encoder input_features, each shaped from the folder's config; the folder's size is its files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST, NO_BAR, spec

transformers = pytest.importorskip("transformers")

WORDS = "the cat sat on a mat dog ran".split()
TEXT = ["input_ids", "attention_mask", "token_type_ids"]


def _save(model, folder: Path, processor=None) -> Path:
    model.eval().save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)
    return folder


def save_bert(folder: Path, tokenizer: bool = True) -> Path:
    """A tiny BERT classifier with segment embeddings (type vocab 2), and a word-level tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    torch.manual_seed(0)
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=16, type_vocab_size=2,
                                     num_labels=2, architectures=["BertForSequenceClassification"])
    model = transformers.BertForSequenceClassification(config)
    with torch.no_grad():  # segment embeddings as different as real ones, so that segments change the output
        model.bert.embeddings.token_type_embeddings.weight.normal_(0, 1)
    _save(model, folder)
    if tokenizer:
        tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                           special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        tok.save(str(folder / "tokenizer.json"))
    return folder


def _vit_processor():
    return transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5, 0.4, 0.3],
                                          image_std=[0.2, 0.25, 0.3])


def save_vision(folder: Path, arch: str) -> Path:
    """A tiny vision model of `arch` for 32x32 images (ResNet's config has no image size: its image
    processor gives it)."""
    import torch

    torch.manual_seed(0)
    vit = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
               patch_size=8)
    if arch == "ViTModel":
        return _save(transformers.ViTModel(transformers.ViTConfig(**vit)), folder, _vit_processor())
    if arch == "ViTForImageClassification":
        config = transformers.ViTConfig(**vit, num_labels=3, architectures=[arch])
        return _save(transformers.ViTForImageClassification(config), folder, _vit_processor())
    if arch == "ConvNextModel":
        config = transformers.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=32)
        return _save(transformers.ConvNextModel(config), folder)
    if arch == "ResNetModel":
        config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])
        return _save(transformers.ResNetModel(config), folder,
                     transformers.ConvNextImageProcessor(size={"shortest_edge": 32}))
    config = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                                     window_size=4)
    return _save(transformers.SwinModel(config), folder)


def save_wav2vec2(folder: Path, sampling_rate: int | None = None) -> Path:
    import torch

    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64, conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 4),
                                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    extractor = None if sampling_rate is None else transformers.Wav2Vec2FeatureExtractor(sampling_rate=sampling_rate)
    return _save(transformers.Wav2Vec2Model(config), folder, extractor)


def save_whisper(folder: Path) -> Path:
    import torch

    torch.manual_seed(0)
    config = transformers.WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                        num_mel_bins=16, max_source_positions=20, max_target_positions=16,
                                        vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                        decoder_start_token_id=1)
    return _save(transformers.WhisperModel(config), folder)


def _images(folder: Path) -> tuple[Path, Path]:
    """Two RGB images of other sizes than the model's, one not square."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    wide, square = folder / "wide.png", folder / "square.jpg"
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(wide)
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(square)
    return wide, square


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return save_bert(tmp_path_factory.mktemp("hf") / "bert")


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> Path:
    return save_vision(tmp_path_factory.mktemp("hf") / "vit", "ViTForImageClassification")


def _load(folder: Path, **kwargs):
    from effkit.load import load_model

    return load_model(f"hf:{folder}", **kwargs)


def _run(model, arrays) -> np.ndarray:
    from effkit.runners import native_runner

    return native_runner(model).run(tuple(arrays))[0]


# ---------------------------------------------------------------- text


def test_bert_takes_token_type_ids_and_they_change_the_output(bert):
    model = _load(bert)
    assert model.input_names == TEXT  # the tokenizer's names, in the forward's order
    ids, mask, types = model.example_inputs
    assert ids.shape == (1, 16) and mask.tolist() == [[1] * 16] and types.tolist() == [[0] * 16]
    second_segment = _run(model, (ids, mask, np.ones_like(types)))
    assert np.abs(second_segment - _run(model, (ids, mask, types))).max() > 1e-2


def test_text_inputs_without_a_tokenizer_come_from_the_forward(tmp_path):
    torch = pytest.importorskip("torch")
    assert _load(save_bert(tmp_path / "bert", tokenizer=False)).input_names == TEXT
    # GPT-2's forward takes token_type_ids too, but reads them as tokens: no segment embeddings, no such input
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=16,
                                     architectures=["GPT2LMHeadModel"])
    _save(transformers.GPT2LMHeadModel(config), tmp_path / "gpt2")
    assert _load(tmp_path / "gpt2").input_names == ["input_ids", "attention_mask"]


def test_text_and_text_data_and_export_agree_on_the_inputs(bert, cli, tmp_path):
    import onnxruntime as ort

    from effkit.data import load_data

    code, out, err = cli("bench", f"hf:{bert}", "--text", "the cat sat", "--text", "a dog ran on a mat", *FAST)
    assert code == 0, err
    assert "inputs (--text: 2 tokenized, length 8): input_ids: 2x8 int64, attention_mask: 2x8 int64, " \
           "token_type_ids: 2x8 int64" in out
    (tmp_path / "calib.txt").write_text("the cat\na dog sat\n")
    data = load_data(str(tmp_path / "calib.txt"), model=_load(bert))
    assert len(data.inputs) == 3 and np.asarray(data.inputs[2]).tolist() == [[0] * 16] * 2

    code, out, err = cli("export", f"hf:{bert}", "-o", "m.onnx", "--text", "the cat sat")
    assert code == 0, err
    session = ort.InferenceSession("m.onnx", providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == TEXT
    model = _load(bert, texts=["the cat sat"])  # the length exported
    ids, mask, types = model.example_inputs
    for segment in (types, np.ones_like(types)):  # the exported graph reads token_type_ids like torch does
        feed = dict(zip(TEXT, (ids, mask, segment)))
        np.testing.assert_allclose(session.run(None, feed)[0], _run(model, (ids, mask, segment)), atol=1e-4)


# ---------------------------------------------------------------- vision


@pytest.mark.parametrize("arch", ["ViTModel", "ViTForImageClassification", "ConvNextModel", "ResNetModel",
                                  "SwinModel"])
def test_vision_folders_take_pixel_values_shaped_from_the_config(tmp_path, arch):
    model = _load(save_vision(tmp_path / arch, arch))
    assert model.input_names == ["pixel_values"] and model.meta["hf_kind"] == "image"
    (pixels,) = model.example_inputs
    assert pixels.shape == (1, 3, 32, 32) and pixels.dtype == np.float32
    assert abs(float(pixels.std()) - 1) < 0.1  # random normal
    assert np.isfinite(_run(model, model.example_inputs)).all()


def test_a_wrong_shape_names_the_configs_shape(tmp_path, cli):
    folder = save_vision(tmp_path / "vit", "ViTModel")
    code, _, err = cli("bench", f"hf:{folder}", "--input-shape", "1x3x224x224")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("Error: the model failed on inputs pixel_values: 1x3x224x224 float32")
    assert err.strip().endswith("(ViTModel takes pixel_values 1x3x32x32 (float32, from its config): "
                                "pass --input-shape 1x3x32x32, or --image FILE)")


def test_image_goes_through_the_folders_image_processor(vit, cli, tmp_path):
    from PIL import Image

    wide, square = _images(tmp_path / "images")
    model = _load(vit, images=[wide, square])
    processor = transformers.AutoImageProcessor.from_pretrained(str(vit))
    expected = processor(images=[Image.open(wide).convert("RGB"), Image.open(square).convert("RGB")],
                         return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(model.example_inputs[0], expected, atol=1e-6)
    assert model.meta["inputs_from"] == "--image: 2 images, 32x32"
    code, out, err = cli("inspect", f"hf:{vit}", "--image", wide, "--image", square)
    assert code == 0, err
    assert "inputs (--image: 2 images, 32x32): pixel_values: 2x3x32x32 float32" in out


def test_explicit_image_options_win_over_the_image_processor(vit, tmp_path):
    from effkit.data import Reading
    from effkit.data_images import ImagePreprocess, load_image

    wide, _ = _images(tmp_path / "images")
    given = ImagePreprocess(image_size=(32, 32), mean=(0.0,) * 3, std=(1.0,) * 3)
    model = _load(vit, images=[wide], reading=Reading(images=given))
    np.testing.assert_array_equal(model.example_inputs[0][0], load_image(wide, given))
    assert model.example_inputs[0].min() >= 0  # scaled to [0, 1], not the processor's normalization
    # the size alone given: the processor's mean and std still apply
    sized = _load(vit, images=[wide], reading=Reading(images=ImagePreprocess(image_size=(32, 32))))
    mean, std = np.float32([0.5, 0.4, 0.3]).reshape(3, 1, 1), np.float32([0.2, 0.25, 0.3]).reshape(3, 1, 1)
    normalized = (load_image(wide, given) - mean) / std
    np.testing.assert_allclose(sized.example_inputs[0][0], normalized, atol=1e-5)


def test_image_on_a_plain_model_uses_the_image_options(cli, tmp_path):
    wide, _ = _images(tmp_path / "images")
    code, out, err = cli("bench", spec("cnn"), "--image", wide, "--image-size", "16", "--mean", "0.5", "--std", "0.5",
                         *FAST)
    assert code == 0, err
    assert "inputs (--image: 1 image, 16x16): x: 1x3x16x16 float32" in out


@pytest.mark.parametrize("args, message", [
    (["--image", "bad.png"], "Error: bad.png is not a readable image: cannot identify image file 'bad.png' "
                             "(remove or replace the file)"),
    (["--image", "bad.png", "--text", "the cat"],
     "Error: give the example inputs one way: --text, --image, --inputs or --input-shape"),
])
def test_bad_image_inputs_are_one_error_line(vit, cli, args, message):
    Path("bad.png").write_text("not an image")
    code, _, err = cli("bench", f"hf:{vit}", *args)
    assert (code, err.strip()) == (2, message)


def test_a_folder_of_images_as_data_uses_the_image_processor(vit, tmp_path):
    from PIL import Image

    from effkit.data import Reading, load_data
    from effkit.data_images import ImagePreprocess

    wide, square = _images(tmp_path / "images")
    model = _load(vit)
    data = load_data(str(tmp_path / "images"), model=model, reading=Reading(images=ImagePreprocess(workers=1)))
    processor = transformers.AutoImageProcessor.from_pretrained(str(vit))
    expected = processor(images=[Image.open(f).convert("RGB") for f in (square, wide)], return_tensors="np")
    np.testing.assert_allclose(np.asarray(data.inputs[0][:2]), expected["pixel_values"], atol=1e-6)
    plain = load_data(str(tmp_path / "images"), model=model, reading=Reading(
        images=ImagePreprocess(image_size=(32, 32), mean=(0.0,) * 3, std=(1.0,) * 3)))
    assert np.asarray(plain.inputs[0][:2]).min() >= 0  # explicit values win


# ---------------------------------------------------------------- audio


def test_wav2vec2_takes_one_second_of_input_values(tmp_path):
    model = _load(save_wav2vec2(tmp_path / "w2v"))
    assert model.input_names == ["input_values"] and model.example_inputs[0].shape == (1, 16000)
    assert model.meta["inputs_from"] == "random normal input_values, 1x16000 (1 s at 16000 Hz)"
    # the feature extractor's sampling rate, when the folder has one
    assert _load(save_wav2vec2(tmp_path / "w2v8k", 8000)).example_inputs[0].shape == (1, 8000)


def test_whisper_is_its_encoder_on_input_features_from_the_config(tmp_path):
    model = _load(save_whisper(tmp_path / "whisper"))
    assert model.input_names == ["input_features"] and model.example_inputs[0].shape == (1, 16, 40)
    assert model.meta["hf_part"] == "encoder"
    assert model.meta["inputs_from"] == ("random normal input_features, 1x16x40 (from the config); "
                                         "the encoder of WhisperModel alone")
    assert _run(model, model.example_inputs).shape == (1, 20, 32)  # the encoder's hidden states


# ---------------------------------------------------------------- size


def test_the_size_of_a_folder_is_its_files(vit, tmp_path):
    from effkit.size import size_info

    (vit / "README.md").write_text("a model card: not the model\n")
    info = size_info(_load(vit))
    assert info["files"] == ["model.safetensors", "config.json", "preprocessor_config.json"]
    assert info["bytes_on_disk"] == sum((vit / f).stat().st_size for f in info["files"])
    # of Whisper, effkit uses the encoder alone: its size is what effkit saves of it, not the folder
    whisper = _load(save_whisper(tmp_path / "whisper"))
    assert size_info(whisper)["bytes_on_disk"] != sum(f.stat().st_size for f in (tmp_path / "whisper").iterdir())


# ---------------------------------------------------------------- end to end


def _end_to_end(cli, folder: Path, tmp_path: Path, *inputs: str, data: tuple[str, ...] = ()) -> dict:
    """bench, export and quantize of the folder; quantize's JSON result. No third-party chatter on the way."""
    code, out, err = cli("bench", f"hf:{folder}", *inputs, *FAST, "--json", tmp_path / "b.json")
    assert code == 0, err
    assert json.loads((tmp_path / "b.json").read_text())["size"]["format"] == "hf"
    code, out, err2 = cli("export", f"hf:{folder}", *inputs, "-o", tmp_path / "e.onnx")
    assert code == 0, err2
    code, out, err3 = cli("quantize", f"hf:{folder}", *inputs, *data, "-o", tmp_path / "q.onnx", "--backend",
                          "onnxruntime", "--method", "dynamic", "--allow-slower", *NO_BAR, *FAST, "--min-time", "0.05",
                          "--json", tmp_path / "q.json")
    assert code == 0, err3
    assert (tmp_path / "q.onnx").is_file()
    assert "[transformers]" not in err + err2 + err3 and "torchvision" not in err + err2 + err3
    return json.loads((tmp_path / "q.json").read_text())


def test_a_text_folder_end_to_end(bert, cli, tmp_path):
    _end_to_end(cli, bert, tmp_path, "--text", "the cat sat on a mat")


def test_a_vision_folder_end_to_end(vit, cli, tmp_path):
    wide, square = _images(tmp_path / "labelled" / "cat")
    _images(tmp_path / "labelled" / "dog")
    result = _end_to_end(cli, vit, tmp_path, "--image", str(wide), "--image", str(square),
                         data=("--eval", str(tmp_path / "labelled")))
    # judged on the folder's 4 images, read through the image processor
    assert result["fidelity"]["inputs"].endswith("labelled") and result["fidelity"]["rows"] == 4


@pytest.mark.parametrize("save", [save_wav2vec2, save_whisper])
def test_an_audio_folder_end_to_end(cli, tmp_path, save):
    _end_to_end(cli, save(tmp_path / "audio"), tmp_path)
