"""Paper tables from a fake output tree in the scripts' folder layout (hand-checked numbers)."""
import csv
import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import parse_test_res  # noqa: E402
from results import paper_numbers  # noqa: E402
from results.collect import FEW_SHOT, TRAIN_BASE, collect_runs  # noqa: E402
from results.render import cell_text, to_markdown  # noqa: E402
from results.tables import (BASE2NEW_TABLE, CROSS_DATASET_TABLE, DG_TABLE,  # noqa: E402
                            FEW_SHOT_TABLE, build_tables, harmonic_mean, resolve_table_name)


def finished(run_dir, accuracy):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "log.txt"), "w") as f:
        f.write("Finish training\n=> result\n* accuracy: %.1f%%\n" % accuracy)
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        # the marker keeps full precision; the log prints one decimal
        json.dump({"split": "test", "metrics": {"accuracy": accuracy + 1e-3}}, f)


def log_only(run_dir, text):
    """A run from another CoOp-family code base: a log.txt but no results.json."""
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "log.txt"), "w") as f:
        f.write(text)


@pytest.fixture
def output_root(tmp_path):
    root = str(tmp_path / "output")
    b2n = f"{root}/base2new"
    mudpt = "shots_16/MuDPT/vit_b16_base2new"
    for seed, (base, new) in {1: (80.0, 50.0), 2: (82.0, 52.0)}.items():
        finished(f"{b2n}/train_base/dtd/{mudpt}/seed{seed}", base)
        finished(f"{b2n}/test_new/dtd/{mudpt}/seed{seed}", new)
    for seed, (base, new) in {1: (90.0, 70.0), 2: (94.0, 74.0)}.items():
        finished(f"{b2n}/train_base/eurosat/{mudpt}/seed{seed}", base)
        finished(f"{b2n}/test_new/eurosat/{mudpt}/seed{seed}", new)
    # crashed: a log without a final result
    log_only(f"{b2n}/train_base/eurosat/{mudpt}/seed3", "epoch [1/10] batch [1/5] loss 2.0\n")
    cocoop = "shots_16/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1"
    log_only(f"{b2n}/train_base/dtd/{cocoop}/seed1",
             "eval_only: False\n=> result\n* accuracy: 99.0%\nFinished training\n"
             "Do evaluation on test set\n=> result\n* accuracy: 77.00%\n")
    log_only(f"{b2n}/test_new/dtd/{cocoop}/seed1", "eval_only: True\n=> result\n* accuracy: 56.0%\n")

    for seed, acc in {1: 70.0, 2: 72.0, 3: 74.0}.items():
        finished(f"{root}/dtd/MuDPT/vit_b16_few_shot_16shots/seed{seed}", acc)
    for seed, acc in {1: 80.0, 2: 81.0, 3: 50.0}.items():
        finished(f"{root}/eurosat/MuDPT/vit_b16_few_shot_16shots/seed{seed}", acc)
    finished(f"{root}/dtd/MuDPT/vit_b16_few_shot_4shots/seed1", 40.0)  # other shot count
    finished(f"{root}/dtd/CoOp/vit_b16_16shots/seed1", 65.0)

    finished(f"{root}/imagenet/MuDPT/vit_b16_cross_dataset_16shots/seed1", 72.5)
    finished(f"{root}/evaluation/MuDPT/vit_b16_cross_dataset_16shots/caltech101/seed1", 94.0)
    finished(f"{root}/evaluation/MuDPT/vit_b16_cross_dataset_16shots/imagenet_a/seed1", 49.0)
    os.makedirs(f"{root}/sweep_logs")  # not a run folder
    return root


def accuracy_row(table, label):
    return {col: cell_text(cell, table.metrics)
            for col, cell in zip(table.header[1:], dict(table.rows)[label])}


def test_collect_reads_markers_and_logs(output_root):
    runs = collect_runs(output_root)
    by_path = {os.path.relpath(r.path, output_root): r for r in runs}
    cocoop = by_path["base2new/train_base/dtd/shots_16/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1/seed1"]
    assert (cocoop.kind, cocoop.trainer, cocoop.shots, cocoop.accuracy) == (TRAIN_BASE, "CoCoOp", 16, 77.0)
    assert by_path["base2new/test_new/dtd/shots_16/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1/seed1"].accuracy == 56.0
    assert by_path["base2new/train_base/eurosat/shots_16/MuDPT/vit_b16_base2new/seed3"].accuracy is None
    fs = by_path["dtd/MuDPT/vit_b16_few_shot_4shots/seed1"]
    assert (fs.kind, fs.config, fs.shots, fs.seed) == (FEW_SHOT, "vit_b16_few_shot", 4, 1)
    assert fs.accuracy == pytest.approx(40.001)  # from results.json, not the 1-decimal log
    assert len(runs) == 22


def test_base2new_hm_from_averages(output_root):
    table = build_tables(collect_runs(output_root), [BASE2NEW_TABLE])[BASE2NEW_TABLE]
    assert table.header == ["Dataset", "CoCoOp", "MuDPT", "MuDPT vs CoCoOp"]
    dtd = accuracy_row(table, "DTD")
    # MuDPT dtd: base mean 81, new mean 51 (seeds 1, 2 each), HM 2*81*51/132 = 62.59
    assert dtd["MuDPT"] == "81.00 / 51.00 / 62.59 (n=2)"
    assert dtd["CoCoOp"] == "77.00 / 56.00 / 64.84 (n=1)"
    assert dtd["MuDPT vs CoCoOp"] == "+4.00 / -5.00 / -2.25"
    assert accuracy_row(table, "EuroSAT")["MuDPT"] == "92.00 / 72.00 / 80.78 (n=2)"
    assert accuracy_row(table, "EuroSAT")["CoCoOp"] == "-"
    # Average: B = (81+92)/2 = 86.5, N = (51+72)/2 = 61.5, HM(86.5, 61.5) = 71.89
    # (the mean of per-dataset HMs would be 71.69)
    assert accuracy_row(table, "Average")["MuDPT"] == "86.50 / 61.50 / 71.89 (2/11)"
    assert any("without a final result" in n and "eurosat" in n for n in table.notes)


def test_per_dataset_configs_make_one_base2new_row(tmp_path):
    """CoPrompt's released settings differ per dataset (one config each), MMA's ImageNet config is
    "_imnet": their runs are one row of the method, not one row per config."""
    root = str(tmp_path / "output")
    for dataset, config, base, new in (("dtd", "vit_b16_batch4_dtd", 80, 60), ("eurosat", "vit_b16_batch4_eurosat",
                                                                           90, 70)):
        for kind, accuracy in (("train_base", base), ("test_new", new)):
            finished(f"{root}/base2new/{kind}/{dataset}/shots_16/CoPrompt/{config}/seed1", accuracy)
    for dataset, config in (("imagenet", "vit_b16_ep5_imnet"), ("dtd", "vit_b16_ep5")):
        for kind in ("train_base", "test_new"):
            finished(f"{root}/base2new/{kind}/{dataset}/shots_16/MMA/{config}/seed1", 70)
    table = build_tables(collect_runs(root), [BASE2NEW_TABLE])[BASE2NEW_TABLE]
    assert table.header == ["Dataset", "CoPrompt", "MMA"]  # no "CoPrompt (vit_b16_batch4_dtd)" columns
    assert accuracy_row(table, "Average")["CoPrompt"] == "85.00 / 65.00 / 73.67 (2/11)"
    assert accuracy_row(table, "ImageNet")["MMA"] == accuracy_row(table, "DTD")["MMA"] == "70.00 / 70.00 / 70.00 (n=1)"


def test_few_shot_table_rows_and_comparison(output_root):
    table = build_tables(collect_runs(output_root), [FEW_SHOT_TABLE])[FEW_SHOT_TABLE]
    assert table.header == ["Method", "DTD", "EuroSAT", "Average"]
    assert [label for label, _ in table.rows] == ["CoOp", "MuDPT", "MuDPT vs CoOp"]
    # the ImageNet cross-dataset source run and the 4-shot run are not part of Table I
    assert accuracy_row(table, "MuDPT") == {"DTD": "72.00 (n=3)", "EuroSAT": "70.33 (n=3)",
                                            "Average": "71.17 (2/11)"}
    assert accuracy_row(table, "MuDPT vs CoOp")["DTD"] == "+7.00"
    assert accuracy_row(table, "MuDPT vs CoOp")["EuroSAT"] == "-"
    assert any(n.startswith("- Outlier: MuDPT/vit_b16_few_shot few_shot eurosat seed 3: 50.00")
               for n in table.notes)
    four = build_tables(collect_runs(output_root), [FEW_SHOT_TABLE], shots=4)[FEW_SHOT_TABLE]
    assert accuracy_row(four, "MuDPT")["DTD"] == "40.00 (n=1)"
    # averages over different dataset sets are not compared
    assert accuracy_row(table, "MuDPT vs CoOp")["Average"] == "-"


def test_transfer_tables(output_root):
    tables = build_tables(collect_runs(output_root), [CROSS_DATASET_TABLE, DG_TABLE])
    xd = tables[CROSS_DATASET_TABLE]
    assert xd.header == ["Method", "ImageNet (source)", "Caltech101", "Average (10 targets)"]
    assert accuracy_row(xd, "MuDPT") == {"ImageNet (source)": "72.50 (n=1)", "Caltech101": "94.00 (n=1)",
                                         "Average (10 targets)": "94.00 (1/10)"}
    dg = tables[DG_TABLE]
    assert accuracy_row(dg, "MuDPT")["ImageNet-A"] == "49.00 (n=1)"


def test_paper_rows(output_root):
    tables = build_tables(collect_runs(output_root), paper=True, all_datasets=True)
    few = tables[FEW_SHOT_TABLE]
    assert len(few.header) == 13  # Method + 11 datasets + Average
    assert accuracy_row(few, "MuDPT [MuDPT paper]")["Average"] == "81.38"
    assert accuracy_row(few, "MuDPT [MuDPT paper]")["FGVCAircraft"] == "43.13"
    b2n = tables[BASE2NEW_TABLE]
    assert accuracy_row(b2n, "Average")["MaPLe [MaPLe paper]"] == "82.28 / 75.14 / 78.55"
    assert accuracy_row(b2n, "Average")["MuDPT [MuDPT paper]"] == "82.71 / 74.50 / 78.39"
    assert accuracy_row(b2n, "DTD")["MuDPT [MuDPT paper]"] == "-"
    assert accuracy_row(b2n, "Average")["PromptSRC [PromptSRC README]"] == "84.26 / 76.10 / 79.97"
    assert accuracy_row(b2n, "Average")["LwEIB [LwEIB README]"] == "- / - / 81.21"  # the HM alone
    assert accuracy_row(b2n, "DTD")["CoCoOp [MaPLe paper]"] == "77.01 / 56.00 / 64.85"
    dg = tables[DG_TABLE]
    assert accuracy_row(dg, "MuDPT [MuDPT paper]")["Average (4 targets)"] == "60.22"


def test_paper_numbers_reproduce_printed_averages():
    """The stored per-dataset numbers give the printed averages (catches typos in the data)."""
    for row in paper_numbers.BASE2NEW[:4]:
        base = sum(row.base.values()) / 11
        new = sum(row.new.values()) / 11
        assert round(base, 2) == row.average_base and round(new, 2) == row.average_new
    hm = {r.method: r.average_hm if r.average_base is None else round(harmonic_mean(r.average_base, r.average_new), 2)
          for r in paper_numbers.BASE2NEW}
    assert hm == {"CLIP": 71.70, "CoOp": 71.66, "CoCoOp": 75.83, "MaPLe": 78.55, "MuDPT": 78.39,
                  "KgCoOp": 77.00, "PromptSRC": 79.97, "MMA": 79.87,  # the HMs the sources print
                  "TCP": 79.50,  # TCP prints 79.51, which is not the HM of its printed averages
                  "HiCroPL": 81.75,
                  "MMRL": 81.20,
                  "CoPrompt": 80.47,  # CoPrompt prints 80.48
                  "LwEIB": 81.21,  # printed alone
                  "CoOp+DePT": 77.29, "CoCoOp+DePT": 77.97, "KgCoOp+DePT": 79.10, "MaPLe+DePT": 79.52,
                  "PromptSRC+DePT": 80.43}
    for row in paper_numbers.FEW_SHOT_16[:3]:
        assert round(sum(row.values.values()) / 11, 2) == row.average
    for row in paper_numbers.CROSS_DATASET:
        targets = [v for d, v in row.values.items() if d != "imagenet"]
        assert abs(sum(targets) / 10 - row.average) < 0.005


def test_cli_tables_csv_latex_plot(output_root, tmp_path, capsys):
    csv_path, tex_path, png_path = (str(tmp_path / n) for n in ("t.csv", "t.tex", "fig5.png"))
    code = parse_test_res.main(["--tables", output_root, "--csv", csv_path, "--latex", tex_path,
                                "--plot", png_path])
    out = capsys.readouterr().out
    assert code == 0
    for title in ("Table I", "Table II", "Table III", "Table IV"):
        assert f"### {title}:" in out
    assert ("| DTD | 77.00 / 56.00 / 64.84 (n=1) | 81.00 / 51.00 / 62.59 (n=2) | +4.00 / -5.00 / -2.25 |"
            in out)
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    hm = [r for r in rows if r["table"] == "base2new" and r["row"] == "Average"
          and r["column"] == "MuDPT" and r["metric"] == "hm"]
    assert len(hm) == 1 and float(hm[0]["mean"]) == pytest.approx(71.8895, abs=1e-4)  # HM(86.501, 61.501)
    seed_cell = [r for r in rows if r["table"] == "few_shot" and r["row"] == "MuDPT"
                 and r["column"] == "DTD"][0]
    assert (seed_cell["std"], seed_cell["n_seeds"]) == ("1.6330", "3")  # std of 70, 72, 74
    with open(tex_path) as f:
        tex = f.read()
    assert "\\begin{tabular}" in tex and "MuDPT vs CoCoOp" in tex
    with open(png_path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_cli_single_table_and_skipped_tables(tmp_path, capsys):
    root = str(tmp_path / "out")
    finished(f"{root}/base2new/train_base/caltech101/shots_16/CoOp/vit_b16_ctxv1/seed1", 90.0)
    finished(f"{root}/base2new/test_new/caltech101/shots_16/CoOp/vit_b16_ctxv1/seed1", 60.0)
    assert parse_test_res.main(["--tables", root, "--table", "base2new"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("### Table III")
    assert "| Caltech101 | 90.00 / 60.00 / 72.00 (n=1) |" in out
    assert "Table I:" not in out and "Table II:" not in out
    assert parse_test_res.main(["--tables", root]) == 0
    out = capsys.readouterr().out
    assert f"Table I: few-shot recognition (16 shots): no runs under {root}, skipped." in out
    assert "### Table III" in out


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        parse_test_res.main(["--tables", str(tmp_path / "none")])
    assert info.value.code == 2
    assert "does not exist" in capsys.readouterr().err
    os.makedirs(tmp_path / "o")
    with pytest.raises(SystemExit):
        parse_test_res.main(["--tables", str(tmp_path / "o"), "--table", "nosuch"])
    assert "Unknown table 'nosuch'" in capsys.readouterr().err
    assert resolve_table_name("III") == BASE2NEW_TABLE and resolve_table_name("xd") == CROSS_DATASET_TABLE


def test_markdown_shape(output_root):
    table = build_tables(collect_runs(output_root), [DG_TABLE])[DG_TABLE]
    lines = to_markdown(table).splitlines()
    assert lines[2] == "| Method | ImageNet (source) | ImageNet-A | Average (4 targets) |"
    assert lines[3] == "|---|---|---|---|"
    assert lines[4] == "| MuDPT | 72.50 (n=1) | 49.00 (n=1) | 49.00 (1/4) |"


def test_seeds_selects_the_seeds_and_cells_show_n(output_root, tmp_path, capsys):
    runs = collect_runs(output_root)
    table = build_tables(runs, [FEW_SHOT_TABLE], seeds=[1, 2])[FEW_SHOT_TABLE]
    # DTD seeds 1-3 are 70, 72, 74: seeds 1 and 2 only -> 71; EuroSAT 80, 81 (seed 3's 50 left out)
    assert accuracy_row(table, "MuDPT") == {"DTD": "71.00 (n=2)", "EuroSAT": "80.50 (n=2)",
                                            "Average": "75.75 (2/11)"}
    assert table.notes[0].startswith("- `(n=K)`: the mean of K seeds (seeds 1, 2 selected)")
    assert not any("Outlier" in n for n in table.notes)
    csv_path = tmp_path / "seeds.csv"
    assert parse_test_res.main(["--tables", output_root, "--table", "fewshot", "--seeds", "1", "2",
                                "--csv", str(csv_path)]) == 0
    assert "| MuDPT | 71.00 (n=2) | 80.50 (n=2) | 75.75 (2/11) |" in capsys.readouterr().out
    with open(csv_path) as f:
        dtd = [r for r in csv.DictReader(f) if r["row"] == "MuDPT" and r["column"] == "DTD"][0]
    assert (dtd["mean"], dtd["std"], dtd["n_seeds"], dtd["seeds"]) == ("71.0010", "1.0000", "2", "1 2")


def test_an_outlier_seed_is_flagged_with_its_folder(output_root):
    runs = collect_runs(output_root)
    notes = build_tables(runs, [FEW_SHOT_TABLE])[FEW_SHOT_TABLE].notes
    seed3 = os.path.join(output_root, "eurosat/MuDPT/vit_b16_few_shot_16shots/seed3")
    outliers = [n for n in notes if "Outlier" in n]
    assert outliers == [f"- Outlier: MuDPT/vit_b16_few_shot few_shot eurosat seed 3: 50.00 vs median 80.00 "
                        f"of 3 seeds, in {seed3}; check it before averaging."]
    lenient = build_tables(runs, [FEW_SHOT_TABLE], outlier=35)[FEW_SHOT_TABLE].notes
    assert not any("Outlier" in n for n in lenient)  # 30 points from the median: within 35


def test_shots_filters_the_few_shot_table_only(output_root, tmp_path, capsys):
    runs = collect_runs(output_root)
    usual = build_tables(runs)
    two = build_tables(runs, shots=2)
    assert two[FEW_SHOT_TABLE] is None  # no 2-shot few-shot runs
    for key in (BASE2NEW_TABLE, CROSS_DATASET_TABLE, DG_TABLE):
        assert to_markdown(two[key]) == to_markdown(usual[key])
    png = tmp_path / "fig5.png"
    assert parse_test_res.main(["--tables", output_root, "--shots", "4", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "| MuDPT | 40.00 (n=1) | 40.00 (1/11) |" in out  # Table I at 4 shots
    assert "### Table II: cross-dataset evaluation (ImageNet source, 16 shots)" in out
    assert "| DTD | 77.00 / 56.00 / 64.84 (n=1) | 81.00 / 51.00 / 62.59 (n=2) |" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_base_and_new_over_different_seeds_are_flagged(tmp_path):
    root = str(tmp_path / "output")
    runs_dir = f"{root}/base2new/{{}}/dtd/shots_16/MuDPT/vit_b16_base2new/seed{{}}"
    for seed, (base, new) in {1: (80.0, 50.0), 2: (82.0, 52.0), 3: (84.0, None)}.items():
        finished(runs_dir.format("train_base", seed), base)
        if new is not None:
            finished(runs_dir.format("test_new", seed), new)
    table = build_tables(collect_runs(root), [BASE2NEW_TABLE])[BASE2NEW_TABLE]
    assert accuracy_row(table, "DTD")["MuDPT"] == "82.00 / 51.00 / 62.89 (n=3/2, mixed seeds)"
    assert ("- Mixed seeds: MuDPT on DTD averages base over seeds 1, 2, 3 but new over seeds 1, 2; "
            "run the missing ones or pass --seeds.") in table.notes
    paired = build_tables(collect_runs(root), [BASE2NEW_TABLE], seeds=[1, 2])[BASE2NEW_TABLE]
    assert accuracy_row(paired, "DTD")["MuDPT"] == "81.00 / 51.00 / 62.59 (n=2)"
    assert not any("Mixed seeds" in n for n in paired.notes)


def b2n_run(root, method, trainer, config, dataset, seed, base, new):
    """One base-to-new run (train on base, test on new) in the scripts' layout under ``root``."""
    finished(f"{root}/{method}/base2new/train_base/{dataset}/shots_16/{trainer}/{config}/seed{seed}", base)
    log_only(f"{root}/{method}/base2new/test_new/{dataset}/shots_16/{trainer}/{config}/seed{seed}",
             "eval_only: True\n=> result\n* accuracy: %.1f%%\n" % new)


def test_tables_find_output_roots_one_or_two_levels_down(tmp_path, capsys):
    logs = str(tmp_path / "logs")  # released logs: <logs>/<method>/base2new/...
    b2n_run(logs, "coop", "CoOp", "vit_b16_ctxv1", "dtd", 1, 80.0, 50.0)
    b2n_run(logs, "maple_runs/vit_b16", "MaPLe", "vit_b16_c2_ep5", "dtd", 1, 82.0, 60.0)
    os.makedirs(f"{logs}/notes")  # no runs: not used
    assert parse_test_res.main(["--tables", logs, "--table", "base2new"]) == 0
    captured = capsys.readouterr()
    assert "| DTD | 80.00 / 50.00 / 61.54 (n=1) | 82.00 / 60.00 / 69.30 (n=1) |" in captured.out
    note = [line for line in captured.err.splitlines() if line.startswith("Note:")]
    assert note == [f"Note: no runs directly in {logs}; using the output roots found below it: "
                    f"{logs}/coop, {logs}/maple_runs/vit_b16"]


def test_the_same_run_in_two_output_roots_is_flagged(tmp_path, capsys):
    logs = str(tmp_path / "logs")
    for copy in ("first", "second"):
        b2n_run(logs, copy, "CoOp", "vit_b16_ctxv1", "dtd", 1, 80.0, 50.0)
    assert parse_test_res.main(["--tables", logs, "--table", "base2new"]) == 0
    err = capsys.readouterr().err
    assert "Warning: CoOp/vit_b16_ctxv1 train_base dtd (16 shots) seed 1 is in 2 folders" in err
    assert f"{logs}/first/base2new/train_base/dtd" in err and f"{logs}/second/base2new/train_base/dtd" in err


def test_no_runs_says_what_was_looked_for_and_where_they_are(tmp_path, capsys):
    logs = str(tmp_path / "logs")
    b2n_run(f"{logs}/a/b", "c", "CoOp", "vit_b16_ctxv1", "dtd", 1, 80.0, 50.0)  # 3 levels down
    assert parse_test_res.main(["--tables", logs]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err
    assert err.startswith(f"Error: no runs found in {logs} nor in the folders up to 2 levels below it.")
    assert "base2new/{train_base,test_new}/<dataset>/shots_<K>/<trainer>/<config>/seed<S>" in err
    assert "<dataset>/<trainer>/<config>_<K>shots/seed<S>" in err
    assert (f"Protocol folders further down: {logs}/a/b/c/base2new. Pass the folder that holds one of "
            f"them, e.g. {logs}/a/b/c") in err

    # a protocol folder passed itself: the folder above it is named
    output = str(tmp_path / "output")
    b2n_run(output, ".", "CoOp", "vit_b16_ctxv1", "dtd", 1, 80.0, 50.0)
    for protocol_folder in (f"{output}/base2new", f"{output}/base2new/train_base"):
        assert parse_test_res.main(["--tables", protocol_folder]) == 1
        assert f"is a protocol folder itself: pass the folder that holds it, {output}" in capsys.readouterr().err
