"""`prepare --cluster slurm|local --jobs N`: the N shards of a `prepare` run as one submitit job
array (imd_hpc/executor.py, the sweeps' executor), one progress bar over all of them, then their
status logs merged into status.jsonl and the manifests written."""

from __future__ import annotations

import logging
import sys
from collections import Counter
from pathlib import Path

from imd_hpc.machine import usable_cores

from .manifest import read_prepared_status, shard_status_name
from .prepare import (
    build_parser,
    finish_real_layout,
    outputs_complete,
    plan_run,
    remove_run_temps,
    report_missing,
    run,
    tagger_labels,
)
from .status_log import merge_shard_status


class ShardJob:
    """What each submitted job runs: `prepare ... --shard K/N`. A requeued job (time limit,
    preemption) starts again and skips what its shard's status log already holds."""

    def __call__(self, argv: list[str]) -> dict:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        return run(build_parser().parse_args(argv))

    def checkpoint(self, argv: list[str]):
        import submitit

        return submitit.helpers.DelayedSubmission(ShardJob(), argv)


def _shard_argv(argv: list[str], k: int, n: int, workers: int) -> list[str]:
    """The command line of shard k: this one without the options only the submitter uses."""
    drop = {"--cluster", "--jobs", "--workers", "--shard"}
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in drop:
            skip = "=" not in a
            continue
        out.append(a)
    return out + ["--shard", f"{k}/{n}", "--workers", str(workers), "--quiet"]


def _lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b""))
    except OSError:
        return 0


def run_cluster(args, argv: list[str]) -> dict:
    """Submit the shards as one job array (or local jobs), show their progress, merge their logs."""
    from tqdm import tqdm

    from imd_hpc.executor import ExecutorSpec, export_job_environment, make_executor, submit_and_wait

    root = Path(args.root).resolve()
    prep = root / "prepared"
    plan = plan_run(args)  # lists parsed and flow.json written once, before any shard starts
    remove_run_temps(root)  # a killed run's; the shards leave each other's alone
    merge_shard_status(prep)
    report_missing(root, plan)
    labels = tagger_labels(args.tagger or str(root / "tagger"))
    records = read_prepared_status(prep)

    def to_do(r) -> bool:  # as a plain run's select_todo: done clips whose outputs are incomplete are redone
        rec = records.get(r.clip_id)
        if rec is None:
            return True
        if rec["status"] == "done":
            return not outputs_complete(prep, r.clip_id, plan.fmt is not None, plan.rgb)
        return args.retry_failed

    left = [r for r in plan.present if to_do(r)]
    n = args.jobs or usable_cores()
    spec = ExecutorSpec.from_args(args, name="imd-prepare")
    logs = prep / "logs"
    # Each shard counts its clips finished earlier as skipped; with nothing submitted, all are.
    summary = {"clips": len(plan.unique), "done": 0, "skipped": 0 if left else len(plan.present), "failed": 0,
               "missing_video": len(plan.missing), "failure_reasons": Counter(), "job_failures": []}
    if left:
        ex, parallel, threads = make_executor(spec, logs / "%j", n)
        export_job_environment(threads)
        shard_argvs = [_shard_argv(argv, k, n, threads) for k in range(n)]
        print(f"prepare: {len(left)} clips to do in {n} shards ({spec.cluster}: {parallel} at a time, "
              f"{threads} workers each); logs in {logs}", flush=True)
        bar = tqdm(total=len(left), desc="prepare", unit="clip", disable=args.quiet, file=sys.stderr)
        shard_logs = [prep / shard_status_name(k, n) for k in range(n)]

        def done(job, shard_args: list[str], submitted: float) -> None:
            try:
                res = job.result()
            except Exception as e:  # killed, out of memory, or an error before any clip: rerun resumes
                lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
                summary["job_failures"].append(f"shard {shard_args[-4]}: {lines[-1] if lines else e} "
                                               f"(log: {job.paths.stderr})")
                return
            for key in ("done", "failed"):
                summary[key] += res[key]
            summary["skipped"] += res["skipped"]
            summary["failure_reasons"].update(res["failure_reasons"])

        def progress(running: int) -> None:
            bar.n = min(len(left), sum(_lines(p) for p in shard_logs))
            bar.set_postfix(jobs_running=running, refresh=True)

        try:
            submit_and_wait(ex, spec.cluster, parallel, ShardJob, shard_argvs, done, poll_s=2.0, on_poll=progress)
        finally:
            bar.close()
        merge_shard_status(prep)
    if plan.raw is not None:
        finish_real_layout(root, plan.raw, plan.present, labels)
    summary["failure_reasons"] = dict(summary["failure_reasons"])
    return summary
