"""Config tree: defaults, yacs merge semantics and error messages."""
import pytest

from dassl.config import CfgNode, clean_cfg, get_cfg_default
from dassl.config.defaults import PROJECT_KEYS

# Every key of Dassl 0.6.3's get_cfg_default() (commit c61a1b5) with its value: spec ENGINE.md
# §3.1-3.7 and Appendix A. Types matter too: yacs refuses a YAML value of another type.
ORIGINAL_DEFAULTS = {
    "VERSION": 1, "OUTPUT_DIR": "./output", "RESUME": "", "SEED": -1, "USE_CUDA": True, "VERBOSE": True,
    "INPUT.SIZE": (224, 224), "INPUT.INTERPOLATION": "bilinear", "INPUT.TRANSFORMS": (),
    "INPUT.NO_TRANSFORM": False, "INPUT.PIXEL_MEAN": [0.485, 0.456, 0.406],
    "INPUT.PIXEL_STD": [0.229, 0.224, 0.225], "INPUT.CROP_PADDING": 4, "INPUT.RRCROP_SCALE": (0.08, 1.0),
    "INPUT.CUTOUT_N": 1, "INPUT.CUTOUT_LEN": 16, "INPUT.GN_MEAN": 0.0, "INPUT.GN_STD": 0.15,
    "INPUT.RANDAUGMENT_N": 2, "INPUT.RANDAUGMENT_M": 10, "INPUT.COLORJITTER_B": 0.4,
    "INPUT.COLORJITTER_C": 0.4, "INPUT.COLORJITTER_S": 0.4, "INPUT.COLORJITTER_H": 0.1, "INPUT.RGS_P": 0.2,
    "INPUT.GB_P": 0.5, "INPUT.GB_K": 21,
    "DATASET.ROOT": "", "DATASET.NAME": "", "DATASET.SOURCE_DOMAINS": (), "DATASET.TARGET_DOMAINS": (),
    "DATASET.NUM_LABELED": -1, "DATASET.NUM_SHOTS": -1, "DATASET.VAL_PERCENT": 0.1, "DATASET.STL10_FOLD": -1,
    "DATASET.CIFAR_C_TYPE": "", "DATASET.CIFAR_C_LEVEL": 1, "DATASET.ALL_AS_UNLABELED": False,
    "DATALOADER.NUM_WORKERS": 4, "DATALOADER.K_TRANSFORMS": 1, "DATALOADER.RETURN_IMG0": False,
    "DATALOADER.TRAIN_X.SAMPLER": "RandomSampler", "DATALOADER.TRAIN_X.BATCH_SIZE": 32,
    "DATALOADER.TRAIN_X.N_DOMAIN": 0, "DATALOADER.TRAIN_X.N_INS": 16, "DATALOADER.TRAIN_U.SAME_AS_X": True,
    "DATALOADER.TRAIN_U.SAMPLER": "RandomSampler", "DATALOADER.TRAIN_U.BATCH_SIZE": 32,
    "DATALOADER.TRAIN_U.N_DOMAIN": 0, "DATALOADER.TRAIN_U.N_INS": 16,
    "DATALOADER.TEST.SAMPLER": "SequentialSampler", "DATALOADER.TEST.BATCH_SIZE": 32,
    "MODEL.INIT_WEIGHTS": "", "MODEL.BACKBONE.NAME": "", "MODEL.BACKBONE.PRETRAINED": True,
    "MODEL.HEAD.NAME": "", "MODEL.HEAD.HIDDEN_LAYERS": (), "MODEL.HEAD.ACTIVATION": "relu",
    "MODEL.HEAD.BN": True, "MODEL.HEAD.DROPOUT": 0.0,
    "OPTIM.NAME": "adam", "OPTIM.LR": 0.0003, "OPTIM.WEIGHT_DECAY": 5e-4, "OPTIM.MOMENTUM": 0.9,
    "OPTIM.SGD_DAMPNING": 0, "OPTIM.SGD_NESTEROV": False, "OPTIM.RMSPROP_ALPHA": 0.99,
    "OPTIM.ADAM_BETA1": 0.9, "OPTIM.ADAM_BETA2": 0.999, "OPTIM.STAGED_LR": False, "OPTIM.NEW_LAYERS": (),
    "OPTIM.BASE_LR_MULT": 0.1, "OPTIM.LR_SCHEDULER": "single_step", "OPTIM.STEPSIZE": (-1,),
    "OPTIM.GAMMA": 0.1, "OPTIM.MAX_EPOCH": 10, "OPTIM.WARMUP_EPOCH": -1, "OPTIM.WARMUP_TYPE": "linear",
    "OPTIM.WARMUP_CONS_LR": 1e-5, "OPTIM.WARMUP_MIN_LR": 1e-5, "OPTIM.WARMUP_RECOUNT": True,
    "TRAIN.CHECKPOINT_FREQ": 0, "TRAIN.PRINT_FREQ": 10, "TRAIN.COUNT_ITER": "train_x",
    "TEST.EVALUATOR": "Classification", "TEST.PER_CLASS_RESULT": False, "TEST.COMPUTE_CMAT": False,
    "TEST.NO_TEST": False, "TEST.SPLIT": "test", "TEST.FINAL_MODEL": "last_step",
    "TRAINER.NAME": "",
    "TRAINER.CDAC.CLASS_LR_MULTI": 10, "TRAINER.CDAC.P_THRESH": 0.95, "TRAINER.CDAC.RAMPUP_COEF": 30,
    "TRAINER.CDAC.RAMPUP_ITRS": 1000, "TRAINER.CDAC.STRONG_TRANSFORMS": (), "TRAINER.CDAC.TOPK_MATCH": 5,
    "TRAINER.CROSSGRAD.ALPHA_D": 0.5, "TRAINER.CROSSGRAD.ALPHA_F": 0.5, "TRAINER.CROSSGRAD.EPS_D": 1.0,
    "TRAINER.CROSSGRAD.EPS_F": 1.0,
    "TRAINER.DAEL.CONF_THRE": 0.95, "TRAINER.DAEL.STRONG_TRANSFORMS": (), "TRAINER.DAEL.WEIGHT_U": 0.5,
    "TRAINER.DAELDG.CONF_THRE": 0.95, "TRAINER.DAELDG.STRONG_TRANSFORMS": (), "TRAINER.DAELDG.WEIGHT_U": 0.5,
    "TRAINER.DDAIG.ALPHA": 0.5, "TRAINER.DDAIG.CLAMP": False, "TRAINER.DDAIG.CLAMP_MAX": 1.0,
    "TRAINER.DDAIG.CLAMP_MIN": -1.0, "TRAINER.DDAIG.G_ARCH": "", "TRAINER.DDAIG.LMDA": 0.3,
    "TRAINER.DDAIG.WARMUP": 0,
    "TRAINER.DOMAINMIX.ALPHA": 1.0, "TRAINER.DOMAINMIX.BETA": 1.0, "TRAINER.DOMAINMIX.TYPE": "crossdomain",
    "TRAINER.ENTMIN.LMDA": 0.001,
    "TRAINER.FIXMATCH.CONF_THRE": 0.95, "TRAINER.FIXMATCH.STRONG_TRANSFORMS": (), "TRAINER.FIXMATCH.WEIGHT_U": 1.0,
    "TRAINER.M3SDA.LMDA": 0.5, "TRAINER.M3SDA.N_STEP_F": 4, "TRAINER.MCD.N_STEP_F": 4,
    "TRAINER.MEANTEACHER.EMA_ALPHA": 0.999, "TRAINER.MEANTEACHER.RAMPUP": 5, "TRAINER.MEANTEACHER.WEIGHT_U": 1.0,
    "TRAINER.MIXMATCH.MIXUP_BETA": 0.75, "TRAINER.MIXMATCH.RAMPUP": 20000, "TRAINER.MIXMATCH.TEMP": 2.0,
    "TRAINER.MIXMATCH.WEIGHT_U": 100.0, "TRAINER.MME.LMDA": 0.1,
    "TRAINER.SE.CONF_THRE": 0.95, "TRAINER.SE.EMA_ALPHA": 0.999, "TRAINER.SE.RAMPUP": 300,
}


def flatten(node, prefix=""):
    items = {}
    for key, value in node.items():
        if isinstance(value, dict):
            items.update(flatten(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def write(path, text):
    path.write_text(text)
    return str(path)


def test_defaults_cover_every_group_and_project_keys():
    cfg = get_cfg_default()
    for group in ("INPUT", "DATASET", "DATALOADER", "MODEL", "OPTIM", "TRAIN", "TEST", "TRAINER"):
        assert isinstance(cfg[group], CfgNode)
    assert cfg.INPUT.SIZE == (224, 224) and isinstance(cfg.INPUT.SIZE, tuple)
    assert cfg.OPTIM.LR == 0.0003 and cfg.OPTIM.NAME == "adam"
    assert cfg.OPTIM.STEPSIZE == (-1,) and cfg.OPTIM.WARMUP_RECOUNT is True
    assert cfg.DATALOADER.TRAIN_X.BATCH_SIZE == 32 and cfg.DATALOADER.TEST.SAMPLER == "SequentialSampler"
    assert cfg.TEST.FINAL_MODEL == "last_step" and cfg.TRAIN.PRINT_FREQ == 10
    assert cfg.MODEL.BACKBONE.PATH == "" and cfg.DATASET.SUBSAMPLE_CLASSES == "all"
    assert cfg.OPTIM.SGD_DAMPNING == 0 and cfg.SEED == -1


def test_every_original_default_exists_with_its_value_and_type():
    ours = flatten(get_cfg_default())
    assert len(ORIGINAL_DEFAULTS) == 135
    for key, value in ORIGINAL_DEFAULTS.items():
        assert key in ours, f"{key} is missing"
        assert ours[key] == value and type(ours[key]) is type(value), (key, ours[key], value)
    # the only other keys are the project's, each declared in PROJECT_KEYS
    assert set(ours) - set(ORIGINAL_DEFAULTS) == set(PROJECT_KEYS)
    assert {"MODEL.BACKBONE.PATH", "DATASET.SUBSAMPLE_CLASSES"} <= set(PROJECT_KEYS)


def test_original_trainer_nodes_merge_and_print_like_the_original(tmp_path):
    cfg = get_cfg_default()
    # a YAML file of another Dassl project (FixMatch on CIFAR) now merges
    cfg.merge_from_file(write(tmp_path / "fixmatch.yaml", "TRAINER:\n  FIXMATCH:\n    WEIGHT_U: 2.0\n"
                                                        "    STRONG_TRANSFORMS: [\"randaugment\"]\n"))
    assert cfg.TRAINER.FIXMATCH.WEIGHT_U == 2.0 and cfg.TRAINER.FIXMATCH.STRONG_TRANSFORMS == ("randaugment",)
    assert "  MIXMATCH:\n    MIXUP_BETA: 0.75\n    RAMPUP: 20000\n    TEMP: 2.0\n    WEIGHT_U: 100.0\n" in str(cfg)
    clean_cfg(cfg, "FixMatch")  # Dassl's tools/train.py: only the running trainer's node is printed
    assert sorted(cfg.TRAINER.keys()) == ["FIXMATCH", "NAME"]


def test_get_cfg_default_returns_independent_copies():
    a = get_cfg_default()
    a.OPTIM.LR = 0.5
    assert get_cfg_default().OPTIM.LR == 0.0003


def test_merge_order_dataset_then_trainer_then_opts(tmp_path):
    cfg = get_cfg_default()
    cfg.TRAINER.COOP = CfgNode()  # what a plugin's extend_cfg does
    cfg.TRAINER.COOP.CSC = False
    cfg.TRAINER.COOP.N_CTX = 16
    dataset_yaml = write(tmp_path / "d.yaml", "DATASET:\n  NAME: \"OxfordPets\"\nOPTIM:\n  LR: 0.1\n"
                         "  MAX_EPOCH: 3\n")
    trainer_yaml = write(tmp_path / "t.yaml",
                         "OPTIM:\n  LR: 0.002\n  WARMUP_CONS_LR: 1e-5\n"
                         "INPUT:\n  SIZE: (32, 32)\n  TRANSFORMS: [\"random_flip\", \"normalize\"]\n"
                         "  PIXEL_MEAN: [0.5, 0.5, 0.5]\n")
    cfg.merge_from_file(dataset_yaml)
    cfg.merge_from_file(trainer_yaml)
    cfg.merge_from_list(["OPTIM.MAX_EPOCH", "7", "TRAINER.COOP.CSC", "True",
                         "DATASET.SUBSAMPLE_CLASSES", "base"])
    assert cfg.DATASET.NAME == "OxfordPets"
    assert cfg.OPTIM.LR == 0.002  # trainer yaml beats dataset yaml
    assert cfg.OPTIM.MAX_EPOCH == 7  # opts beat both
    # yaml strings go through literal_eval: "1e-5" -> float, "(32, 32)" -> tuple
    assert cfg.OPTIM.WARMUP_CONS_LR == 1e-5 and isinstance(cfg.OPTIM.WARMUP_CONS_LR, float)
    assert cfg.INPUT.SIZE == (32, 32)
    # list <-> tuple follow the default's type
    assert cfg.INPUT.TRANSFORMS == ("random_flip", "normalize")
    assert cfg.INPUT.PIXEL_MEAN == [0.5, 0.5, 0.5]
    assert cfg.TRAINER.COOP.CSC is True and cfg.DATASET.SUBSAMPLE_CLASSES == "base"


def test_plugin_nodes_made_with_plain_yacs_merge(tmp_path):
    from yacs.config import CfgNode as CN  # what CoOp's extend_cfg uses

    cfg = get_cfg_default()
    cfg.TRAINER.COOP = CN()
    cfg.TRAINER.COOP.N_CTX = 16
    cfg.TRAINER.COOP.PREC = "fp16"
    cfg.merge_from_file(write(tmp_path / "c.yaml", "TRAINER:\n  COOP:\n    N_CTX: 4\n"))
    cfg.merge_from_list(["TRAINER.COOP.PREC", "fp32"])
    assert (cfg.TRAINER.COOP.N_CTX, cfg.TRAINER.COOP.PREC) == (4, "fp32")
    with pytest.raises(KeyError, match="did you mean TRAINER.COOP.N_CTX"):
        cfg.merge_from_file(write(tmp_path / "d.yaml", "TRAINER:\n  COOP:\n    N_CTXX: 4\n"))


def test_yaml_unknown_key_names_key_file_and_closest(tmp_path):
    cfg = get_cfg_default()
    cfg.TRAINER.MUDPT = CfgNode()
    cfg.TRAINER.MUDPT.N_CTX = 2
    path = write(tmp_path / "bad.yaml", "TRAINER:\n  MUDTP:\n    N_CTX: 2\n")
    with pytest.raises(KeyError) as info:
        cfg.merge_from_file(path)
    msg = str(info.value)
    assert msg.startswith("Non-existent config key: TRAINER.MUDTP")
    assert "bad.yaml" in msg and "did you mean TRAINER.MUDPT?" in msg
    path = write(tmp_path / "typo.yaml", "OPTIM:\n  MAX_EPOHC: 2\n")
    with pytest.raises(KeyError, match="OPTIM.MAX_EPOHC.*did you mean OPTIM.MAX_EPOCH"):
        cfg.merge_from_file(path)


def test_list_unknown_key_is_assertion_with_suggestion():
    cfg = get_cfg_default()
    with pytest.raises(AssertionError) as info:
        cfg.merge_from_list(["OPTIM.LRR", "0.1"])
    assert str(info.value).startswith("Non-existent key: OPTIM.LRR; did you mean OPTIM.LR?")
    with pytest.raises(AssertionError, match="did you mean DATASET.NUM_SHOTS"):
        cfg.merge_from_list(["DATASET.NUM_SHOT", "16"])


def test_type_mismatch_message_default_first(tmp_path):
    cfg = get_cfg_default()
    cfg.OPTIM.LR = 0.002
    with pytest.raises(ValueError) as info:
        cfg.merge_from_list(["OPTIM.LR", "1"])
    assert str(info.value).startswith(
        "Type mismatch (<class 'float'> vs. <class 'int'>) with values (0.002 vs. 1) "
        "for config key: OPTIM.LR")
    assert "1.0" in str(info.value)  # tells how to write it
    cfg.merge_from_list(["OPTIM.LR", "1.0"])
    assert cfg.OPTIM.LR == 1.0
    path = write(tmp_path / "t.yaml", "DATALOADER:\n  NUM_WORKERS: \"many\"\n")
    with pytest.raises(ValueError, match="for config key: DATALOADER.NUM_WORKERS"):
        cfg.merge_from_file(path)


def test_odd_list_and_string_decoding():
    cfg = get_cfg_default()
    with pytest.raises(AssertionError, match=r"Override list has odd length: \['OPTIM.LR'\]; "
                                             "it must be a list of pairs"):
        cfg.merge_from_list(["OPTIM.LR"])
    cfg.merge_from_list(["DATASET.NUM_SHOTS", "16", "DATASET.NAME", "Food101"])
    assert cfg.DATASET.NUM_SHOTS == 16 and cfg.DATASET.NAME == "Food101"


def test_frozen_config_rejects_writes_and_merges():
    cfg = get_cfg_default()
    cfg.freeze()
    with pytest.raises(AttributeError, match="immutable"):
        cfg.OPTIM.LR = 0.1
    with pytest.raises(AttributeError, match="immutable"):
        cfg.merge_from_list(["OPTIM.LR", "0.1"])
    assert cfg.OPTIM.LR == 0.0003


def test_missing_or_non_mapping_yaml(tmp_path):
    cfg = get_cfg_default()
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        cfg.merge_from_file(str(tmp_path / "nope.yaml"))
    with pytest.raises(ValueError, match="mapping"):
        cfg.merge_from_file(write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    cfg.merge_from_file(write(tmp_path / "empty.yaml", ""))  # no change, no error
    assert cfg == get_cfg_default()


def test_print_is_sorted_two_space_dump():
    cfg = get_cfg_default()
    text = str(cfg)
    top = [line.split(":")[0] for line in text.splitlines() if line and not line.startswith(" ")]
    assert top == sorted(top)
    assert "DATALOADER:\n  K_TRANSFORMS: 1\n  NUM_WORKERS: 4\n" in text
