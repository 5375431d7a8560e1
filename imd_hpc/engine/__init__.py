"""Training and evaluation on DeepSpeed: launch detection, checkpoints, preemption, metrics.

    from imd_hpc.engine.train import run
    results = run(cfg)          # writes the run directory, returns results.json's dict
"""
