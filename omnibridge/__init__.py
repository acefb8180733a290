"""OmniBridge: one model for multimodal understanding, generation, editing and retrieval.

A pretrained vision-language LLM (Qwen2-VL) plus a light bidirectional latent-alignment module (the
BiLM, with learned queries) that conditions a HunyuanDiT decoder and produces retrieval embeddings
(arXiv 2509.19018). The public API is the pipeline:

    from omnibridge import OmniBridgePipeline
    pipe = OmniBridgePipeline.from_pretrained("assets/omnibridge-shapes")
"""

from . import library_setup  # noqa: F401  (first: before anything imports diffusers' models)
from .config import DEFAULT_MODEL
from .inputs import InvalidInputError
from .modeling.config import OmniBridgeConfig
from .modeling.decoder import DecoderNumericalError, GenerationCancelled
from .modeling.devices import PlacementError
from .modeling.loading import ModelFolderError
from .offload import OffloadError
from .pipeline import ChatAnswer, GenerationResult, OmniBridgePipeline

__all__ = [
    "DEFAULT_MODEL", "ChatAnswer", "DecoderNumericalError", "GenerationCancelled", "GenerationResult",
    "InvalidInputError", "ModelFolderError", "OffloadError", "OmniBridgeConfig", "OmniBridgePipeline",
    "PlacementError",
]
