"""``d2lres`` (also ``python -m d2lres``): summary, data, train, compare, check, bench, profile.

The light modules every command uses are imported here; a subcommand's own (its job, numpy's
checks, the plots) when it runs, so that ``d2lres --help`` and a quick command load nothing
they do not need."""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from . import __version__, spec
from .core import precision
from .core.description import RunDescription
from .core.presets import BOUNDS, SCHEDULES, check_value, preset
from .errors import report_errors
from .host import backends, isa, process
from .util import files, signals


def _shape(text: str) -> tuple[int, int, int]:
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CxHxW such as 1x224x224, got {text!r}") from None
    if len(dims) != 3:
        raise argparse.ArgumentTypeError(f"expected three sizes CxHxW such as 1x224x224, got {text!r}")
    if min(dims) < 1:
        raise argparse.ArgumentTypeError(f"every size must be at least 1, got {text!r}")
    return dims


def _count(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _backend(text: str) -> str:
    """An argparse type: a backend's canonical name (the one parse of it: the commands use it as it is)."""
    try:
        return backends.canonical(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _folder(text: str) -> str:
    """An argparse type: a folder's path, not empty (an empty one would silently mean another)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; name a folder (or leave the option out for its default)")
    return text


def _arch_name(text: str) -> spec.Arch:
    """An argparse type: the architecture a name gives (the one parse of it; ``--version`` and
    ``--flavour`` are set on it by :func:`_arch`)."""
    try:
        return spec.get_arch(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _number(kind, setting: str):
    """An argparse type: ``kind`` (int or float) within ``presets.BOUNDS[setting]``."""
    def convert(text: str):
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
    p.add_argument("--flavour", choices=spec.FLAVOURS,
                   help="chapter: biased convolutions, bare 1x1 shortcut; torchvision: torchvision's layout "
                        "(default: chapter; a ResNeXt name's own, torchvision for resnext50_32x4d and the 101s)")


#: Above this many bytes of activations for one image, ``summary`` takes the shapes from the spec
#: instead of running the input through the backend's network.
SUMMARY_WALK_LIMIT = 2**28


def cmd_summary(args) -> int:
    from .util import memory
    arch = _arch(args)
    counts = spec.param_counts(args.classes, args.input[0], arch)
    memory.require(memory.FLOAT32 * sum(counts["total"]), f"a network with {args.classes:,} classes "
                   f"({sum(counts['total']):,} parameters in float32)", "use fewer --classes")
    expected = spec.walk(args.input, args.classes, arch)
    large = memory.activations_bytes(1, expected) > SUMMARY_WALK_LIMIT
    mod = backends.load(args.backend)
    net = mod.resnet(arch.name, arch.version, num_classes=args.classes, in_channels=args.input[0],
                     flavour=arch.flavour)
    rows = mod.shape_walk(net, (args.input[0], 64, 64) if large else args.input)  # builds a lazy network
    if large:
        rows = [(name, shape) for name, shape, _ in expected]
    print(f"{arch} in {args.backend}, input 1x{'x'.join(map(str, args.input))} "
          f"(shapes as NCHW)\n")
    if large:
        print(f"(shapes from the spec: running this input through the network would take about "
              f"{memory.gib(memory.activations_bytes(1, expected))} of activations)\n")
    print(f"{'layer':<14}{'output shape':<20}{'MACs':>14}")
    for (name, shape), (_, want, macs) in zip(rows, expected):
        mark = "" if shape == want else f"   != spec {want}"
        print(f"{name:<14}{'x'.join(map(str, (1, *shape))):<20}{macs:>14,}{mark}")
    trainable, stats = mod.count_parameters(net)
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
    return preset(args.preset).with_overrides(
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, resize=args.resize, seed=args.seed,
        momentum=args.momentum, weight_decay=args.weight_decay, schedule=args.schedule, precision=args.precision)


def header(arch, backend: str, preset: str, config, limit, out) -> str:
    """What ``d2lres train`` is about to do, in one line."""
    c = config
    images = f"the first {limit:,} images of each split" if limit else "all 60,000 training and 10,000 test images"
    return (f"d2lres train: {arch} in {backend}; preset {preset}: {c.epochs} epoch(s), batch {c.batch_size}, "
            f"{f'resize {c.resize}' if c.resize else '28x28'}, lr {c.lr} ({c.schedule}), momentum {c.momentum}, "
            f"weight decay {c.weight_decay}, seed {c.seed}, {c.precision}; {images}; run folder {out}")


def describe_run(args) -> RunDescription:
    """``d2lres train``'s options as the run they describe (each already parsed by its argparse type)."""
    out = Path(args.out or train_out(args.preset, args.backend))
    return RunDescription(args.backend, _arch(args), _config(args), out,
                          init=None if args.init is None else Path(args.init),
                          data_dir=None if args.data_dir is None else Path(args.data_dir), limit=args.limit,
                          resume=args.resume, overwrite=args.overwrite, checkpoint_every=args.checkpoint_every,
                          devices=args.devices, sync_bn=not args.no_sync_bn, progress=not args.no_progress)


def cmd_train(args) -> int:
    from . import parallel, run
    description = describe_run(args)
    out = description.out
    if description.devices > 1 and not parallel.launched():  # the backend's own launcher runs it as a job
        metrics = run.launch(description)
        print(f"{metrics['arch']} in {metrics['backend']} on {metrics['devices']} devices: test accuracy "
              f"{metrics['test_acc']:.4f}; metrics, curves and weights in {out}")
        return 0
    parallel.die_with_launcher()
    if parallel.process_rank() == 0:
        print(header(description.arch, description.backend, args.preset, description.config, description.limit, out))
    metrics = run.execute(description)
    if parallel.process_rank() == 0:
        print(f"{description.arch} in {metrics['backend']}: test accuracy {metrics['test_acc']:.4f}; "
              f"metrics, curves and weights in {out}")
    return 0


def cmd_check(args) -> int:
    from .checks import cross_backend_checks, format_checks
    names = list(args.backends)
    result = cross_backend_checks(names, input_shape=args.input, arch=_arch(args),
                                  precision=args.precision or precision.DEFAULT,
                                  reference=args.reference, save_to=args.save_reference)
    table = format_checks(result)
    print(table)
    if args.json:
        from . import data
        from .util.stamps import stamps
        record = {**result, "table": table, "stamps": stamps(names, data.data_stamp(), held=isa.held_isa())}
        files.atomic_write_text(args.json, json.dumps(record, indent=1))
    return 0 if result["ok"] else 1


def cmd_compare(args) -> int:
    from .pipeline.compare import compare_training
    names = list(args.backends)
    report = compare_training(_config(args), args.out or compare_out(args.preset), names, arch=_arch(args),
                              data_dir=args.data_dir, limit=args.limit, overwrite=args.overwrite,
                              progress=not args.no_progress, held=args.isa, devices=args.devices,
                              sync_bn=not args.no_sync_bn)
    print(report.read_text())
    print(f"report: {report}")
    return 0


def cmd_bench(args) -> int:
    from .perf.bench import BenchConfig, bench
    config = BenchConfig.quick() if args.quick else BenchConfig()
    overrides = {k: v for k, v in (("size", args.size), ("repeats", args.repeats), ("rounds", args.rounds),
                                   ("arch", args.arch and args.arch.name)) if v is not None}
    if args.batches:
        overrides["batches"] = tuple(args.batches)
    config = replace(config, **overrides)
    out = Path(args.out or ("runs/bench-quick" if args.quick else "runs/bench"))
    report = bench(args.backends, out, config, data_dir=args.data_dir,
                   with_variants=args.variants, held=args.isa, precisions=tuple(dict.fromkeys(args.precision)))
    print(report["table"])
    print(f"\nreport: {out / 'bench.md'}, {out / 'bench.json'}, chart: {out / 'bench.png'}")
    return 0


def cmd_profile(args) -> int:
    from .perf.profile import ProfileConfig, profile
    config = ProfileConfig.quick() if args.quick else ProfileConfig()
    config = replace(config, **{k: v for k, v in (("size", args.size), ("batch", args.batch),
                                                  ("repeats", args.repeats)) if v is not None})
    out = Path(args.out or ("runs/profile-quick" if args.quick else "runs/profile"))
    report = profile(args.backends, out, config, held=args.isa)
    print(report["table"])
    print(f"\nreport: {out / 'profile.md'}, {out / 'profile.json'}, chart: {out / 'profile.png'}")
    return 0


def train_out(preset_name: str, backend: str) -> str:
    """``d2lres train``'s run folder when ``--out`` is left out."""
    return f"runs/{preset_name}/{backend}"


def compare_out(preset_name: str) -> str:
    """``d2lres compare``'s folder when ``--out`` is left out."""
    return f"runs/compare-{preset_name}"


def preset_help() -> str:
    """What each preset trains, from the presets themselves."""
    def side(c):
        return f"{c.resize}x{c.resize}" if c.resize else "28x28"
    quick, chapter = preset("quick"), preset("chapter")
    return (f"quick: {quick.epochs} epoch(s) at {side(quick)}, batch {quick.batch_size} (minutes on a CPU); "
            f"chapter: the chapter's {chapter.epochs} epochs at {side(chapter)}, batch {chapter.batch_size}")


def _training_options(p: argparse.ArgumentParser, out: str) -> None:
    quick, chapter = preset("quick"), preset("chapter")
    p.add_argument("--preset", default="quick", choices=["quick", "chapter"], help=preset_help())
    for flag, kind in (("--epochs", int), ("--lr", float), ("--batch-size", int), ("--seed", int),
                       ("--momentum", float), ("--weight-decay", float)):
        setting = flag[2:].replace("-", "_")
        p.add_argument(flag, type=_number(kind, setting),
                       help=f"{BOUNDS[setting][1]}; overrides the preset (quick {getattr(quick, setting)}, "
                            f"chapter {getattr(chapter, setting)})")
    p.add_argument("--resize", type=_resize, help=f"image side, an integer >= 1; overrides the preset (quick "
                                                  f"{quick.resize}, chapter {chapter.resize})")
    p.add_argument("--schedule", choices=SCHEDULES, help=f"overrides the preset (quick {quick.schedule}, "
                                                         f"chapter {chapter.schedule})")
    _option(p, "--precision")
    _option(p, "--out", help=f"the run folder: new, empty, or a d2lres run of this command (default {out})")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the d2lres run found in --out (only d2lres's own files, and only once every "
                        "check has passed)")
    _option(p, "--data-dir")
    p.add_argument("--limit", type=_number(int, "limit"),
                   help="use only the first N images of each split (smoke runs; N >= 1)")
    p.add_argument("--devices", type=_number(int, "devices"), default=1, metavar="N",
                   help="data-parallel on N devices of this machine with the framework's own engine (default 1; "
                        "the global batch is split over them)")
    p.add_argument("--no-sync-bn", action="store_true",
                   help="with --devices: BatchNorm per device instead of synchronized (see README)")
    _option(p, "--no-progress")


PRECISION_HELP = ("bf16: mixed precision (bfloat16 convolutions and dense layer; weights, optimizer state, "
                  "BatchNorm and loss in float32); faster where the CPU or GPU has bfloat16 units, slower (with a "
                  "warning) where it does not; MXNet refuses it")


BACKEND_NAMES = ", ".join(backends.BACKENDS) + " (also pytorch, tensorflow)"

#: The options several commands take, each defined once: ``add_argument``'s keywords (a callable
#: default is called when the parser is built). A command may give its own help or default.
OPTIONS = {
    "--backend": {"required": True, "type": _backend, "help": f"one of {BACKEND_NAMES}"},
    "--backends": {"nargs": "+", "default": backends.available, "type": _backend,
                   "help": f"which backends ({BACKEND_NAMES}; default: every one installed)"},
    "--input": {"type": _shape, "help": "CxHxW"},
    "--precision": {"choices": precision.PRECISIONS, "help": PRECISION_HELP + " (default float32)"},
    "--isa": {"choices": isa.ISAS, "default": "native",
              "help": "avx2: hold oneDNN, MKL, OpenBLAS and the code XLA compiles to AVX2 in every process the command "
                      "starts (what most learners' CPUs have), to measure an AVX2 machine on a newer one"},
    "--out": {"type": _folder},
    "--data-dir": {"type": _folder, "help": "Fashion-MNIST directory (default: $D2LRES_DATA_DIR or the user cache)"},
    "--no-progress": {"action": "store_true", "help": "no progress bar"},
    "--quick": {"action": "store_true", "help": "a smoke run in seconds (numbers not meaningful)"},
    "--verbose": {"action": "store_true",
                  "help": "keep the frameworks' own log lines (TensorFlow's INFO lines: oneDNN, CPU features, ...), "
                          "here and in the processes the command starts"},
}


def _option(p: argparse.ArgumentParser, flag: str, **own) -> None:
    """Add the shared option ``flag`` (:data:`OPTIONS`) to ``p``, with this command's ``own`` keywords."""
    keywords = {**OPTIONS[flag], **own}
    if callable(keywords.get("default")):
        keywords["default"] = keywords["default"]()
    p.add_argument(flag, **keywords)


class _Help(argparse.HelpFormatter):
    """Every option's default at the end of its help, unless the help names it already."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings \
                and "default" not in text:
            shown = " ".join(map(str, action.default)) if isinstance(action.default, list) else action.default
            text += f" (default: {'x'.join(map(str, shown)) if isinstance(shown, tuple) else shown})"
        return text


DESCRIPTION = ("The ResNet chapter of Dive into Deep Learning in PyTorch, TensorFlow, MXNet and JAX: train it, "
               "compare the backends, check that they compute the same function, measure their speed. "
               "Also: python -m d2lres.")


def parser() -> argparse.ArgumentParser:
    from .perf.bench import BenchConfig
    from .perf.profile import ProfileConfig
    p = argparse.ArgumentParser(prog="d2lres", description=DESCRIPTION, formatter_class=_Help)
    p.add_argument("--version", action="version", version=f"d2lres {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=lambda **kw: argparse.ArgumentParser(
        formatter_class=_Help, **kw))
    s = sub.add_parser("summary", help="layer shapes and parameter counts of one backend's ResNet-18 "
                                       "(or any variant: --arch, --version, --flavour)")
    _option(s, "--backend")
    _option(s, "--input", default=(1, 224, 224))
    s.add_argument("--classes", type=_count, default=10, help="classes of the head (default 10, Fashion-MNIST's)")
    _arch_options(s)
    s.set_defaults(func=cmd_summary)
    d = sub.add_parser("data", help="fetch and verify Fashion-MNIST, say which source served")
    _option(d, "--data-dir")
    d.set_defaults(func=cmd_data)
    t = sub.add_parser("train", help="train ResNet-18 (or --arch ...) in one backend")
    _option(t, "--backend")
    t.add_argument("--init", help="initial weights (.npz, neutral format)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint "
                                                         "(the same options are required)")
    t.add_argument("--checkpoint-every", type=_number(int, "steps"), default=100, metavar="STEPS",
                   help="write the checkpoint every STEPS steps (and at each epoch's end)")
    _arch_options(t)
    _training_options(t, train_out("PRESET", "BACKEND"))
    t.set_defaults(func=cmd_train)
    c = sub.add_parser("compare", help="train every backend from the same weights and report (the checks alone: "
                                       "d2lres check)")
    _option(c, "--backends")
    _option(c, "--isa")
    _arch_options(c)
    _training_options(c, compare_out("PRESET"))
    c.set_defaults(func=cmd_compare)
    k = sub.add_parser("check", help="the same-function checks: every pair of backends on random weights")
    k.add_argument("--json", help="also write the results as JSON")
    _option(k, "--input", default=(1, 96, 96))
    _option(k, "--backends")
    _arch_options(k)
    k.add_argument("--save-reference", metavar="FILE",
                   help="also write the float64 reference's results to FILE (.npz), for --reference where PyTorch "
                        "is not installed")
    k.add_argument("--reference", metavar="FILE",
                   help="read the float64 reference from FILE (written by --save-reference with the same options) "
                        "instead of computing it in PyTorch")
    _option(k, "--precision")
    k.set_defaults(func=cmd_check)
    b = sub.add_parser("bench", help="images/s per backend, d2lres vs the chapter's way, vs the matmul limit")
    _option(b, "--quick")
    b.add_argument("--variants", action="store_true",
                   help="also time each backend's other switches (channels-last or not, torch.compile, "
                        "eager TF, non-hybridized MXNet)")
    _option(b, "--backends")
    bench_defaults, profile_defaults = BenchConfig(), ProfileConfig()
    quick, chapter = preset("quick"), preset("chapter")
    b.add_argument("--size", type=int, help=f"image side (default {bench_defaults.size}"
                   + (", the chapter's)" if bench_defaults.size == chapter.resize else ")"))
    b.add_argument("--batches", type=int, nargs="+", help=f"batch sizes (default "
                   f"{' '.join(map(str, bench_defaults.batches))}); the first is end to end")
    b.add_argument("--repeats", type=int, help=f"timed runs per step figure (median reported; default "
                   f"{bench_defaults.repeats})")
    b.add_argument("--rounds", type=int, help=f"end-to-end rounds per way, alternating (median reported; default "
                   f"{bench_defaults.rounds})")
    b.add_argument("--arch", type=_arch_name, help=f"the network, in its name's default flavour: one of "
                   f"{', '.join(spec.ARCH_NAMES)} (default {bench_defaults.arch}, the chapter's)")
    _option(b, "--out", help="output directory (default runs/bench)")
    _option(b, "--isa")
    _option(b, "--data-dir")
    _option(b, "--precision", nargs="+", default=[precision.DEFAULT],
            help="the precisions to time, in one run with their ratio (e.g. --precision float32 bf16); "
                 + PRECISION_HELP)
    b.set_defaults(func=cmd_bench)
    f = sub.add_parser("profile", help="where a training step's time goes: each stage of ResNet-18 timed apart "
                                       "(forward + backward), the update and the step, per backend")
    _option(f, "--quick")
    _option(f, "--backends")
    f.add_argument("--size", type=_resize, help=f"image side (default {profile_defaults.size}"
                   + (", the quick preset's" if profile_defaults.size == quick.resize else "")
                   + f"; {chapter.resize} is the chapter's)")
    f.add_argument("--batch", type=_number(int, "batch_size"), help=f"batch size (default {profile_defaults.batch})")
    f.add_argument("--repeats", type=_number(int, "steps"), help=f"timed rounds (median reported; default "
                   f"{profile_defaults.repeats})")
    _option(f, "--out", help="output directory (default runs/profile)")
    _option(f, "--isa")
    f.set_defaults(func=cmd_profile)
    for command in sub.choices.values():
        _option(command, "--verbose")
    return p


def main(argv=None) -> int:
    with signals.handled():
        argv = sys.argv[1:] if argv is None else list(argv)
        args = parser().parse_args(argv)
        process.log_lines(args.verbose)  # before any framework is imported, here or in the processes it starts
        try:
            status = report_errors(args.func, args)
            signals.check("the end", "the command had finished")
            sys.stdout.flush()
        except signals.Interrupted as err:
            return signals.report(err, argv)
        except BrokenPipeError:
            return _reader_gone()
        return status


#: The exit status when the output's reader has gone (``d2lres data | head -1``): 128 + SIGPIPE, the
#: status of a command that SIGPIPE ends (what ``cat`` or ``yes`` give there), so that a pipeline under
#: ``set -o pipefail`` treats d2lres as it treats them; no error line (nothing went wrong but the pipe).
BROKEN_PIPE_STATUS = 128 + 13


def _reader_gone() -> int:
    """Stop writing to the closed pipe (Python's flush at exit would fail again) and end quietly."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return BROKEN_PIPE_STATUS
