"""`python -m imd_hpc COMMAND ...`: one entry point, each command a module with main(argv).

Commands import lazily so that, e.g., `flops` never loads DALI and `savld` never loads DeepSpeed.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "flops": ("imd_hpc.flops", "params and GFLOPs per component and per 3x4 views"),
    "savld": ("imd_hpc.savld", "build or show the semantic audio-video label dictionary"),
    "synth": ("imd_hpc.synth.generate", "generate the synthetic audio-visual dataset"),
    "tagger": ("imd_hpc.synth.tagger_train", "train the embedded AST tagger on synthetic sounds"),
    "targets": ("imd_hpc.synth.target_report", "relevance targets vs the synthetic data's ground truth"),
    "prepare": ("imd_hpc.data.prepare", "cache audio, tagger outputs and optical flow per clip"),
    "train": ("imd_hpc.engine.train", "train a model with DeepSpeed"),
    "eval": ("imd_hpc.engine.evaluate", "evaluate a checkpoint: 3 crops x 4 clips"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `deepspeed --module imd_hpc train ...` puts --local_rank=N before the command; the rank is
    # in LOCAL_RANK anyway, so move it behind the command, where `train` accepts it.
    leading = [a for a in argv[:1] if a.startswith("--local_rank")]
    if leading and len(argv) > 1:
        argv = [argv[1], *leading, *argv[2:]]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"unknown command {argv[0]!r}\n", file=sys.stderr)
        print("usage: python -m imd_hpc COMMAND [options]\n\ncommands:", file=sys.stderr)
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<8} {help_text}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
