"""`python -m omnibridge.train`: the built-in model's stages, each resumable, one command.

    python -m omnibridge.train --preset shapes --out assets/omnibridge-shapes            # everything
    python -m omnibridge.train --preset shapes --out assets/omnibridge-shapes --resume   # continue
    python -m omnibridge.train --preset shapes --stages decoder --decoder-minutes 60 --resume
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

STAGES = ("decoder", "llm", "vision", "align", "retrieval", "package")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m omnibridge.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="shapes", help="shapes (the built-in model) or quick (a micro model)")
    parser.add_argument("--out", required=True, help="where the finished model folder is written")
    parser.add_argument("--work-dir", help="training state and logs (default: <out>.train)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--resume", action="store_true", help="continue every stage from its last saved state")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the decoder stage is the one worth a GPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    parser.add_argument("--decoder-minutes", type=float,
                        help="DiT training minutes for this run (each --resume trains this much longer)")
    parser.add_argument("--decoder-steps", type=int,
                        help="train the DiT to this many steps instead (robust to a busy machine)")
    parser.add_argument("--decoder-cooldown-steps", type=int,
                        help="with --decoder-steps: the last N steps decay the DiT's learning rate linearly to zero")
    parser.add_argument("--dit-width", type=int,
                        help="the DiT's hidden size, a multiple of 64 (a bigger decoder: a new decoder run in its own "
                             "--work-dir; worth a GPU)")
    parser.add_argument("--dit-layers", type=int, help="the DiT's depth, even (as --dit-width)")
    parser.add_argument("--dit-batch", type=int, help="the DiT's batch (a GPU affords more than the preset's 32)")
    parser.add_argument("--dit-early-mix-steps", type=int, metavar="N",
                        help="the DiT's first N steps (of its work dir) draw the early mix, lone objects and relations "
                             "over-sampled (default: 800 for a new DiT, none for one trained on with --decoder-from)")
    parser.add_argument("--dit-lr", type=float,
                        help="the DiT's peak learning rate (preset: 5e-4), e.g. lower to go on at a smaller batch "
                             "than a run was trained with")
    parser.add_argument("--decoder-from", type=Path,
                        help="train the DiT on this trained decoder's VAE and text encoders, kept frozen (e.g. "
                             "assets/omnibridge-shapes/decoder): the model's alignment stays valid, so stages 2-3 "
                             "need not run again. Its DiT is trained on when --dit-width/--dit-layers match it, "
                             "else a new one starts; give it its own --work-dir and repeat it on every --resume")
    parser.add_argument("--data-workers", type=int,
                        help="processes that render the DiT's batches ahead (default: 4 on cuda, 0 on cpu)")
    parser.add_argument("--llm-steps", type=int, help="override stage 1's step count (resume to extend it)")
    parser.add_argument("--llm-lr", type=float, help="stage 1's peak learning rate (preset: 1e-3)")
    parser.add_argument("--llm-layers", type=int,
                        help="the language model's depth (preset: 4); stage 1 grows a shallower trained model to it, "
                             "each layer followed by a copy that starts as an identity (training/grow.py)")
    parser.add_argument("--answer-layers", type=int,
                        help="stack this many layers on the trained language model and train only them in stage 1; "
                             "the alignment and retrieval heads keep reading the frozen layers (training/grow.py)")
    parser.add_argument("--question-weight", action="append", default=[], metavar="TYPE=WEIGHT",
                        help="re-weight one of stage 1's question types (preset: relation=3, the others 1; "
                             "repeatable), e.g. relation=12 for a relation-heavy phase warm from a trained model")
    parser.add_argument("--vqa-share", type=float,
                        help="single-question VQA's share of stage 1's conversations (preset: 0.46); 1 with a large "
                             "relation --question-weight drills relations alone, a phase to follow with the full mix")
    parser.add_argument("--answer-weighting", choices=("token", "conversation"),
                        help="stage 1's loss: the mean over all answer tokens (preset) or over conversations, each "
                             "answer averaged first (a one-word answer then weighs as much as a caption)")
    parser.add_argument("--show-work", nargs="?", const="relation", metavar="TYPES",
                        help="train these question types' answers (comma-separated, of relation,describe; alone: "
                             "relation) to show their work: the objects' positions in eighths, then the answer on "
                             "its own line (shapes/qa.py); the model then answers that way")
    parser.add_argument("--attend-weight", type=float,
                        help="teach the first answer layer's heads to attend to the image tokens of the objects a "
                             "question names, with this weight on that loss (stage 1; preset 0: not taught)")
    parser.add_argument("--attend-at", choices=("answer", "name"),
                        help="with --attend-weight: teach the heads at the answer positions (head i finds the i-th "
                             "named object; the preset's) or at the last token of each object's name in the "
                             "question (head 0)")
    parser.add_argument("--rope-theta", type=float,
                        help="the language model's rotary base (preset: 10); stage 1 sets it on a model "
                             "trained with another, and re-teaches positions")
    parser.add_argument("--text-before-images", action="store_true", default=None,
                        help="train stage 1 with each turn's text before its images (PromptConfig."
                             "text_before_images; tried in the ninth session, and on the answer layers in the "
                             "twenty-fourth: colour answers fell, relations did not rise)")
    parser.add_argument("--vision-steps", type=int, help="override stage 1b's step count")
    parser.add_argument("--align-steps", type=int, help="override stage 2's step count")
    parser.add_argument("--align-all-queries-share", type=float,
                        help="share of stage 2 spent with every position a learned query (official: 0.15)")
    parser.add_argument("--fresh-align", action="store_true",
                        help="start stage 2 from a fresh projector and BiLM (after training a newer decoder)")
    parser.add_argument("--retrieval-steps", type=int, help="override stage 3's step count")
    parser.add_argument("--retrieval-batch", type=int, help="override stage 3's batch (captions; half as many images)")
    parser.add_argument("--retrieval-pool", type=int, help="scenes whose frozen-LLM states stage 3 samples from")
    parser.add_argument("--partial-share", type=float,
                        help="share of stage 3's scenes that also bring a short query (0: whole descriptions only)")
    parser.add_argument("--vision-patch", type=int, choices=(4, 8),
                        help="the LLM's vision patch in pixels (a new stage-1 run; give it its own --work-dir)")
    args = parser.parse_args(argv)
    if args.decoder_cooldown_steps and not args.decoder_steps:
        parser.error("--decoder-cooldown-steps needs --decoder-steps (the step its decay ends at)")
    if args.dit_width and args.dit_width % 64:
        parser.error("--dit-width must be a multiple of 64 (whole attention heads with room for 2-D rotary positions)")
    if args.dit_layers and args.dit_layers % 2:
        parser.error("--dit-layers must be even (HunyuanDiT joins the first half's outputs to the second half)")
    if args.decoder_from and not (args.decoder_from / "model_index.json").exists():
        parser.error(f"--decoder-from {args.decoder_from}: no trained decoder there (no model_index.json)")
    unknown = set(args.stages.split(",")) - set(STAGES)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; choose from {','.join(STAGES)}")
    args.question_weight = _question_weights(parser, args.question_weight) if args.question_weight else None
    if args.show_work is not None:
        args.show_work = _working_types(parser, args.show_work)
    return args


def _working_types(parser: argparse.ArgumentParser, types: str) -> tuple[str, ...]:
    from ..shapes.qa import WORKING_TYPES

    chosen = tuple(t.strip() for t in types.split(",") if t.strip())
    if not chosen or set(chosen) - set(WORKING_TYPES):
        parser.error(f"--show-work {types}: comma-separated types of {','.join(WORKING_TYPES)}")
    return chosen


def _question_weights(parser: argparse.ArgumentParser, pairs: list[str]) -> dict[str, float]:
    from .llm_data import QUESTION_MIX

    weights = {}
    for pair in pairs:
        qtype, _, weight = pair.partition("=")
        try:
            weights[qtype] = float(weight)
        except ValueError:
            parser.error(f"--question-weight {pair}: write TYPE=WEIGHT, e.g. relation=12")
        if qtype not in QUESTION_MIX or weights[qtype] < 0:
            parser.error(f"--question-weight {pair}: a weight >= 0 for one of {', '.join(QUESTION_MIX)}")
    return weights


def preset_for(args: argparse.Namespace):
    """The named preset with every option the command line gave set on it."""
    from .presets import get_preset

    preset = get_preset(args.preset)
    overrides = ((args.decoder_steps, preset.decoder, "dit_steps"),
                 (args.decoder_cooldown_steps, preset.decoder, "dit_cooldown_steps"),
                 (args.dit_width, preset.decoder, "hidden_size"), (args.dit_layers, preset.decoder, "num_layers"),
                 (args.dit_batch, preset.decoder, "dit_batch"), (args.dit_lr, preset.decoder, "dit_lr"),
                 (args.dit_early_mix_steps, preset.decoder, "dit_early_mix_steps"),
                 (args.llm_steps, preset.llm, "steps"), (args.llm_lr, preset.llm, "lr"),
                 (args.llm_layers, preset.llm, "num_layers"), (args.answer_layers, preset.llm, "answer_layers"),
                 (args.question_weight, preset.llm, "question_weights"),
                 (args.answer_weighting, preset.llm, "answer_weighting"), (args.vqa_share, preset.llm, "vqa_share"),
                 (args.show_work, preset.llm, "show_work"), (args.attend_weight, preset.llm, "attend_weight"),
                 (args.attend_at, preset.llm, "attend_at"),
                 (args.rope_theta, preset.llm, "rope_theta"),
                 (args.text_before_images, preset.llm, "text_before_images"),
                 (args.vision_patch, preset.llm, "patch_size"),
                 (args.vision_steps, preset.llm, "vision_steps"),
                 (args.align_steps, preset.align, "stage2_steps"), (args.retrieval_steps, preset.align, "stage3_steps"),
                 (args.retrieval_batch, preset.align, "stage3_batch"),
                 (args.retrieval_pool, preset.align, "stage3_pool_scenes"),
                 (args.align_all_queries_share, preset.align, "all_queries_share"),
                 (args.partial_share, preset.align, "stage3_partial_share"))
    for value, owner, name in overrides:
        if value is not None:  # an option not given is None; 0 is a value worth giving (--vqa-share 0)
            setattr(owner, name, value)
    return preset


def main(argv: list[str] | None = None) -> dict:
    from .stages import DecoderRunOptions, record_command, run_stages

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = preset_for(args)
    out = Path(args.out)
    work_dir = Path(args.work_dir) if args.work_dir else out.with_name(out.name + ".train")
    work_dir.mkdir(parents=True, exist_ok=True)
    record_command(work_dir, sys.argv[1:] if argv is None else argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 tensor cores, as diffusers' --allow_tf32
    workers = args.data_workers if args.data_workers is not None else (4 if device.type == "cuda" else 0)
    decoder_options = DecoderRunOptions(args.decoder_minutes, args.decoder_from, workers)
    started = time.monotonic()
    report = run_stages(preset, out, work_dir, args.stages.split(","), resume=args.resume, seed=args.seed,
                        device=device, decoder_options=decoder_options, fresh_align=args.fresh_align)
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    (work_dir / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report
