"""Reading and writing model folders: our own layout and the official OmniBridge release.

Our layout (what `save_pretrained` writes and the built-in model ships as):

    omnibridge_config.json     projector/BiLM/retrieval sizes, prompts, generation defaults
    llm/                       Qwen2-VL `save_pretrained` + tokenizer + preprocessor_config.json
    alignment.safetensors      the OmniBridge modules under the official top-level key names
    decoder/                   HunyuanDiT in diffusers layout (transformer/, vae/, scheduler/, ...)

The official release is one Qwen2-VL folder whose safetensors also hold the OmniBridge keys
(`downsampling_linear_layer`, `bilm.*`, ...) next to the legacy Qwen2-VL keys, plus a separate
HunyuanDiT-v1.2 diffusers folder. Its BiLM and retrieval sizes are not written in its config,
so they are read off the tensor shapes.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .alignment import OmniBridgeAlignment, is_alignment_key
from .config import BiLMConfig, GenerationDefaults, OmniBridgeConfig, RetrievalConfig
from .decoder import DECODER_SUBFOLDERS, HunyuanDecoder
from .devices import Placement
from .fingerprint import files_fingerprint

CONFIG_FILE = "omnibridge_config.json"
ALIGNMENT_FILE = "alignment.safetensors"
LLM_SUBFOLDER = "llm"
DECODER_SUBFOLDER = "decoder"
OFFICIAL_DECODER_ID = "Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers"
# What a truncated or damaged file raises inside transformers, diffusers and safetensors (a half-copied
# folder or an interrupted download): each becomes a ModelFolderError that names the file's folder
LOAD_ERRORS = (OSError, ValueError, RuntimeError, SafetensorError)


class ModelFolderError(ValueError):
    """A model folder (or hub id) is missing, incomplete or unreadable; the message names what."""


@dataclass
class LoadedModel:
    config: OmniBridgeConfig
    llm: torch.nn.Module
    tokenizer: object
    image_processor: object
    alignment: OmniBridgeAlignment
    decoder: HunyuanDecoder
    layout: str  # "omnibridge" or "official"
    source: str
    # a digest of the files the embeddings come from (fingerprint.py); "" for a model never saved
    embedding_fingerprint: str = ""


# ------------------------------------------------------------------------------------ resolving
def resolve_folder(path_or_id: str | Path, what: str = "model") -> Path:
    """A local folder as is; otherwise a hub id fetched with huggingface_hub (cached, offline-aware)."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_id)
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.exists()
    if not looks_like_hub_id:
        raise ModelFolderError(f"{what} folder not found: {path}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text))
    except Exception as error:  # offline, unknown repo, no permission: one clear line instead of a trace
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1 is set and it is not in the local cache)" if offline else ""
        raise ModelFolderError(f"cannot fetch {what} {text!r} from the Hugging Face Hub{hint}: "
                               f"{type(error).__name__}") from None


def detect_layout(folder: Path) -> str:
    if (folder / CONFIG_FILE).exists():
        return "omnibridge"
    if (folder / "config.json").exists():
        return "official"
    raise ModelFolderError(f"{folder} is not an OmniBridge model: it has neither {CONFIG_FILE} (our layout) "
                           f"nor config.json (the official release)")


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise ModelFolderError(f"missing file: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelFolderError(f"corrupt JSON in {path}: {error}") from None


def check_decoder_folder(folder: Path) -> None:
    missing = [name for name in DECODER_SUBFOLDERS if not (folder / name).is_dir()]
    if missing:
        raise ModelFolderError(f"decoder folder {folder} lacks the diffusers subfolders: {', '.join(missing)}")
    for name in ("transformer", "vae"):
        _read_json(folder / name / "config.json")


def _safetensors_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelFolderError(f"no *.safetensors weights in {folder}")
    return files


def _embedding_side_files(llm_folder: Path) -> list[Path]:
    """The LLM's weights, tokenizer and image preprocessing: with the retrieval heads, what an embedding
    depends on (the decoder never enters it)."""
    extra = [llm_folder / name for name in ("tokenizer.json", "preprocessor_config.json")]
    return _safetensors_files(llm_folder) + [path for path in extra if path.exists()]


def check_our_folder(folder: Path) -> None:
    _read_json(folder / CONFIG_FILE)
    llm = folder / LLM_SUBFOLDER
    _read_json(llm / "config.json")
    _safetensors_files(llm)
    if not ((llm / "tokenizer.json").exists() or (llm / "tokenizer_config.json").exists()):
        raise ModelFolderError(f"missing tokenizer files in {llm}")
    _read_json(llm / "preprocessor_config.json")
    if not (folder / ALIGNMENT_FILE).exists():
        raise ModelFolderError(f"missing file: {folder / ALIGNMENT_FILE}")
    check_decoder_folder(folder / DECODER_SUBFOLDER)


# ---------------------------------------------------------------------------------------- parts
def quantized_loading(placement: Placement) -> dict:
    """The Qwen2-VL `from_pretrained` arguments that load it quantized as the placement asks ({}: full precision).

    bitsandbytes quantizes the weights as they land on their device, and they cannot move afterwards, so the
    device is given here rather than by a `.to()` after loading.
    """
    from transformers import BitsAndBytesConfig

    if placement.llm_quantization is None:
        return {}
    if placement.llm_quantization == "8bit":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:  # NF4 with quantized scales: the QLoRA recipe, about 4.1 bits a weight
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=placement.llm_dtype)
    # bitsandbytes also logs a warning on every 8-bit product whose inputs are not float16 (the LLM computes in
    # bf16 on CUDA, fp32 on the CPU): one per layer and token would bury the app's log
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    return {"quantization_config": config, "device_map": {"": _device_map_target(placement.device)}}


def _load_llm(folder: Path, placement: Placement):
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2VLForConditionalGeneration

    quantized = quantized_loading(placement)
    try:
        llm, info = Qwen2VLForConditionalGeneration.from_pretrained(
            folder, dtype=placement.llm_dtype, output_loading_info=True, **quantized)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        image_processor = AutoImageProcessor.from_pretrained(folder)
    except LOAD_ERRORS as error:
        raise ModelFolderError(f"cannot load the Qwen2-VL LLM from {folder}: {error}") from None
    if not quantized:
        llm = llm.to(placement.device)
    return llm.eval(), tokenizer, image_processor, info


def _device_map_target(device: torch.device) -> str:
    return f"cuda:{device.index or 0}" if device.type == "cuda" else str(device)


def _load_decoder(folder: str | Path, placement: Placement) -> HunyuanDecoder:
    try:
        return HunyuanDecoder.from_pretrained(folder, placement.device, placement.decoder_dtype)
    except LOAD_ERRORS as error:
        raise ModelFolderError(f"cannot load the HunyuanDiT decoder from {folder}: {error}") from None


def _read_tensors(files: list[Path], keep) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in files:
        try:
            with safe_open(file, framework="pt") as handle:
                for key in handle.keys():
                    if keep(key):
                        tensors[key] = handle.get_tensor(key)
        except Exception as error:
            raise ModelFolderError(f"corrupt weights file {file}: {error}") from None
    return tensors


def _all_keys(files: list[Path]) -> set[str]:
    keys: set[str] = set()
    for file in files:
        with safe_open(file, framework="pt") as handle:
            keys.update(handle.keys())
    return keys


def load_alignment(state: dict[str, torch.Tensor], config: OmniBridgeConfig, placement: Placement) -> OmniBridgeAlignment:
    alignment = OmniBridgeAlignment(config)
    result = alignment.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelFolderError(f"alignment weights do not match the config: missing {result.missing_keys[:5]}, "
                               f"unexpected {result.unexpected_keys[:5]}")
    alignment.to(placement.device, placement.llm_dtype)
    alignment.logit_scale.data = alignment.logit_scale.data.float()  # kept in fp32, as the official scripts do
    return alignment.eval()


def infer_config_from_state(state: dict[str, torch.Tensor], llm_hidden_size: int) -> OmniBridgeConfig:
    """Read the BiLM and retrieval sizes off the official tensors (the release does not write them)."""
    blocks = sorted({int(k.split(".")[2]) for k in state if k.startswith("bilm.block.")})
    cross = tuple(i for i in blocks if f"bilm.block.{i}.layer.1.EncDecAttention.q.weight" in state)
    bias = state["bilm.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    num_heads = bias.shape[1]
    d_model = state["downsampling_linear_layer.weight"].shape[0]
    inner = state["bilm.block.0.layer.0.SelfAttention.q.weight"].shape[0]
    ff_layer = 2 if 0 in cross else 1
    bilm = BiLMConfig(
        d_model=d_model, d_kv=inner // num_heads, num_heads=num_heads,
        d_ff=state[f"bilm.block.0.layer.{ff_layer}.DenseReluDense.wi_0.weight"].shape[0],
        num_layers=len(blocks), cross_attention_layers=cross, relative_attention_num_buckets=bias.shape[0],
        num_query_tokens=state["bilm.query_tokens"].shape[1],
    )
    retrieval = RetrievalConfig(
        num_image_queries=state["image_queries"].shape[1], num_text_queries=state["text_queries"].shape[1],
        embed_dim=state["image_proj.cross_attn.proj.weight"].shape[0],
        pool_heads=16 if d_model % 16 == 0 else 1,  # not in the weights: the official code hard-codes 16
    )
    return OmniBridgeConfig(model_id="omnibridge-official", llm_hidden_size=llm_hidden_size, bilm=bilm,
                            retrieval=retrieval)


# -------------------------------------------------------------------------------------- loaders
def load_our_layout(folder: Path, placement: Placement) -> LoadedModel:
    check_our_folder(folder)
    config = OmniBridgeConfig.load(folder / CONFIG_FILE)
    llm, tokenizer, image_processor, _ = _load_llm(folder / LLM_SUBFOLDER, placement)
    state = _read_tensors([folder / ALIGNMENT_FILE], lambda key: True)
    alignment = load_alignment(state, config, placement)
    decoder = _load_decoder(folder / DECODER_SUBFOLDER, placement)
    fingerprint = files_fingerprint([*_embedding_side_files(folder / LLM_SUBFOLDER), folder / ALIGNMENT_FILE])
    return LoadedModel(config, llm, tokenizer, image_processor, alignment, decoder, "omnibridge", str(folder),
                       fingerprint)


def load_official_layout(folder: Path, decoder: str | Path | None, placement: Placement,
                         image_min_pixels: int = 256 * 28 * 28, image_max_pixels: int = 1024 * 28 * 28) -> LoadedModel:
    """The official release: Qwen2-VL legacy keys + top-level OmniBridge keys, and HunyuanDiT-v1.2."""
    files = _safetensors_files(folder)
    llm, tokenizer, image_processor, info = _load_llm(folder, placement)
    state = _read_tensors(files, is_alignment_key)
    if "downsampling_linear_layer.weight" not in state:
        raise ModelFolderError(f"{folder} is a Qwen2-VL checkpoint without the OmniBridge modules "
                               "(no downsampling_linear_layer/bilm keys)")
    unconsumed = set(info["unexpected_keys"]) - set(state)
    if unconsumed or info["missing_keys"]:
        raise ModelFolderError(f"official checkpoint keys did not map: unexpected {sorted(unconsumed)[:5]}, "
                               f"missing {sorted(info['missing_keys'])[:5]}")
    config = infer_config_from_state(state, llm.config.text_config.hidden_size)
    config.generation = GenerationDefaults()
    image_processor.size = {"shortest_edge": image_min_pixels, "longest_edge": image_max_pixels}
    alignment = load_alignment(state, config, placement)
    decoder_folder = resolve_folder(decoder or OFFICIAL_DECODER_ID, what="HunyuanDiT decoder")
    check_decoder_folder(decoder_folder)
    hunyuan = _load_decoder(decoder_folder, placement)
    return LoadedModel(config, llm, tokenizer, image_processor, alignment, hunyuan, "official", str(folder),
                       files_fingerprint(_embedding_side_files(folder)))


def save_our_layout(model: LoadedModel, folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save(folder / CONFIG_FILE)
    llm_dir = folder / LLM_SUBFOLDER
    model.llm.save_pretrained(llm_dir)
    model.tokenizer.save_pretrained(llm_dir)
    model.image_processor.save_pretrained(llm_dir)
    state = {k: v.detach().contiguous().cpu() for k, v in model.alignment.state_dict().items()}
    save_file(state, folder / ALIGNMENT_FILE)
    model.decoder.save_pretrained(folder / DECODER_SUBFOLDER)


def official_key_coverage(folder: Path) -> set[str]:
    """Every tensor key in an official-layout folder (tests check that loading consumes all of them)."""
    return _all_keys(_safetensors_files(folder))
