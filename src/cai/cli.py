"""The `cai` command: one subcommand per stage.

    cai run CONFIG [--from STAGE] [--until STAGE]    all stages, resumable
    cai critique CONFIG [--set KEY=VALUE ...] [--force]
    cai sft CONFIG                        fine-tune on the revisions (+ helpful data)
    cai sample CONFIG                     k responses per prompt, paired
    cai label CONFIG                      AI preference labels for the pairs
    cai train-pm CONFIG                   preference model on the soft labels
    cai ppo CONFIG | cai dpo CONFIG       RL-CAI
    cai evaluate CONFIG                   harmful / helpful / evasive rates, win rates
    cai report RUN_DIR                    <run_dir>/report.html
    cai evaluate-labeller CONFIG --data FILE
    cai constitution validate FILE
    cai toyworld train | baseline | prompts    the offline toy world
    cai config keys                       every config key with its help text
    cai config show CONFIG [--set ...]    the resolved config

Exit codes: 0 done, 2 bad input (the message says what to fix), 1 failure.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from cai.errors import InputError, handle


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="the run's YAML config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. --set critique.revisions=2 (repeatable)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cai", description="Constitutional AI end to end.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="every stage in order; finished stages are skipped, interrupted ones resumed")
    _config_args(p)
    p.add_argument("--from", dest="start", metavar="STAGE", help="start at this stage")
    p.add_argument("--until", metavar="STAGE", help="stop after this stage")
    p.add_argument("--force", action="store_true", help="discard the selected stages' earlier output and redo them (with --from: that stage and every later one)")

    p = sub.add_parser("toyworld", help="the toy world: train | baseline | prompts (see docs/toyworld.md)")
    p.add_argument("action", choices=["train", "baseline", "prompts"])
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the action (--help for them)")

    p = sub.add_parser("critique", help="SL-CAI: answer red-team prompts, critique and revise the answers")
    _config_args(p)
    p.add_argument("--force", action="store_true", help="discard this stage's earlier output and redo it")

    for name, text in (
        ("sft", "SL-CAI: fine-tune on the final revisions mixed with helpful data"),
        ("train-pm", "RL-CAI: train a preference model on the soft AI labels"),
        ("ppo", "RL-CAI: PPO against the preference model, KL-penalised to the SFT model"),
        ("dpo", "RL-CAI alternative: DPO on the labelled pairs"),
        ("evaluate", "harmful / helpful / evasive rates and win rates of every model the run made"),
    ):
        p = sub.add_parser(name, help=text)
        _config_args(p)
        p.add_argument("--force", action="store_true", help="discard this stage's earlier output and redo it")

    p = sub.add_parser("report", help="write <run_dir>/report.html: metrics, plots and examples in one offline page")
    p.add_argument("run_dir")

    p = sub.add_parser("sample", help="RL-CAI: sample k responses per prompt from the policy and pair them")
    _config_args(p)
    p.add_argument("--force", action="store_true", help="discard this stage's earlier output and redo it")

    p = sub.add_parser("label", help="RL-CAI: label response pairs with the feedback model under the constitution")
    _config_args(p)
    p.add_argument("--force", action="store_true", help="discard this stage's earlier output and redo it")

    p = sub.add_parser("evaluate-labeller", help="accuracy of the feedback model on a multiple-choice set (CAI paper format)")
    _config_args(p)
    p.add_argument("--data", help="JSON list or JSONL of {prompt, corrects, incorrects} (the CAI paper's format)")
    p.add_argument("--toyworld", type=int, metavar="N", help="instead: agreement with the toy world's oracle on N pairs per pair type")

    p = sub.add_parser("constitution", help="work with constitution files")
    csub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    v = csub.add_parser("validate", help="load a constitution (cai YAML, llm-swarm JSON, CAI paper JSON) and count what it holds")
    v.add_argument("file")

    p = sub.add_parser("config", help="inspect configs")
    csub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    csub.add_parser("keys", help="every config key with its help text")
    s = csub.add_parser("show", help="print the resolved config")
    _config_args(s)
    return parser


MODULES = {"train-pm": "pm"}  # CLI name -> module under cai.stages, where they differ


def run_command(args: argparse.Namespace) -> None:
    if args.command == "run":
        from cai import pipeline
        from cai.config import load_config

        pipeline.run(load_config(args.config, args.overrides), start=args.start, until=args.until, force=args.force)
    elif args.command == "toyworld":
        import importlib

        module = {"train": "train", "baseline": "baseline", "prompts": "prompt_files"}[args.action]
        code = importlib.import_module(f"cai.toyworld.{module}").main(args.args)
        if code:
            raise SystemExit(code)
    elif args.command in ("critique", "sft", "sample", "label", "train-pm", "ppo", "dpo", "evaluate"):
        import importlib

        from cai.config import load_config

        stage = importlib.import_module(f"cai.stages.{MODULES.get(args.command, args.command)}")
        stage.run(load_config(args.config, args.overrides), force=args.force)
    elif args.command == "report":
        from cai import report

        print(f"report: {report.build(args.run_dir)}")
    elif args.command == "evaluate-labeller":
        import json

        from cai.config import load_config
        from cai.stages.label import evaluate_labeller

        config = load_config(args.config, args.overrides)
        if args.toyworld:
            from cai.stages.evaluate import toyworld_label_agreement

            result = toyworld_label_agreement(config, args.toyworld)
            print(f"{'pair type':28s} {'agreement':>10s} {'one order':>10s} {'position bias':>14s}")
            for kind, r in result.items():
                bias = "n/a" if r["position_bias"] is None else f"{r['position_bias']:.0%}"
                print(f"{kind:28s} {r['agreement']:>10.0%} {r['agreement_one_order']:>10.0%} {bias:>14s}")
        elif args.data:
            print(json.dumps(evaluate_labeller(config, args.data), indent=2))
        else:
            raise InputError("evaluate-labeller: give --data FILE or --toyworld N")
    elif args.command == "constitution":
        from cai.constitution import validate_file

        print(f"{args.file}: OK: {validate_file(args.file)}")
    elif args.command == "config" and args.action == "keys":
        from cai.config import config_help

        for key, help_text in config_help():
            print(f"{key:32s} {help_text}")
    elif args.command == "config" and args.action == "show":
        from cai.config import load_config

        print(yaml.safe_dump(load_config(args.config, args.overrides).model_dump(mode="json"), sort_keys=False), end="")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        run_command(args)
        sys.stdout.flush()  # a closed pipe shows up here when the output fit in the buffer
    except (Exception, KeyboardInterrupt) as e:
        return handle(e)  # one line for expected failures, a traceback for bugs (cai.errors)
    return 0


if __name__ == "__main__":
    sys.exit(main())
