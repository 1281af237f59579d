"""The ``securedream`` command line: run, bench, presets.

Every argument is validated here or by the config layer; a bad value exits with status 2 and a
message naming the argument or key and what is allowed, and nothing is written.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from securedream.config_args import add_config_arguments, config_from_args
from securedream.errors import ConfigError, SecureDreamError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="securedream",
        description="Private, measurable CoDream federated learning.",
        epilog="More commands from installed packages: "
        + (", ".join(sorted(plugin_commands())) or "none")
        + " (e.g. `securedream audit --help`, from the attacks package).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an experiment (CoDream or a baseline)")
    add_config_arguments(run, "demo")
    run.add_argument("--out", metavar="DIR", help="run folder (default: runs/<name>-<time>)")
    run.add_argument("--resume", metavar="DIR", help="continue an interrupted run folder")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument(
        "--engine",
        choices=("inprocess", "flower"),
        default="inprocess",
        help="inprocess (default) or flower (Flower simulation engine)",
    )

    sub.add_parser("presets", help="list the shipped presets")

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    acc = bench_sub.add_parser(
        "accuracy", help="CoDream vs Independent, FedAvg, Centralized over seeds"
    )
    add_config_arguments(acc, "demo")
    acc.add_argument(
        "--seeds",
        type=int,
        default=3,
        metavar="N",
        help="N consecutive seeds from --seed (default the config's, 0 in the presets): "
        "S..S+N-1 (default 3)",
    )
    acc.add_argument(
        "--alphas",
        metavar="A,B,...",
        help="Dirichlet concentrations to sweep (data.split must be dirichlet); "
        "default: the config's data.alpha",
    )
    acc.add_argument(
        "--methods",
        default="codream,independent,fedavg,centralized",
        help="comma-separated subset of codream,codream-fast,independent,fedavg,centralized",
    )
    acc.add_argument("--out", metavar="DIR", help="folder for the runs (default: a temp folder)")
    acc.add_argument("--json", action="store_true", help="print JSON instead of a table")
    acc.add_argument("--quiet", action="store_true", help="no progress bars")
    bench_sub.add_parser("secagg", help="secure aggregation protocol benchmark", add_help=False)
    bench_sub.add_parser(
        "engines",
        help="in-process vs Flower simulation vs deployment, plain and secure",
        add_help=False,
    )
    bench_sub.add_parser("speed", help="dream-step, training and SecAgg times", add_help=False)
    sub.add_parser(
        "deploy",
        help="Flower deployment: `local` starts a SuperLink and N SuperNodes on localhost and "
        "runs; "
        "`app DIR` writes a Flower App for a SuperLink of your own",
        add_help=False,
    )
    private = bench_sub.add_parser(
        "private", help="plain vs SecAgg vs SecAgg + DP (central, distributed) at several ε"
    )
    add_config_arguments(private, "demo")
    private.add_argument("--epsilons", default="1,4,8", help="comma-separated ε (default 1,4,8)")
    private.add_argument(
        "--mode",
        choices=("client", "sample"),
        default="client",
        help="client: client-level DP on the aggregates (default, preset demo); sample: per-client "
        "DP-SGD, CoDream vs Independent vs FedAvg over seeds (preset private-demo)",
    )
    private.add_argument("--seeds", type=int, default=3, metavar="N", help="--mode sample: seeds")
    private.add_argument(
        "--ablation",
        default="4",
        metavar="EPS,...",
        help="--mode sample: ε values at which CoDream also runs with privacy.feature_stats "
        "flipped (default 4; 'none' to skip)",
    )
    private.add_argument("--out", metavar="DIR", help="folder for the runs (default: temp)")
    private.add_argument("--json", action="store_true", help="print JSON instead of a table")
    private.add_argument("--quiet", action="store_true", help="no progress bars")

    privacy = sub.add_parser("privacy", help="ε for given noise, or noise for a given ε")
    privacy_sub = privacy.add_subparsers(dest="privacy", required=True)
    for name, helptext in (
        ("epsilon", "what ε do these settings give"),
        ("noise", "what noise multiplier reaches this ε"),
    ):
        p = privacy_sub.add_parser(name, help=helptext)
        add_config_arguments(p, "demo")
        p.add_argument(
            "--releases",
            type=int,
            metavar="N",
            help="number of releases (default: from the config's rounds and steps)",
        )
        p.add_argument("--delta", type=float, help="δ (default: the config's privacy.delta)")
        p.add_argument("--accountant", choices=("rdp", "prv"), help="default: the config's")
        if name == "epsilon":
            p.add_argument(
                "--noise-multiplier",
                type=float,
                metavar="Z",
                help="z (default: the config's privacy.noise_multiplier)",
            )
        else:
            p.add_argument("--target-epsilon", type=float, metavar="EPS", required=True)
        p.add_argument("--json", action="store_true")
    from securedream.privacy.cli import add_adversaries_parser

    add_adversaries_parser(privacy_sub)
    return parser


def resume_command(folder: Path) -> str:
    return f"securedream run --resume {shlex.quote(str(folder))}"


def _cmd_run(args: argparse.Namespace) -> int:
    from securedream.engines.inprocess import run_experiment
    from securedream.runs import RunFolder
    from securedream.runs.folder import check_out_path

    if args.resume is not None:
        given = [
            flag
            for flag, value in (
                ("--config", args.config),
                ("--preset", args.preset),
                ("--seed", args.seed),
                ("--device", args.device),
                ("--set", args.overrides or None),
                ("--out", args.out),
                ("--engine flower", args.engine == "flower" or None),
            )
            if value is not None
        ]
        if given:
            raise ConfigError(
                "--resume",
                f"cannot be combined with {', '.join(given)} (a run continues with the config and "
                "engine it started with; only in-process runs can be resumed)",
            )
        folder = RunFolder(check_out_path(args.resume, "--resume"))
        cfg = folder.load_config()
        out = folder.path
        with _interrupt_notice(out, resumable=True):
            summary = run_experiment(cfg, folder.path, resume=True, progress=not args.quiet)
    else:
        cfg = config_from_args(args)
        if args.out is not None:
            out = check_out_path(args.out)
        else:
            out = check_out_path(Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        if (out / "config.toml").exists():
            raise ConfigError(
                "--out", f"{out} already holds a run; use --resume {out} or another --out"
            )
        if args.engine == "flower":
            from securedream.engines.flower import run_flower

            with _interrupt_notice(out, resumable=False):
                summary = run_flower(cfg, out, progress=not args.quiet)
        else:
            with _interrupt_notice(out, resumable=cfg.output.checkpoint):
                summary = run_experiment(cfg, out, progress=not args.quiet, refuse_existing=True)
    print(f"run folder: {out}")
    accuracy = (
        f"final mean client accuracy {summary['final_mean_accuracy']:.4f} "
        f"± {summary['final_std_accuracy']:.4f} over "
        f"{summary.get('eval_clients', summary['clients'])} model(s)"
        if summary.get("final_mean_accuracy") is not None
        else "client accuracies stay on the clients (secure/private run)"
    )
    print(
        f"{summary['method']}: {accuracy}; "
        f"{summary['bytes_per_client_round'] / 1e6:.2f} MB per client per round; "
        f"{summary['timing']['seconds']:.1f} s"
    )
    return 0


class Interrupted(SecureDreamError):
    """Ctrl-C during a run: carries the line that tells the user where the run is and what next."""


@contextlib.contextmanager
def _interrupt_notice(folder: Path, *, resumable: bool) -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        if not (folder / "config.toml").exists():
            raise Interrupted(f"interrupted before {folder} was created; nothing written") from None
        if resumable:
            raise Interrupted(
                f"interrupted; the run folder is {folder}; continue it with: "
                f"{resume_command(folder)}"
            ) from None
        raise Interrupted(
            f"interrupted; the run folder {folder} cannot be resumed (Flower engine or "
            "output.checkpoint = false); start again with another --out"
        ) from None


def _library_value_error(exc: ValueError, args: argparse.Namespace) -> ConfigError | None:
    """A ValueError from a library that a bad setting caused, as an error naming the setting."""
    if "privacy budget is too low" in str(exc):
        key = "--target-epsilon" if args.command == "privacy" else "privacy.target_epsilon"
        return ConfigError(
            key,
            "too small for this run: no noise multiplier reaches it over the run's releases at "
            "this δ (Opacus: the privacy budget is too low); use a larger ε, fewer rounds or "
            "dream steps, or see `securedream privacy epsilon` for what a given noise gives",
        )
    return None


def quiet_library_warnings() -> None:
    """Hide library warnings that a user of the CLI cannot act on (the code, not the config)."""
    for module in ("opacus", "torch", "torchvision", "flwr", "ray"):
        warnings.filterwarnings("ignore", category=UserWarning, module=module)
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
    warnings.filterwarnings("ignore", message=r".*[Ss]ecure RNG turned off.*")
    warnings.filterwarnings("ignore", message=r".*[Ff]ull backward hook.*")


def _cmd_presets() -> int:
    from securedream.config import load_preset_dict, preset_names

    for name in preset_names():
        raw = load_preset_dict(name)
        print(f"{name:14s} {raw.get('description', '')}")
    return 0


def _cmd_bench_accuracy(args: argparse.Namespace) -> int:
    from securedream.bench.accuracy import run_accuracy_bench

    return run_accuracy_bench(args)


def plugin_commands() -> dict[str, object]:
    """Commands other packages register under the ``securedream.commands`` entry-point group.

    ``securedream audit`` lives in the ``attacks`` package, which imports the engine; the engine
    must not import it back, so it finds the command by name at run time instead.
    """
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group="securedream.commands")}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    plugins = plugin_commands()
    if argv and argv[0] in plugins:
        command = plugins[argv[0]].load()  # type: ignore[attr-defined]
        return int(command(argv[1:]))
    # `bench secagg` has its own parser (the protocol benchmark); hand it the rest verbatim.
    if argv[:2] == ["bench", "secagg"]:
        from securedream.bench.secagg import main as secagg_main

        return secagg_main(argv[2:])
    if argv[:2] == ["bench", "engines"]:  # its own parser too (securedream.bench.engines)
        from securedream.bench.engines import main as engines_main

        return engines_main(argv[2:])
    if argv[:2] == ["bench", "speed"]:  # own parser too (securedream.bench.speed)
        from securedream.bench.speed import main as speed_main

        return speed_main(argv[2:])
    if argv[:1] == ["deploy"]:  # own parser (securedream.engines.flower.deploy)
        from securedream.engines.flower.deploy import main as deploy_main

        try:
            return deploy_main(argv[1:], prog="securedream deploy")
        except SecureDreamError as exc:
            print(f"securedream: error: {exc}", file=sys.stderr)
            return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_library_warnings()
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "presets":
            return _cmd_presets()
        if args.command == "bench" and args.bench == "accuracy":
            return _cmd_bench_accuracy(args)
        if args.command == "bench" and args.bench == "private":
            from securedream.bench.private import run_private_bench

            return run_private_bench(args)
        if args.command == "privacy":
            from securedream.privacy.cli import run_adversaries_command, run_privacy_command

            if args.privacy == "adversaries":
                return run_adversaries_command(args)
            return run_privacy_command(args)
    except Interrupted as exc:
        print(f"securedream: {exc}", file=sys.stderr)
        return 130
    except SecureDreamError as exc:
        print(f"securedream: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        converted = _library_value_error(exc, args)
        if converted is None:
            raise
        print(f"securedream: error: {converted}", file=sys.stderr)
        return 2
    except OSError as exc:
        # the environment refused a file operation (permissions, full disk, a path that cannot
        # exist): one line naming the path, never a traceback
        where = exc.filename if exc.filename is not None else "a file"
        print(f"securedream: error: {where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("securedream: interrupted", file=sys.stderr)
        return 130
    parser.error("unknown command")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
