"""``python -m modelops``: run | train | serve | crds | local | report | card | reproduce."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator (Kopf) against the current kubeconfig")
    run.add_argument("--verbose", action="store_true")

    train = sub.add_parser("train", help="train one model (inside a TrainingRun's Job pod)")
    train.add_argument("--spec", required=True, help="the TrainingRun spec as JSON")
    train.add_argument("--output", required=True, help="s3://bucket/prefix for the artifacts")
    train.add_argument("--termination-log", type=Path, default=Path("/dev/termination-log"))

    sub.add_parser("serve", help="serve models over the Open Inference Protocol (see serve -h)")

    crds = sub.add_parser("crds", help="write the CRDs generated from the API models")
    crds.add_argument("--out", type=Path, default=DEFAULT_CRD_DIR)
    crds.add_argument("--check", action="store_true", help="fail if the files are stale")

    local = sub.add_parser("local", help="the embedded single-machine cluster")
    local.add_argument("action", choices=["up", "demo", "down"])

    sub.add_parser(
        "report", help="write a DriftMonitor's drift report as one HTML file (see report -h)"
    )
    sub.add_parser("card", help="write a ModelVersion's model card (see card -h)")
    sub.add_parser(
        "reproduce", help="train a ModelVersion again and compare predictions (see reproduce -h)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        # The server owns its options (workers, limits, routing source).
        from modelops.serving.app import main as serve_main

        return serve_main(argv[1:])
    if argv[:1] in (["report"], ["card"], ["reproduce"]):
        # The same commands as `kubectl modelops report|card|reproduce`.
        from modelops.insight.plugin import main as plugin_main

        return plugin_main(argv, prog="modelops")
    args = _parser().parse_args(argv)
    if args.command == "run":
        from modelops.controllers.main import run_operator

        return run_operator(verbose=args.verbose)
    if args.command == "train":
        from modelops.training.trainer import main as train_main

        return train_main(args.spec, args.output, args.termination_log)
    if args.command == "crds":
        return _crds(args.out, args.check)
    from modelops.local.commands import main as local_main

    return local_main(args.action)


def _crds(out: Path, check: bool) -> int:
    from modelops import GROUP
    from modelops.api.crd import KINDS, KUSTOMIZATION, render, render_kustomization

    files = {f"{GROUP}_{kind.plural}.yaml": render(kind) for kind in KINDS}
    files[KUSTOMIZATION] = render_kustomization()
    stale = []
    for name, text in files.items():
        path = out / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
        else:
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"stale CRDs (run `make crds`): {', '.join(map(str, stale))}", file=sys.stderr)
        return 1
    return 0
