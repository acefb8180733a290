"""OmniBridge: one model for multimodal understanding, generation, editing and retrieval.

A pretrained vision-language LLM (Qwen2-VL) plus a light bidirectional latent-alignment module (the
BiLM, with learned queries) that conditions a HunyuanDiT decoder and produces retrieval embeddings
(arXiv 2509.19018). The public API is the pipeline:

    from omnibridge import OmniBridgePipeline
    pipe = OmniBridgePipeline.from_pretrained("assets/omnibridge-shapes")
"""

import logging

# diffusers imports bitsandbytes whenever it is installed (it is, for --quantize), and on a CPU with AVX512-BF16
# bitsandbytes then warns at import that an optional 4-bit kernel could not be fetched from the Hub, and falls
# back to its own. Every start would print that line; nothing here fetches from the Hub.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from .config import DEFAULT_MODEL  # noqa: E402
from .inputs import InvalidInputError  # noqa: E402
from .modeling.config import OmniBridgeConfig  # noqa: E402
from .modeling.decoder import DecoderNumericalError, GenerationCancelled  # noqa: E402
from .modeling.devices import PlacementError  # noqa: E402
from .modeling.loading import ModelFolderError  # noqa: E402
from .offload import OffloadError  # noqa: E402
from .pipeline import ChatAnswer, GenerationResult, OmniBridgePipeline  # noqa: E402

__all__ = [
    "DEFAULT_MODEL", "ChatAnswer", "DecoderNumericalError", "GenerationCancelled", "GenerationResult",
    "InvalidInputError", "ModelFolderError", "OffloadError", "OmniBridgeConfig", "OmniBridgePipeline",
    "PlacementError",
]
