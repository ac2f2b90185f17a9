"""``python -m diffprune <verb>`` (also installed as the ``diffprune`` command).

Verbs (docs/ARCHITECTURE.md, "Runner CLI"):
  train     --config CFG --task T --method-key K --seed S --out DIR [--from RUN_DIR] [--set key=value ...]
  prune     --config CFG --task T --method-key K --seed S --rate R --from SRC_DIR --out DIR [--set ...]
  evaluate  --artifact RUN --config CFG --task T --out FILE.json [--model-key M] [--set ...]
            (RUN: any run directory, its artifact.json, or a diff.safetensors; --diff is the same flag)

Sharing and serving tasks (diffprune.pretrained, diffprune.serve, diffprune.diffsize):
  export           --diff FILE --out DIR [--task T] [--values-dtype fp32|bf16|fp16]   (save_pretrained)
  evaluate-folder  --folder DIR --config CFG --task T --out FILE.json [--set ...]     (from_pretrained)
  merge            --folder DIR --config CFG --out DIR        (a plain Hugging Face model folder)
  serve            --config CFG --runs DIR --out FILE.json [...]   (python -m diffprune.serve)
  report           FILE... [--json]                           (python -m diffprune.diffsize report)
  convert          OLD NEW [--values-dtype ...]               (python -m diffprune.diffsize convert)

Mistakes in the arguments or the config (unknown task / method key, a rate outside
(0, 100], a missing data folder or source run) are reported in one line with exit code 2
before any model loads. Failures while running keep their traceback (exit code 1), except a
full disk ("no space left on the device holding <path>"), a run directory the run may not
touch, and an artifact that does not fit the base model it is evaluated on, which are one
line (exit code 1).
"""
from __future__ import annotations

import argparse
import errno
import sys

from diffprune import evaluation, run_plan, runner, settings
from diffprune.lean_imports import hide_unused_packages_from_transformers

USAGE_ERROR = 2
RUN_ERROR = 1


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML run configuration (config/*.yaml)")
    parser.add_argument("--task", required=True, help="task name: " + " ".join(settings.TASK_NAMES))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training setting (highest priority; value parsed as YAML); repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diffprune", description="Diff pruning benchmark runner.")
    verbs = parser.add_subparsers(dest="verb", required=True,
                                  metavar="{train,prune,evaluate,export,evaluate-folder,merge,methods,serve,report,convert}")

    train = verbs.add_parser("train", help="train one method entry of the config on one task and seed")
    _add_common(train)
    train.add_argument("--method-key", required=True, help="key under `methods:` in the config")
    train.add_argument("--seed", required=True, type=int)
    train.add_argument("--out", required=True, help="run directory to create")
    train.add_argument("--from", dest="needed", default=None,
                       help="the finished run a method reads before training (critical_layers: the "
                            "full_finetuning run of the same task and seed, for its layer ranking)")

    prune = verbs.add_parser("prune", help="project a dense diff to a rate and finetune with the mask fixed")
    _add_common(prune)
    prune.add_argument("--method-key", required=True, help="key of a projected method under `methods:`")
    prune.add_argument("--seed", required=True, type=int)
    prune.add_argument("--rate", required=True, type=float, help="percent of diffed parameters kept, in (0, 100]")
    prune.add_argument("--from", dest="source", required=True, help="the finished train run holding dense_diff.safetensors")
    prune.add_argument("--out", required=True, help="run directory to create")

    evaluate = verbs.add_parser("evaluate", help="evaluate any run's stored task model, rebuilt on the shared base")
    _add_common(evaluate)
    evaluate.add_argument("--artifact", "--diff", dest="artifact", required=True,
                          help="a run directory (any method), its artifact.json, or a diff.safetensors")
    evaluate.add_argument("--model-key", default=None, help="model under `models:` (default: the config's `model`)")
    evaluate.add_argument("--out", required=True, help="JSON file to write")

    export = verbs.add_parser("export", help="save_pretrained: a stored diff as a shareable task folder")
    export.add_argument("--diff", required=True, help="diff.safetensors written by a prune run")
    export.add_argument("--out", required=True, help="folder to create (diff.safetensors + diffprune_config.json)")
    export.add_argument("--task", default=None, help="the diff's task (default: from its header)")
    export.add_argument("--values-dtype", default="fp32", help="fp32 (default, as trained), bf16 or fp16")

    folder = verbs.add_parser("evaluate-folder", help="from_pretrained: a task folder on the config's base, dev scores")
    _add_common(folder)
    folder.add_argument("--folder", required=True, help="folder written by export / save_pretrained")
    folder.add_argument("--out", required=True, help="JSON file to write")

    merge = verbs.add_parser("merge", help="base + a task folder as a plain Hugging Face model folder")
    merge.add_argument("--folder", required=True, help="folder written by export / save_pretrained")
    merge.add_argument("--config", required=True, help="YAML run configuration naming the base model")
    merge.add_argument("--out", required=True, help="model folder to create")
    verbs.add_parser("methods", help="every registered method and its options (from each method's Options)")
    for name, what in FORWARDED_VERBS.items():  # listed here; their arguments are their modules' own
        verbs.add_parser(name, help=what)
    return parser


FORWARDED_VERBS = {"serve": "switch latency, memory and disk of N tasks on one base (python -m diffprune.serve)",
                   "report": "bytes of diff files against their information limit (python -m diffprune.diffsize)",
                   "convert": "rewrite a diff file as version 3 (python -m diffprune.diffsize)"}


def run_forwarded_verb(verb: str, rest: list[str]) -> int:
    if verb == "serve":
        from diffprune import serve

        return serve.main(rest)
    from diffprune import diffsize

    return diffsize.main([verb, *rest])


def list_methods() -> str:
    """The method reference, generated from the registry and each method's ``Options``."""
    from diffprune.method_options import render_method_docs
    from diffprune.registry import METHODS, method_class

    return render_method_docs({name: method_class(name) for name in METHODS})


def run_sharing_verb(args: argparse.Namespace) -> int:
    """The verbs of diffprune.pretrained: export, evaluate-folder, merge."""
    from diffprune import pretrained

    try:
        if args.verb == "export":
            out = pretrained.save_pretrained(args.diff, args.out, task=args.task, values_dtype=args.values_dtype)
            print(f"wrote {out}")
        elif args.verb == "evaluate-folder":
            result = pretrained.evaluate_folder(args.folder, args.config, args.task, args.out,
                                                settings.parse_overrides(args.overrides))
            print(f"{args.out}: scores {result['scores']}")
        else:
            from diffprune.models import _checkpoint_location

            base_location, _ = _checkpoint_location(settings.model_spec(settings.load_config(args.config)))
            print(f"wrote {pretrained.merge(base_location, args.folder, args.out)}")
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"diffprune {args.verb}: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    return 0


def _is_artifact_error(error: ValueError) -> bool:
    from diffprune.artifact import ArtifactError
    from diffprune.storage import BaseModelMismatch, DiffFileError, TaskMismatch

    return isinstance(error, (ArtifactError, BaseModelMismatch, DiffFileError, TaskMismatch))


def make_plan(args: argparse.Namespace):
    overrides = settings.parse_overrides(args.overrides)
    if args.verb == "train":
        return run_plan.plan_train(args.config, args.task, args.method_key, args.seed, args.out, overrides,
                                   needed_dir=args.needed)
    if args.verb == "prune":
        return run_plan.plan_prune(args.config, args.task, args.method_key, args.seed, args.rate,
                                   args.source, args.out, overrides)
    return run_plan.plan_evaluate(args.artifact, args.config, args.task, args.out, args.model_key, overrides)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in FORWARDED_VERBS:
        return run_forwarded_verb(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    if args.verb == "methods":
        print(list_methods())
        return 0
    if args.verb not in ("train", "prune", "evaluate"):
        return run_sharing_verb(args)
    hide_unused_packages_from_transformers()
    try:
        plan = make_plan(args)
    except (ValueError, FileNotFoundError, TypeError) as error:
        print(f"diffprune {args.verb}: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    try:
        if args.verb == "evaluate":
            evaluation.execute_evaluate(plan)
        else:
            runner.execute(plan)
    except ValueError as error:
        # An artifact that does not fit the base model loaded for it (or changed since planning):
        # one line naming the fix; any other error keeps its traceback.
        if args.verb != "evaluate" or not _is_artifact_error(error):
            raise
        print(f"diffprune evaluate: error: {error}", file=sys.stderr)
        return RUN_ERROR
    except OSError as error:
        # A full disk or a run directory this run may not touch: one line that names the path
        # and the fix (the traceback of a full disk only says where the write happened).
        if error.errno != errno.ENOSPC and not isinstance(error, FileExistsError):
            raise
        cause = error.__cause__
        print(f"diffprune {args.verb}: error: {error.strerror or error}"
              + (f" (the write failed with: {type(cause).__name__}: {cause})" if cause is not None else ""),
              file=sys.stderr)
        return RUN_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
