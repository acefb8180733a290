"""Settings of the libraries underneath, made once, before anything imports diffusers' models.

bitsandbytes is installed for `--quantize`, which quantizes the language model through transformers.
diffusers would import it as well, at every start, for quantized diffusers models, which this project never
loads; that import pulls in torch's compiler (about 1.4 s and 40 MB here), so diffusers is told it is absent.
Once it is imported (a quantized language model), on a CPU with AVX512-BF16 bitsandbytes warns that an
optional 4-bit kernel could not be fetched from the Hub and falls back to its own: noise, and nothing here
fetches from the Hub.
"""

import logging

import diffusers.utils.import_utils as diffusers_imports

diffusers_imports._bitsandbytes_available = False
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
