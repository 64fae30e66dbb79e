"""The report's statistics: the best run of each start and the gap between them, seed groups and their t
intervals (lost seeds, repeated seeds, seeds on other data), the Welch interval of a gap, bounds clipped at 0
and 100 %, one-sided sweeps, Pareto fronts and parameter importance."""

from __future__ import annotations

import pytest
from scipy import stats as scipy_stats

from report.build import build_report
from report.markdown import ci_text, render
from report.sources import load_table
from report.stats import difference_ci, mean_ci, pareto_front, summarise
from report_helpers import add_finished, add_run, finished_summary, make_summary, report_of, section
from trainer import metrics


def test_seed_interval_leaves_out_runs_that_did_not_finish(tmp_path, sweep_dir, summary):
    import shutil

    shutil.copytree(sweep_dir / "runs", tmp_path / "runs")
    # r04's config again under new seeds: one diverged at a tempting 95 %, one stopped early by the sweep.
    diverged = {**make_summary("r04"), metrics.STATE: metrics.DIVERGED, metrics.BEST_VAL_ACC: 0.95,
                metrics.BEST_EPOCH: 2, metrics.EPOCHS_COMPLETED: 2, metrics.REASON: "train_loss is nan at epoch 3"}
    add_run(tmp_path / "runs", "r16", "r04", [0.75, 0.95], diverged, seed=3)
    stopped = {**make_summary("r04"), metrics.STATE: metrics.EARLY_STOPPED, metrics.BEST_VAL_ACC: 0.72,
               metrics.BEST_EPOCH: 2, metrics.EPOCHS_COMPLETED: 2}
    add_run(tmp_path / "runs", "r17", "r04", [0.70, 0.72], stopped, seed=4)
    # A config that lost a seed is not eligible as the best config over seeds: its mean is over survivors only.
    lost = summarise(load_table(str(tmp_path / "runs")))
    assert lost.seeds_fine_tuned is None and [g.records[0].run_id for g in lost.ineligible] == ["r04"]
    assert [r.run_id for r in lost.ineligible[0].lost] == ["r16"] and lost.ineligible[0].planned == 4
    text = render(lost, {}, {})
    assert "3 of 4 seeds" in section(text, 1) and "`r16` (diverged" in section(text, 1)
    assert "unstable: 1 of its seeds lost" in section(text, 2)
    # Opted in, the interval is over the survivors, and the lost seed is still named.
    group = summarise(load_table(str(tmp_path / "runs")), allow_lost_seeds=True).seeds_fine_tuned
    assert ([r.run_id for r in group.records] == ["r04", "r05", "r06"] and group.ci.n == 3
            and [r.run_id for r in group.lost] == ["r16"])
    assert group.ci == summary.seeds_fine_tuned.ci


def test_mean_ci_needs_two_values():
    assert mean_ci([0.5]) is None and mean_ci([]) is None


def test_one_sided_and_empty_sweeps_say_so_plainly(tmp_path, sweep_dir):
    import shutil

    for run_id in ("r09", "r10", "r11"):  # scratch runs and a failure: no fine-tuned result
        shutil.copytree(sweep_dir / "runs" / run_id, tmp_path / "scratch" / run_id)
    text = render(summarise(load_table(str(tmp_path / "scratch"))), {}, {})
    assert "No successful ImageNet fine-tuned run" in text and "Best scratch_cnn run: `r10`" in text
    shutil.copytree(sweep_dir / "runs" / "r12", tmp_path / "failed" / "r12")
    report = build_report(str(tmp_path / "failed"), tmp_path / "out")
    assert "No successful run" in report.read_text() and not list((tmp_path / "out").glob("*.png"))

    for run_id in ("r04", "r06"):  # only pretrained architectures from random init (the README's CPU sweep)
        shutil.copytree(sweep_dir / "runs" / run_id, tmp_path / "random" / run_id)
        for name in ("config.yaml", "summary.json"):
            path = tmp_path / "random" / run_id / name
            path.write_text(path.read_text().replace("IMAGENET1K_V1", "none"))
    text = render(summarise(load_table(str(tmp_path / "random"))), {}, {})
    assert "No successful run" not in text and "No ImageNet fine-tuned run and no scratch_cnn run" in text
    assert ("Best run from random initialisation (`weights=none`, not fine-tuned): `r04`**, best val_acc **83.00%**"
            in text)


def test_headline_takes_the_seed_group_with_the_highest_mean_and_signs_the_gap(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for run_id, best, seed in (("r16", 0.80, 0), ("r17", 0.82, 1)):  # the better resnet50 config
        add_finished(runs, run_id, "r01", best, seed=seed)
    for run_id, best, seed in (("r18", 0.70, 0), ("r19", 0.74, 1)):
        add_finished(runs, run_id, "r01", best, seed=seed, lr=3e-4)
    for run_id, best, seed in (("r20", 0.40, 0), ("r21", 0.44, 1)):
        add_finished(runs, run_id, "r09", best, seed=seed)
    text = section(report_of(runs)[1], 1)
    # Student t with 1 degree of freedom: t = 12.706; the sample std of two values 0.02 apart is 0.02 / sqrt(2),
    # so the half-width is 12.706 * 0.01 = 12.71 points; for the scratch pair (0.04 apart) 25.41 points.
    assert ("fine-tuned): the best config repeated over seeds reaches **81.00% ± 12.71 (95% CI [68.29, 93.71], "
            "t with n=2)** over 2 seeds (0, 1; runs `r16`, `r17`)") in text
    assert "reaches **42.00% ± 25.41 (95% CI [16.59, 67.41], t with n=2)**" in text
    # Fine-tuned minus scratch, with its Welch interval: squared standard errors 0.0001 and 0.0004 give
    # 1.47 degrees of freedom, t = 6.19, a half-width of 6.19 * sqrt(0.0005) = 13.84 points.
    assert "Gap between these seed means: **+39.00 points** (95% CI [+25.16, +52.84], Welch t with 1.5 df)." in text
    assert "**Gap: +38.00 points**" in text  # the single best runs: 82 % against 44 %


def test_runs_repeating_one_seed_count_once_in_the_seed_interval(tmp_path):
    """Three runs of seed 0 are one sample: no interval from them, and a repeat does not narrow one over seeds."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for run_id in ("r16", "r17", "r18"):
        add_finished(runs, run_id, "r09", 0.40)
    summary, text = report_of(runs)
    assert summary.seeds_scratch is None and "no scratch_cnn config was repeated over seeds" in section(text, 1)

    add_finished(runs, "r19", "r09", 0.30, seed=1)  # seed 0 three times at 40 %, seed 1 once at 30 %
    summary, text = report_of(runs)
    ci = summary.seeds_scratch.ci
    assert (ci.n, ci.mean) == (2, pytest.approx(0.35))  # the mean of the seeds' means, not 37.5 % over four runs
    assert ci.half_width == pytest.approx(scipy_stats.t.ppf(0.975, df=1) * 0.05)
    assert "over 2 seeds (0, 1; runs `r16`, `r17`, `r18`, `r19`; runs of one seed averaged first)" in section(text, 1)


def test_seeds_measured_on_other_data_are_not_one_interval(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    add_finished(runs, "r16", "r09", 0.40, seed=0)
    add_run(runs, "r17", "r09", [0.3, 0.9], finished_summary("r09", 0.9, **{metrics.SPLIT_HASH: "other-split"}), seed=1)
    assert report_of(runs)[0].seeds_scratch is None  # one seed on each split: no interval across the two
    add_finished(runs, "r18", "r09", 0.44, seed=1)
    assert [r.run_id for r in report_of(runs)[0].seeds_scratch.records] == ["r16", "r18"]
    # A data hash that older runs did not record is unknown, not different: the seeds still pool.
    add_run(runs, "r19", "r09", [0.3, 0.42], finished_summary("r09", 0.42, **{metrics.DATA_HASH: "files-a"}), seed=2)
    assert [r.run_id for r in report_of(runs)[0].seeds_scratch.records] == ["r16", "r18", "r19"]


def test_a_null_parameter_stays_apart_from_its_only_value_in_importance(tmp_path):
    """momentum is null for adamw and 0.9 for sgd: were null read as 0.9, it would explain nothing."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for run_id, best, optimizer, momentum in (("r16", 0.60, "adamw", None), ("r17", 0.62, "adamw", None),
                                              ("r18", 0.80, "sgd", 0.9), ("r19", 0.82, "sgd", 0.9)):
        add_finished(runs, run_id, "r01", best, optimizer=optimizer, momentum=momentum)
    text = section(report_of(runs)[1], 5)
    assert "| `momentum` | 1.000 | – | numeric | `optimizer` |" in text


def test_importance_folds_a_parameter_into_the_one_it_follows_not_the_reverse(tmp_path):
    """backbone_lr_mult follows model (0.1 for either backbone); lr, different in every run, follows nothing."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for run_id, like, best, lr in (("r16", "r02", 0.70, 1e-3), ("r17", "r02", 0.75, 3e-4),
                                   ("r18", "r04", 0.80, 1e-4), ("r19", "r04", 0.78, 3e-3),
                                   ("r20", "r09", 0.45, 2e-3)):
        add_finished(runs, run_id, like, best, lr=lr)
    summary, text = report_of(runs)
    rows = {row.parameter: row for row in summary.importance}
    assert set(rows) == {"model", "lr"} and "backbone_lr_mult" in rows["model"].stands_for
    assert rows["lr"].kind == "numeric" and "| `lr` |" in section(text, 5)


def test_a_pareto_front_holds_exactly_the_runs_nothing_beats():
    points = {"cheap": (0.80, 100.0), "as_good_but_dearer": (0.80, 200.0), "as_cheap_but_worse": (0.70, 100.0),
              "best": (0.90, 300.0), "beaten_by_best": (0.85, 400.0), "cheapest": (0.50, 50.0)}
    assert pareto_front(points) == {"cheapest", "cheap", "best"}


def test_seeds_trained_on_other_files_under_the_same_names_are_not_one_interval(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    add_run(runs, "r16", "r09", [0.3, 0.4], finished_summary("r09", 0.4, **{metrics.DATA_HASH: "files-a"}), seed=0)
    add_run(runs, "r17", "r09", [0.3, 0.9], finished_summary("r09", 0.9, **{metrics.DATA_HASH: "files-b"}), seed=1)
    assert report_of(runs)[0].seeds_scratch is None  # same split, replaced images: one seed on each
    add_run(runs, "r18", "r09", [0.3, 0.44], finished_summary("r09", 0.44, **{metrics.DATA_HASH: "files-a"}), seed=1)
    assert [r.run_id for r in report_of(runs)[0].seeds_scratch.records] == ["r16", "r18"]


def test_a_seed_mean_gap_whose_interval_holds_zero_is_not_a_bold_number(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed, best in enumerate((0.60, 0.80, 0.70)):
        add_finished(runs, f"r2{seed}", "r01", best, seed=seed)
    for seed, best in enumerate((0.50, 0.52)):
        add_finished(runs, f"r3{seed}", "r09", best, seed=seed)
    summary, text = report_of(runs)
    # 70 % over 3 seeds against 51 % over 2: squared standard errors 0.01 / 3 and 0.0002 / 2, 2.12 degrees of
    # freedom (Welch-Satterthwaite), t = 4.08, a half-width of 23.91 points: from -4.91 to +42.91.
    gap = summary.seed_gap
    expected = scipy_stats.ttest_ind([0.60, 0.80, 0.70], [0.50, 0.52], equal_var=False)
    assert (gap.low, gap.high) == (pytest.approx(expected.confidence_interval().low),
                                   pytest.approx(expected.confidence_interval().high))
    assert gap.df == pytest.approx(expected.df) and not gap.excludes_zero
    headline = section(text, 1)
    assert ("- Gap between these seed means: +19.00 points (95% CI [-4.91, +42.91], Welch t with 2.1 df), an interval "
            "that holds 0: **not distinguishable with these seeds**.") in headline
    assert "**+19.00 points**" not in headline
    assert difference_ci([0.5], [0.4, 0.45]) is None  # one seed a side has no spread to measure


def test_interval_bounds_past_0_or_100_percent_are_clipped_and_marked(tmp_path):
    assert ci_text(mean_ci([0.10, 0.14])) == "12.00% ± 25.41 (95% CI [0.00 (clipped), 37.41], t with n=2)"
    assert ci_text(mean_ci([0.96, 0.92])) == "94.00% ± 25.41 (95% CI [68.59, 100.00 (clipped)], t with n=2)"
    assert mean_ci([0.10, 0.14]).low == pytest.approx(-0.1341, abs=1e-4)  # the number itself stays as computed
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed, best in enumerate((0.10, 0.14)):
        add_finished(runs, f"r1{seed}", "r09", best, seed=seed)
    assert "reaches **12.00% ± 25.41 (95% CI [0.00 (clipped), 37.41], t with n=2)**" in section(report_of(runs)[1], 1)


def test_the_over_seeds_clause_stands_only_under_a_best_run_of_its_group(tmp_path):
    scratch_only, fine_tuned_only, all_failed = (tmp_path / name for name in ("scratch", "fine_tuned", "failed"))
    for folder in (scratch_only, fine_tuned_only, all_failed):
        folder.mkdir()
    add_finished(scratch_only, "r16", "r09", 0.45)
    add_finished(fine_tuned_only, "r17", "r01", 0.75)
    diverged = finished_summary("r01", 0.9, **{metrics.STATE: metrics.DIVERGED, metrics.REASON: "train_loss is nan"})
    add_run(all_failed, "r18", "r01", [0.8, 0.9], diverged)
    text = section(report_of(scratch_only)[1], 1)
    assert "Over seeds (scratch_cnn): no scratch_cnn config" in text and "Over seeds (fine-tuned)" not in text
    text = section(report_of(fine_tuned_only)[1], 1)
    assert "Over seeds (fine-tuned): no fine-tuned config" in text and "Over seeds (scratch_cnn)" not in text
    text = section(report_of(all_failed)[1], 1)
    assert "No successful run" in text and "Over seeds" not in text


def test_the_headline_keeps_a_warm_start_out_of_imagenet_fine_tuning(tmp_path):
    """A random state_dict passed as --weights=FILE once became the "best fine-tuned run": a warm start is a start of
    its own, named with its file and content hash, however well it does."""
    runs = tmp_path / "runs"
    runs.mkdir()
    add_finished(runs, "r16", "r03", 0.7)  # ImageNet V2
    add_run(runs, "r17", "r03", [0.8, 0.95],
            {**finished_summary("r03", 0.95), metrics.WEIGHTS_VERSION: "file:/w/mine.pt",
                                              metrics.WEIGHTS_SHA256: "ab" * 32}, weights="/w/mine.pt")
    add_run(runs, "r18", "r03", [0.5, 0.6], {**finished_summary("r03", 0.6), metrics.WEIGHTS_VERSION: "none"},
            weights="none")
    add_finished(runs, "r19", "r10", 0.5)  # the scratch CNN
    add_run(runs, "r20", "r10", [0.8, 0.9], {**finished_summary("r10", 0.9), metrics.WEIGHTS_VERSION: "file:/w/cnn.pt"},
            weights="/w/cnn.pt")  # a scratch CNN warm-started from a file is not the scratch baseline either
    summary, text = report_of(runs)
    assert [r.start for r in (summary.best_fine_tuned, summary.best_warm_start, summary.best_random_init,
                              summary.best_scratch)] == ["imagenet", "warm_start", "random_init", "scratch"]
    assert (summary.best_fine_tuned.run_id, summary.best_warm_start.run_id,
            summary.best_scratch.run_id) == ("r16", "r17", "r19")
    # ImageNet fine-tuned minus scratch, never the warm start
    assert summary.gap_points == pytest.approx((0.7 - 0.5) * 100)
    headline = section(text, 1)
    assert "**Best ImageNet fine-tuned run: `r16`**" in headline and "**Best scratch_cnn run: `r19`**" in headline
    assert "**Best warm start (from a weights file, not ImageNet fine-tuning): `r17`**" in headline
    assert "Started from `/w/mine.pt` (sha256 `abababababab`)" in headline
    assert "2 run(s) started from weights files that are not torchvision's ImageNet files" in text


def test_without_imagenet_runs_the_headline_compares_a_warm_start_with_the_scratch_cnn(tmp_path):
    """The offline demo: a backbone warm-started from a weights file against the scratch CNN. The headline gives their
    gap, labelled as a warm start's, rather than saying there is nothing to compare."""
    runs = tmp_path / "runs"
    runs.mkdir()
    add_run(runs, "r17", "r03", [0.8, 0.9],
            {**finished_summary("r03", 0.9), metrics.WEIGHTS_VERSION: "file:/w/mine.pt"}, weights="/w/mine.pt")
    add_finished(runs, "r19", "r10", 0.5)
    summary, text = report_of(runs)
    headline = section(text, 1)
    assert summary.best_fine_tuned is None and summary.gap_points is None  # a warm start never counts as fine-tuned
    assert "**Gap: +40.00 points** (best warm start minus best scratch_cnn, single runs)" in headline
    assert "not ImageNet fine-tuning" in headline and "nothing to compare" not in headline
