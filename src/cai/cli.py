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
    cai launch --nproc N STAGE CONFIG [--set ...] [--force]
                                          a training stage (sft, pm, ppo, dpo) data-parallel on N
                                          processes of this machine (torchrun, standalone)

Exit codes: 0 done, 2 bad input (the message says what to fix), 1 failure, 130 interrupted.
Expected failures print one line; CAI_DEBUG=1 prints the traceback too.

Launched as one of several processes (`cai launch`, torchrun, accelerate launch), `cai STAGE` joins
the others (cai.distributed) for the training stages and refuses every other command: generation
runs in one process, faster through several model servers (docs/scale.md).
"""

from __future__ import annotations

import argparse
import os
import sys

from cai.errors import EXIT_INTERRUPTED, InputError, handle

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
    p.add_argument(
        "--force", action="store_true", help="discard the selected stages' earlier output and redo them (with --from: that stage and every later one)"
    )

    for s in registry.STAGES:
        p = sub.add_parser(
            s.name,
            aliases=list(s.aliases),
            help=s.help,
            description=f"{s.help}. Reads {', '.join(s.reads)}; writes {', '.join(s.writes)}; starts from {s.starts_from}.",
        )
        _config_args(p)
        p.add_argument("--force", action="store_true", help="discard this stage's earlier output and redo it")
        p.set_defaults(stage=s)

    p = sub.add_parser("seeds", help="the whole pipeline for several seeds: mean and worst seed per model and prompt form")
    _config_args(p)
    p.add_argument("--seeds", type=int, nargs="+", required=True, metavar="S", help="seeds to run, each in <run_dir>/seed-S")
    p.add_argument("--from", dest="start", metavar="STAGE", help="start each seed's run at this stage")
    p.add_argument("--until", metavar="STAGE", help="stop each seed's run after this stage")

    p = sub.add_parser(
        "launch",
        help="run a training stage (sft, pm, ppo, dpo) data-parallel on N processes of this machine",
        description="Run a training stage data-parallel on N processes of this machine: a thin wrapper over "
        "`python -m torch.distributed.run --standalone --nproc-per-node N -m cai.cli STAGE CONFIG ...`. "
        "The global batch is the config's (batch_size x grad_accum), whatever N; see docs/scale.md.",
    )
    p.add_argument(
        "--nproc", type=int, required=True, metavar="N", help="processes: one per GPU; on a CPU, a few (each uses OMP_NUM_THREADS threads, 1 unless set)"
    )
    p.add_argument("stage_name", metavar="STAGE", help=f"one of {', '.join(registry.DATA_PARALLEL)}")
    _config_args(p)
    p.add_argument("--force", action="store_true", help="discard this stage's earlier output and redo it")

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


def one_process_only(command: str) -> str:
    """Why `command` does not run on several processes, and what to do instead."""
    from cai.registry import DATA_PARALLEL

    parallel = ", ".join(DATA_PARALLEL)
    if command == "run":
        return (
            "cai run mixes generation stages, which run in one process, with training stages: run the stages one by one, "
            f"`cai launch --nproc N STAGE CONFIG` for {parallel} and `cai STAGE CONFIG` for the others (docs/scale.md)"
        )
    if command in ("redteam", "critique", "sample", "label", "evaluate", "seeds"):
        return (
            f"{command} generates text and runs in one process: only {parallel} run on several processes. To generate "
            "faster, serve the model on several OpenAI-compatible servers (vLLM, SGLang, ...) and list them in the model "
            "spec, `base_url: [http://host1:8000/v1, http://host2:8000/v1]`, then run `cai " + command + " CONFIG` "
            "in one process (docs/scale.md)"
        )
    return f"{command} runs in one process: only {parallel} run on several processes (cai launch --nproc N STAGE CONFIG)"


def preflight(args: argparse.Namespace) -> None:
    """Refuse, before anything starts, what cannot run on the processes this one was launched with."""
    from cai import distributed

    problem = distributed.single_process_launch_problem()
    if distributed.world_size() == 1 and problem is None:
        return
    stage = getattr(args, "stage", None)
    if stage is None or not stage.data_parallel:
        raise InputError(one_process_only(stage.name if stage is not None else args.command))
    if problem is not None:
        raise InputError(problem)


def launch(args: argparse.Namespace) -> int:
    """`cai launch`: torchrun, standalone on this machine, running `cai STAGE CONFIG` in each
    process. Returns the exit code: the failing process's (2 for bad input), 0 when all succeed."""
    import logging

    from cai import registry
    from cai.config import load_config

    stage = registry.stage(args.stage_name)
    if not stage.data_parallel:
        raise InputError(one_process_only(stage.name))
    if args.nproc < 1:
        raise InputError(f"--nproc {args.nproc}: give at least 1 process")
    load_config(args.config, args.overrides)  # a bad config is one error here, not one per process
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if os.environ.get("CAI_VERBOSE") != "1":
        # torchrun's agent logs every worker's exit and its own SIGTERMs; the workers print the
        # error itself, and the line below says which process failed. (Its loggers set their own
        # levels, so each is quieted by name.)
        for name in list(logging.root.manager.loggerDict):
            if name.startswith("torch.distributed"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
    command = ["--standalone", f"--nproc-per-node={args.nproc}", "-m", "cai.cli", stage.name, args.config]
    command += [f"--set={o}" for o in args.overrides] + (["--force"] if args.force else [])
    try:
        torchrun.run(torchrun.parse_args(command))
    except ChildFailedError as e:
        # The process that failed by itself (exit code > 0), not the ones the agent then stopped.
        own = sorted((r, f) for r, f in e.failures.items() if f.exitcode > 0)
        rank, failure = own[0] if own else e.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # killed by signal N: 128 + N
        if code != 2:  # (bad input: the process printed what to fix)
            why = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {code}"
            print(f"cai launch: {stage.name} failed on rank {rank} ({why}); its output above says why", file=sys.stderr)
        return code
    except SignalException as e:  # Ctrl-C or a kill: torchrun passed it on (the main process says so) and stopped them
        return 128 + int(e.sigval)
    return 0


def run_command(args: argparse.Namespace) -> None:
    from cai.config import load_config

    if args.command == "launch":
        code = launch(args)
        if code:
            raise SystemExit(code)
    elif args.command == "run":
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
    from cai import distributed
    from cai.console import quiet_third_party

    args = _parser().parse_args(argv)
    quiet_third_party()
    try:
        preflight(args)
    except InputError as e:  # every process refuses alike: the main one says why
        return handle(e) if distributed.is_main() else 2
    try:
        distributed.init()  # (one of several processes: join the others)
        run_command(args)
        sys.stdout.flush()  # a closed pipe shows up here when the output fit in the buffer
    except distributed.MainFailed as e:
        code = e.code  # the main process failed and reports why; this one follows it out
    except KeyboardInterrupt as e:
        return handle(e) if distributed.is_main() else EXIT_INTERRUPTED  # Ctrl-C reaches every process; one says so
    except Exception as e:
        code = handle(e)  # one line for expected failures, a traceback for bugs (cai.errors)
        if not isinstance(e, InputError):
            return code  # (leave at once: the other processes may be waiting in a collective; torchrun stops them)
    else:
        code = 0
    distributed.close()  # (left open, the process group's threads can abort the exit)
    return code


if __name__ == "__main__":
    sys.exit(main())
