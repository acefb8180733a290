"""Every pipeline method end to end on a micro model with random weights (code paths, not quality)."""

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from omnibridge import DecoderNumericalError, GenerationCancelled, InvalidInputError


def test_chat_and_stream_chat(tiny_pipeline, scene_image):
    messages = [{"role": "user", "content": [{"type": "text", "text": "How many circles are there?"}]}]
    answer = tiny_pipeline.chat(messages, images=[scene_image], max_new_tokens=6)
    assert isinstance(answer, str)
    pieces = list(tiny_pipeline.stream_chat(messages, images=[scene_image], max_new_tokens=6))
    assert all(b.startswith(a) for a, b in zip(pieces, pieces[1:]))  # each yield extends the last
    assert (pieces[-1] if pieces else "") == answer  # greedy: streaming and non-streaming agree


def test_streamed_answer_is_what_a_bare_generate_call_decodes(tiny_pipeline, scene_image):
    from omnibridge.modeling.chat_format import Message

    question = "What colour is the circle?"
    streamed = list(tiny_pipeline.stream_chat([{"role": "user", "content": question}], images=[scene_image],
                                              max_new_tokens=12))
    encoded = tiny_pipeline.format.encode([Message("user", [scene_image, question])])
    batch = tiny_pipeline._to_device(tiny_pipeline.format.collate([encoded], "left")["inputs"])
    with torch.inference_mode():
        output = tiny_pipeline.llm.generate(**batch, max_new_tokens=12, do_sample=False,
                                            eos_token_id=tiny_pipeline._stop_ids(),
                                            pad_token_id=tiny_pipeline.format.pad_id)
    new_ids = output[0, batch["input_ids"].shape[1]:].tolist()
    expected = tiny_pipeline.clean_answer(tiny_pipeline.tokenizer.decode(new_ids, skip_special_tokens=False))
    assert streamed and streamed[-1] == expected
    assert len(streamed) >= 2  # it really streamed: one yield per generated token (or group of them)


def test_with_text_before_images_the_image_sits_at_a_fixed_distance_from_the_answer(tiny_pipeline, scene_image):
    """M-RoPE advances the row and column axes on every text token: with a turn's text first, questions
    of any length leave the image the same distance from the answer (PromptConfig.text_before_images)."""
    from dataclasses import replace

    from omnibridge.modeling.chat_format import ChatFormat, Message

    def distances(text_first: bool) -> set[int]:
        fmt = ChatFormat(tiny_pipeline.tokenizer, tiny_pipeline.format.image_processor,
                         replace(tiny_pipeline.format.prompts, text_before_images=text_first))
        seen = set()
        for question in ("Is there a circle?", "Where is the red circle relative to the big blue square?"):
            encoded = fmt.encode([Message("user", [scene_image, question])])
            seen.add(len(encoded.input_ids) - encoded.spans["image0"][1])
        return seen

    assert len(distances(text_first=True)) == 1
    assert len(distances(text_first=False)) == 2  # the official order: the distance grows with the question


def test_every_model_job_runs_on_one_thread_whoever_asks(tiny_pipeline, scene_image):
    # Gradio calls the model from a pool of threads, and each one used to grow an OpenMP team of its
    # own (model_thread.py): every forward pass must run on the pipeline's one model thread, with the
    # team size the pipeline was created with.
    seen = set()

    def record(module, args, kwargs):
        seen.add((threading.get_ident(), torch.get_num_threads(), torch.is_inference_mode_enabled()))

    hooks = [module.register_forward_pre_hook(record, with_kwargs=True)
             for module in (tiny_pipeline.llm.model, tiny_pipeline.decoder.transformer)]
    try:
        list(tiny_pipeline.stream_chat([{"role": "user", "content": "hello"}], images=[scene_image], max_new_tokens=3))
        tiny_pipeline.generate("a red circle", num_inference_steps=2, seed=0)
        tiny_pipeline.edit(scene_image, "make it blue", num_inference_steps=2, seed=0)
        tiny_pipeline.embed_images([scene_image])
        tiny_pipeline.answer_batch([scene_image], ["How many circles are there?"], max_new_tokens=2)
        other = threading.Thread(target=lambda: tiny_pipeline.embed_texts(["a red circle"]))
        other.start()
        other.join()
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen) == 1, seen
    (thread, team_size, inference_mode), = seen
    assert thread != threading.get_ident()
    assert team_size == torch.get_num_threads()
    assert inference_mode


def test_a_second_model_can_share_the_first_ones_thread(tiny_pipeline, tiny_model_dir):
    # The Compare tab's second checkpoint: two threads would mean two OpenMP teams again.
    from omnibridge import OmniBridgePipeline

    second = OmniBridgePipeline.from_pretrained(tiny_model_dir, model_thread=tiny_pipeline.model_thread)
    seen = set()
    hook = second.llm.model.register_forward_pre_hook(lambda module, args: seen.add(threading.get_ident()))
    try:
        second.embed_texts(["a red circle"])
    finally:
        hook.remove()
    assert seen == {tiny_pipeline.model_thread.run(threading.get_ident)}


def test_model_jobs_leave_later_threads_torch_team_size_alone(tiny_pipeline):
    # `torch.set_num_threads` in one thread sets what every later thread starts with: the one-thread
    # generation thread this replaces handed later request threads one-thread teams.
    before = torch.get_num_threads()
    list(tiny_pipeline.stream_chat([{"role": "user", "content": "hello"}], max_new_tokens=3))
    later = []
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert torch.get_num_threads() == before
    assert later == [before]


def test_stream_can_be_stopped_early(tiny_pipeline):
    stream = tiny_pipeline.stream_chat([{"role": "user", "content": "hello"}], max_new_tokens=50,
                                       temperature=1.0, seed=0)
    next(stream, None)
    stream.close()  # the generation thread is told to stop and joined
    assert tiny_pipeline.jobs_requested == 0


def test_streamed_tokens_are_batched_by_interval_and_the_end_is_not_delayed():
    """The first token is handed over at once; tokens arriving faster than the update interval then
    reach the consumer together, every id once and in order; the answer's end wakes the consumer at
    once instead of after the interval."""
    import time

    from omnibridge.pipeline import _TokenQueue

    tokens = _TokenQueue(interval=1.0)
    batches = tokens.batches(timeout=5)
    tokens.put(torch.tensor([[1, 2, 3]]))  # the prompt, which the streamer skips
    tokens.put(torch.tensor([10]))
    assert next(batches) == [10]

    def produce():
        for token in range(11, 30):
            tokens.put(torch.tensor([token]))
            time.sleep(0.002)
        tokens.end()

    producer = threading.Thread(target=produce)
    started = time.monotonic()
    producer.start()
    rest = list(batches)
    elapsed = time.monotonic() - started
    producer.join()
    assert rest == [list(range(11, 30))]  # one batch: all 19 arrived within the interval
    assert elapsed < 0.6  # ~40 ms of tokens, not the 1 s interval


@pytest.mark.parametrize("size", [(64, 64), (37, 90), (300, 20), (8, 8), (1000, 700)])
def test_counted_image_tokens_match_the_processors_grid(tiny_pipeline, size):
    # The prompt reserves this many <|image_pad|> tokens; the vision tower emits grid/merge^2 of them.
    image = Image.new("RGB", size, (200, 30, 30))
    chat_format = tiny_pipeline.format
    grid = chat_format.image_inputs([image])["image_grid_thw"][0]
    assert chat_format.image_token_count(image) == int(grid.prod()) // chat_format.merge**2


def test_multi_turn_with_several_images_and_openai_parts(tiny_pipeline, scene_image):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "image", "image": scene_image}, {"type": "text", "text": "Describe."}]},
        {"role": "assistant", "content": "a red circle"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": scene_image}}, "And this one?"]},
    ]
    conversation = tiny_pipeline.prepare_conversation(messages)
    assert [m.role for m in conversation] == ["system", "user", "assistant", "user"]
    assert sum(isinstance(p, Image.Image) for m in conversation for p in m.parts) == 2
    assert isinstance(tiny_pipeline.chat(messages, max_new_tokens=3), str)


def test_long_history_is_truncated_oldest_first(tiny_pipeline, scene_image):
    messages = []
    for turn in range(100):
        content = [scene_image, f"question {turn}"] if turn % 5 == 0 else f"question {turn}"
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": f"answer {turn}"}]
    messages.append({"role": "user", "content": "the last question"})
    conversation = tiny_pipeline.prepare_conversation(messages, max_new_tokens=32)
    tokens = sum(tiny_pipeline._message_tokens(m) for m in conversation)
    assert tokens <= tiny_pipeline.config.max_context_tokens
    assert conversation[-1].parts == ["the last question"]
    assert len(conversation) < len(messages)
    images = sum(isinstance(p, Image.Image) for m in conversation for p in m.parts)
    assert images <= tiny_pipeline.config.max_images_in_context
    assert isinstance(tiny_pipeline.chat(messages, max_new_tokens=3), str)


def test_a_huge_single_message_keeps_its_end(tiny_pipeline):
    text = "word " * 20000 + "the end"
    conversation = tiny_pipeline.prepare_conversation([{"role": "user", "content": text}])
    assert conversation[-1].parts[-1].endswith("the end")


def test_generate_returns_images_seeds_caption_and_timings(tiny_pipeline):
    steps_seen = []

    def callback(decoder, step, timestep, tensors):
        steps_seen.append(step)
        assert "latents" in tensors

    result = tiny_pipeline.generate("two red circles", seed=41, num_images=3, num_inference_steps=3,
                                    guidance_scale=2.0, callback=callback)
    assert len(result.images) == 3 and all(img.size == (64, 64) for img in result.images)
    assert result.seeds == [41, 42, 43] and result.seed == 41
    assert steps_seen == [0, 1, 2]
    assert isinstance(result.caption, str) and result.caption
    assert {"rewrite_condition_s", "denoise_decode_s", "total_s"} <= set(result.timings)
    assert result.parameters["guidance_scale"] == 2.0
    again = tiny_pipeline.generate("two red circles", seed=42, num_inference_steps=3, guidance_scale=2.0)
    # Image i is seed + i generated alone (up to float rounding between batch sizes).
    difference = np.abs(np.asarray(again.images[0], dtype=int) - np.asarray(result.images[1], dtype=int))
    assert difference.max() <= 2



def test_candidate_seeds_and_best_candidates():
    from omnibridge.self_check import best_candidates, candidate_seeds

    # candidate 0 of each image is the image drawn without the self-check; no seed repeats
    assert candidate_seeds([5, 6], 3, max_seed=100) == [5, 7, 9, 6, 8, 10]
    assert candidate_seeds([99, 100], 2, max_seed=100) == [99, 0, 100, 1]
    assert best_candidates(np.array([0.1, 0.5, 0.2, 0.9, 0.3, 0.4]), 3) == [1, 3]
    assert best_candidates(np.array([0.3, 0.2]), 1) == [0, 1]


def test_self_check_keeps_the_candidate_the_models_own_embeddings_rate_best(tiny_pipeline):
    settings = dict(num_inference_steps=2, guidance_scale=2.0)
    result = tiny_pipeline.generate("two red circles", seed=10, num_images=2, candidates=3, **settings)
    assert len(result.images) == 2 and len(result.scores) == 2 and result.parameters["candidates"] == 3
    caption_vector = tiny_pipeline.embed_texts([result.caption])[0]
    for i, (kept_image, kept_seed, kept_score) in enumerate(zip(result.images, result.seeds, result.scores)):
        draws = [10 + i + 2 * j for j in range(3)]
        assert kept_seed in draws
        alone = [tiny_pipeline.generate("two red circles", seed=s, caption=result.caption, **settings).images[0]
                 for s in draws]
        scores = tiny_pipeline.embed_images(alone) @ caption_vector
        assert draws[int(np.argmax(scores))] == kept_seed
        assert abs(float(scores.max()) - kept_score) < 1e-2
        # the seed written back redraws the kept image on its own (up to float rounding between batch sizes)
        redrawn = np.asarray(alone[draws.index(kept_seed)], dtype=int)
        assert np.abs(redrawn - np.asarray(kept_image, dtype=int)).max() <= 2
    plain = tiny_pipeline.generate("two red circles", seed=10, **settings)
    assert plain.scores is None and plain.parameters["candidates"] == 1


def test_caption_change_counts_objects_not_words():
    from omnibridge.caption_choice import NO_CHANGE, caption_change, least_change

    source = "a large red circle and two small blue squares"
    assert caption_change(source, "a large green circle and two small blue squares") == 1  # a recolour: one object
    assert caption_change(source, "a large red circle and a small blue square") == 1  # a removal
    assert caption_change(source, "a large green circle and a large blue square") == 3  # three objects changed
    assert caption_change(source, "two small blue squares and a large red circle") == NO_CHANGE  # reordered
    assert caption_change(source, "a large red circle and a small blue square and a small blue square") == NO_CHANGE
    assert caption_change("a red circle and a blue square", "a red circle to the left of a blue square") == 0  # a move
    assert caption_change("a red circle", "a fish on a bicycle") == 4  # outside the grammar: words
    assert caption_change("a fish", "a fish") == NO_CHANGE
    beams = ["a large green circle and a large blue square",  # also merges and resizes the squares: 3
             "a large red circle and two small blue squares",  # changes nothing
             "two small blue squares and a large green circle",  # the edit: 1
             "a large green circle and two small blue squares",  # the same edit, a worse beam
             "a large red circle"]  # drops both squares: 2
    assert least_change(source, beams) == 2
    # a garbled beam is one word away from the source, but a caption outside the grammar is no scene to draw
    source = "a small white triangle and a large blue square"
    beams = ["a small white trianglea triangle and a large blue square", "a large red square and a large white square"]
    assert caption_change(source, beams[0]) == 1 and caption_change(source, beams[1]) == 2
    assert least_change(source, beams) == 1
    assert least_change("a fish", ["a fish on a bicycle", "two fish"]) == 1  # free text: words, as before
    with pytest.raises(ValueError):
        least_change(source, [])


def test_an_edit_whose_caption_left_the_grammar_warns_the_user():
    from omnibridge.ui.common import OFF_GRAMMAR_EDIT, edit_warning

    source = "a small white triangle and a large blue square"
    assert edit_warning(source, "a small white trianglea triangle and a large blue square") == OFF_GRAMMAR_EDIT
    assert edit_warning(source, "a small white triangle below a large blue square") is None
    assert edit_warning("a cat on a sofa", "a dog on a sofa") is None  # a free-text model: nothing to check
    assert edit_warning(None, "anything") is None  # no description (the model's own choice was not asked)


def test_an_edit_can_choose_its_caption_among_beams(tiny_pipeline, scene_image):
    from omnibridge.caption_choice import least_change

    defaults = tiny_pipeline.config.generation
    defaults.edit_caption_beams = 3
    try:
        result = tiny_pipeline.edit(scene_image, "make the circle blue", seed=5, num_inference_steps=2)
    finally:
        defaults.edit_caption_beams = 1
    written = result.parameters["caption_candidates"]
    description = result.parameters["source_description"]
    assert len(written) == 3 and isinstance(description, str)
    assert result.caption == written[least_change(description, written)]
    plain = tiny_pipeline.edit(scene_image, "make the circle blue", seed=5, num_inference_steps=2)
    assert "caption_candidates" not in plain.parameters


def test_self_check_works_for_edits_and_batches_and_clamps_the_count(tiny_pipeline, scene_image):
    settings = dict(num_inference_steps=2, guidance_scale=2.0)
    edited = tiny_pipeline.edit(scene_image, "make the circle blue", seed=3, candidates=2, **settings)
    assert len(edited.images) == 1 and edited.seeds[0] in (3, 4) and len(edited.scores) == 1
    images, captions = tiny_pipeline.generate_batch(["a circle", "a square"], [1, 2], rewrite=False, candidates=2,
                                                    **settings)
    assert len(images) == 2 and captions == ["a circle", "a square"]
    assert tiny_pipeline.generate("a circle", candidates=99, **settings).parameters["candidates"] == 8
    assert tiny_pipeline.generate("a circle", candidates=0, **settings).parameters["candidates"] == 1


def test_generation_can_be_cancelled_between_steps(tiny_pipeline):
    def stop_at_second_step(decoder, step, timestep, tensors):
        if step == 1:
            raise GenerationCancelled()

    with pytest.raises(GenerationCancelled):
        tiny_pipeline.generate("a circle", num_inference_steps=5, callback=stop_at_second_step)
    assert tiny_pipeline.jobs_requested == 0  # the lock was released


def test_nan_latents_raise_instead_of_returning_a_black_image(tiny_pipeline):
    def poison(decoder, step, timestep, tensors):
        return {"latents": torch.full_like(tensors["latents"], float("nan"))}

    with pytest.raises(DecoderNumericalError, match="NaN"):
        tiny_pipeline.generate("a circle", num_inference_steps=2, callback=poison)


def test_decoder_alone_and_no_rewrite_paths(tiny_pipeline):
    result = tiny_pipeline.generate("a blue square", rewrite=False, use_learned_queries=False, seed=1,
                                    num_inference_steps=2)
    assert result.caption == "a blue square" and result.parameters["conditioning"] == "decoder_text"
    images, captions = tiny_pipeline.generate_batch(["a circle", "a square"], [1, 2], rewrite=False,
                                                    num_inference_steps=2)
    assert len(images) == 2 and captions == ["a circle", "a square"]


def test_the_rewrite_runs_only_its_configured_layers_and_leaves_the_model_whole(tiny_model):
    """`generation.rewrite_layers` cuts the rewrite to the first layers (a model with answer layers rewrites
    through its trunk); every other path still runs all of them."""
    import copy

    from omnibridge import OmniBridgePipeline
    from omnibridge.modeling.devices import placement
    from omnibridge.training.grow import stack_answer_layers

    model = copy.copy(tiny_model)
    trunk = tiny_model.llm.config.text_config.num_hidden_layers
    model.llm = stack_answer_layers(tiny_model.llm, trunk).eval()
    model.config = replace(tiny_model.config, feature_layers=trunk)
    pipe = OmniBridgePipeline(model, placement("cpu"))
    layers = model.llm.model.language_model.layers
    calls = []
    hook = layers[-1].register_forward_hook(lambda *_: calls.append(1))
    try:
        pipe.rewrite_prompts(["a red circle"])
        assert calls  # by default the rewrite passes every layer
        calls.clear()
        pipe.config.generation = replace(pipe.config.generation, rewrite_layers=trunk)
        pipe.rewrite_prompts(["a red circle"])
        assert not calls and len(model.llm.model.language_model.layers) == 2 * trunk
        pipe.chat([{"role": "user", "content": "hello"}], max_new_tokens=2)
        assert calls  # answers still pass every layer
        pipe.config.generation = replace(pipe.config.generation, rewrite_layers=0)
        with pytest.raises(ValueError, match="at least one text layer"):
            pipe.rewrite_prompts(["a red circle"])
        assert len(model.llm.model.language_model.layers) == 2 * trunk
    finally:
        hook.remove()


def test_every_sampler_denoises_on_the_same_noise_schedule(tiny_pipeline):
    from omnibridge.modeling.decoder import SAMPLERS

    decoder = tiny_pipeline.decoder
    original, original_kind, betas = decoder.scheduler, decoder.sampler_kind, decoder.scheduler.betas.clone()
    try:
        variants = set()
        for kind in SAMPLERS:
            decoder.set_sampler(kind)
            variants.add((type(decoder.scheduler).__name__, decoder.scheduler.config.get("algorithm_type")))
            assert torch.allclose(decoder.scheduler.betas, betas)
            image = tiny_pipeline.generate("a red circle", seed=0, num_inference_steps=3).images[0]
            assert image.size == (64, 64) and np.asarray(image).std() > 0
        assert len(variants) == len(SAMPLERS)
        with pytest.raises(ValueError):
            decoder.set_sampler("euler-magic")
    finally:
        decoder.scheduler, decoder.sampler_kind = original, original_kind


def test_the_pipeline_switches_samplers_on_its_model_thread(tiny_pipeline, monkeypatch):
    # building a scheduler runs torch ops; on the caller's thread they started a second OpenMP team, and every
    # later call of the process ran 2-3x slower
    decoder = tiny_pipeline.decoder
    original, original_kind = decoder.scheduler, decoder.sampler_kind
    switched_on = []
    set_sampler = decoder.set_sampler
    monkeypatch.setattr(decoder, "set_sampler", lambda kind: (switched_on.append(threading.current_thread()),
                                                               set_sampler(kind)))
    try:
        tiny_pipeline.set_sampler("ddim")
        assert decoder.sampler_kind == "ddim"
        assert switched_on == [tiny_pipeline.run_job(threading.current_thread)] != [threading.current_thread()]
        with pytest.raises(InvalidInputError, match="sampler must be one of"):
            tiny_pipeline.set_sampler("euler-magic")
    finally:
        decoder.scheduler, decoder.sampler_kind = original, original_kind


def test_switching_back_from_the_sde_sampler_gives_the_deterministic_one(tiny_pipeline):
    # make_sampler builds from the current scheduler's config: the SDE variant's algorithm must not leak
    decoder = tiny_pipeline.decoder
    original, kind = decoder.scheduler, decoder.sampler_kind
    try:
        decoder.set_sampler("dpm++sde")
        assert decoder.scheduler.config.algorithm_type == "sde-dpmsolver++"
        decoder.set_sampler("dpm++")
        assert decoder.scheduler.config.algorithm_type == "dpmsolver++"
    finally:
        decoder.scheduler, decoder.sampler_kind = original, kind


@pytest.mark.parametrize("kind", ["ddpm", "dpm++sde"])
def test_stochastic_samplers_depend_only_on_each_images_seed(tiny_pipeline, kind):
    # Their step noise comes from per-image generators, not the global RNG: a seed gives the same
    # image alone or in a batch, whatever ran before.
    decoder = tiny_pipeline.decoder
    original, original_kind = decoder.scheduler, decoder.sampler_kind
    try:
        decoder.set_sampler(kind)
        settings = dict(rewrite=False, num_inference_steps=4)
        alone = np.asarray(tiny_pipeline.generate("a red circle", seed=5, **settings).images[0], dtype=int)
        torch.manual_seed(123)  # moving the global RNG must not matter
        batch, _ = tiny_pipeline.generate_batch(["a blue square", "a red circle"], [9, 5], **settings)
        assert np.abs(np.asarray(batch[1], dtype=int) - alone).max() <= 1
        other = np.asarray(tiny_pipeline.generate("a red circle", seed=6, **settings).images[0], dtype=int)
        assert np.abs(other - alone).max() > 1
    finally:
        decoder.scheduler, decoder.sampler_kind = original, original_kind


def test_a_call_can_pick_its_sampler_without_changing_the_pipelines(tiny_pipeline):
    decoder = tiny_pipeline.decoder
    before, scheduler = decoder.sampler_kind, decoder.scheduler
    settings = dict(rewrite=False, seed=3, num_inference_steps=4)
    picked = tiny_pipeline.generate("a red circle", sampler="ddim", **settings)
    assert picked.parameters["sampler"] == "ddim"
    assert decoder.sampler_kind == before and decoder.scheduler is scheduler  # nothing shared was touched
    try:
        decoder.set_sampler("ddim")
        switched = tiny_pipeline.generate("a red circle", **settings)
    finally:
        decoder.set_sampler(before)
    assert np.array_equal(np.asarray(picked.images[0]), np.asarray(switched.images[0]))
    assert tiny_pipeline.generate("a red circle", **settings).parameters["sampler"] == before
    with pytest.raises(InvalidInputError, match="sampler must be one of"):
        tiny_pipeline.generate("a red circle", sampler="euler-magic", **settings)


def test_edit(tiny_pipeline, scene_image):
    result = tiny_pipeline.edit(scene_image, "make the circle blue", seed=5, num_inference_steps=3)
    assert len(result.images) == 1 and result.caption and result.parameters["mode"] == "edit"
    partial = tiny_pipeline.edit(scene_image, "make the circle blue", seed=5, num_inference_steps=4, strength=0.5)
    assert partial.images[0].size == (64, 64)


@pytest.mark.parametrize("kwargs", [dict(prompt=""), dict(prompt="   \n "), dict(prompt="x", height=65),
                                    dict(prompt="x" * 100_000)])
def test_generate_refuses_bad_input_clearly(tiny_pipeline, kwargs):
    with pytest.raises(InvalidInputError):
        tiny_pipeline.generate(**kwargs)


def test_out_of_range_numbers_are_clamped(tiny_pipeline):
    result = tiny_pipeline.generate("a circle", seed=-5, num_images=99, num_inference_steps=1, guidance_scale=1e9)
    assert len(result.images) == 4 and 0 <= result.seed < 2**31
    assert result.parameters["guidance_scale"] == 20.0


def test_embeddings_are_unit_norm_and_independent_of_the_batch(tiny_pipeline, scene_image):
    texts = ["a red circle", "two blue squares and a large green triangle to the left", "a square"]
    together = tiny_pipeline.embed_texts(texts)
    assert together.shape == (3, tiny_pipeline.embedding_dim) and together.dtype == np.float32
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    for i, text in enumerate(texts):
        assert np.allclose(tiny_pipeline.embed_texts([text])[0], together[i], atol=1e-5)
    other = Image.fromarray(np.full((64, 64, 3), 200, dtype=np.uint8))
    images = tiny_pipeline.embed_images([scene_image, other])
    assert np.allclose(tiny_pipeline.embed_images([scene_image])[0], images[0], atol=1e-5)
    assert tiny_pipeline.embed_texts(texts, batch_size=2).shape == (3, tiny_pipeline.embedding_dim)


def test_embedding_with_the_shared_prefix_cached_equals_the_full_forward_pass(tiny_pipeline, scene_image):
    from omnibridge.modeling.chat_format import Message, SpanText, gather_spans

    pipe = tiny_pipeline
    wide = Image.fromarray(np.full((48, 96, 3), 90, dtype=np.uint8))  # another grid: other M-RoPE positions
    for parts, span, embed, cached in (
        ([scene_image, wide], "image0", pipe.alignment.embed_image_states, pipe.embed_images([scene_image, wide])),
        (["a red circle", "two blue squares to the left of a small green triangle"], "text",
         pipe.alignment.embed_text_states, pipe.embed_texts(["a red circle",
                                                             "two blue squares to the left of a small green triangle"])),
    ):
        items = [SpanText("text", p) if isinstance(p, str) else p for p in parts]
        collated = pipe.format.collate([pipe.format.encode([Message("user", [item])]) for item in items], "right")
        with torch.inference_mode():
            states = pipe.llm.model(**pipe._to_device(collated["inputs"])).last_hidden_state
            full = embed(*gather_spans(states, [s[span] for s in collated["spans"]])).numpy()
        assert np.allclose(cached, full, atol=1e-5)


def test_info(tiny_pipeline):
    info = tiny_pipeline.info()
    assert info["device"] == "cpu" and info["dtype"]["llm"] == "float32"
    assert info["parameters"]["total"] == sum(v for k, v in info["parameters"].items() if k != "total")
    assert info["memory"]["process_rss_mb"] > 0 and info["model_id"] == "omnibridge-quick"


def test_parse_answer_reads_the_models_routing(tiny_pipeline):
    assert tiny_pipeline.parse_answer("<img>two red circles</img>").kind == "draw"
    edit = tiny_pipeline.parse_answer("<edit>a blue circle</edit>")
    assert edit.kind == "edit" and edit.caption == "a blue circle"
    assert tiny_pipeline.parse_answer("two").kind == "text"


def test_a_model_that_shows_its_work_is_scored_and_shown_on_its_answer(tiny_pipeline, scene_image, monkeypatch):
    from omnibridge.ui.chat import to_display, to_model_messages

    written = "red circle (5, 2), blue square (1, 6)\nleft"
    assert tiny_pipeline.parse_answer(written).text == written  # a model without answer_after: all answer
    monkeypatch.setattr(tiny_pipeline.config, "prompts", replace(tiny_pipeline.config.prompts, answer_after="\n"))
    answer = tiny_pipeline.parse_answer(written)
    assert (answer.kind, answer.text, answer.working) == ("text", "left", "red circle (5, 2), blue square (1, 6)")
    assert tiny_pipeline.parse_answer("two").working == "" and tiny_pipeline.parse_answer("two").text == "two"
    monkeypatch.setattr(tiny_pipeline, "_generate_after", lambda prompts, *args: [written, "three"])
    assert tiny_pipeline.answer_batch([scene_image] * 2, ["Where is it?", "How many?"]) == ["left", "three"]
    shown = to_display(answer, "\n")  # the chat shows the working, and hands the model back what it wrote
    assert shown == written
    assert to_model_messages([{"role": "assistant", "content": shown}]) == [
        {"role": "assistant", "content": [{"type": "text", "text": written}]}]


def test_chat_turn_routes_by_mode(tiny_pipeline, scene_image):
    messages = [{"role": "user", "content": "draw two red circles"}]
    events = list(tiny_pipeline.stream_chat_turn(messages, mode="draw", max_new_tokens=6, num_inference_steps=2,
                                                 seed=1))
    final = events[-1]
    assert final.done and final.answer.kind == "draw" and final.result is not None
    assert final.result.images[0].size == (64, 64)
    answer = list(tiny_pipeline.stream_chat_turn(messages, mode="answer", max_new_tokens=4))[-1]
    assert answer.done and answer.answer.kind == "text" and answer.result is None
    with_image = [{"role": "user", "content": [{"type": "image", "image": scene_image}, "make the circle blue"]}]
    edited = list(tiny_pipeline.stream_chat_turn(with_image, mode="draw", max_new_tokens=6, num_inference_steps=2))
    assert edited[-1].answer.kind in ("draw", "edit") and edited[-1].result is not None
    with pytest.raises(InvalidInputError):
        list(tiny_pipeline.stream_chat_turn(messages, mode="sing"))


def test_the_vision_probe_separates_what_is_encoded_and_only_that(tiny_pipeline):
    import random

    from omnibridge.evaluation.vision_probe import image_features, linear_probe_accuracy, probe_objects
    from omnibridge.shapes.world import sample_scene

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=generator)
    encoded = (x[:, 3] > 0).long()  # a feature the labels are a function of
    unrelated = torch.randint(0, 2, (400,), generator=generator)
    assert linear_probe_accuracy(x[:300], encoded[:300], x[300:], encoded[300:], 2) >= 0.95
    assert linear_probe_accuracy(x[:300], unrelated[:300], x[300:], unrelated[300:], 2) <= 0.7

    features = image_features(tiny_pipeline, [sample_scene(random.Random(i), 1) for i in range(5)], batch_size=2)
    assert {name: tuple(f.shape[:1]) for name, f in features.items()} == {
        "vision_tower": (5,), "llm_last_layer": (5,), "vision_tower_object_token": (5,), "llm_last_layer_object_token": (5,)}
    report = probe_objects(tiny_pipeline, train=12, test=6)
    assert set(report["vision_tower_object_token"]) == {"shape", "colour", "row", "column"}
    assert all(0.0 <= accuracy <= 1.0 for accuracy in report["llm_last_layer"].values())
    assert all(1 / 6 <= share <= 1.0 for share in report["chance"].values())  # the most common of 6 test labels


def test_the_vision_probe_puts_an_object_in_the_grid_cell_of_its_centre():
    from types import SimpleNamespace

    from omnibridge.evaluation.vision_probe import ATTRIBUTES

    row, column = ATTRIBUTES["row"][0], ATTRIBUTES["column"][0]
    top_left, bottom_right = SimpleNamespace(cx=10.0, cy=15.9), SimpleNamespace(cx=63.5, cy=48.0)
    assert (row(top_left), column(top_left)) == (0, 0)
    assert (row(bottom_right), column(bottom_right)) == (3, 3)


def test_alignment_fit_measures_against_the_slot_variance_and_restores_the_pipeline(tiny_pipeline):
    from omnibridge.evaluation.alignment_fit import noise_tolerance, text_to_image_fit

    fit = text_to_image_fit(tiny_pipeline, batches=1, batch_size=4)
    assert fit["mse"] > 0 and fit["t5_variance"] > 0
    assert fit["relative_mse"] == round(fit["mse"] / fit["t5_variance"], 4)
    method = tiny_pipeline._condition
    report = noise_tolerance(tiny_pipeline, mse=100.0, per_category=1)
    assert report["prompts"] == 6 and 0.0 <= report["decoder_alone_with_noise"] <= 1.0
    assert "_condition" not in vars(tiny_pipeline) and tiny_pipeline._condition == method


def test_hunyuandit_reads_the_t5_padding_positions(tiny_pipeline):
    """Why stage 2's loss covers padding: the decoder's attention pool reads T5 padding despite the mask."""
    from omnibridge.modeling.decoder import CaptionEncoding

    with torch.inference_mode():
        cond = tiny_pipeline.decoder.encode_captions(["a red circle"])
    padding = ~cond.mask_2[..., None].bool()
    assert padding.any()
    changed = CaptionEncoding(cond.embeds, cond.mask, torch.where(padding, cond.embeds_2 + 5.0, cond.embeds_2),
                              cond.mask_2)
    size = tiny_pipeline.config.generation.height
    same = [np.asarray(tiny_pipeline._decode(c, [0], 2, 2.0, size, size, None, None)[0][0], dtype=int)
            for c in (cond, cond, changed)]
    assert (same[0] == same[1]).all()
    assert np.abs(same[0] - same[2]).max() > 0


def test_guidance_cutoff_guides_only_the_first_share_of_the_steps(tiny_pipeline, monkeypatch):
    # A guided step runs the negative prompt's branch beside the caption's (batch 2B); after the
    # cutoff the caption's branch runs alone, which is where the time is saved.
    decoder = tiny_pipeline.decoder
    cond = tiny_pipeline._condition(["a red circle"])
    predict, batches = decoder.predict, []

    def counting(latents, *args, **kwargs):
        batches.append(latents.shape[0])
        return predict(latents, *args, **kwargs)

    monkeypatch.setattr(decoder, "predict", counting)

    def denoise(cutoff, guidance=3.0):
        batches.clear()
        latents = decoder.denoise(cond, [4], 64, 64, 5, guidance, guidance_cutoff=cutoff)
        return latents, list(batches)

    full, steps = denoise(1.0)
    assert steps == [2] * 5
    part, steps = denoise(0.4)
    assert steps == [2, 2, 1, 1, 1]
    none, steps = denoise(0.0)
    assert steps == [1] * 5
    assert torch.equal(none, denoise(1.0, guidance=1.0)[0])  # no guided step = no guidance at all
    assert not torch.allclose(part, full) and not torch.allclose(part, none)


def test_the_models_guidance_cutoff_is_used_and_recorded(tiny_pipeline, monkeypatch):
    settings = dict(rewrite=False, seed=2, num_inference_steps=3, guidance_scale=3.0)
    monkeypatch.setattr(tiny_pipeline.config.generation, "guidance_cutoff", 0.0)
    cut = tiny_pipeline.generate("a red circle", **settings)
    assert cut.parameters["guidance_cutoff"] == 0.0
    unguided = tiny_pipeline.generate("a red circle", **{**settings, "guidance_scale": 1.0})
    assert np.array_equal(np.asarray(cut.images[0]), np.asarray(unguided.images[0]))


def test_description_log_likelihoods_score_each_pair(tiny_pipeline):
    image = Image.new("RGB", (64, 64))
    scores = tiny_pipeline.description_log_likelihoods([image, image],
                                                       ["a red circle", "two blue squares and a green triangle"])
    assert scores.shape == (2,) and np.all(np.isfinite(scores)) and np.all(scores < 0)
    # the longer caption has more tokens to predict, each with probability below one
    assert scores[1] < scores[0]
    with pytest.raises(InvalidInputError, match="one caption per image"):
        tiny_pipeline.description_log_likelihoods([image], ["a red circle", "a blue square"])


def test_the_retrieval_logit_scale_is_read_without_a_warning(tiny_pipeline):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reading a trainable parameter as a float warned in the app's log
        scale = tiny_pipeline.retrieval_logit_scale
    assert scale > 1.0


def test_rerank_order_weighs_the_cosine_against_the_likelihood():
    from omnibridge.rerank import rerank_order

    # logits 5 - 10 = -5 against 4 - 1 = 3: the likelihood overturns a small cosine lead
    assert rerank_order([0.5, 0.4], [-10.0, -1.0], logit_scale=10.0, weight=1.0) == [1, 0]
    assert rerank_order([0.5, 0.4], [-10.0, -1.0], logit_scale=10.0, weight=0.0) == [0, 1]
