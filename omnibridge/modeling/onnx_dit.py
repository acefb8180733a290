"""The DiT's forward pass under ONNX Runtime on a CPU: the same weights and the same block reuse, faster.

Why: at batch 1 the built-in DiT's matrix products are small (64 tokens of width 320), and PyTorch's eager mode
spends much of a call between them, dispatching every element-wise op, norm and reshape alone. ONNX Runtime
runs the same graph with fused kernels: one call took x0.42-0.48 the time of eager PyTorch on an AMD EPYC
without AVX-512, with a largest difference in the output of 2e-6; on a Xeon with AVX-512, whose PyTorch kernels
are quicker, x0.99 an image (docs/performance-notes.md, "The DiT under ONNX Runtime", "The DiT in int8").
onnxruntime is already installed with chromadb; exporting needs the `onnx` package.

The graphs are traced from the model itself (`torch.onnx.export`), so nothing of diffusers' HunyuanDiT2DModel
is re-implemented here. Two graphs follow the block cache's plan (block_cache.py): `full` runs every block and
also returns the middle blocks' residual, `reuse` takes that residual and runs the first and last block only.
(A DiT of two blocks has no middle ones: it gets `full` alone, without a residual.)
Both are traced at batch 2 with the batch left free, and checked against PyTorch at batches 1 and 2 before use;
inputs of another shape (another image size or text length) and everything a graph cannot take run in PyTorch.

With `int8=True` the graphs' matrix products take int8 weights and quantize their inputs per call (ONNX Runtime's
dynamic quantization): the float32 DiT is bound by those products, and int8 runs them on the CPU's integer units.
An image then takes about x0.69 the time, and its pixels are no longer PyTorch's (each prediction about 1.7% off);
the built-in model's accuracy held on 300 validation and 300 held-out prompts and 100 edits each
(scripts/int8_dit_study.py). The app uses int8; the library's default stays float32, the same pixels.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import tempfile
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .block_cache import MiddleBlockCache

logger = logging.getLogger(__name__)

INPUT_NAMES = ("latents", "timesteps", "embeds", "mask", "embeds_2", "mask_2", "rotary_cos", "rotary_sin")
BATCHED = INPUT_NAMES[:6]
TRACE_BATCH = 2  # traced at 2 with the batch left free: a graph traced at 1 can bake the 1 in
ONNX_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_}
# A graph is one protobuf, which cannot pass 2 GB: the full-size HunyuanDiT (1.5B parameters, 6 GB in float32)
# stays in PyTorch, and is never copied for a trace that would fail.
MAX_WEIGHT_BYTES = 1_500_000_000
# Largest difference from PyTorch a graph may show, relative to the output's scale: float32 measured 1e-6, int8
# 1.7e-2 on the built-in DiT. The check catches a broken graph; the int8 accuracy is the study's to judge.
MAX_DIFFERENCE = {"float32": 1e-3, "int8": 5e-2}
# Graphs of this many DiTs stay in a cache folder, the most recently used (80 MB each for the built-in one): a
# retrained checkpoint would otherwise leave its predecessor's behind on every upgrade. Two are in use at once
# when the Compare tab loads a second checkpoint.
CACHED_DITS = 4


class OnnxUnavailable(RuntimeError):
    """ONNX Runtime cannot run this DiT here (a library missing, or a graph that does not match PyTorch)."""


class _Traced(nn.Module):
    """The transformer's call as the exporter sees it: plain tensors in, plain tensors out."""

    def __init__(self, transformer: nn.Module, reuse: bool):
        super().__init__()
        self.transformer, self.reuse = transformer, reuse
        self.returns_residual = not reuse and _has_middle_blocks(transformer)

    def forward(self, latents, timesteps, embeds, mask, embeds_2, mask_2, rotary_cos, rotary_sin, residual=None):
        with MiddleBlockCache(self.transformer) as cache:
            cache.reuse, cache.residual = self.reuse, residual
            output = transformer_forward(self.transformer, dict(zip(INPUT_NAMES, (
                latents, timesteps, embeds, mask, embeds_2, mask_2, rotary_cos, rotary_sin))))
            return (output, cache.residual) if self.returns_residual else output


@dataclass(frozen=True)
class _Shapes:
    """What a graph was traced for, but the batch."""

    latents: tuple[int, ...]
    embeds: tuple[int, ...]
    embeds_2: tuple[int, ...]

    @classmethod
    def of(cls, inputs: dict[str, torch.Tensor]) -> "_Shapes":
        return cls(*(tuple(inputs[name].shape[1:]) for name in ("latents", "embeds", "embeds_2")))


def _has_middle_blocks(transformer: nn.Module) -> bool:
    return len(MiddleBlockCache(transformer).middle) > 0


def _export(module: nn.Module, inputs: dict[str, torch.Tensor], reuse: bool) -> bytes:
    traced = _Traced(module, reuse)
    names = list(INPUT_NAMES) + (["residual"] if reuse else [])
    outputs = ["output", "residual"] if traced.returns_residual else ["output"]
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(traced, tuple(inputs[name] for name in names), buffer,
                          input_names=names, output_names=outputs, opset_version=18, dynamo=False,
                          dynamic_axes={name: {0: "batch"} for name in names + outputs if name in BATCHED
                                        or name in ("residual", "output")})
    return buffer.getvalue()


def weights_digest(transformer: nn.Module) -> str:
    """Changes with any weight, and with the libraries that trace and run the graph."""
    import diffusers
    import onnxruntime

    digest = hashlib.sha256(f"{torch.__version__}:{diffusers.__version__}:{onnxruntime.__version__}".encode())
    for name, tensor in transformer.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class OnnxDiT:
    """Runs a HunyuanDiT2DModel's forward under ONNX Runtime, for inputs of the shapes it was traced for."""

    def __init__(self, graphs: dict[str, bytes], shapes: _Shapes, threads: int, transformer: nn.Module,
                 precision: str = "float32"):
        import onnxruntime as ort

        # The graphs hold a copy of these weights: a decoder that swaps its DiT (a student, a candidate) must not
        # run the old one's graphs. A weak reference, so that a swapped-out DiT can be freed.
        self._transformer = weakref.ref(transformer)

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Without spinning its threads give the cores back between calls, to PyTorch's between steps.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions = {kind: ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
                         for kind, graph in graphs.items()}
        self.shapes, self.precision = shapes, precision

    @classmethod
    def build(cls, transformer: nn.Module, example: dict[str, torch.Tensor], cache_dir: Path | None = None,
              threads: int | None = None, int8: bool = False) -> "OnnxDiT":
        """Trace (or read back from `cache_dir`) the two graphs for inputs shaped like `example`, and check
        them against the transformer. With `int8`, quantize them too (falling back to float32, with a
        warning, should the int8 graphs fail their check). Raises OnnxUnavailable when none can be used.

        Tracing and checking work on a copy of the transformer (tracing swaps its blocks' forwards, as the block
        cache does), so this may run on any thread while the model thread keeps serving with the original."""
        try:
            import onnxruntime  # noqa: F401
        except ImportError as error:
            raise OnnxUnavailable("onnxruntime is not installed") from error
        weight_bytes = sum(p.numel() * p.element_size() for p in transformer.parameters())
        if weight_bytes > MAX_WEIGHT_BYTES:
            raise OnnxUnavailable(f"the DiT's {weight_bytes / 1e9:.1f} GB of weights pass the 2 GB a graph can hold")
        example = {name: tensor[:1].expand(TRACE_BATCH, *tensor.shape[1:]).contiguous()
                   if name in BATCHED else tensor for name, tensor in example.items()}
        shapes = _Shapes.of(example)
        served, transformer = transformer, copy.deepcopy(transformer)
        cache = _GraphCache(cache_dir, f"dit-{weights_digest(transformer)}-{'x'.join(map(str, shapes.latents))}",
                            ("full", "reuse") if _has_middle_blocks(transformer) else ("full",))
        threads = threads or torch.get_num_threads()

        def checked(precision: str, make_graphs) -> "OnnxDiT":
            """The cached graphs of this precision if they pass the check, else new ones from `make_graphs`."""
            cached = cache.read(precision)
            if cached is not None:
                try:
                    runner = cls(cached, shapes, threads, served, precision)
                    runner.check(transformer, example)
                    cache.touch(precision)  # used: kept by _forget_old_graphs
                    return runner
                except Exception as error:  # a damaged file, say: made again below, and the files replaced
                    logger.warning("the cached DiT graphs in %s could not be used (%s); tracing them again",
                                   cache_dir, error)
            graphs = make_graphs()
            runner = cls(graphs, shapes, threads, served, precision)
            runner.check(transformer, example)
            cache.write(precision, graphs)  # after the check: a graph that fails is not kept to be read back
            return runner

        # What int8 quantizes, kept so that a fallback or another precision need not trace again; unchecked here,
        # as `checked` checks whatever it serves.
        def float_graphs() -> dict[str, bytes]:
            graphs = cache.read("float32")
            if graphs is None:
                graphs = cls._trace(transformer, example)
                cache.write("float32", graphs)
            return graphs

        if int8:
            try:
                return checked("int8", lambda: {kind: _quantized(graph) for kind, graph in float_graphs().items()})
            except Exception as error:  # the float32 graphs still serve
                logger.warning("the DiT's int8 graphs cannot be used (%s); running them in float32", error)
        return checked("float32", lambda: cls._trace(transformer, example))

    @staticmethod
    def _trace(transformer: nn.Module, example: dict[str, torch.Tensor]) -> dict[str, bytes]:
        try:
            import onnx  # noqa: F401  (the exporter's serializer)
        except ImportError as error:
            raise OnnxUnavailable("exporting the DiT needs the `onnx` package") from error
        with torch.inference_mode(False):  # the tracer cannot record inference tensors
            inputs = {name: tensor.clone() for name, tensor in example.items()}
            graphs = {"full": _export(transformer, inputs, reuse=False)}
            if _has_middle_blocks(transformer):
                with torch.no_grad(), MiddleBlockCache(transformer) as cache:
                    transformer_forward(transformer, inputs)
                    inputs["residual"] = cache.residual.clone()
                graphs["reuse"] = _export(transformer, inputs, reuse=True)
            return graphs

    def check(self, transformer: nn.Module, example: dict[str, torch.Tensor]) -> None:
        """Both graphs against PyTorch at batches 1 and 2; a mismatch raises OnnxUnavailable."""
        for batch in (1, TRACE_BATCH):
            inputs = {name: tensor[:batch] if name in BATCHED else tensor for name, tensor in example.items()}
            with torch.inference_mode(), MiddleBlockCache(transformer) as cache:
                expected = transformer_forward(transformer, inputs)
                expected_full = [expected, cache.residual] if "reuse" in self.sessions else [expected]
                pairs = [(self._run("full", inputs), expected_full)]  # (ONNX Runtime's, PyTorch's)
                if "reuse" in self.sessions:
                    residual, cache.reuse = cache.residual, True
                    pairs.append((self._run("reuse", {**inputs, "residual": residual}),
                                  [transformer_forward(transformer, inputs)]))
            worst = max(float((torch.from_numpy(a) - b).abs().max()) / (float(b.abs().max()) + 1e-6)
                        for got, want in pairs for a, b in zip(got, want, strict=True))
            if not np.isfinite(worst) or worst > MAX_DIFFERENCE[self.precision]:
                raise OnnxUnavailable(f"the {self.precision} ONNX graph differs from PyTorch by {worst:.2e} at "
                                      f"batch {batch}")

    def accepts(self, transformer: nn.Module, inputs: dict[str, torch.Tensor]) -> bool:
        """Whether these graphs can stand in for `transformer` on these inputs."""
        return self._transformer() is transformer and inputs["latents"].device.type == "cpu" \
            and inputs["latents"].dtype == torch.float32 and _Shapes.of(inputs) == self.shapes

    def __call__(self, inputs: dict[str, torch.Tensor], cache: MiddleBlockCache | None) -> torch.Tensor:
        """The transformer's output; follows the block cache's plan and stores its residual as PyTorch would."""
        if cache is not None and cache.reuse:
            (output,) = self._run("reuse", {**inputs, "residual": cache.residual})
        else:
            output, *residual = self._run("full", inputs)
            if cache is not None and residual:
                cache.residual = torch.from_numpy(residual[0])
        return torch.from_numpy(output)

    def _run(self, kind: str, inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
        session = self.sessions[kind]
        feed = {item.name: inputs[item.name].detach().contiguous().numpy().astype(ONNX_TYPES[item.type], copy=False)
                for item in session.get_inputs()}  # a caller's bool or int32 mask: the graph's int64
        return session.run(None, feed)


class _GraphCache:
    """One DiT's graphs in a cache folder: `{key}-{kind}.onnx` in float32, `{key}-{kind}_int8.onnx` in int8 (the
    key first, so that _forget_old_graphs counts both precisions as one DiT)."""

    def __init__(self, folder: Path | None, key: str, kinds: tuple[str, ...]):
        self.folder, self.key, self.kinds = folder, key, kinds

    def _paths(self, precision: str) -> dict[str, Path]:
        suffix = "" if precision == "float32" else f"_{precision}"
        return {kind: self.folder / f"{self.key}-{kind}{suffix}.onnx" for kind in self.kinds} if self.folder else {}

    def read(self, precision: str) -> dict[str, bytes] | None:
        paths = self._paths(precision)
        if not paths or not all(path.exists() for path in paths.values()):
            return None
        return {kind: path.read_bytes() for kind, path in paths.items()}

    def touch(self, precision: str) -> None:
        for path in self._paths(precision).values():
            path.touch()

    def write(self, precision: str, graphs: dict[str, bytes]) -> None:
        if not self.folder:
            return
        for kind, path in self._paths(precision).items():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            partial.write_bytes(graphs[kind])
            partial.replace(path)  # a crash mid-write leaves no graph that looks whole
        _forget_old_graphs(self.folder)


class _QuantizerAdvice(logging.Filter):
    """The quantizer advises, on the root logger, a pre-processing pass that these small graphs do not need."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider to run pre-processing")


def _quantized(graph: bytes) -> bytes:
    """The graph with int8 weights in its MatMul and Gemm nodes, their inputs quantized at each call (per tensor:
    per channel was no more accurate on the built-in DiT, and slower)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    advice, root = _QuantizerAdvice(), logging.getLogger()
    root.addFilter(advice)
    try:
        with tempfile.TemporaryDirectory() as folder:
            source, target = Path(folder) / "float32.onnx", Path(folder) / "int8.onnx"
            source.write_bytes(graph)
            quantize_dynamic(source, target, op_types_to_quantize=["MatMul", "Gemm"], per_channel=False,
                             weight_type=QuantType.QInt8)
            return target.read_bytes()
    finally:
        root.removeFilter(advice)


def _forget_old_graphs(cache_dir: Path) -> None:
    """Delete the graphs of all but the CACHED_DITS most recently used DiTs in `cache_dir`."""
    by_key: dict[str, list[Path]] = {}
    for path in cache_dir.glob("dit-*.onnx"):
        by_key.setdefault(path.name.rsplit("-", 1)[0], []).append(path)
    newest_first = sorted(by_key.values(), key=lambda paths: -max(p.stat().st_mtime_ns for p in paths))
    for paths in newest_first[CACHED_DITS:]:
        for path in paths:
            path.unlink(missing_ok=True)


def transformer_forward(transformer: nn.Module, inputs: dict[str, torch.Tensor], image_meta_size=None,
                        style=None) -> torch.Tensor:
    """A HunyuanDiT2DModel call in PyTorch on inputs named as INPUT_NAMES (the decoder's `predict`, the traced
    graphs and their check all call it, so the three read the inputs alike)."""
    return transformer(inputs["latents"], inputs["timesteps"], encoder_hidden_states=inputs["embeds"],
                       text_embedding_mask=inputs["mask"], encoder_hidden_states_t5=inputs["embeds_2"],
                       text_embedding_mask_t5=inputs["mask_2"], image_meta_size=image_meta_size, style=style,
                       image_rotary_emb=(inputs["rotary_cos"], inputs["rotary_sin"]), return_dict=False)[0]
