import json

import pytest

from imd_hpc.config import Config, ConfigError, build_config, valid_keys


@pytest.mark.parametrize("preset", ["tiny", "imd_b", "imd_l"])
def test_presets_build_and_round_trip(preset):
    cfg = build_config(preset)
    assert Config.from_dict(json.loads(cfg.to_json())) == cfg


def test_overrides_are_typed():
    cfg = build_config("tiny", ["model.alpha=0.5", "train.lr_steps=3,4", "model.detach_delta=true",
                                "train.epochs=2"])
    assert cfg.model.alpha == 0.5 and cfg.train.lr_steps == (3, 4)
    assert cfg.model.detach_delta is True and cfg.train.epochs == 2


def test_paper_defaults():
    cfg = build_config("imd_b")
    assert (cfg.model.embed_dim, cfg.model.depth, cfg.model.num_heads) == (768, 12, 12)
    assert cfg.model.alpha == 0.25 and cfg.model.masking == "M"
    assert (cfg.loss.k, cfg.loss.top_ya, cfg.loss.overlap) == (10, 20, "iou")
    assert (cfg.train.lr, cfg.train.momentum, cfg.train.weight_decay) == (0.005, 0.9, 1e-4)
    assert cfg.train.lr_steps == (11, 14) and cfg.train.epochs == 15 and cfg.train.global_batch == 64
    large = build_config("imd_l")
    assert (large.model.embed_dim, large.model.depth, large.model.num_heads) == (1024, 24, 16)


@pytest.mark.parametrize("preset, overrides, needle", [
    ("nope", [], "unknown preset 'nope'"),
    ("tiny", ["model.alphaa=0.1"], "model.alphaa"),
    ("tiny", ["model.alpha=1.5"], "model.alpha"),
    ("tiny", ["model.alpha=-0.1"], "model.alpha"),
    ("tiny", ["model.fusion=magic"], "model.fusion"),
    ("tiny", ["train.epochs=two"], "train.epochs"),
    ("tiny", ["model"], "key=value"),
    ("tiny", ["model=3"], "section"),
])
def test_bad_config_names_the_key(preset, overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        build_config(preset, overrides)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        build_config("tiny", ["loss.lambda=1"])
    assert "loss.relevance_weight" in str(e.value)
    assert "model.alpha" in valid_keys()


def test_run_directory_hash_names_the_experiment_only():
    from imd_hpc.engine.train import config_hash

    # Regression anchors: imd_hpc.engine.train.config_hash at e52bbab (before data.prefetch,
    # data.rgb_store, model.spatial_path, train.compile and train.compile_backend existed) gave these
    # for the tiny preset's default config and with data.root set, as `train --data` sets it. Runs
    # made then keep their directories, so `train --resume` finds them.
    assert config_hash(build_config("tiny")) == "20a3eefb06"
    assert config_hash(build_config("tiny", ["data.root=/data/synthetic"])) == "56ac47afdb"
    base = config_hash(build_config("tiny"))
    # How a run executes may change on a resume without moving it to another directory.
    for runtime in (["data.prefetch=4"], ["train.compile=blocks"], ["train.compile_backend=aot_eager"],
                    ["run.collective_timeout_s=60"]):
        assert config_hash(build_config("tiny", runtime)) == base, runtime
    for other in (["model.spatial_path=sdpa"], ["data.rgb_store=false"], ["model.alpha=0.5"]):
        assert config_hash(build_config("tiny", other)) != base, other
