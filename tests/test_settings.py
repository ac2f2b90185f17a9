"""Config loading, validation and training-settings resolution (diffprune/settings.py)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import re

import pytest

from diffprune import rungraph, settings
from diffprune.registry import METHODS, method_class


def write(tmp_path, text: str, name: str = "exp.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


BASE = """
model: tiny-random
tasks: [rte, mrpc]
rates: [0.5, 1]
methods:
  full_finetuning:
  nonadaptive: {method: nonadaptive_diff_pruning}
"""


def test_name_defaults_to_file_stem_and_sections_are_filled(tmp_path):
    cfg = settings.load_config(write(tmp_path, BASE, "my_experiment.yaml"))
    assert cfg["name"] == "my_experiment"
    assert cfg["seeds"] == [0]
    assert cfg["data"] == {"glue_dir": None, "squad_dir": None}
    assert cfg["methods"]["full_finetuning"] == {}
    assert rungraph.method_entry(cfg, "full_finetuning") == ("full_finetuning", {}, {})
    assert settings.method_keys(cfg) == ["full_finetuning", "nonadaptive"]


def test_unset_top_level_keys_take_the_schemas_declared_defaults(monkeypatch):
    """The defaults live in the schema only: change one there and the filled config follows."""
    from diffprune import config_schema

    cfg = settings.fill_defaults({"methods": {"full_finetuning": None}})
    assert (cfg["model"], cfg["rates"], cfg["seeds"], cfg["head_pattern"]) == ("minilm", [0.5], [0], None)
    declared = config_schema.schema()["properties"]
    patched = {**declared, "rates": {**declared["rates"], "default": [0.1, 1.0]},
               "data": {**declared["data"], "properties": {
                   **declared["data"]["properties"],
                   "glue_dir": {**declared["data"]["properties"]["glue_dir"], "default": "glue_data"}}}}
    monkeypatch.setitem(config_schema.schema(), "properties", patched)
    cfg = settings.fill_defaults({"methods": {"full_finetuning": None}, "rates": [2.0]})
    assert cfg["rates"] == [2.0]  # set in the config: the schema's default does not apply
    cfg = settings.fill_defaults({"methods": {"full_finetuning": None}})
    assert cfg["rates"] == [0.1, 1.0] and cfg["data"] == {"glue_dir": "glue_data", "squad_dir": None}


def test_paper_defaults(tmp_path):
    cfg = settings.load_config(write(tmp_path, BASE))
    rte = settings.resolve_training(cfg, "rte", "full_finetuning")
    assert rte["learning_rate"] == 1e-5 and rte["batch_size"] == 8 and rte["epochs"] == 3
    assert rte["fixed_mask_learning_rate"] == 5e-5
    # section 4.3: 5 fixed-mask epochs for MRPC, STS-B, RTE; 3 elsewhere
    assert rte["fixed_mask_epochs"] == 5
    assert settings.resolve_training(cfg, "mrpc", "full_finetuning")["fixed_mask_epochs"] == 5
    assert settings.resolve_training(cfg, "sst2", "full_finetuning")["fixed_mask_epochs"] == 3


def test_resolution_order_and_prune_phase(tmp_path):
    cfg = settings.load_config(write(tmp_path, """
        model: small
        models:
          small: {source: tiny-random, training: {batch_size: 3, epochs: 7, weight_decay: 0.1}}
        training: {batch_size: 2, epochs: 4, learning_rate: 2e-5, warmup_ratio: 0.1, weight_decay: 0.01}
        task_training: {rte: {epochs: 5, max_train_examples: 100}}
        methods:
          diff_pruning: {method: diff_pruning, structured: true, training: {epochs: 6, fixed_mask_epochs: 2},
                         task_training: {cola: {epochs: 9, learning_rate: 3e-4}}}
          full_finetuning:
    """))
    train = settings.resolve_training(cfg, "rte", "diff_pruning")
    assert train["learning_rate"] == 2e-5            # cfg.training (PyYAML reads 2e-5 as a string: coerced)
    assert train["warmup_ratio"] == 0.1              # cfg.training over defaults
    assert train["batch_size"] == 3                  # models[model].training over cfg.training
    assert train["weight_decay"] == 0.1
    assert train["max_train_examples"] == 100        # task_training
    assert train["epochs"] == 6                      # methods[K].training over task_training
    assert settings.resolve_training(cfg, "rte", "full_finetuning")["epochs"] == 5
    assert settings.resolve_training(cfg, "cola", "full_finetuning")["epochs"] == 7
    # --set overrides win over everything
    assert settings.resolve_training(cfg, "rte", "diff_pruning", overrides={"epochs": 1})["epochs"] == 1
    # methods[K].task_training[task] over methods[K].training, for that key and task only
    cola = settings.resolve_training(cfg, "cola", "diff_pruning")
    assert cola["epochs"] == 9 and cola["learning_rate"] == 3e-4 and cola["fixed_mask_epochs"] == 2
    assert settings.resolve_training(cfg, "cola", "full_finetuning")["learning_rate"] == 2e-5
    assert settings.resolve_training(cfg, "cola", "diff_pruning", overrides={"epochs": 1})["epochs"] == 1
    assert settings.method_task_training(cfg, "diff_pruning", "cola") == {"epochs": 9, "learning_rate": 3e-4}
    assert settings.method_task_training(cfg, "diff_pruning", "rte") == {}

    prune = settings.resolve_training(cfg, "rte", "diff_pruning", phase="prune")
    assert prune["learning_rate"] == 5e-5 and prune["epochs"] == 2
    assert rungraph.method_entry(cfg, "diff_pruning") == ("diff_pruning", {"structured": True},
                                                          {"epochs": 6, "fixed_mask_epochs": 2})


@pytest.mark.parametrize("body, message", [
    ("tasks: [rte, wnli]\nmethods: {full_finetuning: }", "unknown task 'wnli'"),
    ("task_training: {mnli_m: {epochs: 1}}\nmethods: {full_finetuning: }", "unknown task 'mnli_m'"),
    ("methods: {ft: {method: prefix_tuning}}", "unknown method 'prefix_tuning'"),
    ("rates: [0]\nmethods: {full_finetuning: }", "rates.0 must be > 0 (percent of the diffed parameters kept, in (0, 100])"),
    ("rates: [150]\nmethods: {full_finetuning: }", "rates.0 must be <= 100"),
    ("model: gpt5\nmethods: {full_finetuning: }", "unknown model key 'gpt5'"),
    ("methods: {nonadaptive: {method: nonadaptive_diff_pruning}}", "no methods entry has `method: full_finetuning`"),
    ("training: {learnin_rate: 1}\nmethods: {full_finetuning: }", "unknown training setting(s) ['learnin_rate']"),
    ("training: {precision: fp8}\nmethods: {full_finetuning: }", "training.precision must be one of auto, fp32, bf16, fp16"),
    ("methods: {adapters: {method: adapters, bottlenek: 4}}", "no option(s) ['bottlenek']"),
    ("methods: {}", "methods is empty"),
    ("methods: {full_finetuning: {task_training: {wnli: {epochs: 1}}}}",
     "unknown task 'wnli' in methods.full_finetuning.task_training"),
    ("methods: {full_finetuning: {task_training: {rte: {epoch: 1}}}}", "unknown training setting(s) ['epoch']"),
    ("methods: {full_finetuning: {task_training: [rte]}}", "methods.full_finetuning.task_training must be a mapping"),
    ("seeds: [-1]\nmethods: {full_finetuning: }", "seeds.0 must be >= 0, got -1"),
    ("unknown_section: 1\nmethods: {full_finetuning: }", "unknown top-level key"),
])
def test_invalid_configs_are_rejected_clearly(tmp_path, body, message):
    with pytest.raises(ValueError) as error:
        settings.load_config(write(tmp_path, body))
    assert message in str(error.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        settings.load_config(tmp_path / "nope.yaml")


def test_missing_data_dir_is_an_error(tmp_path, monkeypatch):
    cfg = settings.load_config(write(tmp_path, BASE + "data: {glue_dir: does/not/exist}\n"))
    with pytest.raises(FileNotFoundError, match="data.glue_dir"):
        settings.data_config(cfg)
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    cfg = settings.load_config(write(tmp_path, BASE))
    assert settings.data_config(cfg)["glue_dir"] == str(tmp_path)


@pytest.mark.parametrize("entry, message", [
    ("{method: full_finetuning, tasks: [cola]}", "which the config's `tasks` does not run"),
    ("{method: full_finetuning, tasks: []}", "methods.ft.tasks must be a non-empty list"),
    ("{method: full_finetuning, task_seeds: {rte: [-1]}}", "methods.ft.task_seeds.rte.0 must be >= 0"),
    ("{method: full_finetuning, task_seeds: {wnli: [0]}}", "unknown task 'wnli'"),
    ("{method: full_finetuning, tasks: [sst2]}", "drop it from methods.nonadaptive.tasks"),
    ("{method: full_finetuning, task_seeds: {rte: [1]}}", "give methods.ft those seeds too"),
    ("{method: full_finetuning, task_rates: {rte: [1]}}", "`task_rates` applies only to projected methods"),
])
def test_method_tasks_and_seeds_are_checked(tmp_path, entry, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        settings.load_config(write(tmp_path, f"""
            model: tiny-random
            tasks: [rte, sst2]
            methods:
              ft: {entry}
              nonadaptive: {{method: nonadaptive_diff_pruning}}
        """))


def test_parse_overrides():
    assert settings.parse_overrides(["epochs=1", "learning_rate=1e-4", "max_train_examples=null"]) == {
        "epochs": 1, "learning_rate": 1e-4, "max_train_examples": None}
    with pytest.raises(ValueError, match="key=value"):
        settings.parse_overrides(["epochs"])
    with pytest.raises(ValueError, match="unknown training setting"):
        settings.parse_overrides(["epoch=1"])


def test_bad_values_in_training():
    cfg = settings.fill_defaults({"methods": {"full_finetuning": None}, "training": {"batch_size": 0}})
    with pytest.raises(ValueError, match="training.batch_size must be >= 1"):
        settings.resolve_training(cfg, "rte", "full_finetuning")
    with pytest.raises(ValueError, match="unknown task"):
        settings.resolve_training(cfg, "glue", "full_finetuning")
    with pytest.raises(ValueError, match="unknown method key 'x'"):
        settings.resolve_training(cfg, "rte", "x")


def test_task_list_matches_the_tasks_package():
    from diffprune.tasks import TASK_NAMES

    assert settings.task_names() == tuple(TASK_NAMES)


def test_import_is_light():
    """The Snakefile imports settings at every invocation: no torch at import time."""
    code = "import sys, diffprune.settings; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("entry, message", [
    ("full_finetuning: {rates: [0.5]}", "applies only to projected methods"),
    ("nonadaptive: {method: nonadaptive_diff_pruning, rates: [0]}", "(0, 100]"),
    ("nonadaptive: {method: nonadaptive_diff_pruning, rates: []}", "non-empty list"),
    ("nonadaptive: {method: nonadaptive_diff_pruning, rates: [1, 1.0]}", "duplicates"),
])
def test_bad_per_method_rates(tmp_path, entry, message):
    entries = {"full_finetuning": "full_finetuning: {}", "nonadaptive": "nonadaptive: {method: nonadaptive_diff_pruning}"}
    entries[entry.split(":")[0]] = entry
    body = "model: tiny-random\ntasks: [rte]\nmethods:\n" + "".join(f"  {e}\n" for e in entries.values())
    with pytest.raises(ValueError) as error:
        settings.load_config(write(tmp_path, body))
    assert message in str(error.value)


def test_a_run_checks_only_the_data_folder_its_task_reads(tmp_path, monkeypatch):
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    monkeypatch.setenv("SQUAD_DIR", str(tmp_path / "not-prepared-yet"))
    cfg = settings.load_config(write(tmp_path, BASE))
    assert settings.data_config(cfg, "rte")["glue_dir"] == str(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"\$SQUAD_DIR"):
        settings.data_config(cfg, "squad")
    with pytest.raises(FileNotFoundError, match=r"\$SQUAD_DIR"):
        settings.data_config(cfg)


# ----------------------------------------------------------------------------- issue 16: schema probes

def _error_of(tmp_path, body: str) -> str:
    with pytest.raises(ValueError) as error:
        settings.load_config(write(tmp_path, body))
    return str(error.value)


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", "", "my run"])
def test_run_set_name_is_one_safe_path_segment(tmp_path, name):
    """`name: ..` wrote results/../README.md (the repository's own) and runs/ into the root."""
    message = _error_of(tmp_path, f"name: {name!r}\ntasks: [rte]\nmethods: {{full_finetuning: }}")
    assert message.endswith(f"name must be one path segment (letters, digits, '_', '.', '-'; not '.' or '..'), "
                            f"got {name!r}")


@pytest.mark.parametrize("body, message", [
    ("rates: 0.5", "rates must be a list, got the single value 0.5: write `rates: [0.5]`"),
    ("seeds: 1", "seeds must be a list, got the single value 1: write `seeds: [1]`"),
    ("tasks: rte", "tasks must be a list, got the single value 'rte': write `tasks: [rte]`"),
    ("rates: [abc]", "rates.0 must be a number, got 'abc' (a string)"),
    ("training: {learning_rate: fast}", "training.learning_rate must be a number, got 'fast' (a string)"),
    ("training: {batch_size: 8x}", "training.batch_size must be an integer, got '8x' (a string)"),
    ("training: {max_grad_norm: -1}", "training.max_grad_norm must be >= 0"),
    ("training: {learning_rate: -1.0e-5}", "training.learning_rate must be > 0"),
    ("training: {epochs: 0}", "training.epochs must be >= 1"),
    ("task_training: {rte: {fixed_mask_epochs: 0}}", "task_training.rte.fixed_mask_epochs must be >= 1"),
])
def test_scalars_and_bad_values_name_the_key_and_the_fix(tmp_path, body, message):
    methods = "" if body.startswith("methods") else "\nmethods: {full_finetuning: }"
    tasks = "" if body.startswith("tasks") else "tasks: [rte]\n"
    assert message in _error_of(tmp_path, tasks + body + methods)


def test_methods_as_a_list_is_a_clear_error(tmp_path):
    message = _error_of(tmp_path, "tasks: [rte]\nmethods: [full_finetuning, bitfit]")
    assert "methods must be a mapping of `key: value` entries, got a list" in message
    assert "methods: {full_finetuning: {method: full_finetuning}}" in message


def test_yaml_1_1_exponents_are_numbers(tmp_path):
    """PyYAML reads `1e-7` (no dot) as a string; the job then failed with a TypeError."""
    cfg = settings.load_config(write(tmp_path, """
        tasks: [rte]
        training: {learning_rate: 1e-4}
        methods: {dp: {method: diff_pruning, l0_lambda: 1e-7}}
    """))
    assert rungraph.method_entry(cfg, "dp")[1] == {"l0_lambda": 1e-7}
    assert settings.resolve_training(cfg, "rte", "dp")["learning_rate"] == 1e-4
    assert settings.parse_overrides(["learning_rate=3e-5"]) == {"learning_rate": 3e-5}


@pytest.mark.parametrize("entry, message", [
    ("{method: diff_pruning, structured: 'false'}", "methods.dp.structured must be true or false, got 'false' (a string)"),
    ("{method: diff_pruning, left: 0.5}", "methods.dp.left must be < 0 (l < 0, lower end of the Hard-Concrete"),
    ("{method: diff_pruning, l0_lambda: -1.0}", "methods.dp.l0_lambda must be >= 0"),
    ("{method: adapters, bottleneck: 8x}", "methods.dp.bottleneck must be an integer, got '8x'"),
    ("{method: lora, lora_dropout: 1.5}", "methods.dp.lora_dropout must be < 1"),
    ("{method: critical_layers, ranking_metric: cosine}", "methods.dp.ranking_metric must be one of relative_l2, angle_deg"),
    ("{method: critical_layers, layers: layer_4}", "methods.dp.layers must be a list or null, got the single value"),
])
def test_method_options_are_typed_and_ranged_at_planning(tmp_path, entry, message):
    """A bad option used to pass planning and fail in every job (`left`), or be read by
    truthiness (`structured: "false"` trained the structured variant)."""
    assert message in _error_of(tmp_path, f"tasks: [rte]\nmethods:\n  full_finetuning:\n  dp: {entry}")


def test_an_unknown_method_option_lists_the_accepted_ones(tmp_path):
    message = _error_of(tmp_path, "tasks: [rte]\nmethods:\n  my_lora: {method: lora, rnk: 4}")
    accepted = sorted(method_class("lora").option_defaults())
    assert f"methods.my_lora: method 'lora' has no option(s) ['rnk']; it accepts {accepted}" in message


def test_an_out_of_range_option_names_the_key_and_the_allowed_range(tmp_path):
    message = _error_of(tmp_path, "tasks: [rte]\nmethods:\n  lora: {rank: 0}")
    assert "methods.lora.rank must be >= 1 (rank r of the update), got 0" in message


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_registered_method_loads_with_its_dataclass_defaults_written_out(tmp_path, name):
    """The entry's options are checked against the Options dataclass of the method the
    registry names: its own defaults, written out in YAML, pass."""
    import yaml

    defaults = method_class(name).option_defaults()
    body = yaml.safe_dump({"tasks": ["rte"], "methods": {"full_finetuning": None, "k": {"method": name, **defaults}}})
    cfg = settings.load_config(write(tmp_path, body))
    assert rungraph.method_entry(cfg, "k")[1] == defaults


def test_training_settings_are_typed_with_help():
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(settings.TrainingSettings)}
    assert set(fields) == set(settings.TRAINING_DEFAULTS)
    assert "clipping" in fields["max_grad_norm"].metadata["help"]
    typed = settings.config_schema.typed_training({**settings.TRAINING_DEFAULTS, "learning_rate": 1, "epochs": 2.0})
    assert typed.learning_rate == 1.0 and isinstance(typed.learning_rate, float)
    assert typed.epochs == 2 and isinstance(typed.epochs, int)
