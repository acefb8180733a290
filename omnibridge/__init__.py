"""OmniBridge: one model for multimodal understanding, generation, editing and retrieval.

A pretrained vision-language LLM (Qwen2-VL) plus a light bidirectional latent-alignment module (the
BiLM, with learned queries) that conditions a HunyuanDiT decoder and produces retrieval embeddings
(arXiv 2509.19018). The public API is the pipeline:

    from omnibridge import OmniBridgePipeline
    pipe = OmniBridgePipeline.from_pretrained("assets/omnibridge-shapes")
"""

import logging

import diffusers.utils.import_utils as _diffusers_imports

# bitsandbytes is installed for --quantize, which quantizes the language model through transformers. diffusers
# would import it as well, at every start, for quantized diffusers models, which this project never loads; that
# import pulls in torch's compiler (about 1.4 s and 40 MB here), so diffusers is told bitsandbytes is absent.
_diffusers_imports._bitsandbytes_available = False
# Once it is imported (a quantized language model), on a CPU with AVX512-BF16 bitsandbytes warns that an optional
# 4-bit kernel could not be fetched from the Hub and falls back to its own: noise, and nothing here fetches.
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
