"""Claims about toy/replicate.py: the rules (plateau, pilot edge, grids, equal budgets, selection on validation),
the paired statistics (hand-derived values), the scheduler, the tables, a smoke run."""
import json
import math
import os
import sys

import pytest

from conftest import run_script

from toy import replicate as R


def test_help_works_without_running_anything(capsys):
    """--help prints the spec and exits 0."""
    with pytest.raises(SystemExit, match="^0$"):
        R.parse_args(["--help"])
    assert "equal budgets" in capsys.readouterr().out.lower()


# ---------------------------------------------------------------- the rules


def test_plateau_is_the_first_checkpoint_no_later_one_beats_by_more_than_its_sem():
    """(epoch, val, SEM): 0.80 +- 0.02 is within SEM of 0.81 and above 0.79 -> epoch 8; a rise beyond the SEM at
    the end -> the last checkpoint."""
    assert R.plateau_index([(4, .5, .02), (8, .80, .02), (12, .81, .02), (16, .79, .02)]) == 1
    assert R.plateau_index([(4, .5, .02), (8, .80, .02), (12, .83, .02)]) == 2
    assert R.plateau_index([(4, .9, None), (8, .9, None)]) == 0   # one sample: no SEM, equal is not better


def test_pilot_edge_rule_extends_beyond_the_edge_the_best_rate_sits_on():
    """Best at the top of the tried rates -> the next lattice rate up; at the bottom -> down; inside -> none."""
    assert R.next_lattice_rate({1e-5: .5, 3e-5: .6, 1e-4: .7}) == 3e-4
    assert R.next_lattice_rate({1e-5: .7, 3e-5: .6, 1e-4: .5}) == 3e-6
    assert R.next_lattice_rate({1e-5: .5, 3e-5: .7, 1e-4: .6}) is None
    assert R.next_lattice_rate({1e-5: .6, 3e-5: .6, 1e-4: .5}) == 3e-6   # a tie goes to the smaller rate


def test_grid_rates_are_the_lattice_rates_nearest_the_pilot_best_toward_the_better_side():
    """Pilot best 3e-5, its upper neighbour scored higher than its lower one: 2 rates -> {3e-5, 1e-4}; 4 rates ->
    both neighbours and one more step up."""
    tried = {1e-5: .5, 3e-5: .7, 1e-4: .6}
    assert R.grid_rates(tried, 2) == [3e-5, 1e-4]
    assert R.grid_rates(tried, 4) == [1e-5, 3e-5, 1e-4, 3e-4]
    assert R.grid_rates({1e-5: .6, 3e-5: .7, 1e-4: .5}, 2) == [1e-5, 3e-5]
    assert R.grid_rates({1e-6: .9, 3e-6: .5}, 2) == [1e-6, 3e-6]   # the lattice's own end


def test_every_method_gets_the_same_number_of_distinct_settings():
    """Equal budgets: settings_per_method settings for every method, distinct run dirs, knobs x rates."""
    plan = R.SeedPlan("/tmp/unused", "guess", 0, R.CONFIGS["full"])
    tried = {1e-5: .5, 3e-5: .7, 1e-4: .6}
    plan.pilot_tried = lambda method: tried
    for method in R.METHODS:
        got = plan.settings(method)
        assert len(got) == R.CONFIGS["full"]["settings_per_method"] == len({s[1] for s in got}), method
    assert [s[0] for s in plan.settings("redi")] == ["alpha 0.8 lr 3e-5", "alpha 0.8 lr 1e-4", "alpha 0.5 lr 3e-5",
                                                     "alpha 0.5 lr 1e-4"]


def _summary(path, bench, p1, sem=0.01):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "summary.json"), "w") as f:
        json.dump({"benchmarks": {bench: {"pass@1": p1, "sem": sem}}}, f)


def test_pick_setting_takes_the_best_validation_setting(tmp_path):
    """The picked setting is the one with the highest validation pass@1, whatever the test split says; the first
    one on a tie."""
    entries = []
    for k, (val, test) in enumerate([(0.5, 0.9), (0.7, 0.1), (0.6, 0.8), (0.7, 0.9)]):
        run = tmp_path / f"run{k}"
        _summary(run / "evals" / "val", "val", val)
        _summary(run / "evals" / "test", "test", test)
        entries.append((str(k), str(run)))
    assert R.pick_setting(entries)[0] == "1"


def _fake_finished_pilot(out, cfg, variant="guess", sft_rows=64):
    """The files the lazy commands read: sft.jsonl (its line count), the stage-1 curve, the pilot's val evals."""
    jobs, plans = R.all_jobs(str(out), [variant], [0, 1], cfg)
    first = plans[variant][0]
    for plan in plans[variant].values():
        os.makedirs(plan.data, exist_ok=True)
        with open(os.path.join(plan.data, "sft.jsonl"), "w") as f:
            f.write("{}\n" * sft_rows)
        for k, e in enumerate(plan.curve_epochs):
            _summary(plan.curve_dir(e), "val", min(0.5 + 0.2 * k, 0.7))   # flat from the 2nd
    for method, knobs in R.METHODS.items():
        for k, lr in enumerate(cfg["pilot_lrs"]):
            _summary(os.path.join(first.run_dir(method, knobs[0][0], lr), "evals", "val"), "val", [.5, .7, .6][k])
    return jobs, plans


def test_no_test_split_before_selection_and_the_first_seed_reuses_the_pilot(tmp_path):
    """Only test-kind jobs read test.jsonl; a method's test eval waits on every validation eval of its grid; every
    stage-2 run starts from the plateau checkpoint; the first seed's grid runs coincide with pilot runs where the
    settings do (and later seeds' never do)."""
    cfg = R.CONFIGS["full"]
    jobs, plans = _fake_finished_pilot(tmp_path, cfg)
    for plan in plans["guess"].values():   # the grid's validation evals (the test evals' commands read them)
        for method in R.METHODS:
            for k, setting in enumerate(plan.settings(method)):
                if not os.path.exists(os.path.join(setting[1], "evals", "val", "summary.json")):
                    _summary(os.path.join(setting[1], "evals", "val"), "val", 0.1 * k)
            ext = plan.extension(method)   # None where the pick is inside the grid
            if ext and not os.path.exists(os.path.join(ext[1], "evals", "val", "summary.json")):
                _summary(os.path.join(ext[1], "evals", "val"), "val", 0.0)
    for job in jobs:
        job.resolve()
    by_name = {j.name: j for j in jobs}
    for job in jobs:
        reads_test = job.cmd is not None and any(str(c).endswith("test.jsonl") for c in job.cmd)
        assert reads_test == (job.kind == "test"), job.name
    pilot_dirs = {j.done_if for j in jobs if " pilot " in j.name and j.kind.startswith("stage2")}
    for seed, plan in plans["guess"].items():
        plateau = plan.checkpoint(plan.curve_epochs[1])   # the fake curve is flat from its second checkpoint
        for method in R.METHODS:
            test_job = by_name[f"guess/s{seed} {method} test"]
            vals = {j.name for j in jobs if j.name.startswith(f"guess/s{seed} {method} [setting") and j.kind == "val"}
            assert len(vals) == cfg["settings_per_method"] and vals <= {d.name for d in test_job.deps}
            assert f"guess/s{seed} {method} [edge extension] val" in {d.name for d in test_job.deps}
            trains = [j for j in jobs if j.name.startswith(f"guess/s{seed} {method} [setting") and j.kind != "val"]
            assert all(j.cmd[j.cmd.index("--model") + 1] == plateau for j in trains)
            reused = sum(j.done_if in pilot_dirs for j in trains)
            # pilot rates 1e-5 .5, 3e-5 .7, 1e-4 .6: the grid's 2 rates {3e-5, 1e-4} (first knob) or 4 rates
            # {1e-5, 3e-5, 1e-4, 3e-4} are pilot runs except 3e-4
            assert reused == ((2 if len(R.METHODS[method]) == 2 else 3) if seed == 0 else 0), (seed, method)


def test_edge_rate_steps_one_lattice_rate_beyond_the_side_the_pick_sits_on():
    assert R.edge_rate([1e-5, 3e-5], 3e-5) == 1e-4
    assert R.edge_rate([1e-5, 3e-5], 1e-5) == 3e-6
    assert R.edge_rate([1e-5, 3e-5, 1e-4, 3e-4], 3e-5) is None   # inside
    assert R.edge_rate([1e-5, 3e-5, 1e-5], 1e-5) == 3e-6          # repeated rates (two knobs) count once
    assert R.edge_rate([1e-6, 3e-6], 1e-6) is None and R.edge_rate([1e-3, 3e-3], 3e-3) is None   # lattice's ends
    assert R.edge_rate([3e-5], 3e-5) is None                     # one rate: no edge to speak of


def test_a_grid_pick_on_the_rate_edge_gets_one_more_rate_at_its_knob_and_the_pick_covers_it(tmp_path):
    """Seed 1 of guess, REDI's grid {3e-5, 1e-4} x alpha {0.8, 0.5}: best alpha 0.5 at 3e-5 (the lower edge) ->
    one extra run alpha 0.5 at 1e-5 from the plateau checkpoint; when it scores higher it is the pick and the
    test evaluation is its own. The symmetric REDI's 4 rates with 3e-5 best (inside): no extension, the job is
    skipped."""
    cfg = R.CONFIGS["full"]
    jobs, plans = _fake_finished_pilot(tmp_path, cfg)
    plan = plans["guess"][1]
    for (label, run, *_), val in zip(plan.settings("redi"), (.60, .55, .70, .50)):
        _summary(os.path.join(run, "evals", "val"), "val", val)
    ext = plan.extension("redi")
    assert ext[0] == "alpha 0.5 lr 1e-5" and ext[1] == plan.run_dir("redi", "alpha 0.5", 1e-5)
    assert ext[2] == ["--loss", "redi", "--alpha", "0.5"]
    by_name = {j.name: j for j in jobs}
    train = by_name["guess/s1 redi [edge extension] train"]
    train.resolve()
    assert train.cmd[train.cmd.index("--lr") + 1] == 1e-5 and train.cmd[train.cmd.index("--model") + 1] == plan.checkpoint(8)
    assert train.cmd[train.cmd.index("--alpha") + 1] == "0.5"
    _summary(os.path.join(ext[1], "evals", "val"), "val", .75)
    assert plan.picked("redi") == ext and plan.test_dir("redi") == os.path.join(ext[1], "evals", "test")
    test = by_name["guess/s1 redi test"]
    test.resolve()
    assert test.cmd[test.cmd.index("--model") + 1] == os.path.join(ext[1], "final")
    assert test.done_if == os.path.join(ext[1], "evals", "test", "summary.json")
    # the symmetric REDI's 4 rates {1e-5, 3e-5, 1e-4, 3e-4}: best 3e-5 is inside -> nothing to run
    for (label, run, *_), val in zip(plan.settings("redi_sym"), (.6, .7, .65, .5)):
        _summary(os.path.join(run, "evals", "val"), "val", val)
    assert plan.extension("redi_sym") is None
    skipped = by_name["guess/s1 redi_sym [edge extension] train"]
    skipped.resolve()
    assert skipped.cmd is None and plan.picked("redi_sym")[0] == "alpha 1.0 lr 3e-5"


def test_the_first_seeds_grid_runs_in_the_pilots_directories_do_not_move_the_grid(tmp_path):
    """Regression: pilot_tried read every finished run of the first knob in the first seed's stage2/, so a
    grid or grid-extension run there (e.g. alpha 0.8 at 3e-4) changed every seed's grid once it finished;
    the pick then read runs that never existed. Only the pilot rates and the pilot's edge extension count."""
    cfg = R.CONFIGS["full"]
    jobs, plans = _fake_finished_pilot(tmp_path, cfg)
    first, later = plans["guess"][0], plans["guess"][1]
    before = {m: (first.pilot_tried(m), later.settings(m)) for m in R.METHODS}
    for m, knobs in R.METHODS.items():   # the first seed's grid runs beyond the pilot rates, all scoring best
        for lr in (3e-6, 3e-4, 1e-3):
            _summary(os.path.join(first.run_dir(m, knobs[0][0], lr), "evals", "val"), "val", 0.99)
    assert {m: (first.pilot_tried(m), later.settings(m)) for m in R.METHODS} == before
    # the pilot's own edge extension does count: top pilot rate best -> 3e-4 is the pilot's, and centres the grid
    _summary(os.path.join(first.run_dir("redi", "alpha 0.8", 1e-4), "evals", "val"), "val", 0.8)
    assert first.pilot_tried("redi") == {1e-5: .5, 3e-5: .7, 1e-4: .8, 3e-4: .99}
    assert [s[3] for s in later.settings("redi")] == [1e-4, 3e-4, 1e-4, 3e-4]


def test_the_pilot_edge_extension_runs_only_when_the_best_rate_is_on_an_edge(tmp_path):
    """Pilot scores .5/.7/.6: the best is inside, so the extension job has nothing to run; make the top rate best
    and it trains at the next lattice rate up."""
    cfg = R.CONFIGS["full"]
    jobs, plans = _fake_finished_pilot(tmp_path, cfg)
    ext = next(j for j in jobs if j.name == "guess/s0 pilot dpo [edge extension] train")
    ext.resolve()
    assert ext.cmd is None
    first = plans["guess"][0]
    _summary(os.path.join(first.run_dir("dpo", "beta 0.1", 1e-4), "evals", "val"), "val", 0.9)
    jobs, _ = R.all_jobs(str(tmp_path), ["guess"], [0, 1], cfg)
    ext = next(j for j in jobs if j.name == "guess/s0 pilot dpo [edge extension] train")
    ext.resolve()
    assert ext.cmd[ext.cmd.index("--lr") + 1] == 3e-4 and "--beta" in ext.cmd


def _generations(eval_dir, correct_by_problem):
    os.makedirs(eval_dir, exist_ok=True)
    with open(os.path.join(eval_dir, "generations.jsonl"), "w") as f:
        for pid, samples in correct_by_problem.items():
            for k, c in enumerate(samples):
                f.write(json.dumps({"id": pid, "sample": k, "correct": c}) + "\n")
    _summary(eval_dir, "val", 0.0)


def test_length_check_pairs_the_two_runs_over_validation_problems(tmp_path):
    """Used run: problems a/b/c right 2/2, 1/2, 0/2; the longer run 2/2, 2/2, 1/2: per-problem differences 0, .5, .5,
    mean 1/3, SEM sqrt(1/12)/sqrt(3) = 1/6: the longer run is better by more than the SEM -> not at its plateau."""
    plan = R.SeedPlan(str(tmp_path), "guess", 0, R.CONFIGS["full"])
    _generations(plan.curve_dir(plan.epochs), {"a": [True, True], "b": [False, True], "c": [False, False]})
    _generations(os.path.join(plan.longer, "evals", "val"), {"a": [True, True], "b": [True, True], "c": [True, False]})
    got = R.length_check(plan)
    assert got["diff"] == pytest.approx(1 / 3) and got["sem"] == pytest.approx(1 / 6) and not got["at_plateau"]
    assert (got["epochs"], got["longer_epochs"]) == (28, 36) and got["val_longer"] == pytest.approx(5 / 6)
    _generations(os.path.join(plan.longer, "evals", "val"), {"a": [True, True], "b": [False, True], "c": [True, False]})
    assert R.length_check(plan)["at_plateau"]   # one problem better by .5: mean 1/6 = its SEM


# ---------------------------------------------------------------- statistics


def test_paired_t_test_matches_the_closed_forms_for_one_and_two_degrees_of_freedom():
    """df = 2: p = 1 - t / sqrt(2 + t^2); df = 1: p = 1 - (2/pi) atan|t| (two-sided)."""
    t, p_t, p_flip = R.paired_tests([1.0, 2.0, 3.0])   # mean 2, SEM 1/sqrt(3): t = 2 sqrt(3)
    assert t == pytest.approx(2 * math.sqrt(3)) and p_t == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert p_flip == pytest.approx(2 / 8)   # only all-plus and all-minus reach |sum| = 6
    t, p_t, _ = R.paired_tests([1.0, 3.0])   # mean 2, SEM 1
    assert t == pytest.approx(2.0) and p_t == pytest.approx(1 - 2 / math.pi * math.atan(2.0), rel=1e-9)


def test_paired_t_test_at_the_tabulated_critical_value_and_the_sign_flip_floor():
    """t = 2.776 with 4 df is the 5% two-sided critical value; 5 positive differences -> sign-flip p = 2/32."""
    assert R.betainc(2.0, 0.5, 4 / (4 + 2.776 ** 2)) == pytest.approx(0.05, abs=2e-4)
    _, p_t, p_flip = R.paired_tests([0.01, 0.02, 0.03, 0.04, 0.05])
    assert p_flip == pytest.approx(2 / 32) and p_t < 0.05
    assert R.paired_tests([0.0, 0.0, 0.0])[1:] == (1.0, 1.0)
    assert R.paired_tests([0.5]) == (None, None, None)


def test_mean_sem_is_the_standard_error_over_seeds():
    """mean_sem: mean and std(ddof=1)/sqrt(S); no SEM for one value."""
    mean, sem = R.mean_sem([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2) and sem == pytest.approx(0.1 / 3 ** 0.5)
    assert R.mean_sem([0.4]) == (0.4, None)


def _metrics(p1, share):
    return {"pass@1": p1, "sem": 0.01, "pass@k": {"1": p1, "2": p1 + 0.05}, "guess_share": share,
            "guess_accuracy": 0.3, "work_accuracy": 0.9}


def test_tables_give_per_seed_differences_with_their_paired_tests():
    """Rows over seeds; each difference as mean +- SEM with per-seed values, t, p and the verdict."""
    per_seed = {}
    for s in (0, 1, 2):
        methods = {m: {"settings": [{"label": "lr 3e-5", "val": 0.5}], "picked": "lr 3e-5", "picked_on_rate_edge": s == 0,
                       "grid_pick_on_rate_edge": s < 2, "extended": s == 1,
                       "test": _metrics(p, 0.05),
                       "logps": [(k, -0.01 * k, -0.1 * k) for k in range(1, 26)]}
                   for m, p in (("redi", 0.80 + 0.01 * s), ("dpo", 0.78), ("sft_control", 0.75))}
        per_seed[s] = {"stage1": _metrics(0.74, 0.2), "methods": methods, "curve": [(4, .7, .01)],
                       "stage1_epoch": 4, "plateau_confirmed": False}
    table = R.headline_table(per_seed)
    assert "| REDI (alpha 0.8 / 0.5) | 3 | 81.0 +- 0.6 |" in table
    diffs = R.differences_table(per_seed)
    # REDI - control: +5, +6, +7 points: mean 6, SEM 1/sqrt(3) = 0.577, t = 10.39 with 2 df
    p = 1 - 10.392 / math.sqrt(2 + 10.392 ** 2)
    assert (f"| REDI (alpha 0.8 / 0.5) - SFT control (chosen only) | 3 | 6.0 +- 0.6 | +5.0, +6.0, +7.0 | +10.39 ({p:.3f}) "
            f"| 0.250 | a > b |") in diffs
    assert "SimPO" not in diffs   # no SimPO rows in this table: no comparison invented
    mech = R.mechanism_table(per_seed)
    # 25 steps: the first 10 average steps 1-10 (chosen -0.055, rejected -0.55), the last 10 steps 16-25
    assert ("| DPO | 5.0, 5.0, 5.0 | 30.0 +- 0.0 (30.0, 30.0, 30.0) | 90.0 +- 0.0 (90.0, 90.0, 90.0) "
            "| -0.055 -> -0.205 | -0.550 -> -2.050 |") in mech
    assert ("| DPO | lr 3e-5 (50.0; of 1) | lr 3e-5 (50.0; of 1) | lr 3e-5 (50.0; of 1) | 2 of 3 | 1 of 3 | 1 of 3 |"
            in R.picks_table(per_seed))


# ---------------------------------------------------------------- the scheduler


def test_scheduler_runs_dependencies_first_resolves_late_and_stops_on_a_failure(tmp_path):
    """run_jobs starts a job only after its deps, builds a lazy command only then, skips a None command, runs
    `after`, and raises naming a failed job."""
    order = tmp_path / "order.txt"
    append = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + chr(10))"
    a = R.Job("a", [sys.executable, "-c", append, order, "a"], str(tmp_path / "a.log"))
    b = R.Job("b", lambda: [sys.executable, "-c", append, order, "b:" + order.read_text().strip()],
              str(tmp_path / "b.log"), [a], priority=0, after=lambda: order.open("a").write("after b\n"))
    nothing = R.Job("nothing", lambda: None, str(tmp_path / "n.log"), [a])
    R.run_jobs([b, nothing, a], 2, 0.0, fork=False)   # `python -c`: the fork path runs in the smoke test
    assert order.read_text().split("\n")[:3] == ["a", "b:a", "after b"]
    assert not (tmp_path / "n.log").exists()
    bad = R.Job("bad", [sys.executable, "-c", "raise SystemExit(3)"], str(tmp_path / "bad.log"))
    with pytest.raises(RuntimeError, match="job 'bad' failed \\(exit status 3\\)"):
        R.run_jobs([bad], 1, 0.0, fork=False)


def test_plan_prints_jobs_and_estimated_job_seconds_and_runs_nothing(tmp_path, capsys):
    """--plan: the jobs by kind with estimated job-seconds (stage 1: epochs x problems x the variant's seconds per
    problem-epoch, 5 seeds each; the length checks a third longer, 48 and 36 epochs); nothing is run or written."""
    assert R.main(["--plan", "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    row = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  ")}
    assert row["stage1"][1] == "10" and float(row["stage1"][4]) == round(5 * (36 * 4000 * 0.0069 + 28 * 4000 * 0.009))
    assert float(row["stage1_longer"][4]) == round(48 * 4000 * 0.0069 + 36 * 4000 * 0.009)
    assert not (tmp_path / "rep").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_smoke_run_writes_tables_figures_and_results(tmp_path):
    """`python -m toy.replicate --smoke` (one variant, one seed, every kind of job: a two-knob method, DPO with its precomputed
    reference, a one-knob method, whose two-rate grid always gets the edge extension) writes report, results,
    figures; a second invocation reuses every job."""
    out = tmp_path / "rep"
    methods = ["redi", "dpo", "sft_control"]
    args = [sys.executable, "-m", "toy.replicate", "--smoke", "--variants", "guess", "--seeds", "0", "--methods",
            *methods, "--out", str(out)]
    proc = run_script(args, timeout=500)
    assert "wall time" in proc.stdout
    results = json.loads((out / "results.json").read_text())["results"]["guess"]["0"]
    assert set(results["methods"]) == set(methods) and set(results["pilot"]) == set(methods)
    for name, m in results["methods"].items():
        assert len(m["settings"]) == R.CONFIGS["smoke"]["settings_per_method"] + m["extended"], name
    assert results["methods"]["sft_control"]["extended"] and not results["methods"]["redi"]["extended"]
    assert 0 <= results["stage1"]["guess_share"] <= 1 and results["curve"] and results["length_check"]["longer_epochs"] == 3
    report = (out / "report.md").read_text()
    assert "| REDI (alpha 0.8 / 0.5) | 1 |" in report and "### Paired differences" in report and "SimPO" not in report
    for png in ("fig_stage1.png", "fig_differences.png", "fig_logps_guess.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    again = run_script(args, timeout=300).stdout
    assert " done " not in again and "reused guess/s0 stage 1" in again
