"""`fusedopt bench` / `fusedopt info` on a tiny configuration: exit codes, table, JSON, CSV, PNG.

The suite runs once per module (in-process, on the "tiny" size case) and the
tests read its outputs; bad arguments are checked through the parser, and
one subprocess checks `python -m fusedopt`. Failing cases are made by
replacing an implementation's step (in-process, NumPy only) or by disabling
the TF op library in a subprocess (the library is loaded once per process).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest

import fusedopt
from fusedopt.bench import cli, fit, fused_op, impls, report
from fusedopt.bench.rules import IMPLEMENTATIONS, RULES, SIZES
from fusedopt.bench.suite import Config, Progress, default_skip, finish, make_data, plan
from fusedopt.bench.timing import measure

IMPLS = ["fusedopt", "fusedopt-keras", "numpy", "keras-function", "torch-fused"]
RECORD_KEYS = {"rule", "implementation", "size_case", "dtype", "threads", "median_s", "spread", "gbps",
               "fraction_of_roofline", "speedup_vs_keras"}


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One tiny run: Adam and SGD, four implementations and the roofline, threads 1 and 2."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("bench")
    paths = {k: str(out / f"bench.{k}") for k in ("json", "csv", "png")}
    argv = ["bench", "--quick", "--rules", "adam,sgd", "--impls", ",".join(IMPLS), "--threads", "1,2",
            "--quiet", "--json", paths["json"], "--csv", paths["csv"], "--plot", paths["png"]]
    return argv, paths


@pytest.fixture(scope="module")
def bench_output(bench_run):
    argv, paths = bench_run
    import io
    from contextlib import redirect_stdout

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = cli.main(argv)
    return code, buffer.getvalue(), paths


def test_bench_exits_zero_and_prints_table(bench_output):
    code, text, _ = bench_output
    assert code == 0
    header = next(line for line in text.splitlines() if line.startswith("rule "))
    for column in report.TABLE_COLUMNS:
        assert column in header
    for impl in ["roofline", *IMPLS]:
        assert f" {impl} " in text
    assert "fusedopt speedup over each baseline" in text


def test_json_schema(bench_output):
    _, _, paths = bench_output
    with open(paths["json"], encoding="utf-8") as f:
        doc = json.load(f)
    machine = doc["machine"]
    assert {"build_info", "cpu_model", "cpu_count", "versions", "date"} <= set(machine)
    assert machine["build_info"]["isa"] == fusedopt.build_info()["isa"]
    records = doc["records"]
    seen = {(r["rule"], r["implementation"], r["threads"]) for r in records}
    assert ("adam", "fusedopt", 1) in seen and ("adam", "fusedopt", 2) in seen
    assert ("sgd", "roofline", 1) in seen and ("sgd", "roofline", 2) in seen
    assert {r["implementation"] for r in records} == {"roofline", *IMPLS}
    for r in records:
        assert RECORD_KEYS <= set(r), r
        assert r["size_case"] == "tiny" and r["dtype"] == "float32"
        assert r["rule"] in RULES and r["implementation"] in IMPLEMENTATIONS
        assert isinstance(r["threads"], int) and r["threads"] >= 1
        spread = r["spread"]
        assert set(spread) == {"min_s", "max_s", "iqr_s"}
        assert 0 < spread["min_s"] <= r["median_s"] <= spread["max_s"]
        assert spread["iqr_s"] >= 0
        assert r["gbps"] > 0 and r["fraction_of_roofline"] > 0
        assert r["speedup_vs_keras"] > 0  # keras-function ran for both rules
    roof = [r for r in records if r["implementation"] == "roofline"]
    assert all(math.isclose(r["fraction_of_roofline"], 1.0) for r in roof)
    adam = next(r for r in records if r["rule"] == "adam" and r["implementation"] == "fusedopt")
    assert adam["bytes_per_element"] == 28
    assert {"keras-function", "torch-fused", "numpy"} <= set(adam["speedup_vs"])


def test_fusedopt_keras_records_say_the_fused_op_ran(bench_output):
    """Bug: a fusedopt-keras record did not say whether the fused TF op ran, so a run where
    fusedopt.keras fell back to Keras's own update reported Keras's timings under fusedopt's
    name. Earlier tests only checked that the row existed."""
    _, _, paths = bench_output
    with open(paths["json"], encoding="utf-8") as f:
        doc = json.load(f)
    assert doc["errors"] == []
    ours = [r for r in doc["records"] if r["implementation"] == "fusedopt-keras"]
    assert {r["rule"] for r in ours} == {"adam", "sgd"}
    assert all(r["fused"] is True for r in ours)
    assert all("fused" not in r for r in doc["records"] if r["implementation"] != "fusedopt-keras")
    with open(paths["csv"], newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["implementation"] == "fusedopt-keras"]
    assert [r["fused"] for r in rows] == ["True", "True"]


def _raising_factory(rule, params, grads, dtype, seed):
    def step():
        raise FloatingPointError("NaN in the second moment")
    return step


def _unavailable_factory(rule, params, grads, dtype, seed):
    raise impls.Unavailable("not in this build")


@pytest.mark.parametrize("keep_going", [False, True])
def test_a_case_that_raises_is_an_error_and_fails_the_bench(keep_going, monkeypatch, tmp_path, capsys):
    """Bug: a case that raised was listed as skipped ("error: ...") and the bench exited 0, so CI
    could not catch a kernel bug through `fusedopt bench`. Earlier tests ran only healthy cases.
    `impls.Unavailable` stays a skip; --keep-going exits 0 but still lists the error."""
    monkeypatch.setitem(impls.FACTORIES, "fusedopt", _raising_factory)
    monkeypatch.setitem(impls.FACTORIES, "numpy", _unavailable_factory)
    path = tmp_path / "bench.json"
    argv = ["bench", "--quick", "--rules", "sgd", "--impls", "fusedopt,numpy", "--threads", "1", "--quiet",
            "--json", str(path)] + (["--keep-going"] if keep_going else [])
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert code == (0 if keep_going else 1)
    assert "1 case failed" in captured.err
    errors_section = captured.out.split("Errors (1 case failed, not in the table):\n", 1)[1]
    assert errors_section.startswith(
        "  sgd tiny float32 t=1 fusedopt: FloatingPointError: NaN in the second moment\n")
    skipped_section = captured.out.split("Skipped", 1)[1]
    assert "not in this build" in skipped_section and "FloatingPointError" not in skipped_section
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    assert doc["errors"] == [{"rule": "sgd", "size_case": "tiny", "dtype": "float32", "implementation": "fusedopt",
                              "threads": 1, "error": "FloatingPointError: NaN in the second moment"}]
    assert [(e["implementation"], e["reason"]) for e in doc["skipped"]] == [("numpy", "not in this build")]
    assert {r["implementation"] for r in doc["records"]} == {"roofline"}


@pytest.fixture
def tiny_fit(monkeypatch):
    """The --fit section on a 1-hidden-layer MLP, 2 rounds of 2 steps: its Config."""
    pytest.importorskip("tensorflow")
    for name, value in (("LAYERS", 1), ("STEPS", 2), ("ROUNDS", 2)):
        monkeypatch.setattr(fit, name, value)
    return Config(rules=[], sizes=[], dtypes=["float32"], impls=[], threads=[1], fit=True)


class _ModelWhoseFitRaises:
    trainable_variables = [None] * 4

    def fit(self, *args, **kwargs):
        raise MemoryError("no room for the activations")


def test_a_fit_model_that_raises_is_an_error(tiny_fit, monkeypatch):
    """Bug: an exception in --fit ended the whole run (no report, no JSON); now each model whose
    fit raises is an error of its own and the run goes on."""
    monkeypatch.setattr(fit, "_model", lambda optimizer, seed: _ModelWhoseFitRaises())
    records, errors, notes = fit.run_fit(tiny_fit, Progress(2, quiet=True))
    assert records == [] and len(notes) == 1
    assert errors == [{"rule": "adam", "size_case": "fit", "dtype": "float32", "implementation": name,
                       "threads": 1, "error": "MemoryError: no room for the activations"}
                      for name in ("keras-function", "fusedopt-keras")]


def test_a_multi_line_error_stays_under_its_case():
    """A message of several lines (TensorFlow's) is indented under its case, one case per line."""
    text = report.errors([{"rule": "adam", "size_case": "tiny", "dtype": "float32", "implementation": "tf-raw",
                           "threads": 2, "error": "InvalidArgumentError: bad shape\n  in node Foo"}])
    assert text == "  adam tiny float32 t=2 tf-raw: InvalidArgumentError: bad shape\n        in node Foo"


def _node(op: str, **attrs: int) -> SimpleNamespace:
    return SimpleNamespace(op=op, attr={k: SimpleNamespace(i=v) for k, v in attrs.items()})


def test_fused_variables_counts_each_traced_function_once():
    """The count behind ``fused``: the fused update ops' num_tensors in one traced function (a
    retrace must not double it; FusedoptVariableList is no update); fewer than the step's
    variables, a partial fallback, is a KerasFallback naming how many."""
    step = [_node("FusedoptAdam", num_tensors=5), _node("FusedoptAdam", num_tensors=3),
            _node("FusedoptVariableList", num_variables=16), _node("ResourceApplyAdam")]
    assert fused_op.fused_variables([step, list(step)]) == 8
    assert fused_op.fused_variables([]) == 0
    assert fused_op.require_fused([step], 8, "fusedopt.keras.Adam") is True
    with pytest.raises(fused_op.KerasFallback, match="fusedopt.keras.Adam fell back to Keras's own update: "
                                                     "its fused op updates 3 of the 8 variables"):
        fused_op.require_fused([step[1:]], 8, "fusedopt.keras.Adam")


def test_fusedopt_keras_muon_is_a_skip_not_a_fused_timing():
    """fusedopt.keras.Muon updates Muon (matrix) variables with Keras's Muon by design; every bench
    tensor is one, so the case timed Keras's update under fusedopt's name; now it is skipped.
    No test ran fusedopt-keras on muon."""
    pytest.importorskip("tensorflow")
    params, grads = make_data("tiny", "float32", 0)
    with pytest.raises(impls.Unavailable, match="keeps Keras's own update for 8 of the 8 variables by design"):
        impls.make_step("fusedopt-keras", RULES["muon"], params, grads, "float32")


def test_fit_records_that_the_fused_op_ran(tiny_fit):
    """Bug: the --fit record of fusedopt.keras.Adam did not say whether the fused op ran in
    model.fit's train step (a fallback would have been timed as fusedopt's). No test ran --fit."""
    records, errors, _ = fit.run_fit(tiny_fit, Progress(2, quiet=True))
    assert errors == []
    assert {r["implementation"]: r.get("fused") for r in records} == {"keras-function": None,
                                                                      "fusedopt-keras": True}


def test_keras_fallback_is_an_error_not_a_record(tmp_path):
    """Bug: where fusedopt.keras fell back to Keras's own update (here: the op library disabled),
    its cases and its --fit model were reported as fusedopt's timings and the bench exited 0.
    Earlier tests always had the op library. A subprocess: the library is loaded once per process."""
    path = tmp_path / "bench.json"
    code = f"""
        import sys
        from fusedopt.bench import cli, fit
        fit.LAYERS, fit.STEPS, fit.ROUNDS = 1, 2, 2  # a tiny model.fit
        sys.exit(cli.main(["bench", "--quick", "--rules", "sgd", "--impls", "fusedopt-keras", "--threads", "1",
                           "--fit", "--quiet", "--json", {str(path)!r}]))
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow", FUSEDOPT_DISABLE_TF_OPS="1")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Errors (2 cases failed, not in the table):" in proc.stdout
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    assert not [r for r in doc["records"] if r["implementation"] == "fusedopt-keras"]
    assert [(e["rule"], e["size_case"], e["implementation"], e["fused"]) for e in doc["errors"]] == [
        ("sgd", "tiny", "fusedopt-keras", False), ("adam", "fit", "fusedopt-keras", False)]
    for entry, what in zip(doc["errors"], ("fusedopt.keras.SGD", "fusedopt.keras.Adam in model.fit")):
        assert entry["error"].startswith(f"KerasFallback: {what} fell back to Keras's own update"), entry
        assert "FUSEDOPT_DISABLE_TF_OPS" in entry["error"]  # why: op_library_status()'s error


def test_csv_and_png_written(bench_output):
    _, _, paths = bench_output
    with open(paths["json"], encoding="utf-8") as f:
        count = len(json.load(f)["records"])
    with open(paths["csv"], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == count
    assert tuple(rows[0]) == report.CSV_COLUMNS
    with open(paths["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, expected", [
    (["bench", "--rules", "adamm"], "adam"),
    (["bench", "--impls", "jax"], "keras-function"),
    (["bench", "--sizes", "huge"], "large"),
    (["bench", "--dtypes", "float16"], "float32"),
    (["bench", "--threads", "0"], "threads"),
    (["bench", "--repeats", "-1"], "positive"),
    (["bench", "--bogus"], "unrecognized"),
    (["frobnicate"], "bench"),
])
def test_bad_arguments_exit_2_with_choices(argv, expected, capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(argv)
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert expected in message
    if "--rules" in argv or "--impls" in argv or "--sizes" in argv or "--dtypes" in argv:
        assert "valid choices" in message


def test_python_dash_m_and_console_script():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    bad = subprocess.run([sys.executable, "-m", "fusedopt", "bench", "--rules", "nope"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "valid choices" in bad.stderr and "adam" in bad.stderr
    if shutil.which("fusedopt"):
        helped = subprocess.run(["fusedopt", "bench", "--help"], capture_output=True, text=True, env=env,
                                timeout=60)
        assert helped.returncode == 0 and "default skips" in helped.stdout


def test_info_reports_isa_threads_and_op_library(capsys):
    assert cli.main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["build_info"]["isa"] == fusedopt.build_info()["isa"]
    assert "num_threads" in data["build_info"] and "op_library" in data


def test_every_numpy_optimizer_has_a_rule():
    classes = set(fusedopt.optimizers.__all__) - {"Optimizer"}
    assert classes <= {r.cls for r in RULES.values()}


def test_default_plan_skips_slow_combinations_only():
    config = Config(rules=list(RULES), sizes=["large", "small"], dtypes=["float32"],
                    impls=list(IMPLEMENTATIONS), threads=[1, 2])
    cases = plan(config)
    assert default_skip("muon", "large", "fusedopt") and default_skip("adam", "small", "keras-eager")
    assert default_skip("adam", "small", "keras-function") is None
    assert default_skip("adam", "large", "keras-eager") is None
    tiny = {(r, i) for r in RULES for i in IMPLEMENTATIONS if default_skip(r, "tiny", i)}
    assert all(i in ("torch-foreach", "keras-eager") or (r, i) in (("dropout", "keras-xla"), ("dropout", "fusedopt-keras-xla"))
               for r, i in tiny)
    assert default_skip("adam", "tiny", "torch-foreach", ["torch-foreach"]) is None
    runs = {(c.rule, c.size_case, c.implementation) for c in cases if c.skip is None}
    assert {(r, "large", "fusedopt") for r in RULES if r != "muon"} <= runs
    assert {(r, "small", "fusedopt") for r in RULES if r != "dropout"} <= runs
    assert all(c.threads == 2 for c in cases if c.implementation == "keras-function")


def test_finish_computes_bandwidth_roofline_and_speedups():
    def rec(impl, median, threads=2):
        return {"rule": "adam", "implementation": impl, "size_case": "large", "dtype": "float32",
                "threads": threads, "elements": SIZES["large"].elements, "median_s": median}
    records = [rec("roofline", 0.01), rec("fusedopt", 0.02), rec("keras-function", 0.08),
               rec("torch-fused", 0.04, 1), rec("torch-fused", 0.06, 2)]
    finish(records)
    roof, ours, keras, _, _ = records
    assert math.isclose(roof["gbps"], 28 * SIZES["large"].elements / 0.01 / 1e9)
    assert math.isclose(ours["fraction_of_roofline"], 0.5)
    assert math.isclose(ours["speedup_vs_keras"], 4.0) and math.isclose(keras["speedup_vs_keras"], 1.0)
    assert math.isclose(ours["speedup_vs"]["torch-fused"], 2.0)  # the baseline's fastest thread count


def test_measure_repeats_and_spread():
    calls = []
    timing = measure(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7 and len(timing.times) == 5
    assert timing.min_s <= timing.median_s <= timing.max_s and timing.iqr_s >= 0
    adaptive = measure(lambda: None, warmup=0, budget_s=0.0, min_repeats=3)
    assert len(adaptive.times) == 3
    stalled = measure(lambda: time.sleep(0.03), warmup=0, budget_s=0.01, min_repeats=3, limit_s=0.05)
    assert len(stalled.times) == 2  # the time limit wins over min_repeats
