"""Distil the shipped DiT into a few-step student (omnibridge/training/distill_stage.py) and save it where
scripts/swap_dit.py looks for a new DiT (`<work-dir>/decoder/transformer`).

    PYTHONPATH=. HF_HUB_OFFLINE=1 python scripts/distill_dit.py --work-dir runs/distill --minutes 60
    PYTHONPATH=. HF_HUB_OFFLINE=1 python scripts/distill_dit.py --work-dir runs/distill --minutes 30 --resume
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from diffusers import HunyuanDiT2DModel

from omnibridge.evaluation.generation import VALIDATION_SEED, evaluate_generation, generation_cases
from omnibridge.modeling.decoder import HunyuanDecoder
from omnibridge.training.decoder_stage import decoder_alone_generator, decoder_with
from omnibridge.training.distill_stage import DistillConfig, distill_dit, student_timesteps
from omnibridge.training.stages import decoder_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("assets/omnibridge-shapes"))
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--device", default="cpu", help="cuda: train on a GPU (the student comes back to the CPU)")
    for field in fields(DistillConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    parser.add_argument("--report", action="store_true",
                        help="instead of training: the validation check of the teacher at the sampling its targets "
                             "stand for and at the model's default, and of the trained student at its own steps")
    args = parser.parse_args()
    config = DistillConfig(**{field.name: getattr(args, field.name) for field in fields(DistillConfig)})

    teacher = HunyuanDecoder.from_pretrained(args.model / "decoder", device=args.device)
    if args.report:
        print(json.dumps(report(teacher, args.model, args.work_dir, config), indent=2))
        return
    student, summary = distill_dit(teacher, config, args.work_dir, args.seed, args.resume)
    out = decoder_dir(args.work_dir) / "transformer"
    student.cpu().save_pretrained(out)
    (args.work_dir / "distill" / "config.json").write_text(json.dumps(vars(config), indent=2))
    print(json.dumps({**summary, "student": str(out)}))


def report(teacher: HunyuanDecoder, model: Path, work_dir: Path, config: DistillConfig) -> dict:
    """Decoder alone, the 150 validation prompts the stage checks on: where the student stands between what its
    targets stand for (the teacher at DDIM with k*N steps, guided where the targets were) and where it began."""
    defaults = json.loads((model / "omnibridge_config.json").read_text())["generation"]
    cases = generation_cases(config.eval_prompts_per_category, seed=VALIDATION_SEED)
    teacher_steps = config.student_steps * config.teacher_substeps
    grid = student_timesteps(teacher_steps)  # the sub-steps: the k*N-step DDIM grid, to a timestep or so
    guided_share = sum(t >= config.guided_from for t in grid[:-1]) / teacher_steps

    def scores(decoder, sampler, steps, guidance, cutoff=1.0):
        result = evaluate_generation(decoder_alone_generator(decoder, guidance, steps, sampler, cutoff), cases)
        return {k: result[k] for k in ("overall", "single_object", "two_object", "counting", "colors", "position",
                                       "color_attr")}

    student = decoder_with(teacher, transformer=HunyuanDiT2DModel.from_pretrained(
        decoder_dir(work_dir), subfolder="transformer").to(teacher.device).eval())
    return {
        "teacher_at_the_targets_sampling": {"sampler": f"ddim @{teacher_steps}", "guided_share": guided_share,
                                            **scores(teacher, "ddim", teacher_steps, config.guidance_scale,
                                                     guided_share)},
        "teacher_at_the_default": {"sampler": f"{defaults['sampler']} @{defaults['num_inference_steps']}",
                                   **scores(teacher, defaults["sampler"], defaults["num_inference_steps"],
                                            defaults["guidance_scale"], defaults["guidance_cutoff"])},
        "teacher_at_the_students_steps": {"sampler": f"ddim @{config.student_steps}, unguided",
                                          **scores(teacher, "ddim", config.student_steps, 1.0)},
        "student": {"sampler": f"ddim @{config.student_steps}, unguided",
                    **scores(student, "ddim", config.student_steps, 1.0)},
    }


if __name__ == "__main__":
    main()
