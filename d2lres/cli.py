"""``d2lres`` (also ``python -m d2lres``): summary, data, train, compare, check, bench, profile."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import backends, isa, spec


def _shape(text: str) -> tuple[int, int, int]:
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CxHxW such as 1x224x224, got {text!r}") from None
    if len(dims) != 3:
        raise argparse.ArgumentTypeError(f"expected three sizes CxHxW such as 1x224x224, got {text!r}")
    return dims


def _backend(text: str) -> str:
    try:
        return backends.canonical(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _arch_name(text: str) -> str:
    try:
        return spec.get_arch(text).name
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _number(kind, setting: str):
    """An argparse type: ``kind`` (int or float) within ``presets.BOUNDS[setting]``."""
    def convert(text: str):
        from .presets import check_value
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        must = check_value(setting, value)
        if must:
            raise argparse.ArgumentTypeError(f"must be {must}, got {text}")
        return value
    return convert


def _resize(text: str) -> int:
    """An argparse type: an image side the network accepts (``spec.check_input``)."""
    side = _number(int, "resize")(text)
    try:
        spec.check_input((1, side, side), 1)
        spec.walk((1, side, side), 10)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{side} is too small for the network ({err})") from None
    return side


def _arch(args) -> spec.Arch:
    return spec.get_arch(args.arch, args.version, args.flavour)


def _arch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", type=_arch_name, default="resnet18",
                   help=f"one of {', '.join(spec.ARCH_NAMES)} (default resnet18, the chapter's)")
    p.add_argument("--version", type=int, choices=spec.VERSIONS, default=1,
                   help="1: post-activation blocks (the chapter's), 2: pre-activation")
    p.add_argument("--flavour", choices=spec.FLAVOURS, default="chapter",
                   help="chapter: biased convolutions, bare 1x1 shortcut; torchvision: torchvision's layout")


def cmd_summary(args) -> int:
    mod = backends.load(args.backend)
    arch = _arch(args)
    net = mod.resnet(arch.depth, arch.version, num_classes=args.classes, in_channels=args.input[0],
                     flavour=arch.flavour)
    rows = mod.shape_walk(net, args.input)
    expected = spec.walk(args.input, args.classes, arch)
    print(f"{arch} in {backends.canonical(args.backend)}, input 1x{'x'.join(map(str, args.input))} "
          f"(shapes as NCHW)\n")
    print(f"{'layer':<14}{'output shape':<20}{'MACs':>14}")
    for (name, shape), (_, want, macs) in zip(rows, expected):
        mark = "" if shape == want else f"   != spec {want}"
        print(f"{name:<14}{'x'.join(map(str, (1, *shape))):<20}{macs:>14,}{mark}")
    trainable, stats = mod.count_parameters(net)
    counts = spec.param_counts(args.classes, args.input[0], arch)
    print(f"\n{'stage':<14}{'trainable':>14}{'BN statistics':>16}")
    for stage in spec.STAGE_NAMES:
        print(f"{stage:<14}{counts[stage][0]:>14,}{counts[stage][1]:>16,}")
    ok = (trainable, stats) == counts["total"]
    print(f"{'total':<14}{trainable:>14,}{stats:>16,}   ({'= spec' if ok else 'spec: %s' % (counts['total'],)})")
    print(f"\nforward: {spec.forward_macs(args.input, args.classes, arch) / 1e9:.3f} GMAC per image")
    return 0 if ok and [s for _, s in rows] == [s for _, s, _ in expected] else 1


def cmd_data(args) -> int:
    from . import data
    result = data.fetch_fashion_mnist(args.data_dir)
    print(f"Fashion-MNIST in {result.data_dir} (served by: {result.source})")
    for name in data.FILES:
        print(f"  {name}  {(result.data_dir / name).stat().st_size:,} bytes")
    return 0


def _config(args):
    from .presets import preset
    return preset(args.preset).with_overrides(
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, resize=args.resize, seed=args.seed,
        momentum=args.momentum, weight_decay=args.weight_decay, schedule=args.schedule)


def cmd_train(args) -> int:
    from . import parallel
    from .run import train
    config = _config(args)
    arch = _arch(args)
    out = Path(args.out or f"runs/{args.preset}/{backends.canonical(args.backend)}")
    options = {"arch": arch, "init": args.init, "data_dir": args.data_dir, "resume": args.resume,
               "overwrite": args.overwrite, "limit": args.limit, "checkpoint_every": args.checkpoint_every,
               "devices": args.devices, "sync_bn": not args.no_sync_bn}
    if args.devices > 1 and not parallel.launched():  # start the backend's own launcher, which runs the job
        return _launch(args.backend, config, out, progress=not args.no_progress, **options)
    parallel.die_with_launcher()
    metrics = train(args.backend, config, out, progress=not args.no_progress, **options)
    if parallel.process_rank() == 0:
        print(f"{arch} in {metrics['backend']}: test accuracy {metrics['test_acc']:.4f}; "
              f"metrics, curves and weights in {out}")
    return 0


def _launch(backend: str, config, out: Path, **options) -> int:
    """``d2lres train --devices N``: the run as a JSON job in the process(es) ``parallel.launch_command``
    sets up for ``backend``'s engine; its error (if any) as this command's."""
    import tempfile

    from . import parallel, run, signals
    with tempfile.TemporaryDirectory(prefix="d2lres-job-") as tmp:
        error_file = Path(tmp) / "error"
        job = run.job(backend, config, out, error_file=error_file, **options)
        argv, env = parallel.launch_command(backend, options["devices"], job)
        status = signals.run_child(argv, env=env)
        if status:
            signals.check(*_stopped_at(error_file))
            error = error_file.read_text().strip() if error_file.exists() else ""
            raise run.RunError(error.removeprefix("d2lres: error: ") if error else
                               f"data-parallel training in {backend} failed (exit status {status}; its error is above)")
    metrics = json.loads((out / "metrics.json").read_text())
    print(f"{metrics['arch']} in {metrics['backend']} on {metrics['devices']} devices: test accuracy "
          f"{metrics['test_acc']:.4f}; metrics, curves and weights in {out}")
    return 0


def _stopped_at(error_file: Path) -> tuple[str, str, bool]:
    """``(where, what was kept, resumable)`` that an interrupted job (``d2lres.run``) wrote to ``error_file``."""
    try:
        stopped = json.loads(error_file.read_text())["interrupted"]
        return str(stopped["where"]), str(stopped["detail"]), bool(stopped["resumable"])
    except (OSError, ValueError, TypeError, KeyError):
        return "", "", False


def cmd_check(args) -> int:
    from . import files
    from .checks import cross_backend_checks, format_checks
    names = [backends.canonical(b) for b in args.backends]
    result = cross_backend_checks(names, input_shape=args.input, arch=_arch(args))
    table = format_checks(result)
    print(table)
    if args.json:
        files.atomic_write(args.json, lambda f: f.write(json.dumps({**result, "table": table}, indent=1).encode()))
    return 0 if result["ok"] else 1


def cmd_compare(args) -> int:
    if args.check:
        return cmd_check(args)
    from .compare import compare_training
    names = [backends.canonical(b) for b in args.backends]
    report = compare_training(_config(args), args.out or f"runs/compare-{args.preset}", names, arch=_arch(args),
                              data_dir=args.data_dir, limit=args.limit, overwrite=args.overwrite,
                              progress=not args.no_progress, held=args.isa, devices=args.devices,
                              sync_bn=not args.no_sync_bn)
    print(report.read_text())
    print(f"report: {report}")
    return 0


def cmd_bench(args) -> int:
    from dataclasses import replace

    from .bench import BenchConfig, bench
    config = BenchConfig.quick() if args.quick else BenchConfig()
    overrides = {k: v for k, v in (("size", args.size), ("repeats", args.repeats), ("rounds", args.rounds))
                 if v is not None}
    if args.batches:
        overrides["batches"] = tuple(args.batches)
    config = replace(config, **overrides)
    out = Path(args.out or ("runs/bench-quick" if args.quick else "runs/bench"))
    report = bench([backends.canonical(b) for b in args.backends], out, config, data_dir=args.data_dir,
                   with_variants=args.variants, held=args.isa)
    print(report["table"])
    print(f"\nreport: {out / 'bench.md'}, {out / 'bench.json'}, chart: {out / 'bench.png'}")
    return 0


def cmd_profile(args) -> int:
    from dataclasses import replace

    from .profile import ProfileConfig, profile
    config = ProfileConfig.quick() if args.quick else ProfileConfig()
    config = replace(config, **{k: v for k, v in (("size", args.size), ("batch", args.batch),
                                                  ("repeats", args.repeats)) if v is not None})
    out = Path(args.out or ("runs/profile-quick" if args.quick else "runs/profile"))
    report = profile([backends.canonical(b) for b in args.backends], out, config, held=args.isa)
    print(report["table"])
    print(f"\nreport: {out / 'profile.md'}, {out / 'profile.json'}, chart: {out / 'profile.png'}")
    return 0


def _training_options(p: argparse.ArgumentParser) -> None:
    from .presets import BOUNDS, SCHEDULES
    p.add_argument("--preset", default="quick", choices=["quick", "chapter"])
    for flag, kind in (("--epochs", int), ("--lr", float), ("--batch-size", int), ("--seed", int),
                       ("--momentum", float), ("--weight-decay", float)):
        setting = flag[2:].replace("-", "_")
        p.add_argument(flag, type=_number(kind, setting), help=f"overrides the preset ({BOUNDS[setting][1]})")
    p.add_argument("--resize", type=_resize, help="overrides the preset (image side, an integer >= 1)")
    p.add_argument("--schedule", choices=SCHEDULES, help="overrides the preset")
    p.add_argument("--out", help="the run folder")
    p.add_argument("--overwrite", action="store_true", help="replace a run found in --out")
    p.add_argument("--data-dir", help="Fashion-MNIST directory (default: $D2LRES_DATA_DIR or the user cache)")
    p.add_argument("--limit", type=_number(int, "limit"),
                   help="use only the first N images of each split (smoke runs; N >= 1)")
    p.add_argument("--devices", type=_number(int, "devices"), default=1, metavar="N",
                   help="data-parallel on N devices of this machine with the framework's own engine (default 1; "
                        "the global batch is split over them)")
    p.add_argument("--no-sync-bn", action="store_true",
                   help="with --devices: BatchNorm per device instead of synchronized (see README)")


def _check_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", help="also write the results as JSON")
    p.add_argument("--input", type=_shape, default=(1, 96, 96), help="CxHxW (default 1x96x96)")
    p.add_argument("--backends", nargs="+", default=backends.available(), type=_backend)
    _arch_options(p)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="d2lres", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summary", help="layer shapes and parameter counts of one backend's ResNet-18 "
                                       "(or any variant: --arch, --version, --flavour)")
    s.add_argument("--backend", required=True, type=_backend, help="torch, tf or mxnet")
    s.add_argument("--input", type=_shape, default=(1, 224, 224), help="CxHxW (default 1x224x224)")
    s.add_argument("--classes", type=int, default=10)
    _arch_options(s)
    s.set_defaults(func=cmd_summary)
    d = sub.add_parser("data", help="fetch and verify Fashion-MNIST, say which source served")
    d.add_argument("--data-dir")
    d.set_defaults(func=cmd_data)
    t = sub.add_parser("train", help="train ResNet-18 (or --arch ...) in one backend")
    t.add_argument("--backend", required=True, type=_backend)
    t.add_argument("--init", help="initial weights (.npz, neutral format)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint "
                                                         "(the same options are required)")
    t.add_argument("--checkpoint-every", type=_number(int, "epochs"), default=100, metavar="STEPS",
                   help="write the checkpoint every STEPS steps (and at each epoch's end; default 100)")
    t.add_argument("--no-progress", action="store_true")
    _arch_options(t)
    _training_options(t)
    t.set_defaults(func=cmd_train)
    c = sub.add_parser("compare", help="train all backends and report (or --check: as d2lres check)")
    c.add_argument("--check", action="store_true", help="only the cross-backend checks (same as d2lres check)")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.add_argument("--isa", choices=isa.ISAS, default="native",
                   help="avx2: hold oneDNN, MKL and OpenBLAS to AVX2 in every backend's process")
    _check_options(c)
    _training_options(c)
    c.set_defaults(func=cmd_compare)
    k = sub.add_parser("check", help="the same-function checks: every pair of backends on random weights")
    _check_options(k)
    k.set_defaults(func=cmd_check)
    b = sub.add_parser("bench", help="images/s per backend, d2lres vs the chapter's way, vs the matmul limit")
    b.add_argument("--quick", action="store_true", help="a smoke run in seconds (numbers not meaningful)")
    b.add_argument("--variants", action="store_true",
                   help="also time each backend's other switches (channels-last or not, torch.compile, "
                        "eager TF, non-hybridized MXNet)")
    b.add_argument("--backends", nargs="+", default=backends.available(), type=_backend)
    b.add_argument("--size", type=int, help="image side (default 96, the chapter's)")
    b.add_argument("--batches", type=int, nargs="+", help="batch sizes (default 256 32); the first is end to end")
    b.add_argument("--repeats", type=int, help="timed runs per step figure (median reported)")
    b.add_argument("--rounds", type=int, help="end-to-end rounds per way, alternating (median reported)")
    b.add_argument("--out", help="output directory (default runs/bench)")
    b.add_argument("--isa", choices=isa.ISAS, default="native",
                   help="avx2: hold oneDNN, MKL and OpenBLAS to AVX2 in every timed process (what most "
                        "learners' CPUs have), to measure an AVX2 machine on a newer one")
    b.add_argument("--data-dir", help="Fashion-MNIST directory")
    b.set_defaults(func=cmd_bench)
    f = sub.add_parser("profile", help="where a training step's time goes: each stage of ResNet-18 timed apart "
                                       "(forward + backward), the update and the step, per backend")
    f.add_argument("--quick", action="store_true", help="a smoke run in seconds (numbers not meaningful)")
    f.add_argument("--backends", nargs="+", default=backends.available(), type=_backend)
    f.add_argument("--size", type=_resize, help="image side (default 40, the quick preset's; 96 is the chapter's)")
    f.add_argument("--batch", type=_number(int, "batch_size"), help="batch size (default 128)")
    f.add_argument("--repeats", type=_number(int, "epochs"), help="timed rounds (median reported; default 7)")
    f.add_argument("--out", help="output directory (default runs/profile)")
    f.add_argument("--isa", choices=isa.ISAS, default="native",
                   help="avx2: hold oneDNN, MKL and OpenBLAS to AVX2 in every timed process")
    f.set_defaults(func=cmd_profile)
    return p


def report_errors(func, *args, stream=None) -> int:
    """``func(*args)``, with every expected failure as one ``d2lres: error:`` line on ``stream``
    (default stderr) and exit status 2: bad values, data, training and file errors carry their
    own message; an ``OSError`` is named by its file."""
    try:
        return func(*args)
    except (ValueError, backends.BackendUnavailable) as err:
        message = str(err)
    except OSError as err:  # unwritable, full disk, a folder where a file belongs, ...
        where = err.filename2 if err.filename2 is not None else err.filename  # a rename's target
        message = (f"{where}: {err.strerror or err}; check the path, its permissions and free space"
                   if where else f"{err}")
    except Exception as err:  # data and training errors carry their own clear message
        from .data import DataError
        from .training import TrainingError
        if not isinstance(err, (DataError, TrainingError)):
            raise
        message = str(err)
    print(f"d2lres: error: {message}", file=stream or sys.stderr)
    return 2


def main(argv=None) -> int:
    from . import signals
    with signals.handled():
        argv = sys.argv[1:] if argv is None else list(argv)
        args = parser().parse_args(argv)
        try:
            status = report_errors(args.func, args)
            signals.check("the end", "the command had finished")
        except signals.Interrupted as err:
            return signals.report(err, argv)
        return status
