"""``d2lres`` (also ``python -m d2lres``): summary, data, train, compare, bench."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import backends, spec


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
    from .run import train
    config = _config(args)
    out = Path(args.out or f"runs/{args.preset}/{backends.canonical(args.backend)}")
    metrics = train(args.backend, config, out, init=args.init, data_dir=args.data_dir, resume=args.resume,
                    progress=not args.no_progress, limit=args.limit)
    print(f"test accuracy {metrics['test_acc']:.4f}; metrics, curves and weights in {out}")
    return 0


def cmd_compare(args) -> int:
    names = [backends.canonical(b) for b in args.backends]
    if args.check:
        from .checks import cross_backend_checks, format_checks
        result = cross_backend_checks(names, input_shape=args.input, arch=_arch(args))
        table = format_checks(result)
        print(table)
        if args.json:
            Path(args.json).write_text(json.dumps({**result, "table": table}, indent=1))
        return 0 if result["ok"] else 1
    from .compare import compare_training
    report = compare_training(_config(args), args.out or f"runs/compare-{args.preset}", names,
                              data_dir=args.data_dir, limit=args.limit)
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
                   with_variants=args.variants)
    print(report["table"])
    print(f"\nreport: {out / 'bench.md'}, {out / 'bench.json'}, chart: {out / 'bench.png'}")
    return 0


def _training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="quick", choices=["quick", "chapter"])
    for flag, kind in (("--epochs", int), ("--lr", float), ("--batch-size", int), ("--resize", int),
                       ("--seed", int), ("--momentum", float), ("--weight-decay", float)):
        p.add_argument(flag, type=kind, help="overrides the preset")
    p.add_argument("--schedule", choices=["constant", "onecycle"], help="overrides the preset")
    p.add_argument("--out", help="output directory")
    p.add_argument("--data-dir", help="Fashion-MNIST directory (default: $D2LRES_DATA_DIR or the user cache)")
    p.add_argument("--limit", type=int, help="use only the first N images of each split (smoke runs)")


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
    t = sub.add_parser("train", help="train ResNet-18 in one backend")
    t.add_argument("--backend", required=True, type=_backend)
    t.add_argument("--init", help="initial weights (.npz, neutral format)")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    t.add_argument("--no-progress", action="store_true")
    _training_options(t)
    t.set_defaults(func=cmd_train)
    c = sub.add_parser("compare", help="train all backends and report, or --check the same-function checks")
    c.add_argument("--check", action="store_true", help="only the cross-backend checks on random weights")
    c.add_argument("--json", help="with --check: also write the results as JSON")
    c.add_argument("--input", type=_shape, default=(1, 96, 96), help="with --check: CxHxW")
    c.add_argument("--backends", nargs="+", default=list(backends.BACKENDS), type=_backend)
    _arch_options(c)
    _training_options(c)
    c.set_defaults(func=cmd_compare)
    b = sub.add_parser("bench", help="images/s per backend, d2lres vs the chapter's way, vs the matmul limit")
    b.add_argument("--quick", action="store_true", help="a smoke run in seconds (numbers not meaningful)")
    b.add_argument("--variants", action="store_true",
                   help="also time each backend's other switches (channels-last or not, torch.compile, "
                        "eager TF, non-hybridized MXNet)")
    b.add_argument("--backends", nargs="+", default=list(backends.BACKENDS), type=_backend)
    b.add_argument("--size", type=int, help="image side (default 96, the chapter's)")
    b.add_argument("--batches", type=int, nargs="+", help="batch sizes (default 256 32); the first is end to end")
    b.add_argument("--repeats", type=int, help="timed runs per step figure (median reported)")
    b.add_argument("--rounds", type=int, help="end-to-end rounds per way, alternating (median reported)")
    b.add_argument("--out", help="output directory (default runs/bench)")
    b.add_argument("--data-dir", help="Fashion-MNIST directory")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, backends.BackendUnavailable) as err:
        print(f"d2lres: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # data and training errors carry their own clear message
        from .data import DataError
        from .training import TrainingError
        if isinstance(err, (DataError, TrainingError)):
            print(f"d2lres: error: {err}", file=sys.stderr)
            return 2
        raise
