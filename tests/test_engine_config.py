"""Config tree: defaults, yacs merge semantics and error messages."""
import pytest

from dassl.config import CfgNode, get_cfg_default


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
    path = write(tmp_path / "bad.yaml", "TRAINER:\n  MAPLE:\n    N_CTX: 2\n")
    with pytest.raises(KeyError) as info:
        cfg.merge_from_file(path)
    msg = str(info.value)
    assert msg.startswith("Non-existent config key: TRAINER.MAPLE")
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
