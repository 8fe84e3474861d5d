"""The `cai` command: `cai run`, one subcommand per stage (cai.registry, in order), and tools.

    cai run CONFIG [--from STAGE] [--until STAGE] [--force]   every stage, resumable
    cai STAGE CONFIG [--set KEY=VALUE ...] [--force]          one stage: critique, sft, sample,
                                                              label, pm, ppo, dpo, evaluate
    cai seeds CONFIG --seeds 0 1 2        the pipeline per seed; mean and worst seed per form
    cai report RUN_DIR                    <run_dir>/report.html
    cai evaluate-labeller CONFIG --data FILE | --toyworld N
    cai constitution validate FILE
    cai toyworld train | baseline | prompts    the offline toy world
    cai config keys                       every config key with its type, default and help
    cai config show CONFIG [--set ...]    the resolved config

Exit codes: 0 done, 2 bad input (the message says what to fix), 1 failure, 130 interrupted.
Expected failures print one line; CAI_DEBUG=1 prints the traceback too.
"""

from __future__ import annotations

import argparse
import sys

from cai.errors import InputError, handle

SET_HELP = "override a config key, e.g. --set critique.revisions=2 (repeatable)"


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="the run's YAML config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)


def _parser() -> argparse.ArgumentParser:
    from cai import registry

    parser = argparse.ArgumentParser(prog="cai", description="Constitutional AI end to end. Stages in the order they run:")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="every stage in order; finished stages are skipped, interrupted ones resumed")
    _config_args(p)
    p.add_argument("--from", dest="start", metavar="STAGE", help="start at this stage")
    p.add_argument("--until", metavar="STAGE", help="stop after this stage")
    p.add_argument("--force", action="store_true", help="discard the selected stages' earlier output and redo them (with --from: that stage and every later one)")

    for s in registry.STAGES:
        p = sub.add_parser(s.name, aliases=list(s.aliases), help=s.help, description=f"{s.help}. Reads {', '.join(s.reads)}; writes {', '.join(s.writes)}; starts from {s.starts_from}.")
        _config_args(p)
        p.add_argument("--force", action="store_true", help="discard this stage's earlier output and redo it")
        p.set_defaults(stage=s)

    p = sub.add_parser("seeds", help="the whole pipeline for several seeds: mean and worst seed per model and prompt form")
    _config_args(p)
    p.add_argument("--seeds", type=int, nargs="+", required=True, metavar="S", help="seeds to run, each in <run_dir>/seed-S")
    p.add_argument("--from", dest="start", metavar="STAGE", help="start each seed's run at this stage")
    p.add_argument("--until", metavar="STAGE", help="stop each seed's run after this stage")

    p = sub.add_parser("report", help="write <run_dir>/report.html: metrics, plots and examples in one offline page")
    p.add_argument("run_dir")

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
    csub.add_parser("keys", help="every config key with its type, default and help")
    s = csub.add_parser("show", help="print the resolved config")
    _config_args(s)

    p = sub.add_parser("toyworld", help="the toy world: train | baseline | prompts (see docs/toyworld.md)")
    p.add_argument("action", choices=["train", "baseline", "prompts"])
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the action (--help for them)")
    return parser


def run_command(args: argparse.Namespace) -> None:
    from cai.config import load_config

    if args.command == "run":
        from cai import pipeline

        pipeline.run(load_config(args.config, args.overrides), start=args.start, until=args.until, force=args.force)
    elif args.command == "seeds":
        from cai import seeds

        seeds.run(load_config(args.config, args.overrides), args.seeds, start=args.start, until=args.until)
    elif getattr(args, "stage", None) is not None:
        config = load_config(args.config, args.overrides)
        args.stage.run(config, force=args.force)
        if args.stage.name == "evaluate":
            import json

            from cai.rundir import RunDir
            from cai.scoreboard import table

            print(table(json.loads(RunDir(config.run_dir).evaluate_metrics.read_text())))
    elif args.command == "report":
        from cai import report

        print(f"report: {report.build(args.run_dir)}")
    elif args.command == "evaluate-labeller":
        config = load_config(args.config, args.overrides)
        if args.toyworld:
            from cai.toyworld.checks import toyworld_label_agreement

            result = toyworld_label_agreement(config, args.toyworld)
            print(f"{'pair type':28s} {'agreement':>10s} {'one order':>10s} {'position bias':>14s}")
            for kind, r in result.items():
                bias = "n/a" if r["position_bias"] is None else f"{r['position_bias']:.0%}"
                print(f"{kind:28s} {r['agreement']:>10.0%} {r['agreement_one_order']:>10.0%} {bias:>14s}")
        elif args.data:
            import json

            from cai.labeller import evaluate_labeller

            print(json.dumps(evaluate_labeller(config, args.data), indent=2))
        else:
            raise InputError("evaluate-labeller: give --data FILE or --toyworld N")
    elif args.command == "constitution":
        from cai.constitution import validate_file

        print(f"{args.file}: OK: {validate_file(args.file)}")
    elif args.command == "config" and args.action == "keys":
        from cai.config import config_help

        rows = config_help()
        w0, w1 = max(len(r[0]) for r in rows), min(34, max(len(r[1]) for r in rows))
        for key, kind, default, help_text in rows:
            print(f"{key:{w0}s}  {kind:{w1}s}  {default or '-':14s}  {help_text}")
    elif args.command == "config" and args.action == "show":
        from cai.yamlio import dump_yaml

        print(dump_yaml(load_config(args.config, args.overrides).model_dump(mode="json")), end="")
    elif args.command == "toyworld":
        from cai.toyworld import baseline, prompt_files, train

        code = {"train": train.main, "baseline": baseline.main, "prompts": prompt_files.main}[args.action](args.args)
        if code:
            raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    from cai.console import quiet_third_party

    args = _parser().parse_args(argv)
    quiet_third_party()
    try:
        run_command(args)
        sys.stdout.flush()  # a closed pipe shows up here when the output fit in the buffer
    except (Exception, KeyboardInterrupt) as e:
        return handle(e)  # one line for expected failures, a traceback for bugs (cai.errors)
    return 0


if __name__ == "__main__":
    sys.exit(main())
