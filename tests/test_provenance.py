"""The provenance table: which method settings and parameter count produced each row."""
from results.collect import collect_runs
from results.provenance import provenance_markdown, read_method_settings

LOG = """***************
** Config **
***************
TRAINER:
  COOP:
    N_CTX: 16
  MUDPT:
    CTX_INIT: a photo of a
    DEEP_PROMPT_DEPTH: 12
    INJECTION: linear
    N_CTX: 2
    SHALLOW_FUSION: True
  NAME: MuDPT
USE_CUDA: True
Building custom CLIP
# trainable params: 1,202,176
epoch [1/10] batch [1/5] time 0.1 (0.1) data 0.0 (0.0) loss 1.0 (1.0) lr 1.0000e-05 eta 0:00:01
"""


def test_settings_and_parameter_count_are_read_from_the_log(tmp_path):
    run = tmp_path / "base2new/train_base/dtd/shots_16/MuDPT/vit_b16_released_linear_nctx2_depth8/seed1"
    run.mkdir(parents=True)
    (run / "log.txt").write_text(LOG)
    settings, params = read_method_settings(str(run / "log.txt"), "MuDPT")
    assert settings == {"CTX_INIT": "a photo of a", "DEEP_PROMPT_DEPTH": "12", "INJECTION": "linear",
                        "N_CTX": "2", "SHALLOW_FUSION": "True"}
    assert params == "1,202,176"
    table = provenance_markdown(collect_runs(str(tmp_path)))
    assert ("| MuDPT | vit_b16_released_linear_nctx2_depth8 | 1,202,176 | CTX_INIT a photo of a, "
            "DEEP_PROMPT_DEPTH 12, INJECTION linear, N_CTX 2, SHALLOW_FUSION True |") in table
