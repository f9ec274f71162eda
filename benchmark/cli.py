"""The ``bench`` command: subcommands only, the logic lives in the modules they call.

Every failure ends with one line on stderr (``bench: error: ...``) and a non-zero exit status
(:mod:`benchmark.errors`: 1 regression or verification mismatch, 2 bad input, 3 failed audit,
4 failed work); set ``BENCH_TRACEBACK=1`` to see the full traceback of an unexpected error.

Nothing heavy is imported before the arguments are parsed: ``bench --help``, ``bench list``,
``bench summarize`` and ``bench compare`` never import torch or Flower.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from benchmark import errors


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (``bench: error: ...``) and exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        cmd = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        print(f"bench: error: {cmd + ': ' if cmd else ''}{message.splitlines()[0]} (see {self.prog} --help)",
              file=sys.stderr)
        sys.exit(errors.EXIT_BAD_INPUT)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _choices_list(allowed: tuple[str, ...]):
    """argparse type: a comma-separated subset of ``allowed`` (kept as the text)."""
    def check(text: str) -> str:
        bad = [m for m in text.split(",") if m not in allowed]
        if bad or not text:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(map(repr, bad)) or 'empty list'} "
                                             f"(choose from {','.join(allowed)})")
        return text
    return check


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("give at least one seed")
    return seeds


def _shard(text: str) -> tuple[int, int]:
    """``K/N``: this invocation runs shard K (1-based) of N."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N, e.g. 2/4, got {text!r}") from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"expected K/N with 1 <= K <= N, got {text!r}")
    return k, n


def cmd_list(args: argparse.Namespace) -> int:
    from benchmark.data import dataset_names
    from benchmark.model_configs import MODEL_CONFIGS
    from benchmark.scales import SCALES
    from benchmark.suites import get_suite, suite_names

    if args.models:
        for name, cfg in MODEL_CONFIGS.items():
            print(f"{name:10s} widths={cfg['block_out_channels']} layers_per_block={cfg['layers_per_block']} "
                  f"blocks={','.join(cfg['down_block_types'])}")
        print("config:PATH your own: a diffusers UNet2DModel config.json (README, \"Your own images\")")
        return 0
    if args.suite is not None and args.suite not in suite_names():
        get_suite(args.suite, args.scale)  # the one-line "unknown suite" error, with the names
    print(f"scales: {', '.join(SCALES)}   datasets: {', '.join(dataset_names())}, medmnist:<name>, folder:PATH")
    for suite in suite_names():
        scenarios = get_suite(suite, args.scale)
        print(f"suite {suite} ({len(scenarios)} scenarios at scale {args.scale})")
        if args.suite is None or args.suite == suite:
            for s in scenarios:
                print(f"  {s.name:44s} {s.dataset:14s} {s.partition:14s} N={s.num_clients:<3d} "
                      f"K={s.clients_per_round:<3d} R={s.rounds:<3d} E={s.local_epochs:<3d} "
                      f"{s.model:9s} dp={s.dp_mode}" + (f" eps={s.target_epsilon:g}" if s.target_epsilon else ""))
    return 0


def _scenarios_from_args(args: argparse.Namespace):
    from benchmark.scenarios import ScenarioError, load_scenario_file
    from benchmark.suites import get_scenario, get_suite

    if args.suite:
        scenarios = get_suite(args.suite, args.scale)
        if not scenarios:
            raise ScenarioError(f"suite {args.suite!r} has no scenarios at scale {args.scale!r} (`bench list --scale "
                                f"{args.scale}`)")
        return scenarios
    if args.scenario:
        return (get_scenario(args.scenario, args.scale),)
    return load_scenario_file(args.scenario_file)


# Where a user's leaderboards go unless asked otherwise: beside, never over, the published ones
# (results/<suite>/, tracked). `--publish` rewrites the published tree.
LOCAL_RESULTS = "results/local"
PUBLISHED_RESULTS = "results"


def _results_dir(args: argparse.Namespace) -> Path:
    return Path(PUBLISHED_RESULTS if args.publish else (args.results or LOCAL_RESULTS))


def cmd_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from benchmark import quiet
    from benchmark.devices import resolve_device

    scenarios = _scenarios_from_args(args)  # a bad name or file fails here, before torch or Flower load
    resolve_device(args.device)
    bars = not args.no_progress and sys.stderr.isatty()  # a log (CI, a pipe) gets lines, no carriage returns

    def report(line: str) -> None:
        if bars:
            tqdm.write(f"bench: {line}", file=sys.stderr)
        else:
            print(f"bench: {line}", file=sys.stderr, flush=True)

    if args.dry_run:
        return _dry_run(args, scenarios, report)
    with quiet.hush(report):  # from the heavy imports on
        return _run(args, scenarios, report, bars)


def _options(args: argparse.Namespace, report, bars: bool):
    from benchmark import runner

    return runner.RunOptions(out_dir=Path(args.out), device=args.device, data_root=args.data_root,
                             resume=args.resume, progress=bars, report=report, ray_address=args.ray_address)


def _dry_run(args: argparse.Namespace, scenarios, report) -> int:
    """What would run and what is complete; never refuses a complete folder."""
    from benchmark import runner

    work = runner.plan(scenarios, args.seeds, dataclasses.replace(_options(args, report, False), resume=True))
    if args.shard:
        everything, work = work, runner.shard(work, *args.shard)
        print(f"bench: shard {args.shard[0]}/{args.shard[1]}: {len(work)} of the {len(everything)} planned runs",
              file=sys.stderr)
    for s, seed, path, done in work:
        print(f"{'done' if done else 'todo'}  {s.name} seed {seed}  -> {path}")
    print(f"bench: dry run: {sum(w.done for w in work)} complete, {sum(not w.done for w in work)} to run"
          + ("" if args.resume or not any(w.done for w in work) else " (a real run needs --resume)")
          + f"; leaderboards to {_results_dir(args)}", file=sys.stderr)
    return 0


def _run(args: argparse.Namespace, scenarios, report, bars: bool) -> int:
    from tqdm import tqdm

    from benchmark import leaderboard, quiet, runner
    from benchmark.progress import Progress
    from benchmark.threads import set_main_threads

    set_main_threads()  # once, for every stage of every run (benchmark.threads)
    opts = _options(args, report, bars)
    results_dir = _results_dir(args)
    work = runner.plan(scenarios, args.seeds, opts)
    if args.shard:
        everything, work = work, runner.shard(work, *args.shard)
        report(f"shard {args.shard[0]}/{args.shard[1]}: {len(work)} of the {len(everything)} planned runs")
    # Bad input is refused in one line, so the checks print nothing unless they take 30 s.
    checks = Progress(report, "before any training")
    checks.stage = "checks (data files and partitions, output folders, FID network, verify-dp)"
    try:
        runner.check_data(work, opts)
        runner.check_writable(opts.out_dir)
        runner.check_writable(results_dir)
        runner.check_ray_address(opts.ray_address)
        todo = [w for w in work if not w.done]
        runner.check_fid_available(tuple(w.scenario for w in todo))
        for line in runner.verify_before_dp(tuple({w.scenario for w in todo}), opts).values():
            checks.say(line)
    finally:
        checks.close()
    report(f"{len(work)} run(s), {len(work) - len(todo)} already complete, out {opts.out_dir}")
    for i, (s, seed, _path, _done) in enumerate(tqdm(todo, desc="runs", unit="run", disable=not bars,
                                                     file=sys.stderr), 1):
        report(f"run {i}/{len(todo)}: {s.name} seed {seed}")
        path = runner.run_one(s, seed, opts)
        report(f"finished {s.name} seed {seed} -> {path}")
    suites = sorted({s.suite for s in scenarios})
    boards = leaderboard.summarize(opts.out_dir, results_dir, suites=suites)
    if quiet.hidden():
        report(f"{quiet.hidden()} library warning(s) hidden (BENCH_VERBOSE=1 shows them)")
    # One rule (issue 25, 4d): every verdict is the published row's, at 95 % for the row over its
    # seeds; the exit status is 3 when a row of this invocation failed, as the board and
    # `bench compare` say.
    audits = leaderboard.row_audits(boards, {(s.name, s.hash) for s in scenarios})
    g = lambda x: "?" if x is None else f"{x:.3g}"  # noqa: E731  (a row recorded without evidence)
    for a in audits:
        seeds = f"95 % for the row, {a.unit or 'image'} level, {a.n_seeds} seed(s)"
        if a.verdict == "passed":
            print(f"bench: audit passed: {a.label}: lower bound {g(a.bound)} <= audited epsilon {g(a.claim)} < "
                  f"ceiling {g(a.ceiling)} ({seeds})", file=sys.stderr)
        elif a.verdict == "inconclusive":
            print(f"bench: INCONCLUSIVE audit: {a.label}: the largest bound its candidates could certify, "
                  f"{g(a.ceiling)}, does not exceed the audited epsilon {g(a.claim)} ({seeds})", file=sys.stderr)
    from benchmark.report import terminal_summary

    for path in boards:
        print(terminal_summary(path, runs_dir=opts.out_dir))
    failed = [a for a in audits if a.verdict == "failed"]
    for a in failed:
        print(f"bench: AUDIT FAILED: {a.label}: empirical epsilon lower bound {g(a.bound)} (95 % for the row, "
              f"{a.unit or 'image'} level, {a.n_seeds} seed(s)) exceeds the audited epsilon {g(a.claim)}",
              file=sys.stderr)
    if failed:
        print(f"bench: error: {len(failed)} row(s) failed the empirical privacy audit ({len(audits)} audited, each "
              f"at 95 % for the row): their DP claim does not hold (see above)", file=sys.stderr)
        return errors.EXIT_AUDIT_FAILED
    return 0


def check_partitions(args: argparse.Namespace) -> None:
    if not args.scenario.lstrip().startswith("{"):  # a registered name
        from benchmark.suites import get_scenario

        get_scenario(args.scenario, args.scale)


def cmd_partitions(args: argparse.Namespace) -> int:
    from benchmark.federation.partition_files import export_partitions, partition_site
    from benchmark.federation.server_app import resolve_scenario

    scenario = resolve_scenario(args.scenario, args.scale)
    manifest = export_partitions(scenario, args.seed, Path(args.out), data_root=args.data_root)
    for pid, (name, n) in enumerate(zip(manifest.files, manifest.num_images)):
        site = partition_site(Path(args.out) / name)
        print(f"partition {pid}: {n} images" + (f" of site {site}" if site else "") + f" -> {Path(args.out) / name}")
    print(f"manifest (for the server's run config partition-manifest): {Path(args.out) / 'manifest.json'}")
    return 0


def cmd_summarize(args: argparse.Namespace) -> int:
    from benchmark import leaderboard

    dirs = [Path(d) for d in args.runs_dir]
    missing = leaderboard.missing_runs(dirs, suites=args.suite)
    if missing and args.publish:
        first = "; ".join(f"{suite}: {', '.join(runs[:3])}{' ...' if len(runs) > 3 else ''}"
                          for suite, runs in missing.items())
        raise errors.BadInputError(f"not publishing an incomplete suite ({first}): run the missing runs "
                                   "(bench run --resume) or summarize without --publish")
    for path in leaderboard.summarize(dirs, _results_dir(args), suites=args.suite):
        print(f"bench: leaderboard {path} (report: {path.parent / 'README.md'})")
    for suite, runs in missing.items():
        print(f"bench: suite {suite} is INCOMPLETE: {len(runs)} planned run(s) missing: {', '.join(runs)}",
              file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from benchmark import compare

    margins = {}
    for text in args.margin or ():
        name, value, rel = compare.parse_margin(text)
        margins[name] = (value, rel)
    from benchmark.leaderboard import read_leaderboard

    base, new = read_leaderboard(Path(args.base)), read_leaderboard(Path(args.new))
    findings = compare.compare(base, new, sigmas=args.sigmas, margins=margins)
    shown = findings if args.all else [f for f in findings if f.status != "ok"]
    if shown:
        print(compare.format_table(shown, markdown=args.markdown))
    powers = compare.power(base, new, sigmas=args.sigmas, margins=margins)
    print(("\n" if shown and args.markdown else "")
          + compare.format_power(compare.summarize_power(powers), markdown=args.markdown))
    failing = any(f.failing for f in findings)
    print(f"bench: {'regression' if failing else 'ok'}: {compare.summary(findings)}",
          file=sys.stderr if failing else sys.stdout)
    return errors.EXIT_REGRESSION if failing else errors.EXIT_OK


def check_fid(args: argparse.Namespace) -> None:

    for path in (args.a, args.b):
        if not Path(path).exists():
            raise errors.BadInputError(f"{path} does not exist")


def cmd_fid(args: argparse.Namespace) -> int:
    from benchmark.devices import resolve_device
    from benchmark.fid import compute_fid
    from benchmark.images import load_images

    a, b = load_images(args.a), load_images(args.b)
    res = compute_fid(a, b, device=resolve_device(args.device), extractor=args.impl)
    print(f"fid = {res.fid:.6g}  kid = {res.kid:.6g}  (n = {res.n_real} vs {res.n_fake}; {res.fid_impl})")
    if min(res.n_real, res.n_fake) < 2048:
        print("note: with fewer than 2048 images per side FID is biased upwards; compare only at equal n",
              file=sys.stderr)
    return 0


def check_account(args: argparse.Namespace) -> None:

    if args.mechanism is not None and args.level != "client":
        raise errors.BadInputError(f"--mechanism {args.mechanism} is a client-level mechanism (--level client)")
    if args.epochs is not None and args.mechanism != "dp-ftrl":
        raise errors.BadInputError("--epochs counts dp-ftrl's tree epochs (--mechanism dp-ftrl)")
    if args.mechanism == "dp-ftrl":
        if args.sample_rate is not None:
            raise errors.BadInputError("dp-ftrl samples no clients: --sample-rate does not apply (its tree noise "
                                       "needs no amplification)")
        if args.accountant != "rdp":
            raise errors.BadInputError(f"dp-ftrl accounts with dp_accounting's rdp only, not {args.accountant!r}")
        return  # --population is optional: the tree's epsilon does not depend on N (delta < 1/N checked if given)
    if args.level == "sample" and args.sample_rate is None:
        raise errors.BadInputError("sample level needs --sample-rate")
    if args.level == "client" and args.population is None:
        raise errors.BadInputError("client level needs --population (the number of clients N)")


def cmd_account(args: argparse.Namespace) -> int:
    from privacy import accounting as acc

    acc.check_privacy_params(delta=args.delta, population=args.population)
    if args.level == "sample":
        acc.check_privacy_params(delta=args.delta, sample_rate=args.sample_rate)
        common = dict(sample_rate=args.sample_rate, steps=args.steps, delta=args.delta, accountant=args.accountant)
        epsilon_of, noise_for = acc.sample_level_epsilon, acc.sample_level_noise
        how = f"sample level, {args.accountant}, q = {args.sample_rate:g}, {args.steps} steps"
    elif args.mechanism == "dp-ftrl":  # tree-aggregated noise, one participation per client per tree
        epochs = 1 if args.epochs is None else args.epochs
        common = dict(steps=args.steps, delta=args.delta, epochs=epochs)
        epsilon_of, noise_for = acc.ftrl_tree_epsilon, acc.ftrl_tree_noise
        trees = ("in one tree" if epochs == 1 else
                 f"per tree, {epochs} trees (epochs) composed")
        how = (f"client level, dp-ftrl, {acc.FTRL_ACCOUNTANT}, {args.steps} steps {trees}, "
               "each client at most once per tree")
    else:
        if args.sample_rate is not None:  # Poisson client sampling, amplified
            if args.accountant != "rdp":
                raise acc.AccountingError(f"client level with --sample-rate accounts with rdp only, not "
                                          f"{args.accountant!r}")
            acc.check_privacy_params(delta=args.delta, sample_rate=args.sample_rate)
            common = dict(sample_rate=args.sample_rate, rounds=args.steps, delta=args.delta)
            epsilon_of, noise_for = acc.client_sampled_epsilon, acc.client_sampled_noise
            how = (f"client level, {acc.SAMPLED_CLIENT_ACCOUNTANT}, q = {args.sample_rate:g} "
                   f"({args.sample_rate * args.population:g} of {args.population} clients expected), "
                   f"{args.steps} rounds")
        else:
            common = dict(rounds=args.steps, delta=args.delta, num_clients=args.population)
            epsilon_of, noise_for = acc.client_level_epsilon, acc.client_level_noise
            how = f"client level, {acc.CLIENT_ACCOUNTANT}, {args.steps} rounds"
    if args.noise_multiplier is not None:
        eps = epsilon_of(noise_multiplier=args.noise_multiplier, **common)
        print(f"epsilon = {eps:.6g} at delta = {args.delta:g} ({how}, sigma = {args.noise_multiplier:g})")
    else:
        sigma = noise_for(target_epsilon=args.epsilon, **common)
        print(f"noise_multiplier = {sigma:.6g} for epsilon = {args.epsilon:g} at delta = {args.delta:g} ({how})")
    return 0


def cmd_verify_dp(args: argparse.Namespace) -> int:
    import json

    import torch

    from benchmark.devices import resolve_device
    from privacy.verify import verify_dp

    device = resolve_device(args.device)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    report = verify_dp(args.model, device=device, batch_size=args.batch_size, modes=tuple(args.modes.split(",")),
                       dtype=dtype, num_classes=None if args.unconditional else 10,
                       amp=None if args.amp == "off" else args.amp, compiled=args.compile)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    if not report.passed:
        print(f"bench: error: per-sample gradients of {args.model} do not match the per-sample loop",
              file=sys.stderr)
        return errors.EXIT_MISMATCH
    return errors.EXIT_OK


def cmd_perf(args: argparse.Namespace) -> int:
    import json

    from benchmark.perf import run_perf
    from benchmark.devices import resolve_device

    device = resolve_device(args.device)
    report = run_perf(args.model, batch=args.batch_size, device=device, modes=tuple(args.modes.split(",")),
                      steps=args.steps, warmup=args.warmup, amp=None if args.amp == "off" else args.amp,
                      sampler=args.sampler, sample_steps=args.sample_steps, fid_batch=args.fid_batch,
                      compiled=args.compile,
                      progress=None if args.json else (lambda m: print(f"bench: perf {m}", file=sys.stderr)))
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    return 0


def check_sampler_cost(args: argparse.Namespace) -> None:

    if not Path(args.run).is_dir():
        raise errors.BadInputError(f"{args.run}: no such run folder")


def cmd_sampler_cost(args: argparse.Namespace) -> int:
    import json

    from benchmark.devices import resolve_device
    from benchmark.rundir import write_atomic
    from benchmark.sampler_cost import SamplerCostError, parse_specs, sampler_cost

    if args.no_score and args.from_samples:
        raise SamplerCostError("--no-score with --from-samples does nothing")
    if args.no_score and not args.save_samples:
        raise SamplerCostError("--no-score needs --save-samples (else the samples are lost)")
    if args.out and not os.access(Path(args.out).resolve().parent, os.W_OK):
        raise SamplerCostError(f"--out {args.out}: its folder does not exist or is not writable")
    if args.save_samples and Path(args.save_samples).exists() and not os.access(args.save_samples, os.W_OK):
        raise SamplerCostError(f"--save-samples {args.save_samples}: not writable")
    report = sampler_cost(Path(args.run), parse_specs(args.samplers), n=args.n, device=resolve_device(args.device),
                          data_root=args.data_root, batch_size=args.batch_size, score=not args.no_score,
                          save_samples=Path(args.save_samples) if args.save_samples else None,
                          from_samples=Path(args.from_samples) if args.from_samples else None,
                          progress=lambda m: print(f"bench: sampler-cost {m}", file=sys.stderr))
    if args.out:
        write_atomic(Path(args.out), json.dumps(report.to_dict(), indent=2) + "\n")
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table(markdown=args.markdown))
    return 0


def _results_args(q: argparse.ArgumentParser) -> None:
    g = q.add_mutually_exclusive_group()
    g.add_argument("--results", help=f"folder for leaderboards, reports and plots (default: {LOCAL_RESULTS}, "
                   "beside the published ones)")
    g.add_argument("--publish", action="store_true", help=f"write into {PUBLISHED_RESULTS}/<suite>/, "
                   "replacing the published (tracked) leaderboards")


def build_parser() -> argparse.ArgumentParser:
    from benchmark.fid_extractors import EXTRACTORS, extractor_names
    from benchmark.samplers import SAMPLERS
    from benchmark.scales import SCALES
    from privacy.accounting import SAMPLE_ACCOUNTANTS

    scales = ", ".join(SCALES)
    p = _Parser(prog="bench", description="feddp-bench: federated diffusion models, "
                                "utility vs privacy, as leaderboards.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    q = sub.add_parser("list", help="list suites, scenarios, model configs")
    q.add_argument("--suite", help="show only this suite's scenarios")
    q.add_argument("--scale", default="cpu", choices=SCALES, help="scale to size the scenarios for (default: cpu)")
    q.add_argument("--models", action="store_true", help="list the model configs instead")
    q.set_defaults(fn=cmd_list)

    q = sub.add_parser("run", help="train, evaluate and record scenarios; then summarize")
    src = q.add_mutually_exclusive_group(required=True)
    src.add_argument("--suite", help="a registered suite (see `bench list`)")
    src.add_argument("--scenario", help="one registered scenario by name")
    src.add_argument("--scenario-file", help="a TOML file of scenarios (fields as in `Scenario`)")
    q.add_argument("--scale", default="cpu", choices=SCALES, help=f"{scales} (default cpu): sizes the same scenarios")
    q.add_argument("--seeds", type=_seeds, help="seeds, e.g. '0,1,2' (default: the scenario's)")
    q.add_argument("--out", default="runs", help="folder for run folders (default: runs)")
    _results_args(q)
    q.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    q.add_argument("--data-root", help="where on-disk datasets lie (default: $FEDDP_DATA_ROOT or "
                   "~/.cache/feddp-bench/data)")
    q.add_argument("--resume", action="store_true", help="skip runs that are already complete")
    q.add_argument("--shard", type=_shard, metavar="K/N", help="run shard K of N (1 <= K <= N): the planned runs "
                   "(scenario x seed, in plan order) dealt round-robin into N disjoint shards; N invocations "
                   "together run each run once (then bench summarize the run folders)")
    q.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS") or None, metavar="HOST:PORT",
                   help="run the federations on an existing Ray cluster (its GCS address, as `ray start --head` "
                   "prints; default $RAY_ADDRESS; unset: a local Ray per federation)")
    q.add_argument("--dry-run", action="store_true", help="print the runs without running them")
    q.add_argument("--no-progress", action="store_true", help="no progress bars (there are none when stderr is "
                   "not a terminal: a log gets one line per stage, round and run)")
    q.set_defaults(fn=cmd_run)

    q = sub.add_parser("fid", help="FID and KID between two image folders or .npz arrays")
    q.add_argument("a", help="folder of images, or .npz/.npy (uint8, NCHW or NHWC)")
    q.add_argument("b", help="folder of images, or .npz/.npy")
    q.add_argument("--device", default="cpu")
    q.add_argument("--impl", default="clean", choices=extractor_names(),
                   help="; ".join(f"{e.name}: {e.summary}" for e in EXTRACTORS.values()))
    q.set_defaults(fn=cmd_fid, check=check_fid, hushed=True)

    q = sub.add_parser("account", help="epsilon for a noise multiplier, or the noise for a target epsilon")
    q.add_argument("--level", choices=("sample", "client"), default="sample",
                   help="sample (local DP-SGD, Opacus) or client (central DP, Flower)")
    g = q.add_mutually_exclusive_group(required=True)
    g.add_argument("--noise-multiplier", type=float, help="compute epsilon for this noise multiplier")
    g.add_argument("--epsilon", type=float, help="compute the noise multiplier for this target epsilon")
    q.add_argument("--delta", type=float, required=True)
    q.add_argument("--steps", type=int, required=True, help="DP-SGD steps (sample) or rounds (client)")
    q.add_argument("--sample-rate", type=float, help="Poisson sampling rate q: of images (sample level), or of "
                   "clients (client level: central-dp-sampled, amplified; without it no amplification)")
    q.add_argument("--population", type=int, help="N: dataset size (sample) or clients (client); delta < 1/N")
    q.add_argument("--accountant", default="rdp", choices=SAMPLE_ACCOUNTANTS, help="rdp or prv (sample level)")
    q.add_argument("--mechanism", choices=("dp-fedavg", "dp-ftrl"), help="client level only: dp-fedavg (the "
                   "default: one Gaussian release per round, central-dp, or central-dp-sampled with --sample-rate) "
                   "or dp-ftrl (tree-aggregated noise over --steps steps, no sampling, each client at most once "
                   "per tree; replace-with-special neighbours; --population optional)")
    q.add_argument("--epochs", type=int, help="dp-ftrl: tree epochs of --steps steps each (default 1), the tree "
                   "restarted each epoch and each client once in each; their epsilons compose (central-dp-ftrl: "
                   "--steps N / clients per round, --epochs rounds / --steps)")
    q.set_defaults(fn=cmd_account, check=check_account, hushed=True)  # Opacus' RDP-order warning: the epsilon is still a bound

    from benchmark.model_configs import MODEL_CONFIGS  # torch-free
    from privacy.modes import grad_sample_mode_names  # torch-free

    q = sub.add_parser("verify-dp", help="check per-sample gradients of every DP mode on the real UNet")
    q.add_argument("--model", required=True, choices=MODEL_CONFIGS, help="a model config (bench list --models)")
    q.add_argument("--device", default="cpu")
    q.add_argument("--batch-size", type=int, default=4)
    q.add_argument("--modes", default=",".join(grad_sample_mode_names()), type=_choices_list(grad_sample_mode_names()),
                   help=f"comma-separated (default: all): {','.join(grad_sample_mode_names())}")
    q.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    q.add_argument("--unconditional", action="store_true", help="without the class embedding")
    q.add_argument("--amp", choices=("off", "bf16"), default="off",
                   help="bf16 autocast forward (compared at bf16 accuracy, 3e-2)")
    q.add_argument("--compile", action="store_true", help="torch.compile every mode's forward (reference stays eager)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_verify_dp, hushed=True)

    q = sub.add_parser("perf", help="images/s and peak memory of the plain step and every DP mode, "
                       "sampling and FID features, on one machine in one run")
    q.add_argument("--model", required=True, choices=MODEL_CONFIGS, help="a model config (bench list --models)")
    q.add_argument("--batch-size", "--batch", type=_positive, default=32, help="training batch size (default 32)")
    q.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    q.add_argument("--modes", default=",".join(("plain", *grad_sample_mode_names())),
                   type=_choices_list(("plain", *grad_sample_mode_names())),
                   help="comma-separated training modes (plain is always timed: the ratios are to it; default: "
                   f"all): {','.join(('plain', *grad_sample_mode_names()))}")
    q.add_argument("--steps", type=int, default=5, help="timed steps per mode (median; default 5)")
    q.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    q.add_argument("--amp", choices=("off", "bf16"), default="off", help="bf16 autocast of the forward")
    q.add_argument("--sampler", default="ddim", choices=SAMPLERS, help=f"{', '.join(SAMPLERS)} (default ddim)")
    q.add_argument("--sample-steps", type=int, default=10, help="denoising steps to time (0: skip sampling)")
    q.add_argument("--fid-batch", type=int, help="images per FID-feature call (default min(batch, 64); 0: skip)")
    q.add_argument("--compile", action="store_true",
                   help="torch.compile every training mode's forward (compiled during the warm-up)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_perf, hushed=True)

    from benchmark.sampler_cost import DEFAULT_SPECS

    q = sub.add_parser("sampler-cost", help="FID and time of a trained run's model under each sampler and "
                       "step count (the FID cost of fewer steps)")
    q.add_argument("run", help="a run folder (bench run --out ...): its global_model.pt and FID reference")
    q.add_argument("--samplers", default=DEFAULT_SPECS, help=f"SAMPLER:STEPS,... (default {DEFAULT_SPECS})")
    q.add_argument("--n", type=int, help="images per set (default: the run's fid_n_samples)")
    q.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    q.add_argument("--batch-size", "--batch", type=_positive, default=256, help="images per sampling batch (default 256)")
    q.add_argument("--data-root", help="where on-disk datasets lie (as for bench run)")
    q.add_argument("--save-samples", metavar="DIR", help="write each set as DIR/SAMPLER-STEPS.npz (uint8)")
    q.add_argument("--from-samples", metavar="DIR", help="score sets saved by --save-samples (no sampling)")
    q.add_argument("--no-score", action="store_true", help="sample and time only (no FID: e.g. on a GPU "
                   "machine without the Inception file; score later with --from-samples)")
    q.add_argument("--out", help="also write the report as JSON to this file")
    q.add_argument("--json", action="store_true")
    q.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    q.set_defaults(fn=cmd_sampler_cost, check=check_sampler_cost, hushed=True)

    q = sub.add_parser("partitions", help="write each party's own data file and the server's manifest "
                       "(for a deployment: one file per SuperNode)")
    q.add_argument("--scenario", required=True, help="a registered scenario by name, or a scenario as JSON")
    q.add_argument("--scale", default="cpu", choices=SCALES, help=f"{scales} (default cpu): sizes the same scenarios")
    q.add_argument("--seed", type=int, default=0, help="the run seed (default 0): it decides the split")
    q.add_argument("--out", required=True, help="folder for partition-<id>.npz and manifest.json")
    q.add_argument("--data-root", help="where on-disk datasets lie (as for bench run)")
    q.set_defaults(fn=cmd_partitions, check=check_partitions, hushed=True)

    q = sub.add_parser("summarize", help="rebuild leaderboards from run folders (no retraining)")
    q.add_argument("runs_dir", nargs="+", help="folder(s) of run folders (bench run --out; several: the trees of "
                   "a suite's shards, merged; the same run in two trees must be the same result)")
    _results_args(q)
    q.add_argument("--suite", action="append", help="only this suite (repeatable)")
    q.set_defaults(fn=cmd_summarize)

    from benchmark.compare import GATED, SETTINGS_RTOL

    q = sub.add_parser(
        "compare", help="gate NEW against BASE leaderboard: exit 1 on a regression",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compare two leaderboard CSVs scenario by scenario (rows matched by suite, scenario, "
        "scale) and exit 1 if NEW regresses, 0 if not, 2 if they cannot be compared.",
        epilog="A row regresses when:\n"
        "  its scenario_hash changed (the definition changed: rebuild the baseline);\n"
        f"  epsilon, noise_multiplier, sample_rate or max_grad_norm moved by more than a relative "
        f"{SETTINGS_RTOL:g},\n    or accountant, fid_impl or fid_n_samples changed;\n"
        "  a gated metric got worse by more than its band, where\n"
        "    band = max(SIGMAS * sqrt(std_base^2/n_base + std_new^2/n_new), margin)\n"
        "    (seeds' spread; a one-seed side takes the other side's spread; only the margin when neither\n"
        "    side has one; a DP row: never less than the metric's noise floor, as its noise differs\n"
        "    between runs by design and two seeds do not estimate its spread);\n"
        "  a metric BASE has is empty in NEW; audit_failed is true in NEW; a BASE row is missing in NEW.\n"
        "Then, per gated metric (rows without DP, DP rows: median and worst), the smallest regression the\n"
        "gate flags 95% of the time: band + 1.645 * SE (SE: the seeds'; on a DP row at least the secret\n"
        "noise its floor stands for, floor / (3 * sqrt(1/2 + 1)) per run).\n"
        "Gated metrics and default margins (override with --margin METRIC=VALUE, VALUE absolute or N%):\n"
        + "".join(f"  {m:24s} {g.describe()}\n" for m, g in GATED.items())
        + "Details: results/README.md.")
    q.add_argument("base", help="the baseline leaderboard.csv (e.g. the committed one)")
    q.add_argument("new", help="the leaderboard.csv to check")
    q.add_argument("--sigmas", type=float, default=3.0, help="band width in standard errors (default 3)")
    q.add_argument("--margin", action="append", metavar="METRIC=VALUE",
                   help="override a metric's margin, e.g. fid=5%% or mia_auc=0.01 (repeatable)")
    q.add_argument("--all", action="store_true", help="list every check, not only those that are not ok")
    q.add_argument("--markdown", action="store_true", help="print the table as Markdown (CI step summaries)")
    q.set_defaults(fn=cmd_compare)
    return p


def main(argv: list[str] | None = None) -> int:
    from benchmark.allocator import keep_freed_memory
    from benchmark.threads import passive_waits

    passive_waits()  # before any command loads torch: its OpenMP reads the wait policy once
    keep_freed_memory()  # freed tensors stay in the heap: no zero-filled pages per allocation
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad argument (2, one line already printed)
        return int(e.code or 0)
    try:
        if getattr(args, "check", None):  # cheap checks of the arguments, before anything heavy loads
            args.check(args)
        if getattr(args, "hushed", False):
            from benchmark import quiet

            with quiet.hush():
                return args.fn(args)
        return args.fn(args)
    except KeyboardInterrupt:
        print("bench: interrupted; completed runs are kept (rerun with --resume)", file=sys.stderr)
        return errors.EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the one place errors become one line
        if os.environ.get("BENCH_TRACEBACK"):
            raise
        print(f"bench: error: {errors.one_line(e)}", file=sys.stderr)
        return errors.exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
