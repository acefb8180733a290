"""The benchmarks run (on the micro model); they measure, so nothing here checks a timing."""

import collections
import os
import random
import threading

import numpy as np
import pytest
import torch

from benchmarks import bench_chat, bench_embed, bench_generate
from benchmarks.gpu_check import main as gpu_check
from omnibridge.shapes import render, sample_scene


def test_chat_generate_and_embed_benchmarks_report_ratios(tiny_pipeline):
    image = render(sample_scene(random.Random(0), 2))
    chat = bench_chat.run(tiny_pipeline, image, repeats=1)
    assert chat.figures["first_token_overhead"] > 0 and chat.figures["tokens_per_s"] > 0
    generate = bench_generate.run(tiny_pipeline, repeats=1)
    assert generate.figures["overhead_vs_bare"] > 0 and generate.figures["size"] == 64
    assert generate.figures["dit_runtime"] == "onnxruntime-int8" and generate.figures["onnxruntime_vs_pytorch"] > 0
    assert generate.figures["int8_vs_float32"] > 0 and generate.figures["float32_vs_pytorch"] > 0
    assert tiny_pipeline.decoder.onnx_dit is None  # the other benchmarks time the pipeline as loaded
    assert generate.figures["self_check_4_vs_four_images"] > 0
    embed = bench_embed.run(tiny_pipeline, n=8, single=4, repeats=1)
    assert embed.figures["images_per_s"] > 0 and "image_batching_speedup" in embed.figures
    assert all(r.summary and r.goal for r in (chat, generate, embed))


def test_the_quantization_benchmark_measures_each_mode_against_full_precision():
    from benchmarks import bench_quantize
    from omnibridge import DEFAULT_MODEL, OmniBridgePipeline

    result = bench_quantize.run(OmniBridgePipeline.from_pretrained(DEFAULT_MODEL), DEFAULT_MODEL,
                                render(sample_scene(random.Random(0), 2)), repeats=1)
    weights = result.figures["llm_weights_mb"]
    assert set(weights) == {"full", "8bit", "4bit"} and weights["4bit"] < weights["8bit"] < weights["full"]
    for mode in ("8bit", "4bit"):
        assert result.figures[mode]["weights_ratio"] == round(weights[mode] / weights["full"], 3)
        assert result.figures[mode]["answer_time_ratio"] > 0 and isinstance(result.figures[mode]["same_answer"], bool)
    assert result.summary.startswith("quantize: 8bit LLM weights x")


def test_the_full_size_gpu_check_runs_at_toy_size(block_calls):
    report = gpu_check(["--tiny", "--device", "cpu", "--max-gpu-memory", "20"])
    assert report["tiny"] and report["chat_tokens_per_s"] > 0
    assert report["offload"] == {"skipped": "model offload needs a GPU"}
    assert {"image_128px_dpm++_25_steps_s", "image_128px_ddpm_100_steps_s", "embed_images_per_s",
            "image_128px_dpm++_25_steps_guided_30pct_reuse_3_s"} <= set(report)
    runs = collections.Counter(block_calls)
    assert len(runs) == 4 and len(set(runs.values())) == 2  # the middle blocks were reused: they ran less
    block_calls.clear()
    quantized = gpu_check(["--tiny", "--device", "cpu", "--quantize", "8bit"])
    assert quantized["quantization"] == "8bit" and quantized["chat_tokens_per_s"] > 0
    # at toy size the unquantized embedding table weighs most: measured 0.50 against 0.82 MB
    assert quantized["llm_weights_mb"] < 0.7 * report["llm_weights_mb"]
    assert "image_128px_dpm++_25_steps_s" in quantized
    assert quantized["parameters_billion"] == report["parameters_billion"]


def test_the_startup_benchmark_takes_each_rounds_ratio_against_the_imports_timed_just_before(monkeypatch):
    from benchmarks import bench_startup

    # a machine that slows down round by round: 8, 10, 12 s of imports, starts 1.25x and 1.125x of them
    imports = iter([8.0, 10.0, 12.0])
    starts = iter([(10.0, 14.0, 300 * 2**20), (9.0, 0.0, 310 * 2**20), (12.5, 16.0, 0), (11.25, 0.0, 0),
                   (15.0, 20.0, 0), (13.5, 0.0, 320 * 2**20)])
    data_dirs = []

    def start_and_ask(model, data_dir):
        data_dirs.append(data_dir)
        return next(starts)

    monkeypatch.setattr(bench_startup, "_time_imports", lambda: next(imports))
    monkeypatch.setattr(bench_startup, "_start_and_ask", start_and_ask)
    figures = bench_startup.run("tiny", rounds=3).figures
    assert data_dirs[0] == data_dirs[1] != data_dirs[2] == data_dirs[3]  # a restart reuses its round's fresh dir
    assert figures["first_start_ratio_to_imports"] == 1.25 and figures["restart_ratio_to_imports"] == 1.125
    assert figures["imports_alone_s"] == 10.0 and figures["restart_to_first_request_s"] == 11.25
    assert figures["first_start_to_indexed_gallery_s"] == 16.0 and figures["spread_s"]["restart"] == [9.0, 13.5]
    assert figures["app_rss_mb"] == 320.0  # the last restart's, after its generation


def test_the_compile_benchmark_times_compiled_blocks_against_the_same_model_uncompiled(tiny_model_dir, monkeypatch):
    from benchmarks import bench_compile
    from omnibridge import OmniBridgePipeline

    # the subprocesses' first compiled images and inductor's C++ compile take minutes: stand-ins for both
    monkeypatch.setattr(bench_compile, "_first_compiled_image_s", lambda model, cache_dir: 1.5)
    compile_blocks = OmniBridgePipeline.compile
    monkeypatch.setattr(OmniBridgePipeline, "compile", lambda self: compile_blocks(self, backend="eager"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/inductor-before")  # run() points it at its own folder
    result = bench_compile.run(OmniBridgePipeline.from_pretrained(tiny_model_dir), str(tiny_model_dir), repeats=1)
    figures = result.figures
    assert figures["ratio_to_uncompiled"] > 0 and figures["first_image_empty_cache_s"] == 1.5
    assert figures["pixels_differing"] == 0  # the eager backend runs the same kernels
    assert result.summary.startswith("compile: one image")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/tmp/inductor-before"  # put back: its folder is gone
    torch._dynamo.reset()


def test_a_partial_run_keeps_the_other_benchmarks_results(tmp_path):
    from benchmarks.harness import Result, write

    out = str(tmp_path / "results.json")
    write([Result("chat", {"x": 1}, "chat"), Result("embed", {"x": 2}, "embed")], out)
    write([Result("embed", {"x": 3}, "embed again")], out)
    import json

    saved = {r["name"]: r for r in json.load(open(out))}
    assert saved["chat"]["figures"] == {"x": 1} and saved["embed"]["figures"] == {"x": 3}
    assert "measured_at" in saved["embed"]["machine"]


def test_gallery_benchmark_compares_its_exact_search_with_chromas_index(tiny_pipeline):
    from benchmarks import bench_gallery

    search = bench_gallery.search_latency(tiny_pipeline, sizes=(300,), queries=5)["300"]
    assert search["gallery"]["recall_at_10"] == 1.0  # the gallery's search is exact by construction
    assert 0 < search["chroma_hnsw"]["recall_at_10"] <= 1.0 and search["gallery"]["p50_ms"] > 0
    ingest = bench_gallery.ingest(tiny_pipeline, n=6)
    assert ingest["items"] == 6 and ingest["end_to_end_s"] > 0


def test_interleaved_timing_runs_the_compared_functions_in_turn():
    from benchmarks.harness import RequestThreads, Timing

    calls = []
    timings = Timing.interleaved({"ours": lambda: calls.append("ours"),
                                  "self_timed": lambda: calls.append("base") or 0.25}, repeats=3, warmup=1)
    assert calls == ["ours", "base"] * 4  # one warm-up round, then three rounds, alternating
    assert timings["self_timed"].median_s == 0.25 and timings["self_timed"].repeats == 3
    assert timings["ours"].repeats == 3

    threads = RequestThreads(count=2)
    idents = [threads(threading.get_ident)() for _ in range(4)]
    assert idents[0] == idents[2] != idents[1] == idents[3]  # each call on the next thread of the pool
    assert threading.get_ident() not in idents


@pytest.mark.parametrize("cutoff, interval", [(1.0, 1), (0.5, 1), (0.25, 2)])
def test_the_bare_loop_draws_what_the_pipeline_draws(tiny_pipeline, deeper_dit, monkeypatch, cutoff, interval):
    # The generate benchmark's baseline must do the pipeline's work, guidance cutoff and block reuse
    # included, or its ratio would credit the pipeline with work it skipped.
    from benchmarks.bench_generate import PROMPT, bare_loop

    monkeypatch.setattr(tiny_pipeline.decoder, "transformer", deeper_dit)  # middle blocks to reuse
    monkeypatch.setattr(tiny_pipeline.config.generation, "guidance_cutoff", cutoff)
    monkeypatch.setattr(tiny_pipeline.config.generation, "cache_interval", interval)
    drawn = tiny_pipeline.generate(PROMPT, rewrite=False, use_learned_queries=False, seed=0,
                                   num_inference_steps=4, guidance_scale=3.0, sampler="dpm++").images[0]
    original = tiny_pipeline.decoder.sampler_kind
    tiny_pipeline.decoder.set_sampler("dpm++")
    try:
        pixels = bare_loop(tiny_pipeline.decoder, PROMPT, 4, 3.0, 64, seed=0, guidance_cutoff=cutoff,
                           cache_interval=interval)
        if interval > 1:  # reuse changes the image, so the match above is not one of two loops alike
            every_block = bare_loop(tiny_pipeline.decoder, PROMPT, 4, 3.0, 64, seed=0, guidance_cutoff=cutoff)
            assert not torch.equal(pixels, every_block)
    finally:
        tiny_pipeline.decoder.set_sampler(original)
    bare = ((pixels[0].float().clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy()
    assert np.abs(bare - np.asarray(drawn, dtype=float)).max() <= 1


def test_the_steps_study_pairs_every_setting_with_the_default(tiny_pipeline):
    """Same prompts and seeds for every setting, so each row counts the prompts it won and lost against the
    model's default; the decoder keeps its own sampler afterwards."""
    import copy

    from benchmarks import bench_steps

    pipe = copy.copy(tiny_pipeline)
    pipe.config = copy.deepcopy(tiny_pipeline.config)
    generation = pipe.config.generation
    generation.num_inference_steps = 2  # a cheap default; the reference is DDPM@100 whatever the default
    kind = pipe.decoder.sampler_kind
    # the default is not listed: it runs anyway, first, as the rows' paired baseline
    result = bench_steps.run(pipe, per_category=1, settings=(("ddpm", 100),))
    rows = result.figures["per_setting"]
    default = f"{generation.sampler}@{generation.num_inference_steps}"
    assert list(rows) == [default, "ddpm@100"] and result.figures["prompts"] == 6
    from omnibridge.evaluation.generation import EVAL_SEED, VALIDATION_SEED

    assert result.figures["prompt_seed"] == VALIDATION_SEED != EVAL_SEED  # it chooses: never the test prompts
    assert "won_vs_default" not in rows[default]
    reference = rows["ddpm@100"]
    assert 0 <= reference["won_vs_default"] + reference["lost_vs_default"] <= 6
    # won - lost is the difference in passed prompts, which the overall accuracies must agree with
    assert reference["won_vs_default"] - reference["lost_vs_default"] == round(
        6 * (reference["overall"] - rows[default]["overall"]))
    assert pipe.decoder.sampler_kind == kind


def test_the_runner_passes_its_rounds_on(monkeypatch, tmp_path):
    from benchmarks import run
    from benchmarks.harness import Result

    asked = []
    monkeypatch.setattr(bench_generate, "run", lambda pipe, repeats: asked.append(repeats) or Result("generate", {}, "g"))
    out = str(tmp_path / "results.json")
    for flags in (["--repeats", "9"], ["--quick"], []):
        run.main(["--only", "generate", "--out", out, *flags])
    assert asked == [9, 2, 5]


def test_results_name_the_cpu_model_and_its_vector_units(tmp_path):
    from omnibridge.timing import cpu_name

    intel = tmp_path / "intel"
    intel.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx2 avx512f "
                     "avx512_vnni amx_tile\n\nprocessor\t: 1\nmodel name\t: ignored\n")
    amd = tmp_path / "amd"
    amd.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13 64-Core Processor\nflags\t\t: fpu avx2 fma\n")
    assert cpu_name(intel) == "Intel(R) Xeon(R) Processor (AVX-512, VNNI, AMX)"
    assert cpu_name(amd) == "AMD EPYC 7B13 64-Core Processor (no AVX-512)"
    assert cpu_name(tmp_path / "missing")  # not Linux: the platform's name, never an error
